"""Softmax attention and its output projection, read straight from the fused qkv projection: one
Pallas TPU kernel per pass.

`qkv_attention(qkv, qkv_bias, w, b, num_heads)`: (B, N, 3·H·Dh) in timm's fused layout + bias →
attention → @ w + b (timm's `proj`) → (B, N, D). One grid step holds one image's whole sequence
in VMEM (MAE's 50 encoder and 197 decoder tokens: a 197×197 float32 score matrix per head is 155
KiB), so the scores and the heads' output never reach HBM and the arrays keep their lane-dense (B, N,
channels) layout. Why: with head sizes 32 and 64 and token counts not multiples of 8, the (B, H,
N, Dh) arrays and (B, H, N, N) scores of an XLA attention are tiled with padding on a TPU (32
lanes stored as 128), and their traffic was most of the attention's bytes.

The backward pass recomputes the scores (flash attention's trade) and the heads' output (for the
projection's weight gradient) instead of saving them; each TensorCore sums the weight gradient
of its images in VMEM. On other backends the same kernels run in Pallas's interpreter: for
tests, not speed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b


def _lanes(part: int, h: int, heads: int, d: int) -> slice:
  """Head h's channels of q (part 0), k (1) or v (2) in timm's fused qkv layout."""
  return slice((part * heads + h) * d, (part * heads + h + 1) * d)


def _head(ref, bias_ref, part: int, h: int, heads: int, d: int) -> jax.Array:
  """One image's (N, Dh) q, k or v of head h, with its bias."""
  lanes = _lanes(part, h, heads, d)
  return ref[0, :, lanes] + bias_ref[:, lanes]


def _probs(q: jax.Array, k: jax.Array, scale: float) -> jax.Array:
  s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * scale
  p = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
  return p / jnp.sum(p, axis=-1, keepdims=True)


# Each head's scores live only inside its own iteration and its output goes straight to a VMEM
# buffer or an output block: kept all at once, the heads' (N, Dh) pieces (Dh of 32 lanes stored
# in 128) and scores outgrew the scoped VMEM at ViT-H's 257 decoder tokens.


def _forward_kernel(qkv_ref, qkv_bias_ref, w_ref, b_ref, y_ref, o_ref, *, heads: int, d: int):
  for h in range(heads):
    q, k, v = (_head(qkv_ref, qkv_bias_ref, part, h, heads, d) for part in range(3))
    p = _probs(q, k, d ** -0.5).astype(v.dtype)
    o_ref[:, h * d:(h + 1) * d] = jnp.dot(p, v, preferred_element_type=jnp.float32).astype(
        o_ref.dtype)
  y = jnp.dot(o_ref[...], w_ref[...], preferred_element_type=jnp.float32)
  y_ref[0] = (y + b_ref[...].astype(jnp.float32)).astype(y_ref.dtype)


def _backward_kernel(qkv_ref, qkv_bias_ref, dy_ref, w_ref, dqkv_ref, dqkv_bias_ref, dw_ref,
                     db_ref, o_ref, do_ref, *, heads: int, d: int):
  @pl.when(pl.program_id(1) == 0)
  def _():  # this core's first image: its gradient sums start at zero
    for ref in (dqkv_bias_ref, dw_ref, db_ref):
      ref[...] = jnp.zeros_like(ref)

  do_ref[...] = lax.dot_general(dy_ref[0], w_ref[...], _NT,
                                preferred_element_type=jnp.float32).astype(do_ref.dtype)
  scale = d ** -0.5
  for h in range(heads):
    q, k, v = (_head(qkv_ref, qkv_bias_ref, part, h, heads, d) for part in range(3))
    do = do_ref[:, h * d:(h + 1) * d]
    p = _probs(q, k, scale)
    pc = p.astype(do.dtype)
    o_ref[:, h * d:(h + 1) * d] = jnp.dot(pc, v, preferred_element_type=jnp.float32).astype(
        o_ref.dtype)  # recomputed, for ∂w
    dp = lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
    # softmax's backward; Σ_j p·dp = the row's dO·O
    ds = (p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True))).astype(q.dtype)
    grads = (jnp.dot(ds, k, preferred_element_type=jnp.float32) * scale,
             lax.dot_general(ds, q, _TN, preferred_element_type=jnp.float32) * scale,
             lax.dot_general(pc, do, _TN, preferred_element_type=jnp.float32))
    for part, g in enumerate(grads):
      lanes = _lanes(part, h, heads, d)
      dqkv_ref[0, :, lanes] = g.astype(dqkv_ref.dtype)
      dqkv_bias_ref[0, :, lanes] += jnp.sum(g, axis=0, keepdims=True)
  dy = dy_ref[0]
  dw_ref[0] += lax.dot_general(o_ref[...], dy, _TN, preferred_element_type=jnp.float32)
  db_ref[0] += jnp.sum(dy.astype(jnp.float32), axis=0, keepdims=True)


def _whole(shape, index_map):
  """A block that stays the same over a core's grid steps (weights, gradient sums): one VMEM
  buffer, not the pipeline's two (ViT-H's 1280² projection and its float32 gradient are 9 MiB)."""
  return pl.BlockSpec(shape, index_map, pipeline_mode=pl.Buffered(1))


# Grid steps run as `_CORES` independent sequences of images, each summing its own weight
# gradient: 'parallel' lets a chip with two TensorCores (v4, v5p) give each one a sequence.
_CORES = 2


def _forward(qkv, qkv_bias, w, b, heads: int, interpret: bool) -> jax.Array:
  bsz, n, c = qkv.shape
  d, width = c // 3 // heads, w.shape[1]
  itemsize = qkv.dtype.itemsize
  return pl.pallas_call(
      functools.partial(_forward_kernel, heads=heads, d=d),
      out_shape=jax.ShapeDtypeStruct((bsz, n, width), qkv.dtype), grid=(bsz,),
      in_specs=[pl.BlockSpec((1, n, c), lambda i: (i, 0, 0)),
                pl.BlockSpec((1, c), lambda i: (0, 0)),
                _whole(w.shape, lambda i: (0, 0)),
                pl.BlockSpec((1, width), lambda i: (0, 0))],
      out_specs=pl.BlockSpec((1, n, width), lambda i: (i, 0, 0)),
      scratch_shapes=[pltpu.VMEM((n, w.shape[0]), qkv.dtype)],  # the heads' output
      compiler_params=pltpu.CompilerParams(dimension_semantics=('parallel',)),
      cost_estimate=pl.CostEstimate(
          flops=4 * bsz * heads * n * n * d + 2 * bsz * n * w.shape[0] * width,
          transcendentals=bsz * heads * n * n,
          bytes_accessed=bsz * n * (c + width) * itemsize
          + (c + w.size + width) * w.dtype.itemsize),
      interpret=interpret)(qkv, qkv_bias.reshape(1, c), w, b.reshape(1, width))


def _backward(qkv, qkv_bias, dy, w, heads: int, interpret: bool):
  bsz, n, c = qkv.shape
  d, width = c // 3 // heads, w.shape[1]
  cores = _CORES if bsz % _CORES == 0 else 1
  per_core = bsz // cores
  image = lambda i, j: (i * per_core + j, 0, 0)
  itemsize = qkv.dtype.itemsize
  dqkv, dqkv_bias, dw, db = pl.pallas_call(
      functools.partial(_backward_kernel, heads=heads, d=d),
      out_shape=(jax.ShapeDtypeStruct(qkv.shape, qkv.dtype),
                 jax.ShapeDtypeStruct((cores, 1, c), jnp.float32),
                 jax.ShapeDtypeStruct((cores,) + w.shape, jnp.float32),
                 jax.ShapeDtypeStruct((cores, 1, width), jnp.float32)),
      grid=(cores, per_core),
      in_specs=[pl.BlockSpec((1, n, c), image), pl.BlockSpec((1, c), lambda i, j: (0, 0)),
                pl.BlockSpec((1, n, width), image), _whole(w.shape, lambda i, j: (0, 0))],
      out_specs=(pl.BlockSpec((1, n, c), image),
                 pl.BlockSpec((1, 1, c), lambda i, j: (i, 0, 0)),
                 _whole((1,) + w.shape, lambda i, j: (i, 0, 0)),
                 pl.BlockSpec((1, 1, width), lambda i, j: (i, 0, 0))),
      scratch_shapes=[pltpu.VMEM((n, w.shape[0]), qkv.dtype)] * 2,  # heads' output, its gradient
      compiler_params=pltpu.CompilerParams(dimension_semantics=('parallel', 'arbitrary')),
      cost_estimate=pl.CostEstimate(
          flops=12 * bsz * heads * n * n * d + 4 * bsz * n * w.shape[0] * width,
          transcendentals=bsz * heads * n * n,
          bytes_accessed=bsz * n * (2 * c + width) * itemsize + w.size * w.dtype.itemsize
          + c * itemsize + cores * (c + w.size + width) * 4),
      interpret=interpret)(qkv, qkv_bias.reshape(1, c), dy, w)
  return (dqkv, dqkv_bias.sum((0, 1)).astype(qkv_bias.dtype), dw.sum(0).astype(w.dtype),
          db.sum((0, 1)).astype(w.dtype))


def _on_any_platform(kernel, *args):
  """The Mosaic kernel where the program is compiled for a TPU (also ahead of time from a CPU
  host), Pallas's interpreter elsewhere."""
  return lax.platform_dependent(
      *args, tpu=functools.partial(kernel, interpret=False),
      default=functools.partial(kernel, interpret=True))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(qkv, qkv_bias, w, b, heads: int) -> jax.Array:
  return _on_any_platform(functools.partial(_forward, heads=heads), qkv, qkv_bias, w, b)


def _attention_fwd(qkv, qkv_bias, w, b, heads):
  return _attention(qkv, qkv_bias, w, b, heads), (qkv, qkv_bias, w)


def _attention_bwd(heads, residuals, dy):
  qkv, qkv_bias, w = residuals
  return _on_any_platform(functools.partial(_backward, heads=heads), qkv, qkv_bias, dy, w)


_attention.defvjp(_attention_fwd, _attention_bwd)


def qkv_attention(qkv: jax.Array, qkv_bias: jax.Array, w: jax.Array, b: jax.Array,
                  num_heads: int) -> jax.Array:
  """(B, N, 3·H·Dh) + qkv_bias → attention → @ w (H·Dh, D) + b: (B, N, D). The qkv projection's
  bias is added here so that its gradient is summed in the kernel too. Under a mesh (the
  training step sets it) each device runs the kernels on its own images (the batch is split over
  every mesh axis, as the programs split it), with the biases and `w` whole."""
  if qkv.shape[-1] % (3 * num_heads) or w.shape[0] * 3 != qkv.shape[-1]:
    raise ValueError(f'qkv width {qkv.shape[-1]} is not 3 × {num_heads} heads × a head size '
                     f'with an output projection of {w.shape[0]} inputs')
  attend = lambda x, qb, w, b: _attention(x, qb, w, b, num_heads)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return attend(qkv, qkv_bias, w, b)
  batch, whole = jax.sharding.PartitionSpec(mesh.axis_names), jax.sharding.PartitionSpec()
  return jax.shard_map(attend, in_specs=(batch, whole, whole, whole), out_specs=batch,
                       check_vma=False)(qkv, qkv_bias, w, b)
