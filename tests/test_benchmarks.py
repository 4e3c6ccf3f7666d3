"""The benchmarks run on tiny settings and print their ratios."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mae_step_benchmark_times_both_sides():
  res = subprocess.run([sys.executable, 'benchmarks/mae_step.py', '--size', 'tiny', '--img-size',
                        '32', '--batch', '2', '--steps', '1', '--warmup', '0'], cwd=REPO,
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu'))
  assert res.returncode == 0, res.stderr[-3000:]
  out = res.stdout
  assert 'ratio = JAX time / PyTorch time = ' in out and 'MFU' in out
  # Both sides start from the same weights on the same images: their first losses differ only by
  # the mask each draws, so they are of one size (norm-pix MSE of random images is near 1).
  losses = [float(line.rsplit('loss ', 1)[1]) for line in out.splitlines() if 'first step' in line]
  assert len(losses) == 2 and all(0.5 < x < 2.0 for x in losses), out


def test_faces_benchmark_times_every_side():
  res = subprocess.run([sys.executable, 'benchmarks/faces.py', '--frames', '2', '--height', '96',
                        '--width', '128', '--batch', '2'], cwd=REPO, capture_output=True,
                       text=True, timeout=600, env=dict(os.environ, XLA_FLAGS='',
                                                         JAX_PLATFORMS='cpu'))
  assert res.returncode == 0, res.stderr[-3000:]
  for line in ('ratio = our detection / reference detection = ', 'ratio = align / decode = ',
               'decode ', 'align (decode + detect + align + write)'):
    assert line in res.stdout, res.stdout


def test_input_pipeline_benchmark_prints_both_ratios(tmp_path):
  from input_pipeline import demo_data
  root = demo_data.ensure_demo_data(str(tmp_path / 'data'), num_videos=4, frames=(16, 24), size=48)
  res = subprocess.run([sys.executable, 'benchmarks/input_pipeline.py', f'--data_dir={root}',
                        '--seconds=1', '--rounds=1', '--batch_size=8', '--device_batch=2',
                        '--model_size=tiny', '--device_steps=1'], cwd=REPO,
                       capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu'))
  assert res.returncode == 0, res.stderr[-3000:]
  for line in ('host ratio = pipeline images/s / raw decode images/s = ',
               'device ratio = augmentation / train step = ', 'one core: host pipeline'):
    assert line in res.stdout, res.stdout
