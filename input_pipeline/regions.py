"""Region boxes and the region-synthesised view (the paper's "no-training" auxiliary view).

A region view keeps only some facial regions of an aligned face at their places and fills the rest.
Boxes come from the frame's landmarks (68-point iBUG or 5-point) when given, otherwise from the
aligned-face 5-point template (insightface/ArcFace, 112x112) scaled to the image size. Whether ABAW's
crops follow exactly that template is unverified, so the template boxes are generous and carry a margin.

Public API:
    VARIANTS = ('eyes', 'mouth', 'eyes_mouth', 'eyes_nose_mouth')
    region_boxes(variant, height, width, landmarks=None, margin=0.1) -> list[(x0, y0, x1, y1)]
    region_mask(height, width, boxes) -> bool (H, W)
    synthesize_regions(image, variant, fill=0, landmarks=None, margin=0.1) -> image
    write_region_views(root, variant, images_dir='cropped_aligned', fill=0, margin=0.1) -> dict

Command line (writes <root>/cropped_aligned_<variant>/<video>/<frame>.jpg, never touching the input):
    python -m input_pipeline.regions --root DATA --variant eyes_mouth [--fill 0] [--margin 0.1]
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from collections.abc import Sequence
from concurrent import futures

import cv2
import numpy as np

from input_pipeline import abaw

VARIANTS = ('eyes', 'mouth', 'eyes_mouth', 'eyes_nose_mouth')
_PARTS = {'eyes': ('eyes',), 'mouth': ('mouth',), 'eyes_mouth': ('eyes', 'mouth'),
          'eyes_nose_mouth': ('eyes', 'nose', 'mouth')}
# 5-point template of 112x112 aligned faces (x, y): left eye, right eye, nose tip, mouth corners.
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)
# iBUG 68-point index ranges of each part (brows belong to the eye region: they carry expression).
_IBUG = {'eyes': list(range(17, 27)) + list(range(36, 48)), 'nose': list(range(27, 36)),
         'mouth': list(range(48, 68))}

Box = tuple[int, int, int, int]
log = logging.getLogger(__name__)


def _boxes_from_5(points: np.ndarray) -> dict[str, np.ndarray]:
  """Part boxes (x0, y0, x1, y1) in units of the inter-ocular distance d around the 5 points."""
  le, re, nose, lm, rm = points
  d = float(np.hypot(*(re - le)))
  eye_y, mouth_y = (le[1] + re[1]) / 2, (lm[1] + rm[1]) / 2
  return {
      # Brows sit about 0.35 d above the eye centres; keep them, they move most with expression.
      'eyes': np.array([le[0] - 0.5 * d, eye_y - 0.55 * d, re[0] + 0.5 * d, eye_y + 0.3 * d]),
      'nose': np.array([nose[0] - 0.35 * d, eye_y + 0.1 * d, nose[0] + 0.35 * d, nose[1] + 0.25 * d]),
      'mouth': np.array([lm[0] - 0.35 * d, mouth_y - 0.35 * d, rm[0] + 0.35 * d, mouth_y + 0.4 * d]),
  }


def _boxes_from_68(points: np.ndarray) -> dict[str, np.ndarray]:
  d = float(np.hypot(*(points[36:42].mean(0) - points[42:48].mean(0))))
  pad = np.array([-0.15, -0.15, 0.15, 0.15]) * d
  return {part: np.concatenate([points[idx].min(0), points[idx].max(0)]) + pad
          for part, idx in _IBUG.items()}


def region_boxes(variant: str, height: int, width: int, landmarks: np.ndarray | None = None,
                 margin: float = 0.1) -> list[Box]:
  """Integer pixel boxes of the variant's parts, each grown by ``margin`` of its size per side."""
  if variant not in _PARTS:
    raise ValueError(f'unknown region variant {variant!r}, expected one of {VARIANTS}')
  if landmarks is None:
    return list(_template_boxes(variant, height, width, margin))
  points = np.asarray(landmarks, np.float32)
  parts = _boxes_from_68(points) if len(points) == 68 else _boxes_from_5(points)
  return _grown(parts, variant, height, width, margin)


@functools.lru_cache(maxsize=64)
def _template_boxes(variant: str, height: int, width: int, margin: float) -> tuple[Box, ...]:
  # The same for every frame of a size: computed once (it cost a third of a JPEG decode a frame).
  points = TEMPLATE_112 * np.array([width / 112.0, height / 112.0], np.float32)
  return tuple(_grown(_boxes_from_5(points), variant, height, width, margin))


def _grown(parts: dict[str, np.ndarray], variant: str, height: int, width: int, margin: float
           ) -> list[Box]:
  boxes = []
  for part in _PARTS[variant]:
    x0, y0, x1, y1 = parts[part]
    gx, gy = margin * (x1 - x0), margin * (y1 - y0)
    boxes.append((max(0, int(np.floor(x0 - gx))), max(0, int(np.floor(y0 - gy))),
                  min(width, int(np.ceil(x1 + gx))), min(height, int(np.ceil(y1 + gy)))))
  return boxes


def region_mask(height: int, width: int, boxes: Sequence[Box]) -> np.ndarray:
  """True inside any of the boxes."""
  mask = np.zeros((height, width), bool)
  for x0, y0, x1, y1 in boxes:
    mask[y0:y1, x0:x1] = True
  return mask


def synthesize_regions(image: np.ndarray, variant: str, fill: int | Sequence[int] = 0,
                       landmarks: np.ndarray | None = None, margin: float = 0.1) -> np.ndarray:
  """A new image equal to ``image`` inside the variant's boxes and to ``fill`` elsewhere."""
  h, w = image.shape[:2]
  out = np.empty_like(image)
  out[...] = np.asarray(fill, image.dtype)
  for x0, y0, x1, y1 in region_boxes(variant, h, w, landmarks, margin):
    out[y0:y1, x0:x1] = image[y0:y1, x0:x1]
  return out


def _write_video(src_dir: str, dst_dir: str, variant: str, fill: Sequence[int], margin: float
                 ) -> tuple[int, int, list[str]]:
  """Region views of one video's frames; returns (written, already there, unreadable paths)."""
  written, existing, bad = 0, 0, []
  os.makedirs(dst_dir, exist_ok=True)
  for name in sorted(os.listdir(src_dir)):
    stem, ext = os.path.splitext(name)
    if ext.lower() not in abaw.IMAGE_EXTS:
      continue
    dst = os.path.join(dst_dir, stem + '.jpg')
    if os.path.exists(dst):  # resumable: a finished frame is not redone
      existing += 1
      continue
    src = os.path.join(src_dir, name)
    data = np.fromfile(src, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
      bad.append(src)
      continue
    landmarks = None
    for lm_ext in abaw.LANDMARK_EXTS:
      if os.path.exists(os.path.join(src_dir, stem + lm_ext)):
        landmarks = abaw.read_landmarks(os.path.join(src_dir, stem + lm_ext))
        break
    # cv2 images are BGR; the fill is given as RGB like everything else in the pipeline.
    view = synthesize_regions(image, variant, tuple(fill)[::-1], landmarks, margin)
    tmp = dst + '.tmp.jpg'
    cv2.imwrite(tmp, view, [cv2.IMWRITE_JPEG_QUALITY, 95])
    os.replace(tmp, dst)  # no half-written frame survives an interrupted run
    written += 1
  return written, existing, bad


def write_region_views(root: str, variant: str, images_dir: str = abaw.IMAGES_DIR,
                       fill: int | Sequence[int] = 0, margin: float = 0.1,
                       num_workers: int | None = None) -> dict:
  """Writes ``<root>/<images_dir>_<variant>/<video>/<frame>.jpg``; the input tree is only read.

  Returns {'output': dir, 'written': n, 'existing': n, 'skipped': n} (skipped = unreadable images).
  """
  src_root = os.path.join(root, images_dir)
  if not os.path.isdir(src_root):
    raise FileNotFoundError(f'{src_root}: images directory not found, expected <video>/<frame>.jpg')
  dst_root = os.path.join(root, f'{images_dir}_{variant}')
  if variant not in VARIANTS:
    raise ValueError(f'unknown region variant {variant!r}, expected one of {VARIANTS}')
  fill = (fill,) * 3 if np.isscalar(fill) else tuple(fill)
  videos = sorted(d for d in os.listdir(src_root) if os.path.isdir(os.path.join(src_root, d)))
  if not videos:
    raise FileNotFoundError(f'{src_root}: no video directories with images found')
  totals = {'output': dst_root, 'written': 0, 'existing': 0, 'skipped': 0}
  # Threads suffice: cv2 decode/encode release the GIL.
  with futures.ThreadPoolExecutor(num_workers or os.cpu_count()) as pool:
    jobs = [pool.submit(_write_video, os.path.join(src_root, v), os.path.join(dst_root, v),
                        variant, fill, margin) for v in videos]
    for job in jobs:
      written, existing, bad = job.result()
      totals['written'] += written
      totals['existing'] += existing
      totals['skipped'] += len(bad)
      for path in bad:
        log.warning('unreadable image skipped: %s', path)
  return totals


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description='Write region-synthesised views of aligned faces.')
  parser.add_argument('--root', required=True, help='dataset root holding cropped_aligned/')
  parser.add_argument('--variant', default='eyes_mouth', choices=VARIANTS)
  parser.add_argument('--images_dir', default=abaw.IMAGES_DIR)
  parser.add_argument('--fill', type=int, nargs='+', default=[0], help='gray value or R G B')
  parser.add_argument('--margin', type=float, default=0.1)
  parser.add_argument('--workers', type=int, default=None)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO)
  fill = args.fill[0] if len(args.fill) == 1 else args.fill
  totals = write_region_views(args.root, args.variant, args.images_dir, fill, args.margin,
                              args.workers)
  print(f"{totals['output']}: {totals['written']} written, {totals['existing']} already present, "
        f"{totals['skipped']} unreadable skipped")


if __name__ == '__main__':
  main()
