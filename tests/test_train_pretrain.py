"""The pretraining program end to end (subprocesses of main.py): exact resume after SIGKILL,
a clean checkpoint-and-exit on SIGTERM, and stage 2's view of the result."""

import os
import re
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from input_pipeline import demo_data
from mae_face_jax.train_state import flatten
from mae_face_jax import checkpointing, train_pretrain
from mae_face_jax.models.build import build_model
from tests import pretrain_runner as runner


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
  return demo_data.ensure_demo_data(str(tmp_path_factory.mktemp('demo')), num_videos=2,
                                    frames=(20, 30))


def _params(workdir):
  params, step = checkpointing.load_pretrained_params(workdir)
  return params, step


def test_sigkill_mid_run_then_restart_is_bit_exact(tmp_path, demo_root):
  # Real data pipeline (demo face frames, Grain, random crops), FSDP over 2 devices, async saves.
  overrides = {'data.source': 'demo', 'data.root': demo_root, 'total_steps': 24,
               'checkpoint_steps': 4, 'mesh.data': 1, 'mesh.fsdp': 2}
  straight, killed = str(tmp_path / 'a'), str(tmp_path / 'b')
  runner.run(straight, overrides)

  proc = runner.start(killed, overrides)
  runner.read_until(proc, 'step 10/24')
  proc.kill()  # SIGKILL: no handler, no final save
  assert proc.wait() == -signal.SIGKILL
  ckpt = checkpointing.TrainCheckpointer(os.path.join(killed, 'checkpoints'), read_only=True)
  killed_at = ckpt.latest_step()
  ckpt.close()
  # Step 8's async write may or may not have committed when the kill landed; either way the
  # latest complete checkpoint is a mid-run one.
  assert killed_at in (4, 8, 12, 16, 20), killed_at

  resumed = runner.run(killed, overrides)
  assert f'resumed from {killed}/checkpoints/{killed_at}' in resumed.stderr
  assert f'step {killed_at + 1}/24' in resumed.stdout

  (pa, step_a), (pb, step_b) = _params(straight), _params(killed)  # keep=3: 16, 20, 24
  assert step_a == step_b == 24
  flat_a = {k: v for k, v in flatten(pa).items()}
  flat_b = flatten(pb)
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    assert np.array_equal(flat_a[k], flat_b[k]), f'{k} differs after resume'
  # And training did move them (the comparison is not vacuous).
  first, _ = checkpointing.load_pretrained_params(straight, step=16)
  assert not np.array_equal(flatten(first)['blocks.0.mlp.fc1.kernel'],
                            flat_a['blocks.0.mlp.fc1.kernel'])


def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path):
  workdir = str(tmp_path / 'run')
  overrides = {'total_steps': 200}  # no periodic saves at all
  proc = runner.start(workdir, overrides)
  lines = runner.read_until(proc, 'step 5/200')
  proc.send_signal(signal.SIGTERM)
  rest, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0
  last_line = (lines + rest.splitlines())[-1]  # the step the loop was on when it noticed
  stopped = int(re.match(r'(?:\[.*\] )?step (\d+)/200', last_line).group(1))
  assert 5 <= stopped < 200
  ckpt = checkpointing.TrainCheckpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  assert ckpt.all_steps() == [stopped]  # the step where the notice arrived, nothing else
  ckpt.close()
  stderr = open(workdir + '.stderr').read()
  assert f'preemption notice: saving step {stopped} and stopping' in stderr


def test_bfloat16_compute_keeps_float32_master_state(tmp_path):
  """The accelerator preset's numerics on CPU: bf16 activations, fp32 params and Adam moments."""
  from configs.pretrain_accel import get_config as accel_config
  from tests.pretrain_test_config import get_config
  accel = accel_config()
  assert accel.model.dtype == 'bfloat16' and accel.model.param_dtype == 'float32'
  from mae_face_jax.models.build import resolve_attention_impl
  assert resolve_attention_impl(accel.model.attention_impl) is None  # CPU: no fused kernel, XLA's attention
  config = get_config()
  config.model.dtype, config.model.attention_impl = 'bfloat16', 'auto'
  config.total_steps = 2
  state = train_pretrain.train_and_evaluate(config, str(tmp_path))
  leaves = jax.tree.leaves((state['params'], state['opt_state']))
  assert {str(x.dtype) for x in leaves if x.ndim} == {'float32'}
  model = nnx.eval_shape(lambda: build_model(config))
  assert model.blocks[0].mlp.fc1.dtype == jnp.bfloat16  # matmuls run in bf16
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  acc = EventAccumulator(os.path.join(tmp_path, 'tensorboard'))
  acc.Reload()
  assert all(np.isfinite(e.value) for e in acc.Scalars('train/loss'))
