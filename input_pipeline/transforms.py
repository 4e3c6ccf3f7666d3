"""Grain transforms on frame records: decode, region view, crops, flips, RandAugment-style ops.

Records are dicts (see ``abaw``). Images stay uint8 RGB HWC through every transform and into the
batch (``collate`` stacks them): cheap to compute and to pass between processes and to the device,
where the programs normalise them (``mae_face_jax.images.normalize``). A record whose image cannot
be decoded becomes ``{SKIPPED: path}``: later transforms pass it through and ``skips`` drops and
counts it before batching.

Every geometric or photometric transform applies the *same* random parameters to all image views of
a record ('image' and, in paired mode, 'region_image'), so the two views stay pixel-aligned.

Public API (grain transforms):
    Decode(), RegionView(variant, fill, margin, keep_face), RandomResizedCrop(size, scale, ratio),
    RandomFlip(), RandAugment(num_ops=2, magnitude=9, magnitude_std=0.5), RandomErasing(prob),
    ResizeCenterCrop(size, crop_pct), SelectKeys(keys), collate (a batch_fn)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import cv2
import grain
import numpy as np

from input_pipeline import abaw, regions

SKIPPED = 'skipped_path'
CARRIED = '_skipped'  # (epoch, path) of skipped records riding on a good one (see skips.py)
IMAGE_KEYS = ('image', 'region_image')
FILL_GRAY = (124, 116, 104)  # ImageNet mean (0.485, 0.456, 0.406) as uint8: border fill, as timm


def read_image(record: dict) -> np.ndarray | None:
  """RGB uint8 image of a record ('image_bytes' or 'path'); None if missing, empty or corrupt."""
  data = record.get('image_bytes')
  try:
    buf = np.frombuffer(data, np.uint8) if data is not None else np.fromfile(record['path'], np.uint8)
    return cv2.imdecode(buf, cv2.IMREAD_COLOR_RGB)  # raises on an empty buffer, None on garbage
  except (OSError, cv2.error):
    return None


class Decode(grain.transforms.Map):
  """record -> record with 'image' (uint8 RGB), or {SKIPPED: path} when unreadable."""

  def map(self, record: dict) -> dict:
    image = read_image(record)
    if image is None:
      return {SKIPPED: record.get('path') or f"<bytes of video {record.get('video')} "
                                               f"frame {record.get('frame')}>",
              'epoch': record.get('epoch', 0)}
    return {**record, 'image': image}


class RegionView(grain.transforms.Map):
  """Synthesises the region view on the fly: into 'region_image' (keep_face) or over 'image'."""

  def __init__(self, variant: str, fill: int | Sequence[int] = 0, margin: float = 0.1,
               keep_face: bool = False):
    self.variant, self.fill, self.margin, self.keep_face = variant, fill, margin, keep_face

  def map(self, record: dict) -> dict:
    if SKIPPED in record:
      return record
    landmarks = abaw.read_landmarks(record['landmarks']) if record.get('landmarks') else None
    view = regions.synthesize_regions(record['image'], self.variant, self.fill, landmarks,
                                      self.margin)
    return {**record, ('region_image' if self.keep_face else 'image'): view}


def _apply(record: dict, fn: Callable[[np.ndarray], np.ndarray]) -> dict:
  out = dict(record)
  for key in IMAGE_KEYS:
    if key in out:
      out[key] = fn(out[key])
  return out


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale: tuple[float, float], ratio: tuple[float, float]
                            ) -> tuple[int, int, int, int]:
  """(x, y, w, h) of a crop covering a random area fraction and aspect ratio (the usual RRC rule)."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
  # Fallback: the largest centred crop with the aspect ratio clamped into range.
  aspect = width / height
  if aspect < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif aspect > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


class RandomResizedCrop(grain.transforms.RandomMap):
  """Random area/aspect crop resized (bicubic) to size x size; same box for every view."""

  def __init__(self, size: int, scale: tuple[float, float] = (0.2, 1.0),
               ratio: tuple[float, float] = (3 / 4, 4 / 3)):
    self.size, self.scale, self.ratio = size, scale, ratio

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    if SKIPPED in record:
      return record
    h, w = record['image'].shape[:2]
    x, y, cw, ch = random_resized_crop_box(rng, h, w, self.scale, self.ratio)
    return _apply(record, lambda im: cv2.resize(im[y:y + ch, x:x + cw], (self.size, self.size),
                                                interpolation=cv2.INTER_CUBIC))


class RandomFlip(grain.transforms.RandomMap):
  """Horizontal flip with probability 1/2; same decision for every view."""

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    if SKIPPED in record or rng.random() >= 0.5:
      return record
    return _apply(record, lambda im: cv2.flip(im, 1))


class ResizeCenterCrop(grain.transforms.Map):
  """Evaluation: resize the short side to size / crop_pct (bicubic), then centre-crop size x size."""

  def __init__(self, size: int, crop_pct: float = 0.875):
    self.size, self.crop_pct = size, crop_pct

  def _one(self, image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    short = int(math.floor(self.size / self.crop_pct))
    if h <= w:
      nh, nw = short, max(short, round(w * short / h))
    else:
      nh, nw = max(short, round(h * short / w)), short
    if (nh, nw) != (h, w):
      image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_CUBIC)
    y, x = (nh - self.size) // 2, (nw - self.size) // 2
    return np.ascontiguousarray(image[y:y + self.size, x:x + self.size])

  def map(self, record: dict) -> dict:
    return record if SKIPPED in record else _apply(record, self._one)


# --- RandAugment-style operations. Each takes (image, level in [0, 1], sign) and returns uint8. ---

def _blend(image: np.ndarray, other: np.ndarray | float, factor: float) -> np.ndarray:
  """image * factor + other * (1 - factor), saturated to uint8 (PIL ImageEnhance semantics)."""
  if not isinstance(other, np.ndarray):
    other = np.full_like(image, int(round(other)))
  return cv2.addWeighted(image, factor, other, 1.0 - factor, 0)


def _affine(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
  h, w = image.shape[:2]
  return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=FILL_GRAY)


def _centered(h: int, w: int, linear: np.ndarray) -> np.ndarray:
  """Affine matrix applying a 2x2 map about the image centre."""
  c = np.array([(w - 1) / 2, (h - 1) / 2])
  return np.concatenate([linear, (c - linear @ c)[:, None]], 1).astype(np.float32)


def _rotate(im, level, sign):
  h, w = im.shape[:2]
  return _affine(im, cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), sign * 30.0 * level, 1.0))


def _shear_x(im, level, sign):
  return _affine(im, _centered(*im.shape[:2], np.array([[1.0, sign * 0.3 * level], [0.0, 1.0]])))


def _shear_y(im, level, sign):
  return _affine(im, _centered(*im.shape[:2], np.array([[1.0, 0.0], [sign * 0.3 * level, 1.0]])))


def _translate_x(im, level, sign):
  return _affine(im, np.float32([[1, 0, sign * 0.45 * level * im.shape[1]], [0, 1, 0]]))


def _translate_y(im, level, sign):
  return _affine(im, np.float32([[1, 0, 0], [0, 1, sign * 0.45 * level * im.shape[0]]]))


def _lut(im: np.ndarray, table: np.ndarray) -> np.ndarray:
  """Applies a 256-entry table (shared or one column per channel) with one cv2.LUT pass."""
  table = np.clip(np.round(table), 0, 255).astype(np.uint8)
  return cv2.LUT(im, table.reshape(256, 1, -1) if table.ndim == 2 else table)


_RAMP = np.arange(256, dtype=np.float32)


def _auto_contrast(im, level, sign):
  lo = np.array([cv2.minMaxLoc(c)[0] for c in cv2.split(im)], np.float32)
  hi = np.array([cv2.minMaxLoc(c)[1] for c in cv2.split(im)], np.float32)
  scale = np.where(hi > lo, 255.0 / np.maximum(hi - lo, 1), 1.0)
  offset = np.where(hi > lo, -lo * scale, 0.0)
  return _lut(im, _RAMP[:, None] * scale + offset)


def _equalize(im, level, sign):
  return cv2.merge([cv2.equalizeHist(c) for c in cv2.split(im)])


def _invert(im, level, sign):
  return cv2.bitwise_not(im)


def _posterize(im, level, sign):
  bits = 8 - int(round(4 * level))  # increasing severity: 8 bits (none) down to 4
  return im & np.uint8((0xFF << (8 - bits)) & 0xFF)


def _solarize(im, level, sign):
  threshold = 256 - int(round(256 * level))
  return _lut(im, np.where(_RAMP >= threshold, 255 - _RAMP, _RAMP))


def _solarize_add(im, level, sign):
  return _lut(im, np.where(_RAMP < 128, _RAMP + round(110 * level), _RAMP))


def _color(im, level, sign):
  gray = cv2.cvtColor(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
  return _blend(im, gray, 1.0 + sign * 0.9 * level)


def _contrast(im, level, sign):
  mean = float(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY).mean())
  factor = 1.0 + sign * 0.9 * level
  return _lut(im, _RAMP * factor + mean * (1 - factor))


def _brightness(im, level, sign):
  return _lut(im, _RAMP * (1.0 + sign * 0.9 * level))


def _sharpness(im, level, sign):
  smooth = cv2.filter2D(im, -1, np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13)
  return _blend(im, smooth, 1.0 + sign * 0.9 * level)


RAND_AUGMENT_OPS = {
    'AutoContrast': _auto_contrast, 'Equalize': _equalize, 'Invert': _invert, 'Rotate': _rotate,
    'Posterize': _posterize, 'Solarize': _solarize, 'SolarizeAdd': _solarize_add, 'Color': _color,
    'Contrast': _contrast, 'Brightness': _brightness, 'Sharpness': _sharpness, 'ShearX': _shear_x,
    'ShearY': _shear_y, 'TranslateX': _translate_x, 'TranslateY': _translate_y,
}


class RandAugment(grain.transforms.RandomMap):
  """num_ops ops drawn uniformly, each applied with probability ``prob`` at a magnitude drawn from
  N(magnitude, magnitude_std) clipped to [0, 10] (the fine-tuning recipe's rand-m9-mstd0.5)."""

  def __init__(self, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5,
               prob: float = 0.5, ops: Sequence[str] = tuple(RAND_AUGMENT_OPS)):
    self.num_ops, self.magnitude, self.magnitude_std, self.prob = num_ops, magnitude, magnitude_std, prob
    self.ops = tuple(ops)

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    if SKIPPED in record:
      return record
    for name in rng.choice(self.ops, self.num_ops):
      # Draw every number even when the op is skipped, so the stream does not depend on outcomes.
      apply = rng.random() < self.prob
      m, sign = rng.normal(self.magnitude, self.magnitude_std), rng.choice((-1, 1))
      if apply:
        level = float(np.clip(m, 0.0, 10.0)) / 10.0
        record = _apply(record, lambda im, f=RAND_AUGMENT_OPS[name]: f(im, level, float(sign)))
    return record


class RandomErasing(grain.transforms.RandomMap):
  """With probability ``prob`` replaces a random rectangle (2-33% of the area) with uniform noise."""

  def __init__(self, prob: float = 0.25, area: tuple[float, float] = (0.02, 1 / 3),
               ratio: tuple[float, float] = (0.3, 3.3)):
    self.prob, self.area, self.ratio = prob, area, ratio

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    if SKIPPED in record or rng.random() >= self.prob:
      return record
    h, w = record['image'].shape[:2]
    for _ in range(10):
      target = h * w * rng.uniform(*self.area)
      aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
      eh, ew = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
      if 0 < eh < h and 0 < ew < w:
        y, x = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
        noise = rng.integers(0, 256, (eh, ew, 3), dtype=np.uint8)

        def erase(im):
          im = im.copy()
          im[y:y + eh, x:x + ew] = noise
          return im
        return _apply(record, erase)
    return record


class SelectKeys(grain.transforms.Map):
  """Keeps the array-valued keys a batch carries (drops paths) and casts scalars to int32."""

  def __init__(self, keys: Sequence[str]):
    self.keys = tuple(keys)

  def map(self, record: dict) -> dict:
    if SKIPPED in record:
      return record
    return {k: (record[k] if k in IMAGE_KEYS else np.int32(record[k])) for k in self.keys}


def collate(records: Sequence[dict]) -> dict:
  """grain ``batch_fn``: stacks records into a batch and gathers the carried skips (see skips.py)."""
  rows = [r for r in records if len(r) > 1 or CARRIED not in r]  # not a skips-only record
  batch = {CARRIED: [s for r in records for s in r.get(CARRIED, ())]}
  for key in (rows[0] if rows else ()):
    if key != CARRIED:
      batch[key] = np.stack([np.asarray(r[key]) for r in rows])
  return batch
