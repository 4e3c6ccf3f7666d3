"""PyTorch interop: import MAE / MAE-Face / timm ViT checkpoints into our NNX models, export back.

Key names mirror timm and MAE, so conversion is mechanical: Linear `weight` (out, in) ↔ `kernel`
(in, out); the patch-embedding conv `weight` (D, C, p, q) ↔ HWIO `kernel` (p, q, C, D); LayerNorm
`weight` ↔ `scale`; tokens and position tables as they are. PyTorch itself is needed only to read or
write `.pth` files; `.safetensors` are read and written with numpy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from mae_face_jax import pos_embed as pe
from mae_face_jax.models.vit import PosEmbed

# Wrappers under which training scripts store the state dict (MAE: {'model': ...}).
_WRAPPER_KEYS = ('model', 'state_dict', 'module')


class CheckpointError(ValueError):
  """A checkpoint file that cannot be read, or that does not fit the model."""


@dataclasses.dataclass
class ImportReport:
  loaded: list[str]
  missing: list[str]         # our parameters the checkpoint lacks (left as initialised)
  unexpected: list[str]      # checkpoint entries our model has no place for (ignored)
  reinitialised: list[str]   # present, but re-initialised (classification head of other size)
  resized: list[str]         # position tables resampled to our grid


def load_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
  """Reads a `.pth`/`.pt`/`.bin` (torch.load, weights_only) or `.safetensors` file into numpy."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such checkpoint file')
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file
    try:
      return dict(load_file(path))
    except Exception as e:  # safetensors raises its own error types for malformed files.
      raise CheckpointError(f'{path}: not a readable safetensors file ({type(e).__name__}: {e})') from e
  try:
    import torch
  except ImportError as e:
    raise CheckpointError(
        f'{path}: reading a .pth checkpoint needs PyTorch (pip install -r requirements-test.txt), '
        'or convert it to .safetensors') from e
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # zip / unpickling errors of truncated or foreign files.
    raise CheckpointError(f'{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})') from e
  while isinstance(obj, Mapping) and any(isinstance(obj.get(k), Mapping) for k in _WRAPPER_KEYS):
    obj = next(obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping))
  if not isinstance(obj, Mapping) or not obj:
    raise CheckpointError(f'{path}: holds a {type(obj).__name__}, not a state dict of tensors')
  out = {}
  for key, value in obj.items():
    if not isinstance(value, torch.Tensor):
      raise CheckpointError(f'{path}: entry {key!r} is a {type(value).__name__}, not a tensor')
    key = key.removeprefix('module.')  # DistributedDataParallel wrapping
    value = value.detach().cpu()
    out[key] = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
  return out


def save_torch_checkpoint(state_dict: Mapping[str, np.ndarray], path: str) -> None:
  """Writes a timm-loadable state dict (`.safetensors`, else torch.save); atomic via rename."""
  tmp = f'{path}.tmp-{os.getpid()}'
  if path.endswith('.safetensors'):
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, tmp)
  else:
    import torch
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}, tmp)
  os.replace(tmp, path)


def _variables(model: nnx.Module) -> dict[str, tuple[tuple[Any, ...], nnx.Variable]]:
  """torch key → (our path, variable) for every parameter and position table."""
  flat = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, PosEmbed)))
  out = {}
  for path, var in flat:
    names = [str(p) for p in path]
    if names[-1] in ('kernel', 'scale'):
      names[-1] = 'weight'
    out['.'.join(names)] = (path, var)
  return out


def _to_torch(path: tuple[Any, ...], value: np.ndarray) -> np.ndarray:
  if path[-1] == 'kernel':
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
  return value


def _from_torch(path: tuple[Any, ...], value: np.ndarray) -> np.ndarray:
  if path[-1] == 'kernel':
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
  return value


def export_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """Our parameters as a timm/MAE state dict of numpy arrays (float32 unless stored otherwise)."""
  return {key: np.array(_to_torch(path, np.asarray(var.get_value())), order="C", copy=True)
          for key, (path, var) in _variables(model).items()}


def import_state_dict(model: nnx.Module, state_dict: Mapping[str, np.ndarray],
                      source: str = '<state dict>') -> ImportReport:
  """Loads `state_dict` into `model` in place.

  A shape mismatch is an error naming `source`, the key and both shapes, except: position tables
  of another grid are resampled bicubically, and a classification head of another size is left
  re-initialised (as MAE's fine-tuning does). Missing and unexpected keys are reported by name.
  """
  ours = _variables(model)
  report = ImportReport([], [], [], [], [])
  updates = {}
  for key, value in state_dict.items():
    if key not in ours:
      report.unexpected.append(key)
      continue
    path, var = ours[key]
    value = np.asarray(value)
    want = _to_torch(path, np.empty(var.get_value().shape, np.uint8)).shape
    if value.shape != want and key in ('pos_embed', 'decoder_pos_embed') and value.ndim == 3:
      grid = int(round(np.sqrt(want[1] - 1)))
      value = pe.resize_pos_embed(value, (grid, grid))
      report.resized.append(key)
    if value.shape != want and key.startswith('head.'):
      report.reinitialised.append(key)
      continue
    if value.shape != want:
      raise CheckpointError(
          f'{source}: {key} has shape {tuple(value.shape)} in the checkpoint but '
          f'{tuple(want)} in the model (checkpoint of another architecture or config?)')
    updates[key] = jnp.asarray(_from_torch(path, value), dtype=var.get_value().dtype)
    report.loaded.append(key)
  for key, value in updates.items():
    ours[key][1].set_value(value)
  report.missing = [k for k in ours if k not in updates and k not in report.reinitialised]
  for what in ('missing', 'unexpected', 'reinitialised', 'resized'):
    names = getattr(report, what)
    if names:
      logging.warning('%s: %d %s: %s', source, len(names), what, ', '.join(names))
  if report.reinitialised:
    logging.warning('%s: classification head re-initialised for %s classes', source,
                    ours['head.bias'][1].get_value().shape[0] if 'head.bias' in ours else '?')
  return report


def import_torch_checkpoint(model: nnx.Module, path: str) -> ImportReport:
  """Reads `path` and loads it into `model`; see `import_state_dict`."""
  return import_state_dict(model, load_torch_checkpoint(path), source=path)
