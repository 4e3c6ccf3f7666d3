"""Builds models from a config's `model` field (a ConfigDict of sizes and dtypes)."""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mae_face_jax.models.mae import MaskedAutoencoder
from mae_face_jax.models.vit import VisionTransformer


def _kwargs(cls: type, model_cfg: Any, overrides: dict[str, Any]) -> dict[str, Any]:
  """The config fields that `cls.__init__` takes, dtype names turned into dtypes."""
  fields = dict(model_cfg) | overrides
  names = set(inspect.signature(cls.__init__).parameters) - {'self', 'rngs'}
  kwargs = {k: v for k, v in fields.items() if k in names}
  for k in ('dtype', 'param_dtype'):
    if isinstance(kwargs.get(k), str):
      kwargs[k] = jnp.dtype(kwargs[k])
  if 'attention_impl' in kwargs:
    kwargs['attention_impl'] = resolve_attention_impl(kwargs['attention_impl'])
  return kwargs


def resolve_attention_impl(impl: str | None) -> str | None:
  """'auto' = cuDNN's fused kernel on NVIDIA GPUs, else XLA's attention; other values as given."""
  if impl == 'auto':
    return 'cudnn' if jax.default_backend() == 'gpu' else None
  return impl


def build_mae(model_cfg: Any, rngs: nnx.Rngs, **overrides: Any) -> MaskedAutoencoder:
  return MaskedAutoencoder(**_kwargs(MaskedAutoencoder, model_cfg, overrides), rngs=rngs)


def build_vit(model_cfg: Any, rngs: nnx.Rngs, **overrides: Any) -> VisionTransformer:
  return VisionTransformer(**_kwargs(VisionTransformer, model_cfg, overrides), rngs=rngs)
