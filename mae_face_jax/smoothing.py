"""Temporal smoothing of per-frame class probabilities within each video."""

from __future__ import annotations

import numpy as np


def sliding_window_smooth(probs: np.ndarray, videos: np.ndarray, frames: np.ndarray,
                          window: int) -> np.ndarray:
  """Mean of the probabilities of the same video's frames within ±window//2 frame indices.

  Centred window; at video edges and across gaps in the frame numbering only the frames that exist
  are averaged; videos never mix. Rows keep their input order.
  """
  if window < 1:
    raise ValueError(f'window must be >= 1, got {window}')
  probs = np.asarray(probs, np.float64)
  out = np.empty_like(probs)
  half = window // 2
  videos, frames = np.asarray(videos), np.asarray(frames, np.int64)
  for video in np.unique(videos):
    rows = np.flatnonzero(videos == video)
    idx = frames[rows] - frames[rows].min()
    if len(np.unique(idx)) != len(idx):
      raise ValueError(f'video {video!r} lists a frame index twice')
    # Dense per-frame arrays with a leading zero row, so window sums are cumulative differences.
    dense = np.zeros((idx.max() + 2, probs.shape[1]))
    present = np.zeros(idx.max() + 2)
    dense[idx + 1], present[idx + 1] = probs[rows], 1
    csum, ccount = np.cumsum(dense, 0), np.cumsum(present)
    lo = np.clip(idx - half, 0, idx.max() + 1)
    hi = np.clip(idx + half + 1, 0, idx.max() + 1)
    out[rows] = (csum[hi] - csum[lo]) / (ccount[hi] - ccount[lo])[:, None]
  return out.astype(np.float32)
