"""Masked autoencoder (MAE) in Flax NNX, numerically as facebookresearch/mae `models_mae.py`.

The masking noise is an input, so the same noise gives the same mask as the PyTorch reference.
Images are NHWC; patches are flattened in the reference's (p, q, c) order.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mae_face_jax import pos_embed as pe
from mae_face_jax.models.vit import PatchEmbed, PosEmbed, layer_norm, linear, make_blocks, sharded


def patchify(imgs: jax.Array, patch_size: int) -> jax.Array:
  """(B, H, W, C) → (B, h*w, p*p*C), each patch flattened row, column, then channel."""
  b, hh, ww, c = imgs.shape
  p = patch_size
  x = imgs.reshape(b, hh // p, p, ww // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (hh // p) * (ww // p), p * p * c)


def unpatchify(x: jax.Array, patch_size: int, channels: int = 3) -> jax.Array:
  """(B, h*w, p*p*C) → (B, H, W, C) for a square grid; the inverse of `patchify`."""
  b, n, _ = x.shape
  p, h = patch_size, int(round(n**0.5))
  if h * h != n:
    raise ValueError(f'{n} patches do not form a square grid')
  x = x.reshape(b, h, h, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, h * p, channels)


def random_masking(x: jax.Array, noise: jax.Array, mask_ratio: float
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Keeps the `int(L * (1 - mask_ratio))` tokens of smallest noise, in ascending-noise order.

  Returns (kept tokens (B, keep, D), mask (B, L) with 1 = removed in original order, ids_restore).
  """
  b, length, _ = x.shape
  len_keep = int(length * (1 - mask_ratio))
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  ids_keep = ids_shuffle[:, :len_keep]
  x_masked = jnp.take_along_axis(x, ids_keep[:, :, None], axis=1)
  mask = jnp.ones((b, length), x.dtype).at[:, :len_keep].set(0)
  mask = jnp.take_along_axis(mask, ids_restore, axis=1)
  return x_masked, mask, ids_restore


def mae_loss(imgs: jax.Array, pred: jax.Array, mask: jax.Array, patch_size: int,
             norm_pix_loss: bool = True) -> jax.Array:
  """Mean squared error per patch, averaged over removed patches only.

  With `norm_pix_loss` each target patch is normalised by its mean and *unbiased* variance
  (torch's `var` default), eps 1e-6, as the reference.
  """
  target = patchify(imgs.astype(jnp.float32), patch_size)
  if norm_pix_loss:
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True, ddof=1)
    target = (target - mean) / jnp.sqrt(var + 1.0e-6)
  loss = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
  mask = mask.astype(jnp.float32)
  return jnp.sum(loss * mask) / jnp.sum(mask)


class MAEOutput(NamedTuple):
  loss: jax.Array
  pred: jax.Array         # (B, L, p*p*3), normalised-pixel space when norm_pix_loss
  mask: jax.Array         # (B, L), 1 = removed
  ids_restore: jax.Array  # (B, L)
  latent: jax.Array       # (B, 1 + keep, D) encoder output after its final norm


class MaskedAutoencoder(nnx.Module):
  """MAE with a ViT encoder and a light decoder; fixed 2-D sin-cos position tables."""

  def __init__(self, *, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
               embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
               decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
               mlp_ratio: float = 4.0, mask_ratio: float = 0.75, norm_pix_loss: bool = True,
               drop_path_rate: float = 0.0, attention_impl: str | None = None, remat: str = 'none',
               token_matmul: str = 'flat', dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.patch_size, self.in_chans = patch_size, in_chans
    self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
    normal = jax.nn.initializers.normal(0.02)

    # Encoder.
    self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, **kw)
    grid = self.patch_embed.grid_size
    self.cls_token = nnx.Param(normal(rngs.params(), (1, 1, embed_dim), param_dtype))
    self.pos_embed = PosEmbed(
        jnp.asarray(pe.get_2d_sincos_pos_embed(embed_dim, grid, cls_token=True)[None], param_dtype),
        **sharded(None, None, 'embed'))
    self.blocks = make_blocks(embed_dim, depth, num_heads, mlp_ratio, drop_path_rate,
                              attention_impl=attention_impl, remat=remat,
                              token_matmul=token_matmul, **kw)
    self.norm = layer_norm(embed_dim, **kw)

    # Decoder.
    self.decoder_embed = linear(embed_dim, decoder_embed_dim, ('embed', 'decoder_embed'),
                                token_matmul=token_matmul, **kw)
    self.mask_token = nnx.Param(normal(rngs.params(), (1, 1, decoder_embed_dim), param_dtype))
    self.decoder_pos_embed = PosEmbed(
        jnp.asarray(pe.get_2d_sincos_pos_embed(decoder_embed_dim, grid, cls_token=True)[None],
                    param_dtype),
        **sharded(None, None, 'decoder_embed'))
    self.decoder_blocks = make_blocks(decoder_embed_dim, decoder_depth, decoder_num_heads,
                                      mlp_ratio, 0.0, attention_impl=attention_impl, remat=remat,
                                      token_matmul=token_matmul, **kw)
    self.decoder_norm = layer_norm(decoder_embed_dim, **kw)
    self.decoder_pred = linear(decoder_embed_dim, patch_size**2 * in_chans,
                               ('decoder_embed', None), token_matmul=token_matmul, **kw)

  def forward_encoder(self, imgs: jax.Array, noise: jax.Array
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
    x = self.patch_embed(imgs)
    pos = self.pos_embed[...].astype(x.dtype)
    x = x + pos[:, 1:]  # position added before masking, as the reference
    x, mask, ids_restore = random_masking(x, noise, self.mask_ratio)
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype) + pos[:, :1],
                           (x.shape[0], 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1)
    for blk in self.blocks:
      x = blk(x)
    return self.norm(x), mask, ids_restore

  def forward_decoder(self, latent: jax.Array, ids_restore: jax.Array) -> jax.Array:
    x = self.decoder_embed(latent)
    b, n, d = x.shape
    num_masked = ids_restore.shape[1] + 1 - n
    mask_tokens = jnp.broadcast_to(self.mask_token[...].astype(x.dtype), (b, num_masked, d))
    x_ = jnp.concatenate([x[:, 1:], mask_tokens], axis=1)
    x_ = jnp.take_along_axis(x_, ids_restore[:, :, None], axis=1)  # unshuffle
    x = jnp.concatenate([x[:, :1], x_], axis=1) + self.decoder_pos_embed[...].astype(x.dtype)
    for blk in self.decoder_blocks:
      x = blk(x)
    return self.decoder_pred(self.decoder_norm(x))[:, 1:]

  def __call__(self, imgs: jax.Array, noise: jax.Array) -> MAEOutput:
    """imgs: (B, H, W, C) normalised images; noise: (B, L) uniform noise choosing the mask."""
    latent, mask, ids_restore = self.forward_encoder(imgs, noise)
    pred = self.forward_decoder(latent, ids_restore)
    loss = mae_loss(imgs, pred, mask, self.patch_size, self.norm_pix_loss)
    return MAEOutput(loss, pred, mask, ids_restore, latent)
