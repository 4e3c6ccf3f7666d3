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
