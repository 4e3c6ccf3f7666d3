"""Videos with a real face at known places: scikit-image's public-domain astronaut photo, its head
pasted into generated frames under a known similarity (scale, rotation, translation) over a random
smooth background. The truth for the landmarks is the 5 points a reference MTCNN (facenet-pytorch)
finds on the untouched photo, mapped by the same transform."""

from __future__ import annotations

import cv2
import numpy as np
from skimage import data

# The reference MTCNN's landmarks on data.astronaut() (x, y): eyes, nose, mouth corners.
ASTRONAUT_POINTS = np.array([[205.01, 101.73], [246.76, 103.71], [224.67, 128.96],
                             [201.72, 139.25], [245.27, 141.86]])
_HEAD = (140, 30, 315, 215)  # x0, y0, x1, y1 of the pasted region of the photo


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.float32)
  return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(
      np.uint8)


def similarity(scale: float, degrees: float, center: tuple[float, float]) -> np.ndarray:
  """2x3 matrix: the photo's eye-mouth centre goes to ``center``, scaled and rotated about it."""
  anchor = ASTRONAUT_POINTS.mean(0)
  m = cv2.getRotationMatrix2D((float(anchor[0]), float(anchor[1])), degrees, scale)
  m[:, 2] += np.asarray(center) - anchor
  return m


def paste(frame: np.ndarray, m: np.ndarray) -> np.ndarray:
  """The photo's head region warped by m over the frame; the face's 5 true points in the frame."""
  photo = data.astronaut()
  mask = np.zeros(photo.shape[:2], np.uint8)
  x0, y0, x1, y1 = _HEAD
  mask[y0:y1, x0:x1] = 255
  h, w = frame.shape[:2]
  warped = cv2.warpAffine(photo, m, (w, h), flags=cv2.INTER_LINEAR)
  alpha = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_LINEAR)[..., None] / 255.0
  frame[:] = (alpha * warped + (1 - alpha) * frame).astype(np.uint8)
  return ASTRONAUT_POINTS @ m[:, :2].T + m[:, 2]


def write_video(path: str, frames: list[np.ndarray], fps: float = 25.0) -> None:
  h, w = frames[0].shape[:2]
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'MJPG'), fps, (w, h))
  assert writer.isOpened(), path
  for f in frames:
    writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
  writer.release()


def one_face_frames(n_face: int, n_empty: int, seed: int = 0, size=(240, 320)
                    ) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
  """n_face frames each holding the face at a random scale, rotation (±30°) and place, then
  n_empty frames of background only. Returns frames and the true points (None without a face)."""
  rng = np.random.default_rng(seed)
  h, w = size
  frames, truth = [], []
  for k in range(n_face + n_empty):
    frame = background(rng, h, w)
    points = None
    if k < n_face:
      scale = rng.uniform(0.6, 1.1)
      m = similarity(scale, rng.uniform(-30, 30), (rng.uniform(0.35, 0.65) * w,
                                                   rng.uniform(0.35, 0.65) * h))
      points = paste(frame, m)
    frames.append(frame)
    truth.append(points)
  return frames, truth


def two_face_frames(n: int, seed: int = 1, size=(240, 400)) -> list[np.ndarray]:
  """Two faces drifting slowly, one on each side."""
  rng = np.random.default_rng(seed)
  h, w = size
  base = background(rng, h, w)
  frames = []
  for k in range(n):
    frame = base.copy()
    paste(frame, similarity(0.7, 10 * np.sin(k / 5), (0.27 * w + k, 0.5 * h)))
    paste(frame, similarity(0.8, -8, (0.73 * w - k, 0.5 * h + 0.5 * k)))
    frames.append(frame)
  return frames
