"""Test set-up: 8 simulated CPU devices (set before JAX starts) and the repo root on sys.path.

JAX runs on the CPU only: with libtpu installed (test_aot compiles for TPU topologies through it)
JAX would otherwise try to start a TPU backend in every test process, warn, and take libtpu's
machine-wide lock. Compiling for a topology works without that backend.
"""

import os
import sys

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import subprocess  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def smoke_demo(tmp_path_factory):
  """The main job's smoke variant run once through main.py: (workdir, the finished process with
  its console output). Tests of the console and of the trained models share it."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  base = tmp_path_factory.mktemp('smoke_demo')
  workdir = base / 'demo'
  out = subprocess.run([sys.executable, os.path.join(root, 'main.py'),
                        '--config=' + os.path.join(root, 'configs', 'demo.py') + ':smoke',
                        f'--workdir={workdir}'], cwd=base, capture_output=True, text=True,
                       timeout=900)
  return workdir, out
