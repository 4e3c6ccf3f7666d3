"""Raw inputs for inference: a video file, an image, or a folder of them → RGB frames in batches.

A video is read with OpenCV (FFmpeg); an image is a one-frame video. Frames are numbered from 1,
as the ABAW layout numbers them. Problems name the file: an unreadable or empty video or image
raises `MediaError`; a video that stops before its announced length is reported (a corrupt frame
mid-stream) and what was read so far is kept.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator

import cv2
import numpy as np

from input_pipeline.abaw import IMAGE_EXTS

VIDEO_EXTS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv', '.flv')
log = logging.getLogger(__name__)


class MediaError(ValueError):
  """An input that cannot be read; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Source:
  path: str
  name: str       # the file name without extension: the video's name in the outputs
  is_video: bool


def sources(path: str) -> list[Source]:
  """The inputs under ``path``: itself if a file, else the folder's videos and images (sorted)."""
  if not os.path.exists(path):
    raise MediaError(f'{path}: no such file or directory')
  if os.path.isfile(path):
    paths = [path]
  else:
    paths = [os.path.join(path, f) for f in sorted(os.listdir(path))
             if os.path.splitext(f)[1].lower() in VIDEO_EXTS + IMAGE_EXTS]
    if not paths:
      raise MediaError(f'{path}: no videos ({", ".join(VIDEO_EXTS)}) or images '
                       f'({", ".join(IMAGE_EXTS)}) in this folder')
  return [Source(p, os.path.splitext(os.path.basename(p))[0],
                 os.path.splitext(p)[1].lower() not in IMAGE_EXTS) for p in paths]


def read_image(path: str) -> np.ndarray:
  """RGB uint8; MediaError naming the file when it is empty or not an image."""
  data = np.fromfile(path, np.uint8)
  image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
  if image is None:
    raise MediaError(f'{path}: not a readable image')
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def fps(source: Source) -> float:
  """Frames per second of a video (25 when the container does not say); 0 for an image."""
  if not source.is_video:
    return 0.0
  cap = cv2.VideoCapture(source.path)
  rate = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
  cap.release()
  return rate if rate and rate > 0 else 25.0


def frame_count(source: Source) -> int:
  """The number of frames the container announces (1 for an image, 0 when unknown)."""
  if not source.is_video:
    return 1
  cap = cv2.VideoCapture(source.path)
  n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
  cap.release()
  return max(n, 0)


def batches(source: Source, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(frame numbers from 1 (n,), RGB frames (n, H, W, 3)) with n ≤ batch_size."""
  if not source.is_video:
    yield np.array([1]), read_image(source.path)[None]
    return
  cap = cv2.VideoCapture(source.path)
  if not cap.isOpened():
    raise MediaError(f'{source.path}: not a readable video')
  announced = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
  numbers, frames, read = [], [], 0
  try:
    while True:
      ok, frame = cap.read()
      if not ok:
        break
      read += 1
      numbers.append(read)
      frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
      if len(frames) == batch_size:
        yield np.array(numbers), np.stack(frames)
        numbers, frames = [], []
  finally:
    cap.release()
  if frames:
    yield np.array(numbers), np.stack(frames)
  if read == 0:
    raise MediaError(f'{source.path}: no frame could be decoded (empty or corrupt video)')
  if announced > 0 and read < announced:
    log.warning('%s: decoding stopped at frame %d of %d (corrupt frame?); the frames read are kept',
                source.path, read, announced)
