"""Test set-up: 8 simulated CPU devices (set before JAX starts) and the repo root on sys.path."""

import os
import sys

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
