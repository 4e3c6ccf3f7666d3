"""Training checkpoints: state + data position round trip, another config refused by name, and a
kill during a checkpoint write leaving the previous checkpoint usable."""

import os
import re
import signal
import time

import jax
import numpy as np
import pytest

from mae_face_jax import checkpointing, inputs, optim, sharding
from mae_face_jax.models.build import build_model
from mae_face_jax import train_state as ts
from tests import pretrain_runner as runner
from tests.pretrain_test_config import get_config


def _state(config, mesh):
  from flax import nnx
  build = lambda: build_model(config)
  _, params, _ = ts.abstract_model(build)
  tx, _ = optim.make_optimizer(config, nnx.to_pure_dict(params), 10)
  placed = ts.create_train_state(build, config.seed, mesh, config.mesh.rules, tx)
  return placed.state, placed.shardings


def _abstract(state, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


def test_state_and_data_position_round_trip(tmp_path):
  config = get_config()
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 4})
  state, shardings = _state(config, mesh)
  it, _ = inputs.pretrain_iterator(config, str(tmp_path))
  for _ in range(3):
    next(it)
  ckpt = checkpointing.TrainCheckpointer(str(tmp_path / 'ckpt'), keep=2)
  ckpt.save(3, state, it)
  expected = [next(it)['image'] for _ in range(2)]  # read after the save: must not leak into it
  ckpt.wait()

  fresh, _ = inputs.pretrain_iterator(config, str(tmp_path))
  restored = ckpt.restore(3, _abstract(state, shardings), fresh)
  ckpt.close()
  for want in expected:
    np.testing.assert_array_equal(next(fresh)['image'], want)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               restored, state)
  kernel = restored['params']['blocks'][0]['mlp']['fc1']['kernel']
  assert kernel.sharding == shardings['params']['blocks'][0]['mlp']['fc1']['kernel']


def test_checkpoint_of_another_config_is_refused_by_name(tmp_path):
  config = get_config()
  mesh = sharding.make_mesh({'data': 1}, jax.devices()[:1])
  state, _ = _state(config, mesh)
  it, _ = inputs.pretrain_iterator(config, str(tmp_path))
  ckpt = checkpointing.TrainCheckpointer(str(tmp_path / 'ckpt'), keep=1)
  ckpt.save(1, state, it)
  ckpt.wait()

  wider = get_config()
  wider.model.embed_dim = 96
  other, other_sh = _state(wider, mesh)
  with pytest.raises(ValueError, match=re.escape(
      'parameter blocks.0.attn.proj.bias has shape (64,) in the checkpoint but (96,) in the '
      'model config')):
    ckpt.restore(1, _abstract(other, other_sh), it)
  ckpt.close()


# Runs main.py with Orbax's commit (the rename of the temporary directory) of step 4 blocked, so
# the process is killed with step 4 written but not committed.
_BLOCK_COMMIT_OF_STEP_4 = r'''
import asyncio, os, sys
from orbax.checkpoint._src.path import atomicity
_finalize = atomicity.AtomicRenameTemporaryPath.finalize
async def finalize(self):
  if self._final_path.name == '4':
    open(os.environ['MARKER'], 'w').close()
    while True:
      await asyncio.sleep(1)
  return await _finalize(self)
atomicity.AtomicRenameTemporaryPath.finalize = finalize
sys.argv = ['main.py'] + sys.argv[1:]
import runpy
runpy.run_path(os.path.join(os.environ['PYTHONPATH'], 'main.py'), run_name='__main__')
'''


def test_kill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
  workdir = str(tmp_path / 'run')
  marker = str(tmp_path / 'writing_step_4')
  overrides = {'total_steps': 8, 'checkpoint_steps': 2}
  os.environ['MARKER'] = marker
  try:
    proc = runner.start(workdir, overrides, script=_BLOCK_COMMIT_OF_STEP_4, small_pipe=False)
  finally:
    del os.environ['MARKER']
  deadline = time.monotonic() + 300  # a hang guard, not a timing assertion
  while not os.path.exists(marker):
    assert proc.poll() is None, open(workdir + '.stderr').read()[-3000:]
    assert time.monotonic() < deadline, 'step 4 was never written'
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()

  names = os.listdir(os.path.join(workdir, 'checkpoints'))
  assert '2' in names and '4' not in names
  assert any(n.startswith('4.orbax-checkpoint-tmp') for n in names), names  # the torn write
  ckpt = checkpointing.TrainCheckpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  assert ckpt.latest_step() == 2
  ckpt.close()

  resumed = runner.run(workdir, overrides)
  assert f'resumed from {workdir}/checkpoints/2' in resumed.stderr
  names = os.listdir(os.path.join(workdir, 'checkpoints'))
  assert sorted(names, key=int) == ['4', '6', '8'], names  # leftover cleaned, keep=3


def test_a_preemption_notice_outlives_the_program_that_saw_it(monkeypatch):
  """The demo chains programs: once one stopped on SIGTERM, `preempted()` tells the chain to stop
  rather than start the next stage (whose own handler would not know of the notice)."""
  monkeypatch.setattr(checkpointing, '_PREEMPTED', False)
  notice = checkpointing.Preemption()
  try:
    assert not notice.reached(1) and not checkpointing.preempted()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)
    assert notice.reached(2)
  finally:
    notice.close()
  assert checkpointing.preempted()
  later = checkpointing.Preemption()
  try:
    assert later.reached(3) is False  # a new program's own flag starts clear...
  finally:
    later.close()
  assert checkpointing.preempted()  # ...but the process-wide record stays
