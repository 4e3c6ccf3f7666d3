"""Attention fusion of two views' token features (the paper's fusion head, as this project reads it).

Queries and values come from the main view (aligned face); keys from a *key generator* combining
the main and the auxiliary view (eyes+mouth image) tokens: `fuse_mean`, `fuse_concat`,
`fuse_updown_mean`, `fuse_updown_concat` (the auxiliary tokens first pass an up- then a down-
projection). A self-attention block is followed by a local-attention block (each patch token sees
only its k×k neighbourhood on the patch grid); each has a skip connection and LayerNorm. The patch
tokens are mean-pooled, normalised and classified. Input tokens are patch tokens only (no cls).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mae_face_jax.models.vit import Mlp, layer_norm, linear

KEY_GENERATORS = ('mean', 'concat', 'updown_mean', 'updown_concat')


def local_attention_mask(grid: tuple[int, int], window: int) -> np.ndarray:
  """(N, N) booleans: token i may attend to token j iff j lies in i's window×window neighbourhood."""
  rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
  half = window // 2
  return ((np.abs(rows[:, None] - rows[None]) <= half) &
          (np.abs(cols[:, None] - cols[None]) <= half))


class CrossKeyAttention(nnx.Module):
  """Multi-head attention with queries/values from `x` and keys from `keys`, optional mask."""

  def __init__(self, dim: int, num_heads: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.num_heads = num_heads
    self.q = linear(dim, dim, ('embed', 'heads'), **kw)
    self.k = linear(dim, dim, ('embed', 'heads'), **kw)
    self.v = linear(dim, dim, ('embed', 'heads'), **kw)
    self.proj = linear(dim, dim, ('heads', 'embed'), **kw)

  def __call__(self, x: jax.Array, keys: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    b, n, d = x.shape
    split = lambda t: t.reshape(b, n, self.num_heads, d // self.num_heads)
    out = jax.nn.dot_product_attention(split(self.q(x)), split(self.k(keys)), split(self.v(x)),
                                       mask=mask)
    return self.proj(out.reshape(b, n, d))


def fuse_mean(main: jax.Array, aux: jax.Array) -> jax.Array:
  return (main + aux) / 2


def fuse_concat(main: jax.Array, aux: jax.Array, project: nnx.Linear) -> jax.Array:
  return project(jnp.concatenate([main, aux], axis=-1))


class KeyGenerator(nnx.Module):
  """Builds attention keys from main and auxiliary tokens by one of `KEY_GENERATORS`."""

  def __init__(self, method: str, dim: int, updown_ratio: float, *, dtype: Any, param_dtype: Any,
               rngs: nnx.Rngs):
    if method not in KEY_GENERATORS:
      raise ValueError(f'key generator {method!r} is not one of {KEY_GENERATORS}')
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.method = method
    # Bottleneck MLP (up then down) on the auxiliary tokens for the updown variants.
    self.updown = Mlp(dim, int(dim * updown_ratio), **kw) if method.startswith('updown') else None
    self.project = linear(2 * dim, dim, (None, 'embed'), **kw) if method.endswith('concat') else None

  def __call__(self, main: jax.Array, aux: jax.Array) -> jax.Array:
    if self.updown is not None:
      aux = self.updown(aux)
    if self.project is not None:
      return fuse_concat(main, aux, self.project)
    return fuse_mean(main, aux)


class FusionHead(nnx.Module):
  def __init__(self, *, dim: int, grid_size: tuple[int, int], num_classes: int,
               key_generator: str = 'concat', num_heads: int = 4, local_window: int = 3,
               updown_ratio: float = 4.0, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.keys = KeyGenerator(key_generator, dim, updown_ratio, **kw)
    self.norm_main, self.norm_keys = layer_norm(dim, **kw), layer_norm(dim, **kw)
    self.self_attn = CrossKeyAttention(dim, num_heads, **kw)
    self.norm_local = layer_norm(dim, **kw)
    self.local_attn = CrossKeyAttention(dim, num_heads, **kw)
    self.local_mask = nnx.data(jnp.asarray(local_attention_mask(tuple(grid_size), local_window)))
    self.fc_norm = layer_norm(dim, **kw)
    self.head = linear(dim, num_classes, ('embed', 'classes'),
                       kernel_init=jax.nn.initializers.truncated_normal(2e-5), **kw)

  def features(self, main: jax.Array, aux: jax.Array) -> jax.Array:
    """Fused patch tokens (B, N, D) from main/auxiliary patch tokens (B, N, D)."""
    keys = self.keys(main, aux)
    x = main + self.self_attn(self.norm_main(main), self.norm_keys(keys))
    h = self.norm_local(x)
    return x + self.local_attn(h, h, mask=self.local_mask[None, None])

  def __call__(self, main: jax.Array, aux: jax.Array) -> jax.Array:
    return self.head(self.fc_norm(self.features(main, aux).mean(axis=1)))


def frozen_view_tokens(encoder: nnx.Module, images: jax.Array,
                       num_blocks: int | None = None) -> jax.Array:
  """Patch tokens of a fine-tuned encoder that fusion training must not update."""
  return jax.lax.stop_gradient(encoder.forward_tokens(images, num_blocks)[:, 1:])


class FusionModel(nnx.Module):
  """The fusion stage's model: two fine-tuned view encoders (frozen: the trained variables are the
  heads', `TRAINED`) and one fusion head per key generator, all trained together in one step."""

  TRAINED = nnx.All(nnx.Param, nnx.PathContains('heads'))

  def __init__(self, face_encoder: nnx.Module, region_encoder: nnx.Module,
               aux_blocks: int | None, methods: tuple[str, ...], *, num_heads: int,
               local_window: int, updown_ratio: float, rngs: nnx.Rngs):
    self.face_encoder, self.region_encoder = face_encoder, region_encoder
    self.aux_blocks = aux_blocks
    self.heads = nnx.Dict({method: FusionHead(
        dim=face_encoder.embed_dim, grid_size=face_encoder.patch_embed.grid_size,
        num_classes=face_encoder.head.out_features, key_generator=method, num_heads=num_heads,
        local_window=local_window, updown_ratio=updown_ratio, rngs=rngs) for method in methods})

  def tokens(self, face: jax.Array, region: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Patch tokens of both (normalised) views; the auxiliary view's after `aux_blocks` blocks."""
    return (frozen_view_tokens(self.face_encoder, face),
            frozen_view_tokens(self.region_encoder, region, self.aux_blocks))

  def __call__(self, main: jax.Array, aux: jax.Array) -> dict[str, jax.Array]:
    """Logits of every head from the two views' tokens."""
    return {method: head(main, aux) for method, head in self.heads.items()}
