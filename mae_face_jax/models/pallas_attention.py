"""Softmax attention read straight from a fused qkv projection, one Pallas TPU kernel per pass.

`qkv_attention(qkv, num_heads)`: (B, N, 3·H·Dh) in timm's fused layout → (B, N, H·Dh), the
attention's output before `proj`. One grid step holds one image's whole sequence in VMEM (MAE's
50 encoder and 197 decoder tokens: a 197×197 float32 score matrix per head is 155 KiB), so the
scores never reach HBM and the arrays keep their lane-dense (B, N, channels) layout. Why: with
head sizes 32 and 64 and token counts not multiples of 8, the (B, H, N, Dh) arrays and
(B, H, N, N) scores of an XLA attention are tiled with padding on a TPU (32 lanes stored as 128),
and their traffic is most of an attention's bytes: XLA's cost model puts MAE's ViT-L decoder
attention (64 images, forward + backward) at 873 µs as einsums, 216 µs here (README).

The backward pass recomputes the scores from q and k instead of saving them (flash attention's
trade). On other backends the same kernels run in Pallas's interpreter: for tests, not speed.
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


def _heads(ref, part: int, heads: int, d: int) -> list[jax.Array]:
  """The (N, Dh) slices of one image's q (part 0), k (1) or v (2), head by head."""
  base = part * heads * d
  return [ref[0, :, base + h * d:base + (h + 1) * d] for h in range(heads)]


def _probs(q: jax.Array, k: jax.Array, scale: float) -> jax.Array:
  s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * scale
  p = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
  return p / jnp.sum(p, axis=-1, keepdims=True)


def _forward_kernel(qkv_ref, o_ref, *, heads: int, d: int):
  out = []
  for q, k, v in zip(*(_heads(qkv_ref, i, heads, d) for i in range(3))):
    p = _probs(q, k, d ** -0.5)
    out.append(jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32))
  o_ref[0] = jnp.concatenate(out, axis=-1).astype(o_ref.dtype)


def _backward_kernel(qkv_ref, do_ref, dqkv_ref, *, heads: int, d: int):
  dq, dk, dv = [], [], []
  for q, k, v, do in zip(*(_heads(qkv_ref, i, heads, d) for i in range(3)),
                         _heads(do_ref, 0, heads, d)):
    p = _probs(q, k, d ** -0.5)
    dv.append(lax.dot_general(p.astype(do.dtype), do, _TN, preferred_element_type=jnp.float32))
    dp = lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
    # softmax's backward; Σ_j p·dp = the row's dO·O, without reading O
    ds = (p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True))).astype(q.dtype)
    dq.append(jnp.dot(ds, k, preferred_element_type=jnp.float32) * d ** -0.5)
    dk.append(lax.dot_general(ds, q, _TN, preferred_element_type=jnp.float32) * d ** -0.5)
  dqkv_ref[0] = jnp.concatenate(dq + dk + dv, axis=-1).astype(dqkv_ref.dtype)


def _image_by_image(kernel, inputs: tuple[jax.Array, ...], out_channels: int, heads: int,
                    matmuls: int, interpret: bool) -> jax.Array:
  """`kernel` over a grid of images; the cost estimate XLA's cost model uses for the call:
  `matmuls` (N×N×Dh) products per head, one exp per score, every array read or written once."""
  b, n, c = inputs[0].shape
  d = c // 3 // heads
  block = lambda channels: pl.BlockSpec((1, n, channels), lambda i: (i, 0, 0))
  itemsize = inputs[0].dtype.itemsize
  return pl.pallas_call(
      functools.partial(kernel, heads=heads, d=d),
      out_shape=jax.ShapeDtypeStruct((b, n, out_channels), inputs[0].dtype),
      grid=(b,), in_specs=[block(x.shape[-1]) for x in inputs], out_specs=block(out_channels),
      compiler_params=pltpu.CompilerParams(dimension_semantics=('parallel',)),
      cost_estimate=pl.CostEstimate(
          flops=2 * matmuls * b * heads * n * n * d, transcendentals=b * heads * n * n,
          bytes_accessed=b * n * (sum(x.shape[-1] for x in inputs) + out_channels) * itemsize),
      interpret=interpret)(*inputs)


def _on_any_platform(kernel, *args) -> jax.Array:
  """The Mosaic kernel where the program is compiled for a TPU (also ahead of time from a CPU
  host), Pallas's interpreter elsewhere."""
  return lax.platform_dependent(
      *args, tpu=functools.partial(kernel, interpret=False),
      default=functools.partial(kernel, interpret=True))


def _forward(qkv: jax.Array, heads: int, interpret: bool) -> jax.Array:
  return _image_by_image(_forward_kernel, (qkv,), qkv.shape[-1] // 3, heads, 2, interpret)


def _backward(qkv: jax.Array, do: jax.Array, heads: int, interpret: bool) -> jax.Array:
  return _image_by_image(_backward_kernel, (qkv, do), qkv.shape[-1], heads, 5, interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _attention(qkv: jax.Array, heads: int) -> jax.Array:
  return _on_any_platform(functools.partial(_forward, heads=heads), qkv)


def _attention_fwd(qkv, heads):
  return _attention(qkv, heads), qkv


def _attention_bwd(heads, qkv, do):
  return (_on_any_platform(functools.partial(_backward, heads=heads), qkv, do),)


_attention.defvjp(_attention_fwd, _attention_bwd)


def qkv_attention(qkv: jax.Array, num_heads: int) -> jax.Array:
  """(B, N, 3·H·Dh) → (B, N, H·Dh). Under a mesh (`jax.set_mesh`, as the training step sets it)
  each device runs the kernel on its own images: the batch is split over every mesh axis, as
  the programs split it."""
  if qkv.shape[-1] % (3 * num_heads):
    raise ValueError(f'qkv width {qkv.shape[-1]} is not 3 × {num_heads} heads × a head size')
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return _attention(qkv, num_heads)
  spec = jax.sharding.PartitionSpec(mesh.axis_names)
  return jax.shard_map(lambda x: _attention(x, num_heads), in_specs=spec, out_specs=spec,
                       check_vma=False)(qkv)
