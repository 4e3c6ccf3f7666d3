"""Orbax checkpoints of model parameters (the shared piece every program saves and restores with).

Orbax writes into a temporary directory and renames it when complete, so a write that is killed
leaves no half checkpoint under the final name.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from mae_face_jax.models.vit import PosEmbed

# What a model's checkpoint holds: trained parameters and fixed position tables.
MODEL_VARIABLES = nnx.Any(nnx.Param, PosEmbed)


def _flat(tree: Any) -> dict[str, Any]:
  return {jax.tree_util.keystr(k, simple=True, separator='.'): v
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def check_compatible(restored: Any, expected: Any, source: str) -> None:
  """Raises naming the first parameter whose presence or shape differs (checkpoint of another config)."""
  got, want = _flat(restored), _flat(expected)
  for key in want:
    if key not in got:
      raise ValueError(f'{source}: checkpoint has no parameter {key} (saved from another config?)')
    if tuple(got[key].shape) != tuple(want[key].shape):
      raise ValueError(f'{source}: parameter {key} has shape {tuple(got[key].shape)} in the '
                       f'checkpoint but {tuple(want[key].shape)} in the model config')
  extra = sorted(set(got) - set(want))
  if extra:
    raise ValueError(f'{source}: checkpoint has parameters the model lacks, first {extra[0]}')


def save_params(path: str, model: nnx.Module) -> None:
  """Writes the model's parameters as an Orbax checkpoint at `path` (replacing one there)."""
  state = nnx.to_pure_dict(nnx.state(model, MODEL_VARIABLES))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(path), state, force=True)


def restore_params(path: str, model: nnx.Module) -> None:
  """Loads a `save_params` checkpoint into `model`, refusing one of another shape."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path}: no parameter checkpoint there')
  state = nnx.state(model, MODEL_VARIABLES)
  target = nnx.to_pure_dict(state)
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(path).item_metadata
    check_compatible(meta, target, path)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), target)
    restored = ckptr.restore(path, abstract)
  nnx.replace_by_pure_dict(state, restored)
  nnx.update(model, state)
