"""Attention fusion of two views' token features (the paper's fusion head, as this project reads it).

Queries come from the main view; keys from a *key generator* combining the main and the auxiliary
view tokens: `fuse_mean`, `fuse_concat`, `fuse_updown_mean`, `fuse_updown_concat` (the auxiliary
tokens first pass an up- then a down-projection). A self-attention block is followed by a
local-attention block (each patch token sees only its k×k neighbourhood on the patch grid); each
has a skip connection and LayerNorm. The patch tokens are mean-pooled, normalised and classified.
Input tokens are patch tokens only (no cls).

The paper leaves open where the attention's values come from and what the classifier sees; both
are arguments here (`VALUES`, `POOLS`), each a reading:
- values 'main': the main view's tokens (the auxiliary view only shapes the attention weights);
  'fused': the key generator's tokens (both views); 'both': keys and values over the main and the
  auxiliary tokens side by side (2N tokens: a main token may attend to any auxiliary token).
- pool 'main': the classifier sees the pooled fused tokens; 'both': also the pooled auxiliary tokens
  (normalised apart), so the head can weigh the two views' evidence directly.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mae_face_jax.models.vit import Mlp, layer_norm, linear

KEY_GENERATORS = ('mean', 'concat', 'updown_mean', 'updown_concat')
VALUES = ('main', 'fused', 'both')
POOLS = ('main', 'both')
VIEWS = ('face', 'region')


def local_attention_mask(grid: tuple[int, int], window: int) -> np.ndarray:
  """(N, N) booleans: token i may attend to token j iff j lies in i's window×window neighbourhood."""
  rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
  half = window // 2
  return ((np.abs(rows[:, None] - rows[None]) <= half) &
          (np.abs(cols[:, None] - cols[None]) <= half))


class CrossKeyAttention(nnx.Module):
  """Multi-head attention with queries from `x`, keys from `keys` and values from `values` (`x` if
  None; keys and values have the same number of tokens), optional mask."""

  def __init__(self, dim: int, num_heads: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.num_heads = num_heads
    self.q = linear(dim, dim, ('embed', 'heads'), **kw)
    self.k = linear(dim, dim, ('embed', 'heads'), **kw)
    self.v = linear(dim, dim, ('embed', 'heads'), **kw)
    self.proj = linear(dim, dim, ('heads', 'embed'), **kw)

  def __call__(self, x: jax.Array, keys: jax.Array, values: jax.Array | None = None,
               mask: jax.Array | None = None) -> jax.Array:
    b, n, d = x.shape
    split = lambda t: t.reshape(b, t.shape[1], self.num_heads, d // self.num_heads)
    values = x if values is None else values
    out = jax.nn.dot_product_attention(split(self.q(x)), split(self.k(keys)),
                                       split(self.v(values)), mask=mask)
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
               key_generator: str = 'concat', values: str = 'main', pool: str = 'main',
               num_heads: int = 4, local_window: int = 3, updown_ratio: float = 4.0,
               dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if values not in VALUES:
      raise ValueError(f'fusion values {values!r} is not one of {VALUES}')
    if pool not in POOLS:
      raise ValueError(f'fusion pool {pool!r} is not one of {POOLS}')
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.values, self.pool = values, pool
    self.keys = KeyGenerator(key_generator, dim, updown_ratio, **kw)
    self.norm_main, self.norm_keys = layer_norm(dim, **kw), layer_norm(dim, **kw)
    self.norm_aux = layer_norm(dim, **kw) if values == 'both' else None
    self.self_attn = CrossKeyAttention(dim, num_heads, **kw)
    self.norm_local = layer_norm(dim, **kw)
    self.local_attn = CrossKeyAttention(dim, num_heads, **kw)
    self.local_mask = nnx.data(jnp.asarray(local_attention_mask(tuple(grid_size), local_window)))
    self.fc_norm = layer_norm(dim, **kw)
    self.aux_fc_norm = layer_norm(dim, **kw) if pool == 'both' else None
    self.head = linear(dim * (2 if pool == 'both' else 1), num_classes, ('embed', 'classes'),
                       kernel_init=jax.nn.initializers.truncated_normal(2e-5), **kw)

  def features(self, main: jax.Array, aux: jax.Array) -> jax.Array:
    """Fused patch tokens (B, N, D) from main/auxiliary patch tokens (B, N, D)."""
    queries, keys = self.norm_main(main), self.norm_keys(self.keys(main, aux))
    if self.values == 'main':
      attended = self.self_attn(queries, keys, queries)
    elif self.values == 'fused':
      attended = self.self_attn(queries, keys, keys)
    else:
      aux_tokens = self.norm_aux(aux)
      attended = self.self_attn(queries, jnp.concatenate([keys, aux_tokens], axis=1),
                                jnp.concatenate([queries, aux_tokens], axis=1))
    x = main + attended
    h = self.norm_local(x)
    return x + self.local_attn(h, h, mask=self.local_mask[None, None])

  def __call__(self, main: jax.Array, aux: jax.Array) -> jax.Array:
    pooled = self.fc_norm(self.features(main, aux).mean(axis=1))
    if self.pool == 'both':
      pooled = jnp.concatenate([pooled, self.aux_fc_norm(aux.mean(axis=1))], axis=-1)
    return self.head(pooled)


def frozen_view_tokens(encoder: nnx.Module, images: jax.Array,
                       num_blocks: int | None = None) -> jax.Array:
  """Patch tokens of a fine-tuned encoder that fusion training must not update."""
  return jax.lax.stop_gradient(encoder.forward_tokens(images, num_blocks)[:, 1:])


def head_name(method: str, seed: int) -> str:
  """A head's key in `FusionModel.heads`: its key generator and its seed."""
  return f'{method}_s{seed}'


def head_seed(name: str) -> int:
  return int(name.rsplit('_s', 1)[1])


class FusionModel(nnx.Module):
  """The fusion stage's model: two fine-tuned view encoders (frozen: the trained variables are the
  heads', `TRAINED`) and, for each key generator, `seeds` heads (each its own initialisation), all
  trained together in one step. `main_view` ('face' or 'region') gives the queries; the other view
  is the auxiliary one, its tokens taken after `aux_blocks` blocks (None: all)."""

  TRAINED = nnx.All(nnx.Param, nnx.PathContains('heads'))

  def __init__(self, face_encoder: nnx.Module, region_encoder: nnx.Module,
               aux_blocks: int | None, methods: tuple[str, ...], *, seeds: int = 1,
               main_view: str = 'face', values: str = 'main', pool: str = 'main',
               num_heads: int, local_window: int, updown_ratio: float, rngs: nnx.Rngs):
    if main_view not in VIEWS:
      raise ValueError(f'fusion main_view {main_view!r} is not one of {VIEWS}')
    self.face_encoder, self.region_encoder = face_encoder, region_encoder
    self.aux_blocks, self.main_view = aux_blocks, main_view
    self.heads = nnx.Dict({head_name(method, seed): FusionHead(
        dim=face_encoder.embed_dim, grid_size=face_encoder.patch_embed.grid_size,
        num_classes=face_encoder.head.out_features, key_generator=method, values=values,
        pool=pool, num_heads=num_heads, local_window=local_window, updown_ratio=updown_ratio,
        rngs=rngs) for method in methods for seed in range(seeds)})

  def tokens(self, face: jax.Array, region: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Patch tokens (main, aux) of both (normalised) views; the auxiliary view's after
    `aux_blocks` blocks."""
    if self.main_view == 'face':
      return (frozen_view_tokens(self.face_encoder, face),
              frozen_view_tokens(self.region_encoder, region, self.aux_blocks))
    return (frozen_view_tokens(self.region_encoder, region),
            frozen_view_tokens(self.face_encoder, face, self.aux_blocks))

  def __call__(self, main: jax.Array, aux: jax.Array) -> dict[str, jax.Array]:
    """Logits of every head. Tokens (B, N, D) are shared by all heads; (B, seeds, N, D) give seed
    s's heads their own rows (each seed its own data order)."""
    out = {}
    for name, head in self.heads.items():
      seed = head_seed(name)
      out[name] = head(main, aux) if main.ndim == 3 else head(main[:, seed], aux[:, seed])
    return out
