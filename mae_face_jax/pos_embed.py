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


def _bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
  """(n_out, n_in) weights of torch's bicubic resampling (align_corners=False, clamped borders)."""
  x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  x0 = np.floor(x)
  t = x - x0
  taps = np.stack([t + 1, t, 1 - t, 2 - t], axis=1)  # distances to the 4 neighbours
  d = np.abs(taps)
  w = np.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1,
               np.where(d < 2, ((d - 5) * d + 8) * d * a - 4 * a, 0.0))
  idx = np.clip(x0[:, None] + np.arange(-1, 3)[None], 0, n_in - 1).astype(int)
  mat = np.zeros((n_out, n_in))
  np.add.at(mat, (np.repeat(np.arange(n_out), 4), idx.ravel()), w.ravel())
  return mat


def resize_pos_embed(
    pos_embed: np.ndarray, new_grid: tuple[int, int], num_prefix_tokens: int = 1
) -> np.ndarray:
  """Bicubically resamples a (1, prefix + h*w, D) table to `new_grid`, keeping the prefix rows.

  Same kernel (a = -0.75), half-pixel centres and clamped borders as MAE's
  `interpolate_pos_embed` (torch bicubic, align_corners=False), as two separable matrix products.
  """
  prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[0, num_prefix_tokens:]
  old = int(round(np.sqrt(grid.shape[0])))
  if old * old != grid.shape[0]:
    raise ValueError(f'position table of {grid.shape[0]} patch rows is not a square grid')
  if (old, old) == tuple(new_grid):
    return pos_embed
  grid = grid.reshape(old, old, -1).astype(np.float64)
  rows, cols = _bicubic_matrix(old, new_grid[0]), _bicubic_matrix(old, new_grid[1])
  resized = np.einsum('ih,jw,hwd->ijd', rows, cols, grid)
  resized = resized.reshape(1, new_grid[0] * new_grid[1], -1).astype(pos_embed.dtype)
  return np.concatenate([prefix, resized], axis=1)
