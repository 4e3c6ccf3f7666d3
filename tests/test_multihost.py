"""Two processes joined by jax.distributed.initialize (CPU, gloo) train like one process.

Each process has 2 simulated CPU devices and reads only its own rows of every global batch (the
'synthetic' source makes host p's rows exactly rows [p·b, (p+1)·b) of the global batch); the
global batch is assembled with make_array_from_process_local_data, checkpoints are written
collectively, and only process 0 writes TensorBoard events.
"""

import fcntl
import os
import re
import signal
import subprocess

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mae_face_jax.train_state import flatten
from mae_face_jax import checkpointing
from tests import pretrain_runner as runner


def _losses(workdir):
  acc = EventAccumulator(os.path.join(workdir, 'tensorboard'))
  acc.Reload()
  return [e.value for e in acc.Scalars('train/loss')]


def test_two_processes_match_one_process(tmp_path):
  overrides = {'total_steps': 3, 'checkpoint_steps': 3, 'batch_size': 8}
  single = str(tmp_path / 'single')
  runner.run(single, overrides, devices=4)

  multi = str(tmp_path / 'multi')
  procs = runner.start_two(multi, overrides)
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-5000:]
  assert 'process 1/2, 4 devices' in outs[1] and 'step 3/3' not in outs[1]  # only 0 prints

  np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-5)
  assert len(_losses(multi)) == 3
  pm, step_m = checkpointing.load_pretrained_params(multi)
  ps, step_s = checkpointing.load_pretrained_params(single)
  assert step_m == step_s == 3
  fm, fs = flatten(pm), flatten(ps)
  for k in fs:
    np.testing.assert_allclose(fm[k], fs[k], rtol=1e-4, atol=2e-5, err_msg=k)


def test_sigterm_on_one_host_stops_every_host_at_one_step(tmp_path):
  """A preemption notice reaching host 1 only: both hosts save the same step together, exit 0."""
  workdir = str(tmp_path / 'run')
  logs = [open(tmp_path / f'stderr{i}', 'w+') for i in range(2)]  # files: a full pipe would block
  procs = runner.start_two(workdir, {'total_steps': 300}, stderr=logs)
  fcntl.fcntl(procs[0].stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)  # see pretrain_runner.start
  lines = runner.read_until(procs[0], 'step 5/300')
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=600)[0] for p in procs]
  errs = [open(log.name).read() for log in logs]
  assert [p.returncode for p in procs] == [0, 0], errs[1][-3000:]
  last = (lines + outs[0].splitlines())[-1]
  stopped = int(re.match(r'step (\d+)/300', last).group(1))
  assert 5 <= stopped < 300
  for err in errs:
    assert f'preemption notice: saving step {stopped} and stopping' in err
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == [str(stopped)]
