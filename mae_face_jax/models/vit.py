"""ViT encoder in Flax NNX, named like timm's `VisionTransformer` so checkpoints convert mechanically.

Pre-norm blocks, fused qkv with bias, exact GELU, LayerNorm eps 1e-6, drop path, attention through
`jax.nn.dot_product_attention`, einsums or a Pallas TPU kernel (`attention_impl`). Matrices carry
Flax's standard sharding metadata, logical axis names in `out_sharding` (e.g. qkv kernel ('embed',
'heads')), which the config's rules map to mesh axes (`mae_face_jax.sharding`); biases, norm
scales and tokens carry none and stay replicated. Variables are not sharded when created
(`eager_sharding=False`): models build anywhere, with or without a mesh, and the programs place
them with explicit shardings.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mae_face_jax import pos_embed as pe
from mae_face_jax.models.pallas_attention import qkv_attention

# (embed_dim, depth, num_heads, patch_size) as in ViT/MAE; 'tiny' is ViT-Ti for tests and the demo.
VIT_SIZES: dict[str, tuple[int, int, int, int]] = {
    'tiny': (192, 12, 3, 16),
    'small': (384, 12, 6, 16),
    'base': (768, 12, 12, 16),
    'large': (1024, 24, 16, 16),
    'huge': (1280, 32, 16, 14),
}

LN_EPS = 1e-6
# Rematerialisation of each block (`remat`): what its backward pass keeps from the forward one.
# 'none' keeps every activation; 'dots' keeps the outputs of the linear layers and recomputes norms,
# GELU and attention; 'full' keeps only the block's input and recomputes the whole block.
REMAT_POLICIES = {
    'none': None,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'full': jax.checkpoint_policies.nothing_saveable,
}
xavier_uniform = jax.nn.initializers.xavier_uniform()
zeros = jax.nn.initializers.zeros


class PosEmbed(nnx.Variable):
  """A fixed (not trained) position table, as MAE's `requires_grad=False` sin-cos embeddings."""


# How a linear layer multiplies tokens (`token_matmul`): 'flat' as one (B*N, D) matrix, 'batched'
# as nnx.Linear does, (B, N, D) directly. The same parameters and products (up to float rounding).
# Why both: on CPU, XLA computes the kernel gradient of a (B, N, D) input (a dot contracting two
# dims) far slower than of a (B*N, D) one; on TPU, (B, N, D) ↔ (B*N, D) is a copy whenever N is not
# a multiple of 8 (MAE's 50 encoder and 197 decoder tokens): XLA's cost model puts ViT-L MAE's step
# at 60.5 ms flat, 49.7 ms batched on a v5p-128 (README, "Pod slices checked ahead of time").
TOKEN_MATMULS = ('flat', 'batched')


class TokenLinear(nnx.Linear):
  """nnx.Linear over the last axis, its tokens multiplied as `token_matmul` says."""

  def __init__(self, *args, token_matmul: str = 'flat', **kwargs):
    if token_matmul not in TOKEN_MATMULS:
      raise ValueError(f'token_matmul={token_matmul!r} is not one of {", ".join(TOKEN_MATMULS)}')
    super().__init__(*args, **kwargs)
    self.token_matmul = token_matmul

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.token_matmul == 'batched':
      return super().__call__(x)
    y = super().__call__(x.reshape(-1, x.shape[-1]))
    return y.reshape(*x.shape[:-1], y.shape[-1])


def sharded(*axes: str | None) -> dict[str, Any]:
  """Variable metadata: logical axis names, placed later by the programs (not on creation)."""
  return {'out_sharding': axes, 'eager_sharding': False}


def linear(din: int, dout: int, axes: tuple[str | None, str | None], *, dtype: Any, param_dtype: Any,
           rngs: nnx.Rngs, kernel_init=xavier_uniform, token_matmul: str = 'flat') -> nnx.Linear:
  """TokenLinear with MAE's init (xavier-uniform kernel, zero bias) and logical axis names."""
  return TokenLinear(din, dout, kernel_init=kernel_init, bias_init=zeros, dtype=dtype,
                     param_dtype=param_dtype, rngs=rngs, kernel_metadata=sharded(*axes),
                     token_matmul=token_matmul)


def layer_norm(dim: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(dim, epsilon=LN_EPS, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class PatchEmbed(nnx.Module):
  """Non-overlapping p×p patches → linear projection (a strided conv), flattened row-major."""

  def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, *,
               dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    if img_size % patch_size:
      raise ValueError(f'img_size {img_size} is not a multiple of patch_size {patch_size}')
    self.patch_size = patch_size
    self.grid_size = (img_size // patch_size, img_size // patch_size)
    self.num_patches = self.grid_size[0] * self.grid_size[1]
    # MAE initialises the conv as a linear layer over its (c, p, q) inputs: xavier on the fans.
    self.proj = nnx.Conv(
        in_chans, embed_dim, (patch_size, patch_size), strides=(patch_size, patch_size),
        padding='VALID', kernel_init=jax.nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=3),
        bias_init=zeros, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        kernel_metadata=sharded(None, None, None, 'embed'))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.proj(x)  # (B, h, w, D) from NHWC images
    return x.reshape(x.shape[0], -1, x.shape[-1])


class Attention(nnx.Module):
  def __init__(self, dim: int, num_heads: int, *, attention_impl: str | None, dtype: Any,
               param_dtype: Any, rngs: nnx.Rngs, token_matmul: str = 'flat'):
    if dim % num_heads:
      raise ValueError(f'width {dim} is not divisible by {num_heads} heads')
    self.num_heads = num_heads
    self.attention_impl = attention_impl
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, token_matmul=token_matmul)
    self.qkv = linear(dim, 3 * dim, ('embed', 'heads'), **kw)
    self.proj = linear(dim, dim, ('heads', 'embed'), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    if self.attention_impl == 'pallas':  # qkv's bias, attention and `proj` in one kernel
      x, qkv_w, qkv_b, w, bias = self.qkv.promote_dtype(
          (x, self.qkv.kernel[...], self.qkv.bias[...], self.proj.kernel[...],
           self.proj.bias[...]), dtype=self.qkv.dtype)
      return qkv_attention(x @ qkv_w, qkv_b, w, bias, self.num_heads)
    # timm's fused layout: output channel = (which of q/k/v, head, head_dim).
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.attention_impl == 'einsum':
      out = einsum_attention(q, k, v)
    else:
      out = jax.nn.dot_product_attention(q, k, v, implementation=self.attention_impl)
    return self.proj(out.reshape(b, n, d))


def einsum_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Softmax attention over (B, N, heads, head_dim) with the scores in the inputs' dtype between
  the two products and the softmax in float32. Why: XLA's attention writes float32 scores to
  memory; with bf16 inputs these are half the bytes (the same as in float32 otherwise)."""
  scores = jnp.einsum('bqhd,bkhd->bhqk', q * (q.shape[-1] ** -0.5), k)
  weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, v)


class Mlp(nnx.Module):
  def __init__(self, dim: int, hidden: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs,
               token_matmul: str = 'flat'):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, token_matmul=token_matmul)
    self.fc1 = linear(dim, hidden, ('embed', 'mlp'), **kw)
    self.fc2 = linear(hidden, dim, ('mlp', 'embed'), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
  """Pre-norm transformer block (timm `Block`), with per-sample drop path on both residuals."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, *,
               attention_impl: str | None = None, remat: str = 'none', token_matmul: str = 'flat',
               dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if remat not in REMAT_POLICIES:
      raise ValueError(f'remat={remat!r} is not one of {", ".join(REMAT_POLICIES)}')
    self.remat = remat
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = layer_norm(dim, **kw)
    self.attn = Attention(dim, num_heads, attention_impl=attention_impl,
                          token_matmul=token_matmul, **kw)
    self.norm2 = layer_norm(dim, **kw)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), token_matmul=token_matmul, **kw)
    # Drop path = dropout whose mask is shared by all tokens and channels of a sample.
    self.drop_path = nnx.Dropout(drop_path, broadcast_dims=(1, 2), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.remat == 'none':
      return self.forward(x)
    return nnx.remat(Block.forward, policy=REMAT_POLICIES[self.remat])(self, x)

  def forward(self, x: jax.Array) -> jax.Array:
    x = x + self.drop_path(self.attn(self.norm1(x)))
    return x + self.drop_path(self.mlp(self.norm2(x)))


def make_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path_rate: float,
                **kw) -> nnx.List:
  """`depth` blocks with drop-path rates rising linearly from 0 (timm's stochastic depth rule)."""
  rates = np.linspace(0.0, drop_path_rate, depth) if depth else []
  return nnx.List([Block(dim, num_heads, mlp_ratio, float(r), **kw) for r in rates])


class VisionTransformer(nnx.Module):
  """timm/MAE ViT: `global_pool=True` is MAE fine-tuning's mean of patch tokens + `fc_norm`;
  `global_pool=False` takes the cls token after the final `norm`."""

  def __init__(self, *, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
               embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
               num_classes: int = 0, global_pool: bool = True, drop_path_rate: float = 0.0,
               attention_impl: str | None = None, remat: str = 'none', token_matmul: str = 'flat',
               dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.global_pool = global_pool
    self.embed_dim = embed_dim
    self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, **kw)
    self.cls_token = nnx.Param(jnp.zeros((1, 1, embed_dim), param_dtype))
    # Fine-tuning trains the position table (MAE's models_vit); it starts as the sin-cos table.
    table = pe.get_2d_sincos_pos_embed(embed_dim, self.patch_embed.grid_size, cls_token=True)
    self.pos_embed = nnx.Param(jnp.asarray(table[None], param_dtype),
                               **sharded(None, None, 'embed'))
    self.blocks = make_blocks(embed_dim, depth, num_heads, mlp_ratio, drop_path_rate,
                              attention_impl=attention_impl, remat=remat,
                              token_matmul=token_matmul, **kw)
    if global_pool:
      self.fc_norm = layer_norm(embed_dim, **kw)
    else:
      self.norm = layer_norm(embed_dim, **kw)
    self.head = (linear(embed_dim, num_classes, ('embed', 'classes'),
                        kernel_init=jax.nn.initializers.truncated_normal(2e-5), **kw)
                 if num_classes else None)

  def forward_tokens(self, x: jax.Array, num_blocks: int | None = None) -> jax.Array:
    """All tokens (cls first) after the first `num_blocks` blocks (all by default), before any
    final norm: what fusion consumes (an earlier block gives lower-level features)."""
    x = self.patch_embed(x)
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...].astype(x.dtype)
    for blk in self.blocks[:num_blocks]:
      x = blk(x)
    return x

  def pool(self, tokens: jax.Array) -> jax.Array:
    if self.global_pool:
      return self.fc_norm(tokens[:, 1:].mean(axis=1))
    return self.norm(tokens)[:, 0]

  def __call__(self, x: jax.Array) -> jax.Array:
    """NHWC images → logits (or pooled features when the model has no head)."""
    feats = self.pool(self.forward_tokens(x))
    return self.head(feats) if self.head is not None else feats
