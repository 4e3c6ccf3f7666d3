"""host_memory.keep_freed_memory: a large block freed and allocated again reuses its pages, in the
process that asked and in the processes it starts (data workers)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocates, touches and frees a 256 MB block twice (as XLA does with a step's temporaries) and
# prints the minor page faults of the second round.
_PROBE = """
import ctypes, os, resource, subprocess, sys
sys.path.insert(0, {root!r})
from mae_face_jax import host_memory
applied = host_memory.keep_freed_memory() if sys.argv[1] in ('keep', 'child') else False
if sys.argv[1] == 'child':  # what a process started after the call sees
  print(applied, subprocess.run([sys.executable, '-c', sys.argv[2], 'default'], check=True,
                                capture_output=True, text=True).stdout.split()[1])
  sys.exit()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def round_trip():  # plain malloc + memset + free (numpy would ask for huge pages)
  size = 256 * 2**20
  p = libc.malloc(size); ctypes.memset(p, 1, size); libc.free(p)
round_trip()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
round_trip()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _second_round_faults(mode: str) -> tuple[bool, int]:
  probe = _PROBE.format(root=ROOT)
  env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
  out = subprocess.run([sys.executable, '-c', probe, mode, probe], check=True, env=env,
                       capture_output=True, text=True).stdout.split()
  return out[0] == 'True', int(out[1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_keep_freed_memory_stops_refaulting_large_blocks():
  _, faults_default = _second_round_faults('default')
  applied, faults_kept = _second_round_faults('keep')
  assert applied
  # 256 MB is 65,536 pages of 4 KiB: glibc maps it afresh each time unless told to keep it.
  assert faults_default > 30_000, faults_default
  assert faults_kept < 1_000, faults_kept


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_keep_freed_memory_reaches_child_processes():
  applied, faults_child = _second_round_faults('child')
  assert applied
  assert faults_child < 1_000, faults_child
