"""Faces in raw frames: MTCNN detection → 5 landmarks → similarity alignment → tracks.

Detection follows the reference MTCNN cascade: P-Net over an image pyramid (scales
12 / min_face · factor^k), per-scale NMS (IoU 0.5), NMS across scales (0.7), box regression,
squaring; R-Net on 24x24 crops (threshold, NMS 0.7, regression, squaring); O-Net on 48x48 crops
(threshold, landmarks relative to the box, regression, NMS 0.7 with the 'min' overlap). Image
resampling is area averaging (the pyramid and the crops alike); crops reaching outside the image
are zero-padded. Where reference ports differ in an arbitrary detail (the pyramid's rounding, the
resampling), this follows facenet-pytorch's MTCNN, the reference the tests compare against.

The pyramid and P-Net run jitted over a batch of frames; the pyramid is a pair of averaging matrices
per scale, fixed by the frame size, so a video compiles once. R- and O-Net run on all crops of the
batch at once, padded to a power of two. Box bookkeeping (thresholds, NMS) and the crops' area
resampling (from each frame's integral image) are numpy on the host.
"""

from __future__ import annotations

import dataclasses
import functools

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from input_pipeline.regions import TEMPLATE_112
from mae_face_jax.models import mtcnn


@dataclasses.dataclass
class Face:
  box: np.ndarray        # (4,) x1, y1, x2, y2 in source pixels
  score: float
  landmarks: np.ndarray  # (5, 2) x, y: left eye, right eye, nose, left and right mouth corner
  track: int = -1

  @property
  def area(self) -> float:
    return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
  """Scales so that a face of min_face_size becomes P-Net's 12 px window, down to a 12 px image."""
  scale, side, scales = 12.0 / min_face_size, min(height, width) * 12.0 / min_face_size, []
  while side >= 12:
    scales.append(scale)
    scale, side = scale * factor, side * factor
  return scales


def area_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
  """Area (adaptive average) resampling along one axis as K taps: output i is
  Σ_k weight[k, i] · input[index[k, i]], cell i averaging input [i n_in / n_out,
  ceil((i + 1) n_in / n_out)). Both (K, n_out); unused taps have weight 0."""
  i = np.arange(n_out)
  start = (i * n_in) // n_out
  end = -((-(i + 1) * n_in) // n_out)
  k = np.arange((end - start).max())[:, None]
  index = np.minimum(start + k, n_in - 1)
  weight = np.where(start + k < end, 1.0 / (end - start), 0.0)
  return index.astype(np.int32), weight.astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = 'union'
        ) -> np.ndarray:
  """Greedy non-maximum suppression (inclusive pixel areas, as the reference); kept indices."""
  x1, y1, x2, y2 = boxes.T
  area = (x2 - x1 + 1) * (y2 - y1 + 1)
  order, keep = np.argsort(-scores, kind='stable'), []
  while order.size:
    i, rest = order[0], order[1:]
    keep.append(i)
    w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
    h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
    inter = w * h
    denom = np.minimum(area[i], area[rest]) if method == 'min' else area[i] + area[rest] - inter
    order = rest[inter / denom <= threshold]
  return np.asarray(keep, np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
  w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  side = np.maximum(w, h)
  out = boxes.copy()
  out[:, 0] += (w - side) / 2
  out[:, 1] += (h - side) / 2
  out[:, 2:4] = out[:, 0:2] + side[:, None]
  return out


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  w, h = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
  return boxes[:, :4] + offsets * np.stack([w, h, w, h], 1)


def integral_image(frame: np.ndarray) -> np.ndarray:
  """(H + 1, W + 1, C) exact integer running sums over rows and columns (zero first row, column)."""
  out = np.zeros((frame.shape[0] + 1, frame.shape[1] + 1, frame.shape[2]), np.int64)
  np.cumsum(np.cumsum(frame, 0, dtype=np.int64), 1, out=out[1:, 1:])
  return out


def crops(integral: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
  """Each box's pixels (zero outside the image) area-resampled to size x size: (n, size, size, C).

  Area resampling as adaptive average pooling (cell i of n_out averages input [i n / n_out,
  ceil((i + 1) n / n_out))), computed from the integral image for all boxes at once."""
  h, w = integral.shape[0] - 1, integral.shape[1] - 1
  t = np.trunc(boxes[:, :4]).astype(np.int64)
  x0, y0, x1, y1 = t[:, 0] - 1, t[:, 1] - 1, t[:, 2], t[:, 3]  # the reference's 1-based boxes
  i = np.arange(size)

  def edges(start, n, limit):
    n = np.maximum(n, 1)[:, None]
    lo, hi = start[:, None] + (i * n) // size, start[:, None] - ((-(i + 1) * n) // size)
    return np.clip(lo, 0, limit), np.clip(hi, 0, limit), hi - lo

  r0, r1, rn = edges(y0, y1 - y0, h)
  c0, c1, cn = edges(x0, x1 - x0, w)
  r0, r1, c0, c1 = r0[:, :, None], r1[:, :, None], c0[:, None, :], c1[:, None, :]
  sums = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
  out = sums / (rn[:, :, None] * cn[:, None, :])[..., None]
  out[(x1 <= x0) | (y1 <= y0)] = 0
  return out.astype(np.float32)


def _bucket(n: int) -> int:
  return max(8, 1 << (n - 1).bit_length())


class Detector:
  """MTCNN on batches of same-sized RGB uint8 frames; `detect(frames)` → faces per frame."""

  def __init__(self, min_face_size: float = 20, factor: float = 0.709,
               thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
               nets: tuple[nnx.Module, nnx.Module, nnx.Module] | None = None):
    self.min_face_size, self.factor, self.thresholds = min_face_size, factor, thresholds
    self._pnet, self._rnet, self._onet = (nnx.split(n) for n in nets or mtcnn.pretrained())

  @functools.lru_cache(maxsize=8)
  def _pyramid(self, height: int, width: int):
    scales = pyramid_scales(height, width, self.min_face_size, self.factor)
    # The reference's resized sizes (int(n * scale + 1)) and its box mapping by the nominal scale.
    taps = tuple((area_taps(height, int(height * s + 1)), area_taps(width, int(width * s + 1)))
                 for s in scales)
    return scales, jax.tree.map(jnp.asarray, taps)

  def proposals(self, frames: np.ndarray) -> list[np.ndarray]:
    """Stage 1: per frame, squared P-Net boxes (n, 5: x1, y1, x2, y2, score)."""
    scales, taps = self._pyramid(*frames.shape[1:3])
    if not scales:
      return [np.zeros((0, 5), np.float32) for _ in frames]
    outputs = jax.device_get(_pyramid_pnet(*self._pnet, jnp.asarray(frames), taps))
    result = []
    for b in range(len(frames)):
      per_scale = []
      for scale, (offsets, prob) in zip(scales, outputs):
        ys, xs = np.nonzero(prob[b] >= self.thresholds[0])
        if not len(ys):
          continue
        cell = np.stack([xs, ys], 1).astype(np.float32)
        boxes = np.concatenate([np.floor((2 * cell + 1) / scale), np.floor((2 * cell + 12) / scale),
                                prob[b, ys, xs, None], offsets[b, ys, xs]], 1)
        per_scale.append(boxes[nms(boxes[:, :4], boxes[:, 4], 0.5)])
      if not per_scale:
        result.append(np.zeros((0, 5), np.float32))
        continue
      boxes = np.concatenate(per_scale)
      boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
      w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
      regressed = boxes[:, :4] + boxes[:, 5:9] * np.stack([w, h, w, h], 1)
      result.append(_square(np.concatenate([regressed, boxes[:, 4:5]], 1)))
    return result

  def _run_crops(self, net, integrals, boxes_per_frame, size):
    parts = [crops(s, boxes, size) for s, boxes in zip(integrals, boxes_per_frame) if len(boxes)]
    if not parts:
      return None
    n = sum(len(p) for p in parts)
    batch = np.zeros((_bucket(n), size, size, 3), np.float32)
    batch[:n] = (np.concatenate(parts) - 127.5) / 128.0
    return [np.asarray(o)[:n] for o in jax.device_get(_apply(*net, jnp.asarray(batch)))]

  @staticmethod
  def _split(values, counts):
    return np.split(values, np.cumsum(counts)[:-1])

  def detect(self, frames: np.ndarray) -> list[list[Face]]:
    """frames: (B, H, W, 3) uint8 RGB. Faces per frame, highest score first."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
      raise ValueError(f'expected (B, H, W, 3) RGB frames, got shape {frames.shape}')
    stage = self.proposals(frames)
    integrals = [integral_image(f) for f in frames]
    # Stage 2: R-Net rescoring; NMS before the regression, as the reference.
    out = self._run_crops(self._rnet, integrals, stage, 24)
    if out is None:
      return [[] for _ in frames]
    refined = []
    counts = [len(s) for s in stage]
    for boxes, offsets, score in zip(stage, *(self._split(o, counts) for o in out)):
      ok = score > self.thresholds[1]
      boxes, offsets, score = boxes[ok], offsets[ok], score[ok]
      keep = nms(boxes[:, :4], score, 0.7)
      boxes = _regress(boxes[keep], offsets[keep])
      refined.append(_square(np.concatenate([boxes, score[keep, None]], 1)))
    # Stage 3: O-Net scores, landmarks and final boxes.
    out = self._run_crops(self._onet, integrals, refined, 48)
    if out is None:
      return [[] for _ in frames]
    faces = []
    counts = [len(r) for r in refined]
    for boxes, offsets, points, score in zip(refined, *(self._split(o, counts) for o in out)):
      ok = score > self.thresholds[2]
      boxes, offsets, points, score = boxes[ok], offsets[ok], points[ok], score[ok]
      w, h = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
      px = w[:, None] * points[:, :5] + boxes[:, 0:1] - 1
      py = h[:, None] * points[:, 5:] + boxes[:, 1:2] - 1
      final = _regress(boxes, offsets)
      keep = nms(final, score, 0.7, 'min')
      faces.append([Face(final[k].astype(np.float32), float(score[k]),
                         np.stack([px[k], py[k]], 1).astype(np.float32)) for k in keep])
    return faces


def _resample(x, index, weight, axis: int):
  """Area resampling of x along axis with `area_taps` (a few taps: cheaper than a dense matrix)."""
  shape = [1] * x.ndim
  shape[axis] = -1
  return sum(jnp.take(x, index[k], axis=axis) * weight[k].reshape(shape)
             for k in range(index.shape[0]))


@functools.partial(jax.jit, static_argnums=0)
def _pyramid_pnet(graphdef, state, frames, taps):
  """P-Net on every level of the pyramid of a batch of frames (weights as arguments, not
  constants: compiling is faster, and every Detector shares the compiled function)."""
  net = nnx.merge(graphdef, state)
  x = frames.astype(jnp.float32)
  outs = []
  for (rows, row_w), (cols, col_w) in taps:
    y = _resample(_resample(x, rows, row_w, 1), cols, col_w, 2)
    outs.append(net((y - 127.5) / 128.0))
  return outs


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x):
  return nnx.merge(graphdef, state)(x)


# --- alignment ---------------------------------------------------------------------------------

def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """Least-squares similarity (rotation, uniform scale, translation) taking src points to dst
  (Umeyama 1991); the 2x3 matrix."""
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  mu_s, mu_d = src.mean(0), dst.mean(0)
  s, d = src - mu_s, dst - mu_d
  cov = d.T @ s / len(src)
  u, sig, vt = np.linalg.svd(cov)
  sign = np.eye(2)
  if np.linalg.det(u) * np.linalg.det(vt) < 0:
    sign[1, 1] = -1  # a reflection is not a similarity
  rot = u @ sign @ vt
  scale = np.trace(np.diag(sig) @ sign) / s.var(0).sum()
  m = np.zeros((2, 3))
  m[:, :2] = scale * rot
  m[:, 2] = mu_d - scale * rot @ mu_s
  return m


def template(size: int) -> np.ndarray:
  """The 112x112 5-point template scaled to a size x size output."""
  return TEMPLATE_112.astype(np.float64) * (size / 112.0)


def align(frame: np.ndarray, landmarks: np.ndarray, size: int = 112
          ) -> tuple[np.ndarray, np.ndarray]:
  """The face warped onto the template: (size x size image, landmarks in the aligned image)."""
  m = umeyama(landmarks, template(size))
  aligned = cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT)
  points = np.asarray(landmarks, np.float64) @ m[:, :2].T + m[:, 2]
  return aligned, points.astype(np.float32)


# --- tracks ------------------------------------------------------------------------------------

def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU matrix of boxes a (n, 4) and b (m, 4)."""
  a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
  lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), -1)
  area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), -1)
  return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


class Tracker:
  """Links faces frame to frame by IoU with the tracks' last boxes (greedy, best overlap first);
  a face overlapping none starts a new track. A track unseen for more than max_gap frames ends."""

  def __init__(self, min_iou: float = 0.3, max_gap: int = 10):
    self.min_iou, self.max_gap = min_iou, max_gap
    self._last: dict[int, tuple[np.ndarray, int]] = {}  # track → (box, frame seen)
    self._next, self._frame = 0, 0

  @property
  def num_tracks(self) -> int:
    return self._next

  def update(self, faces: list[Face]) -> list[Face]:
    self._frame += 1
    live = [t for t, (_, f) in self._last.items() if self._frame - f <= self.max_gap + 1]
    overlap = (iou(np.stack([f.box for f in faces]), np.stack([self._last[t][0] for t in live]))
               if faces and live else np.zeros((len(faces), len(live))))
    taken_f, taken_t = set(), set()
    for i, j in zip(*np.unravel_index(np.argsort(-overlap, axis=None), overlap.shape)):
      if overlap[i, j] < self.min_iou:
        break
      if i not in taken_f and j not in taken_t:
        faces[i].track = live[j]
        taken_f.add(i)
        taken_t.add(j)
    for i, face in enumerate(faces):
      if i not in taken_f:
        face.track, self._next = self._next, self._next + 1
      self._last[face.track] = (face.box, self._frame)
    return faces


def largest(faces: list[Face]) -> list[Face]:
  """The one face with the largest box (none if none)."""
  return [max(faces, key=lambda f: f.area)] if faces else []
