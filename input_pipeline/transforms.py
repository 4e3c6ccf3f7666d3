"""The host's per-record work: read and decode an image (and its region boxes), then batch.

Everything else (crops, flips, RandAugment, erasing, region fill, evaluation resize) runs in the
jitted step on the device (`mae_face_jax.augment`): the host hands over uint8 RGB images at the
dataset's stored size, a quarter of the bytes of 224² crops for 112² faces, and does no per-pixel
work beyond decoding. An image of another size is resized (on the host) to the stored size, the
only exception. Records are decoded a batch at a time (one grain element per batch, not per
record: grain's per-element overhead would otherwise cost a third of a decode).

Public API:
    read_image(record) -> uint8 RGB or None; stored_size(source) -> (height, width)
    resize_to(image, size); padded_boxes(variant, height, width, landmarks, margin)
    DecodeBatch(sampler, stop, keys, size, variant=None, margin=0.1, region_dir=None, fill=True)
        grain map: batch index -> a decoded batch
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import cv2
import grain
import numpy as np

from input_pipeline import abaw, regions

CARRIED = '_skipped'  # a batch's list of (epoch, path) of unreadable images (see skips.py)
MAX_BOXES = max(len(regions.region_boxes(v, 112, 112)) for v in regions.VARIANTS)


def read_image(record: dict) -> np.ndarray | None:
  """RGB uint8 image of a record ('image_bytes' or 'path'); None if missing, empty or corrupt."""
  data = record.get('image_bytes')
  try:
    if data is None:
      with open(record['path'], 'rb', buffering=0) as f:  # unbuffered: one read call
        data = f.readall()
    # imdecode, not imread: imread returns a truncated JPEG's partial picture, imdecode rejects it.
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)  # raises if empty
  except (OSError, cv2.error):
    return None


def stored_size(source: Any, probe: int = 16) -> tuple[int, int]:
  """(height, width) of the first readable image among the source's first `probe` records: the
  size every batch of this dataset has."""
  for i in range(min(probe, len(source))):
    image = read_image(source[i])
    if image is not None:
      return image.shape[:2]
  raise ValueError(f'none of the first {min(probe, len(source))} images of the source can be '
                   f'read (first: {source[0].get("path", "<bytes>") if len(source) else "none"})')


def resize_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """`image` at (height, width) `size` (area filter shrinking, bicubic enlarging), or as it is."""
  h, w = image.shape[:2]
  if (h, w) == tuple(size):
    return image
  shrink = h * w > size[0] * size[1]
  return cv2.resize(image, (size[1], size[0]),
                    interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def padded_boxes(variant: str, height: int, width: int, landmarks: np.ndarray | None,
                 margin: float) -> np.ndarray:
  """int32 (MAX_BOXES, 4) [x0, y0, x1, y1) region boxes; unused rows are zeros (empty boxes)."""
  out = np.zeros((MAX_BOXES, 4), np.int32)
  boxes = regions.region_boxes(variant, height, width, landmarks, margin)
  out[:len(boxes)] = boxes
  return out


def region_path(path: str, images_dir: str) -> str:
  """The same frame's file in a sibling images directory (a written region view)."""
  head, file = os.path.split(path)
  head, video = os.path.split(head)
  return os.path.join(os.path.dirname(head), images_dir, video, file)


def _scaled_boxes(variant: str, height: int, width: int, landmarks: np.ndarray | None,
                  margin: float, size: tuple[int, int]) -> np.ndarray:
  """`padded_boxes` of a (height, width) image, in the coordinates of that image resized to size."""
  boxes = padded_boxes(variant, height, width, landmarks, margin)
  if (height, width) == tuple(size):
    return boxes
  sy, sx = size[0] / height, size[1] / width
  return np.round(boxes * np.array([sx, sy, sx, sy])).astype(np.int32)


@functools.lru_cache(maxsize=64)
def _template_boxes(variant: str, height: int, width: int, margin: float,
                    size: tuple[int, int]) -> np.ndarray:
  """The template's boxes: the same for every frame of a size, so made once."""
  return _scaled_boxes(variant, height, width, None, margin, size)


class DecodeBatch(grain.transforms.Map):
  """Batch index -> the batch (see `datasets` for its layout): `sampler(index, stop)` gives its
  records and their epochs; each image is read, decoded and copied into one fresh (rows, H, W, 3)
  array at `size` (height, width); a region `variant` adds each frame's boxes (from its
  landmarks, else the aligned template); `region_dir` reads the written region view of each
  frame into 'region_image'.

  An unreadable image is skipped: its (epoch, path) goes into the batch's CARRIED list and, with
  `fill`, its row is filled with another image of the batch (training batches keep their shape);
  without it the batch is shorter (evaluation pads it, masked). 'epoch' lists the epochs of the
  rows read (for `skips.ReportSkips`).
  """

  def __init__(self, sampler: Callable[[int, int], list[tuple[dict, int]]], stop: int,
               keys: Sequence[str], size: tuple[int, int], variant: str | None = None,
               margin: float = 0.1, region_dir: str | None = None, fill: bool = True,
               threads: int = 1):
    self.sampler, self.stop, self.keys, self.size = sampler, stop, tuple(keys), tuple(size)
    self.variant, self.margin, self.region_dir, self.fill = variant, margin, region_dir, fill
    self.threads = threads or os.cpu_count() or 1
    self._pool: futures.ThreadPoolExecutor | None = None

  def __getstate__(self) -> dict:  # worker processes make their own thread pool
    return {**self.__dict__, '_pool': None}

  def _boxes(self, record: dict, height: int, width: int) -> np.ndarray:
    if not record.get('landmarks'):
      return _template_boxes(self.variant, height, width, self.margin, self.size)
    return _scaled_boxes(self.variant, height, width, abaw.read_landmarks(record['landmarks']),
                         self.margin, self.size)

  def _fill_rows(self, out: dict, records: list[tuple[dict, int]], rows: range) -> list:
    """Reads, decodes and writes `rows` of `out` (record j into row j); returns the (row, path)
    of each unreadable image. Kept lean: its Python holds the GIL the decoders share."""
    bad, images, regions_out = [], out['image'], out.get('region_image')
    boxes, size = out.get('boxes'), self.size
    for j in rows:
      record = records[j][0]
      image = read_image(record)
      if image is None:
        bad.append((j, record.get('path') or f"<bytes of video {record.get('video')} "
                                              f"frame {record.get('frame')}>"))
        continue
      if regions_out is not None:
        path = region_path(record['path'], self.region_dir)
        region = read_image({'path': path})
        if region is None:
          bad.append((j, path))
          continue
        regions_out[j] = resize_to(region, size)
      images[j] = image if image.shape[:2] == size else resize_to(image, size)
      if boxes is not None:
        boxes[j] = self._boxes(record, *image.shape[:2])
    return bad

  def map(self, index: int) -> dict:
    records = self.sampler(index, self.stop)
    n = len(records)
    out = {'image': np.empty((n, *self.size, 3), np.uint8)}
    if self.region_dir:
      out['region_image'] = np.empty((n, *self.size, 3), np.uint8)
    if self.variant:
      out['boxes'] = np.zeros((n, MAX_BOXES, 4), np.int32)
    for key in self.keys:
      if key not in out:
        out[key] = np.fromiter((r[key] for r, _ in records), np.int32, n)
    # Each thread reads, decodes and writes its own rows: OpenCV releases the GIL, so a batch
    # decodes on every core of one process (grain's worker processes would move each batch
    # through freshly mapped shared memory, which costs more than decoding it here).
    parts = [range(i, n, self.threads) for i in range(min(self.threads, n))]
    if len(parts) > 1:
      if self._pool is None:
        self._pool = futures.ThreadPoolExecutor(self.threads)
      bad = sorted(b for part in self._pool.map(lambda r: self._fill_rows(out, records, r), parts)
                   for b in part)
    else:
      bad = self._fill_rows(out, records, range(n))
    carried = [[records[j][1], path] for j, path in bad]
    good = np.ones(n, bool)
    good[[j for j, _ in bad]] = False
    epochs = np.asarray([e for (_, e), ok in zip(records, good) if ok], np.int64)
    if bad and self.fill:
      if not good.any():
        raise ValueError(f'no image of a whole batch could be read: {carried[0][1]}, ...')
      source = np.flatnonzero(good)
      for value in out.values():
        value[~good] = value[source[np.arange((~good).sum()) % len(source)]]
    elif bad:
      out = {k: v[good] for k, v in out.items()}
    out[CARRIED] = carried
    out['epoch'] = epochs
    return out
