"""The one model builder: a config → the model its program trains (`build_model`), plus the ViT
and MAE builders it uses. Every field of `config.model` must be an argument of the model: a field
it does not take is an error naming it, not silently dropped."""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mae_face_jax.models.fusion import FusionModel
from mae_face_jax.models.mae import MaskedAutoencoder
from mae_face_jax.models.vit import VisionTransformer


def _kwargs(cls: type, model_cfg: Any, overrides: dict[str, Any]) -> dict[str, Any]:
  """The config's fields as `cls.__init__` arguments, dtype names turned into dtypes."""
  kwargs = dict(model_cfg) | overrides
  names = set(inspect.signature(cls.__init__).parameters) - {'self', 'rngs'}
  unknown = sorted(set(kwargs) - names)
  if unknown:
    raise ValueError(f'config.model.{unknown[0]} is not an argument of {cls.__name__} '
                     f'(it takes {", ".join(sorted(names))})')
  for k in ('dtype', 'param_dtype'):
    if isinstance(kwargs.get(k), str):
      kwargs[k] = jnp.dtype(kwargs[k])
  if 'attention_impl' in kwargs:
    kwargs['attention_impl'] = resolve_attention_impl(kwargs['attention_impl'])
  if 'token_matmul' in kwargs:
    kwargs['token_matmul'] = resolve_token_matmul(kwargs['token_matmul'])
  return kwargs


def resolve_attention_impl(impl: str | None, backend: str | None = None) -> str | None:
  """'auto' = cuDNN's fused kernel on NVIDIA GPUs, the Pallas kernel on TPUs (`qkv_attention`:
  XLA's cost model puts it ahead of einsums and XLA's attention there), XLA's attention on CPUs;
  other values as given. `backend` defaults to JAX's (the ahead-of-time compiler names its target
  instead)."""
  if impl == 'auto':
    return {'gpu': 'cudnn', 'tpu': 'pallas'}.get(backend or jax.default_backend())
  return impl


def resolve_token_matmul(how: str, backend: str | None = None) -> str:
  """'auto' = 'batched' on TPUs (no layout copies around each linear layer), 'flat' elsewhere (on
  CPUs the faster kernel gradient; on GPUs the flattening is free); other values as given."""
  if how == 'auto':
    return 'batched' if (backend or jax.default_backend()) == 'tpu' else 'flat'
  return how


def build_mae(model_cfg: Any, rngs: nnx.Rngs, **overrides: Any) -> MaskedAutoencoder:
  return MaskedAutoencoder(**_kwargs(MaskedAutoencoder, model_cfg, overrides), rngs=rngs)


def build_vit(model_cfg: Any, rngs: nnx.Rngs, **overrides: Any) -> VisionTransformer:
  return VisionTransformer(**_kwargs(VisionTransformer, model_cfg, overrides), rngs=rngs)


def build_model(config: Any, seed: int | None = None) -> nnx.Module:
  """What `config.program` trains: the MAE (pretrain), the ViT classifier (finetune), or the two
  frozen encoders with `fusion.seeds` fusion heads per key generator (fusion)."""
  rngs = nnx.Rngs(config.get('seed', 0) if seed is None else seed)
  if config.program == 'pretrain':
    return build_mae(config.model, rngs)
  if config.program == 'finetune':
    return build_vit(config.model, rngs)
  if config.program == 'fusion':
    aux_blocks = config.aux_blocks if config.aux_blocks > 0 else None
    f = config.fusion
    return FusionModel(build_vit(config.model, rngs), build_vit(config.model, rngs), aux_blocks,
                       tuple(f.methods), seeds=f.seeds, main_view=f.main_view,
                       values=f.values_from, pool=f.pool, num_heads=f.num_heads,
                       local_window=f.local_window, updown_ratio=f.updown_ratio, rngs=rngs)
  raise ValueError(f'config.program={config.program!r} trains no model (pretrain, finetune, fusion)')
