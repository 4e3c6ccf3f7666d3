"""Runs `main.py` in a subprocess for tests: a tiny config (pretraining by default), its own
simulated devices."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO, 'main.py')
TEST_CONFIG = os.path.join(REPO, 'tests', 'pretrain_test_config.py')


def env(devices: int) -> dict[str, str]:
  return dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
              JAX_PLATFORMS='cpu', PYTHONPATH=REPO)


def command(workdir: str, overrides: dict, script: str | None = None,
            config: str = TEST_CONFIG) -> list[str]:
  args = [f'--config={config}', f'--workdir={workdir}']
  args += [f'--config.{k}={v}' for k, v in overrides.items()]
  if script is not None:  # a wrapper that patches something, then runs main.py's app
    return [sys.executable, '-c', script, *args]
  return [sys.executable, MAIN, *args]


def run(workdir: str, overrides: dict, devices: int = 2, config: str = TEST_CONFIG
        ) -> subprocess.CompletedProcess:
  """Runs to completion; raises with the log tail if it fails."""
  proc = subprocess.run(command(workdir, overrides, config=config), env=env(devices), cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  if proc.returncode:
    raise AssertionError(f'run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n'
                         f'{proc.stderr[-5000:]}')
  return proc


def start(workdir: str, overrides: dict, devices: int = 2, script: str | None = None,
          small_pipe: bool = True, config: str = TEST_CONFIG) -> subprocess.Popen:
  """Starts a run whose progress lines (log_every=1) come through a pipe of one page: the child
  can only get a few dozen steps ahead of what the test has read, so "kill after reading step k"
  always lands mid-run, however the machine is loaded."""
  os.makedirs(workdir, exist_ok=True)
  proc = subprocess.Popen(command(workdir, overrides, script, config), env=env(devices), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=open(workdir + '.stderr', 'w'), text=True)
  if small_pipe:
    fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)
  return proc


def read_until(proc: subprocess.Popen, prefix: str) -> list[str]:
  """Progress lines up to and including the first starting with `prefix`."""
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith(prefix):
      return lines
  raise AssertionError(f'run ended before {prefix!r}; stdout {lines[-5:]}; '
                       f'returncode {proc.wait()}')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start_two(workdir: str, overrides: dict, stderr=(subprocess.STDOUT, subprocess.STDOUT),
              config: str = TEST_CONFIG) -> list[subprocess.Popen]:
  """Two processes of 2 simulated devices each, joined by jax.distributed (gloo)."""
  port = free_port()
  procs = []
  for pid in range(2):
    dist = {'distributed.enabled': True, 'distributed.coordinator_address': f'127.0.0.1:{port}',
            'distributed.num_processes': 2, 'distributed.process_id': pid}
    procs.append(subprocess.Popen(
        command(workdir, overrides | dist, config=config), env=env(2), cwd=REPO,
        stdout=subprocess.PIPE, stderr=stderr[pid], text=True))
  return procs
