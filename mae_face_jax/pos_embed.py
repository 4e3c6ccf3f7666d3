"""Fixed 2-D sin-cos position embeddings (as MAE) and bicubic resampling of position tables."""

from __future__ import annotations

import numpy as np


def get_1d_sincos_pos_embed(embed_dim: int, positions: np.ndarray) -> np.ndarray:
  """[sin, cos] features of `positions` with frequencies 1 / 10000^(i / (D/2)); float64."""
  if embed_dim % 2:
    raise ValueError(f'embed_dim must be even, got {embed_dim}')
  omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
  omega = 1.0 / 10000**omega
  out = np.einsum('m,d->md', positions.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed(
    embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False
) -> np.ndarray:
  """Returns a (cls + h*w, D) float32 table in MAE's layout.

  Half of the channels encode the column index and half the row index: MAE builds the grid as
  meshgrid(w, h), and its code (not its comment) decides the order. Computed in float64, then cast.
  """
  if embed_dim % 4:
    raise ValueError(f'embed_dim must be divisible by 4, got {embed_dim}')
  gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
  cols, rows = np.meshgrid(np.arange(gw, dtype=np.float64), np.arange(gh, dtype=np.float64))
  emb = np.concatenate(
      [get_1d_sincos_pos_embed(embed_dim // 2, cols), get_1d_sincos_pos_embed(embed_dim // 2, rows)],
      axis=1,
  )
  if cls_token:
    emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
  return emb.astype(np.float32)


def resize_pos_embed(
    pos_embed: np.ndarray, new_grid: tuple[int, int], num_prefix_tokens: int = 1
) -> np.ndarray:
  """Bicubically resamples a (1, prefix + h*w, D) table to `new_grid`, keeping the prefix rows.

  Matches MAE's `interpolate_pos_embed` (torch bicubic, align_corners=False, no antialias):
  OpenCV's INTER_CUBIC uses the same kernel (a = -0.75), half-pixel centres and replicated borders.
  """
  import cv2  # Local: only checkpoint loading at another resolution needs it.

  prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[0, num_prefix_tokens:]
  old = int(round(np.sqrt(grid.shape[0])))
  if old * old != grid.shape[0]:
    raise ValueError(f'position table of {grid.shape[0]} patch rows is not a square grid')
  if (old, old) == tuple(new_grid):
    return pos_embed
  grid = grid.reshape(old, old, -1).astype(np.float32)
  # cv2.resize handles at most 512 channels at once; resample in chunks.
  chunks = [
      cv2.resize(grid[..., i:i + 256], (new_grid[1], new_grid[0]), interpolation=cv2.INTER_CUBIC)
      .reshape(new_grid[0], new_grid[1], -1)
      for i in range(0, grid.shape[-1], 256)
  ]
  resized = np.concatenate(chunks, axis=-1).reshape(1, new_grid[0] * new_grid[1], -1)
  return np.concatenate([prefix, resized.astype(pos_embed.dtype)], axis=1)
