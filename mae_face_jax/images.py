"""The models' input: uint8 RGB batches from the input pipeline, normalised on the device.

The host pipeline stops at uint8 NHWC (`input_pipeline.datasets`): a quarter of float32's bytes
through grain's worker processes and to the accelerator, and no host pass over every pixel. Every
program's jitted step starts with `normalize`; the models themselves take normalised float images,
as timm's and MAE's do (so parity tests feed them the same tensors).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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
