"""The models' input: uint8 RGB batches from the input pipeline, made into model inputs on the
device.

The host pipeline stops at decoded uint8 images at their stored size (`input_pipeline.datasets`).
Every program's jitted step makes its view (region fill from the batch's boxes), augments
(`mae_face_jax.augment`, randomness from the step's per-example keys) or, for evaluation, resizes
and centre-crops, then normalises. The models themselves take normalised float images, as timm's
and MAE's do (so parity tests feed them the same tensors).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mae_face_jax import augment

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
  """uint8 RGB (..., 3) -> (x / 255 - mean) / std, computed in float32 and cast to `dtype`."""
  if images.dtype != jnp.uint8:
    raise TypeError(f'expected uint8 RGB images from the input pipeline, got {images.dtype} '
                    f'{images.shape}')
  x = images.astype(jnp.float32) / 255.0
  x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
  return x.astype(dtype)


def to_unit_rgb(normalized: np.ndarray) -> np.ndarray:
  """Normalised images back to RGB in [0, 1] (for pictures)."""
  mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
  return np.clip(np.asarray(normalized, np.float32) * std + mean, 0.0, 1.0)


def single_view(batch: Mapping[str, jax.Array], data: Any) -> jax.Array:
  """A one-view batch's images at their stored size: the face, or a region view (the region fill
  outside the batch's boxes)."""
  if 'boxes' not in batch:
    return batch['image']
  return augment.apply_regions(batch['image'], batch['boxes'], data.get('region_fill', 0))


def face_and_region(batch: Mapping[str, jax.Array], data: Any) -> tuple[jax.Array, jax.Array]:
  """A paired batch's face and region view at their stored size (the region view read from disk,
  or made from the face and the batch's boxes)."""
  face = batch['image']
  if 'region_image' in batch:
    return face, batch['region_image']
  return face, augment.apply_regions(face, batch['boxes'], data.get('region_fill', 0))


def eval_input(images: jax.Array, config: Any) -> jax.Array:
  """Stored-size uint8 views -> the evaluation's resize + centre crop, normalised."""
  return normalize(augment.eval_views(images, size=config.model.img_size,
                                      crop_pct=config.data.get('crop_pct', 0.875)))
