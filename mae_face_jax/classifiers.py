"""Trained expression models for inference, whichever of the three kinds a path holds:

- a fusion workdir (config.json with program 'fusion'): both fine-tuned encoders (best/ of the
  fine-tuning workdirs it names), the heads of its last checkpoint, and the head and smoothing
  window the fusion report chose on validation (report/best.json);
- a fine-tuning workdir (program 'finetune'): best/ and the view it was trained on;
- a ViT imported from PyTorch: a timm/MAE-Face fine-tuned `.pth`/`.safetensors`, or the params/
  folder `--mode=import_torch` writes, with the architecture from a finetune config.

Every kind takes aligned faces at the ABAW crops' size (uint8 RGB) and their 5 landmarks in the
aligned image, makes its view(s) as evaluation does (region view, then resize + centre crop, on the
device), and returns class probabilities.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from input_pipeline import transforms
from mae_face_jax import checkpointing, report, torch_interop
from mae_face_jax import train_state as ts
from mae_face_jax import images as images_lib
from mae_face_jax.models.build import build_model, build_vit
from mae_face_jax.models.fusion import head_name

WINDOWS = (1, 3, 5, 9, 15, 25, 35, 51)  # swept on a fine-tuning run's validation predictions


class ModelError(ValueError):
  """A --model path that is none of the three kinds; the message names it."""


@dataclasses.dataclass
class Classifier:
  name: str                     # what the report calls it
  config: Any                   # the program config (data, model, views)
  views: tuple[str, ...]        # 'face' and/or a region variant, in the model's input order
  window: int                   # smoothing window chosen on validation (1: none known)
  apply: Callable[..., jax.Array]  # a batch (stored-size uint8 'image', 'boxes') → probabilities

  def batch_of(self, faces: np.ndarray, points: np.ndarray | None) -> dict[str, np.ndarray]:
    """Aligned faces (and their landmarks there, None: the template) → the model's input batch:
    the faces, and the region boxes when a view is a region view."""
    batch = {'image': np.asarray(faces)}
    region = [v for v in self.views if v != 'face']
    if region:
      h, w = batch['image'].shape[1:3]
      pts = points if points is not None else [None] * len(faces)
      batch['boxes'] = np.stack([transforms.padded_boxes(region[0], h, w, p,
                                                         self.config.data.region_margin)
                                 for p in pts]).reshape(len(faces), transforms.MAX_BOXES, 4)
    return batch

  def __call__(self, faces: np.ndarray, points: np.ndarray | None = None) -> np.ndarray:
    """(N, S, S, 3) uint8 aligned faces → (N, 8) probabilities."""
    return self.probs(self.batch_of(faces, points))

  def probs(self, batch: dict[str, np.ndarray]) -> np.ndarray:
    """Probabilities of a batch as the pipeline makes them ('image' at the stored size, and
    'boxes' for a region view), in chunks of a fixed size (one compiled shape)."""
    n, size = len(batch['image']), 32
    out = []
    for start in range(0, n, size):
      chunk = {k: v[start:start + size] for k, v in batch.items()}
      pad = size - len(chunk['image'])
      chunk = {k: np.concatenate([c, np.zeros((pad, *c.shape[1:]), c.dtype)])
               for k, c in chunk.items()}
      out.append(np.asarray(self.apply({k: jnp.asarray(c) for k, c in chunk.items()}))[:size - pad])
    return np.concatenate(out) if out else np.zeros((0, 8), np.float32)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def set_params(model: nnx.Module, flat: dict[str, np.ndarray], source: str) -> None:
  """Every parameter of the model from flat names (`blocks.0.attn.qkv.kernel`); ModelError naming
  the source when one is missing or of another shape."""
  state = nnx.state(model, nnx.Param)
  params = ts.flatten(state)
  missing = sorted(set(params) - set(flat))
  if missing:
    raise ModelError(f'{source}: no values for {len(missing)} parameters ({missing[0]}, ...)')
  for name, value in params.items():
    if tuple(np.shape(flat[name])) != tuple(value.shape):
      raise ModelError(f'{source}: {name} has shape {np.shape(flat[name])}, the model '
                       f'{tuple(value.shape)}')
  nested = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.asarray(flat[jax.tree_util.keystr(p, simple=True, separator='.')], v.dtype),
      nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, nested)
  nnx.update(model, state)


def _abstract(build: Callable[[], nnx.Module]) -> nnx.Module:
  """The model without initialising its parameters (`set_params` fills every one; eager random
  initialisation of a ViT takes seconds); its other variables are made for real."""
  model = nnx.eval_shape(build)
  rest = nnx.state(model, nnx.Not(nnx.Param))
  if jax.tree.leaves(rest):  # RNG keys, constant masks: jitted, so the unused inits are dropped
    values = jax.jit(lambda: nnx.to_pure_dict(nnx.state(build(), nnx.Not(nnx.Param))))()
    nnx.replace_by_pure_dict(rest, values)
    nnx.update(model, rest)
  return model


def _single_view(model: nnx.Module, config: Any) -> Callable:
  graphdef, state = nnx.split(model)

  def apply(batch):
    images = images_lib.eval_input(images_lib.single_view(batch, config.data), config)
    model = nnx.merge(graphdef, state)
    model.eval()  # drop path off
    return jax.nn.softmax(model(images).astype(jnp.float32), -1)
  return jax.jit(apply)


def _best_window(workdir: str) -> int:
  """The smoothing window that maximised validation macro F1 of the run's predictions_val.csv."""
  path = os.path.join(workdir, 'predictions_val.csv')
  if not os.path.exists(path):
    return 1
  table = report.read_predictions(path)
  table = {k: v[table['label'] >= 0] for k, v in table.items()}
  curve = report.sweep_windows(table['probs'], table, WINDOWS)
  return max(curve, key=curve.get)


def from_finetune_workdir(workdir: str) -> Classifier:
  config = read_config(workdir)
  model = _abstract(lambda: build_vit(config.model, nnx.Rngs(0)))
  best = os.path.join(workdir, 'best')
  if not os.path.isdir(best):
    raise ModelError(f'{workdir}: a fine-tuning workdir without best/ (no evaluation finished)')
  set_params(model, ts.flatten(checkpointing.read_numpy(best)), best)
  return Classifier(f'finetune {config.view}', config, (config.view,), _best_window(workdir),
                    _single_view(model, config))


def _fusion_choice(workdir: str, methods: list[str]) -> tuple[str, int]:
  """The head and smoothing window the fusion report chose on validation (report/best.json);
  without a report, the first key generator's first seed, unsmoothed."""
  path = os.path.join(workdir, 'report', 'best.json')
  if not os.path.exists(path):
    return head_name(methods[0], 0), 1
  with open(path) as f:
    best = json.load(f)
  return best['head'], int(best['window'])


def from_fusion_workdir(workdir: str) -> Classifier:
  config = read_config(workdir)
  model = _abstract(lambda: build_model(config))
  flat = {}
  for prefix, path in (('face_encoder', config.face_workdir),
                       ('region_encoder', config.region_workdir)):
    flat |= {f'{prefix}.{k}': v
             for k, v in ts.flatten(checkpointing.read_numpy(os.path.join(path, 'best'))).items()}
  try:
    heads, _ = checkpointing.load_pretrained_params(workdir)
  except FileNotFoundError as e:
    raise ModelError(f'{workdir}: a fusion workdir without a checkpoint of its heads') from e
  flat |= ts.flatten(heads)
  set_params(model, flat, workdir)
  method, window = _fusion_choice(workdir, list(config.fusion.methods))
  graphdef, state = nnx.split(model)

  def apply(batch):
    m = nnx.merge(graphdef, state)
    m.eval()  # drop path off
    face, region = images_lib.face_and_region(batch, config.data)
    main, aux = m.tokens(images_lib.eval_input(face, config), images_lib.eval_input(region, config))
    return jax.nn.softmax(m.heads[method](main, aux).astype(jnp.float32), -1)
  return Classifier(f'fusion {method}', config, ('face', config.region_view), window,
                    jax.jit(apply))


def from_torch(path: str, config: Any) -> Classifier:
  """A fine-tuned ViT from PyTorch (a .pth/.safetensors file, or an import_torch params/ folder);
  `config` is the finetune config that gives its architecture, view and evaluation settings."""
  if config is None or config.get('program') != 'finetune':
    raise ModelError(f'{path}: a PyTorch or imported ViT needs --config=<a finetune config> '
                     'for its architecture')
  model = build_vit(config.model, nnx.Rngs(0))
  if os.path.isdir(path):
    checkpointing.restore_params(path, model)
  else:
    loaded = torch_interop.import_torch_checkpoint(model, path)
    if loaded.missing or loaded.reinitialised:
      raise ModelError(f'{path}: not a fine-tuned ViT of this config (missing '
                       f'{(loaded.missing or loaded.reinitialised)[:3]})')
  return Classifier(f'torch {os.path.basename(path.rstrip("/"))}', config, (config.view,), 1,
                    _single_view(model, config))


def load(path: str, config: Any = None) -> Classifier:
  """The classifier at `path`, whichever kind it is; ModelError naming the path otherwise."""
  if not path or not os.path.exists(path):
    raise ModelError(f'{path}: no such model file or directory')
  if os.path.isfile(os.path.join(path, 'config.json')):
    program = read_config(path).get('program')
    if program == 'fusion':
      return from_fusion_workdir(path)
    if program == 'finetune':
      return from_finetune_workdir(path)
    raise ModelError(f'{path}: a {program!r} workdir; --model takes a fusion or fine-tuning '
                     'workdir, or a fine-tuned ViT from PyTorch')
  if os.path.isfile(path) and path.endswith(('.pth', '.pt', '.bin', '.safetensors')):
    return from_torch(path, config)
  if os.path.isdir(path) and os.path.exists(os.path.join(path, '_CHECKPOINT_METADATA')):
    return from_torch(path, config)
  raise ModelError(f'{path}: not a fusion or fine-tuning workdir (no config.json), nor a PyTorch '
                   'checkpoint (.pth, .safetensors), nor an imported params/ folder')

