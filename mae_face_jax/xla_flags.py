"""Recommended XLA flags for CPU; must be applied before JAX initialises its backend."""

from __future__ import annotations

import os

CPU_FLAGS: tuple[str, ...] = ()


def apply_cpu_flags() -> None:
  current = os.environ.get('XLA_FLAGS', '')
  names = {f.split('=')[0] for f in current.split()}
  extra = [f for f in CPU_FLAGS if f.split('=')[0] not in names]
  os.environ['XLA_FLAGS'] = ' '.join([current] + extra).strip()
