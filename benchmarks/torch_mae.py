"""A plain PyTorch MAE built from timm's `Block` and `PatchEmbed`: the reference for parity tests
and for `benchmarks/mae_step.py`.

Same structure and parameter names as facebookresearch/mae `MaskedAutoencoderViT` (`patch_embed`,
`cls_token`, `pos_embed`, `blocks`, `norm`, `decoder_embed`, `mask_token`, `decoder_pos_embed`,
`decoder_blocks`, `decoder_norm`, `decoder_pred`), so `torch_model.state_dict()` loads into our
`MaskedAutoencoder` with `mae_face_jax.torch_interop.import_state_dict`. Unlike the original,
`forward(imgs, noise)` takes the masking noise explicitly, so both sides can use the same mask.
Images are NCHW here (PyTorch's layout); the JAX model takes NHWC.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from timm.models.vision_transformer import Block, PatchEmbed
from torch import nn

from mae_face_jax import pos_embed as pe

class TorchMAE(nn.Module):
  """MAE with a ViT encoder and a light decoder, sin-cos position tables frozen (not parameters)."""

  def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
               embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
               decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
               mlp_ratio: float = 4.0, mask_ratio: float = 0.75, norm_pix_loss: bool = True):
    super().__init__()
    norm = functools.partial(nn.LayerNorm, eps=1e-6)
    self.patch_size, self.in_chans = patch_size, in_chans
    self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss

    self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
    num_patches = self.patch_embed.num_patches
    grid = int(round(num_patches**0.5))
    self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.pos_embed = nn.Parameter(
        torch.from_numpy(pe.get_2d_sincos_pos_embed(embed_dim, grid, cls_token=True))[None],
        requires_grad=False)
    self.blocks = nn.ModuleList(
        [Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
         for _ in range(depth)])
    self.norm = norm(embed_dim)

    self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
    self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
    self.decoder_pos_embed = nn.Parameter(
        torch.from_numpy(pe.get_2d_sincos_pos_embed(decoder_embed_dim, grid, cls_token=True))[None],
        requires_grad=False)
    self.decoder_blocks = nn.ModuleList(
        [Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
         for _ in range(decoder_depth)])
    self.decoder_norm = norm(decoder_embed_dim)
    self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
    self._init_weights()

  def _init_weights(self) -> None:
    """MAE's init: xavier-uniform linears (the patch conv as a linear), N(0, 0.02) tokens."""
    w = self.patch_embed.proj.weight.data
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.normal_(self.cls_token, std=0.02)
    nn.init.normal_(self.mask_token, std=0.02)
    for m in self.modules():
      if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)
      elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)

  def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → (N, h*w, p*p*C), each patch flattened row, column, then channel."""
    n, c, hh, ww = imgs.shape
    p = self.patch_size
    x = imgs.reshape(n, c, hh // p, p, ww // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(n, (hh // p) * (ww // p), p * p * c)

  def random_masking(self, x: torch.Tensor, noise: torch.Tensor):
    """Keeps the `int(L * (1 - mask_ratio))` tokens of smallest noise (MAE's per-sample shuffle)."""
    n, length, d = x.shape
    len_keep = int(length * (1 - self.mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, 1, ids_keep[:, :, None].expand(-1, -1, d))
    mask = torch.ones(n, length, device=x.device, dtype=x.dtype)
    mask[:, :len_keep] = 0
    return x_masked, torch.gather(mask, 1, ids_restore), ids_restore

  def forward_encoder(self, imgs: torch.Tensor, noise: torch.Tensor):
    x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
    x, mask, ids_restore = self.random_masking(x, noise)
    cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    for blk in self.blocks:
      x = blk(x)
    return self.norm(x), mask, ids_restore

  def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    x = self.decoder_embed(x)
    n, keep1, d = x.shape
    mask_tokens = self.mask_token.expand(n, ids_restore.shape[1] + 1 - keep1, -1)
    x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)
    x_ = torch.gather(x_, 1, ids_restore[:, :, None].expand(-1, -1, d))  # unshuffle
    x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed
    for blk in self.decoder_blocks:
      x = blk(x)
    return self.decoder_pred(self.decoder_norm(x))[:, 1:]

  def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor):
    target = self.patchify(imgs)
    if self.norm_pix_loss:
      mean = target.mean(dim=-1, keepdim=True)
      var = target.var(dim=-1, keepdim=True)  # unbiased, as the reference
      target = (target - mean) / (var + 1.0e-6)**0.5
    loss = ((pred - target)**2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()

  def forward(self, imgs: torch.Tensor, noise: torch.Tensor):
    """imgs (N, C, H, W), noise (N, L) uniform → (loss, pred, mask, ids_restore, latent)."""
    latent, mask, ids_restore = self.forward_encoder(imgs, noise)
    pred = self.forward_decoder(latent, ids_restore)
    return self.forward_loss(imgs, pred, mask), pred, mask, ids_restore, latent


def build_torch_mae(size: str = 'base', img_size: int = 224, **kwargs) -> TorchMAE:
  """The reference MAE of a named size, with the same dimensions as our configs."""
  from configs.common import mae_config
  cfg = mae_config(size, img_size)
  fields = ('patch_size', 'embed_dim', 'depth', 'num_heads', 'decoder_embed_dim', 'decoder_depth',
            'decoder_num_heads')
  return TorchMAE(img_size=img_size, **{k: cfg[k] for k in fields}, **kwargs)


def state_dict_numpy(model: nn.Module) -> dict[str, np.ndarray]:
  """The state dict as numpy arrays, ready for `torch_interop.import_state_dict`."""
  return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
