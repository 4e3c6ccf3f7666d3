"""Image augmentation on the accelerator, inside the jitted train step.

The host hands over uint8 RGB batches at the images' stored size; everything else (random resized
crop, flip, RandAugment, random erasing, the evaluation resize, the region view) happens here,
batched and per-example random: the host's CPUs would otherwise bound the step rate, and the
device does these cheap, regular pixel passes in a small fraction of a ViT step.

Semantics follow PIL, which timm's recipes (and so the papers' numbers) use: bicubic resampling
with Keys a=-0.5 and antialiasing, PIL's bilinear affine warp (truncating), ImageOps and
ImageEnhance rounding. Images stay uint8 between ops.

Each RandAugment slot is one affine warp, one per-channel 256-entry lookup table and one blend with
a degenerate image, whatever the op (identity parameters for the parts an op does not use), so a
batch pays for three cheap passes per slot instead of evaluating all 15 ops and selecting.

Public API (batched; keys is a (B,) typed PRNG key array, images uint8 (B, H, W, 3)):
    RAND_AUGMENT_OPS, FILL_GRAY, apply_regions(images, boxes, fill),
    pretrain_views(keys, images, *, size, ...), finetune_views(keys, images, *, size, ...),
    paired_views(keys, face, region, *, size, ...), eval_views(images, *, size, crop_pct)
Per-example building blocks (one image (H, W, C) uint8, parameters may be traced):
    random_resized_crop_box, resized_crop, flip_left_right, affine, rotate, shear_x, shear_y,
    translate_x, translate_y, auto_contrast, equalize, invert, posterize, solarize, solarize_add,
    color, contrast, brightness, sharpness, rand_augment, random_erasing
"""

from __future__ import annotations

import functools
import math

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

RAND_AUGMENT_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize',
                    'SolarizeAdd', 'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX',
                    'ShearY', 'TranslateX', 'TranslateY')
FILL_GRAY = (124, 116, 104)  # ImageNet mean as uint8: border fill of the geometric ops, as timm
_OP = {name: i for i, name in enumerate(RAND_AUGMENT_OPS)}
_RAMP = np.arange(256, dtype=np.int32)  # numpy: importing this module starts no JAX backend

flip_left_right = pix.flip_left_right


def _to_uint8(x: jax.Array) -> jax.Array:
  return jnp.clip(x, 0, 255).astype(jnp.uint8)


# --- Regions, crops and resizing. ---

def apply_regions(images, boxes, fill):
  """images uint8 (..., H, W, 3); boxes int32 (..., K, 4) as [x0, y0, x1, y1) pixel boxes of the
  stored image (a box with x1 <= x0 or y1 <= y0 is padding and selects nothing); fill int or RGB
  triple. Pixels inside any box keep their value, the rest become fill. Same result as
  input_pipeline.regions.synthesize_regions for the same boxes."""
  h, w = images.shape[-3:-1]
  b = jnp.asarray(boxes, jnp.int32)[..., None, None, :]  # (..., K, 1, 1, 4)
  cols, rows = jnp.arange(w)[None, :], jnp.arange(h)[:, None]
  inside = ((cols >= b[..., 0]) & (cols < b[..., 2]) & (rows >= b[..., 1]) & (rows < b[..., 3]))
  return jnp.where(inside.any(-3)[..., None], images, jnp.asarray(fill, jnp.uint8))


def _first_fit(u, areas, aspects, fits_fn):
  """The usual rule, vectorised over len(u) // 2 tries (u: uniform [0, 1) draws): area ~ U(areas)
  pixels, aspect log-uniform in aspects; the first (sqrt(area * aspect), sqrt(area / aspect))
  rounded that fits, and whether any did."""
  u_area, u_aspect = jnp.split(u, 2)
  target = areas[0] + (areas[1] - areas[0]) * u_area
  log_lo, log_hi = jnp.log(aspects[0]), jnp.log(aspects[1])
  aspect = jnp.exp(log_lo + (log_hi - log_lo) * u_aspect)
  w = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
  h = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
  ok = fits_fn(w, h)
  first = jnp.argmax(ok)
  return w[first], h[first], ok.any()


def _below(u, n):
  """A uniform integer in [0, n) from a uniform [0, 1) draw."""
  return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


def random_resized_crop_box(key, height, width, scale, ratio):
  """int32 [x, y, w, h] of a crop covering a random area fraction in ``scale`` and aspect (w / h)
  in ``ratio`` (10 tries, else the largest centred crop with the aspect clamped into range)."""
  scale, ratio = jnp.asarray(scale, jnp.float32), jnp.asarray(ratio, jnp.float32)
  # One draw for everything: each separate draw is another generator in the compiled program.
  u = jax.random.uniform(key, (22,))
  w, h, found = _first_fit(u[:20], height * width * scale, ratio,
                           lambda w, h: (w > 0) & (w <= width) & (h > 0) & (h <= height))
  aspect = width / height
  fw = jnp.where(aspect > ratio[1], jnp.round(height * ratio[1]), width).astype(jnp.int32)
  fh = jnp.where(aspect < ratio[0], jnp.round(width / ratio[0]), height).astype(jnp.int32)
  w, h = jnp.where(found, w, fw), jnp.where(found, h, fh)
  x = jnp.where(found, _below(u[20], width - w + 1), (width - w) // 2)
  y = jnp.where(found, _below(u[21], height - h + 1), (height - h) // 2)
  return jnp.stack([x, y, w, h]).astype(jnp.int32)


def _resample(images, out_hw, spatial_dims, scale, translation):
  """Bicubic (Keys a=-0.5, antialiased when shrinking: PIL's BICUBIC) with a scale/translation
  of the half-pixel-centred coordinates. Two passes like PIL, columns then rows, each rounded and
  clipped to uint8: the intermediate clipping of overshoots is visible, so it is kept."""
  for i in (1, 0):
    shape = list(images.shape)
    shape[spatial_dims[i]] = out_hw[i]
    images = jax.image.scale_and_translate(
        images.astype(jnp.float32), shape, spatial_dims[i:i + 1], scale[i:i + 1],
        translation[i:i + 1], method='cubic', antialias=True)
    images = _to_uint8(jnp.floor(images + 0.5))  # PIL rounds halves up
  return images


def resized_crop(image, box, size, flip=False):
  """The box [x, y, w, h] of ``image`` (H, W, C) resized to size x size, flipped if ``flip``.
  Like PIL's resize(box=...): the filter reaches pixels outside the box, inside the image."""
  x, y, w, h = jnp.asarray(box, jnp.float32)
  scale = jnp.stack([size / h, size / w])
  out = _resample(image, (size, size), (0, 1), scale, -jnp.stack([y, x]) * scale)
  return jnp.where(flip, flip_left_right(out), out)


def eval_views(images, *, size, crop_pct=0.875):
  """Deterministic evaluation: resize the short side to floor(size / crop_pct) (bicubic), then
  centre-crop size x size (timm's eval transform). uint8 in and out."""
  h, w = images.shape[-3:-1]
  short = math.floor(size / crop_pct)
  # torchvision's Resize(int) and CenterCrop rounding, which timm's eval transform uses.
  nh, nw = (int(short * h / w), short) if w <= h else (short, int(short * w / h))
  top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
  if (nh, nw, top, left) == (h, w, 0, 0):  # stored at the model's size, nothing cropped
    return images
  # Only the crop is computed: the same sample positions as resizing all, then cropping.
  dims = (images.ndim - 3, images.ndim - 2)
  return _resample(images, (size, size), dims, jnp.array([nh / h, nw / w]),
                   jnp.array([-top, -left], jnp.float32))


def _crop_and_flip(key, image, size, scale, ratio):
  k_box, k_flip = jax.random.split(key)
  box = random_resized_crop_box(k_box, image.shape[0], image.shape[1], scale, ratio)
  return resized_crop(image, box, size, jax.random.bernoulli(k_flip))


# --- Geometric ops: one bilinear warp with PIL's Image.transform(AFFINE, BILINEAR) semantics. ---

def affine(image, matrix, fill=FILL_GRAY):
  """Bilinear warp of ``image`` (H, W, C). ``matrix`` (2, 3) maps an output pixel (x, y, 1)
  (x the column, y the row, pixel centres at integers) to the input location it samples. As PIL:
  a location outside the image (beyond the outer pixel edges) gets ``fill``, neighbours past the
  edge are clamped, values are truncated to uint8. An identity matrix returns the image exactly.

  Not pix.affine_transform: over (H, W, C) it interpolates along the channel axis too (eight
  scalar gathers per value) and blends the fill into a one-pixel band, unlike PIL."""
  image, m = jnp.asarray(image), jnp.asarray(matrix, jnp.float32)
  h, w, c = image.shape
  cols, rows = jnp.arange(w, dtype=jnp.float32)[None, :], jnp.arange(h, dtype=jnp.float32)[:, None]
  sx = m[0, 0] * cols + m[0, 1] * rows + m[0, 2]
  sy = m[1, 0] * cols + m[1, 1] * rows + m[1, 2]
  inside = (sx >= -0.5) & (sx < w - 0.5) & (sy >= -0.5) & (sy < h - 0.5)
  x0, y0 = jnp.floor(sx), jnp.floor(sy)
  dx, dy = (sx - x0)[..., None], (sy - y0)[..., None]
  xs = [jnp.clip(x0 + i, 0, w - 1).astype(jnp.int32) for i in (0, 1)]
  ys = [jnp.clip(y0 + i, 0, h - 1).astype(jnp.int32) * w for i in (0, 1)]
  # Four gathers of whole C-vectors: interpolating over rows and columns only.
  flat = image.reshape(h * w, c)
  p = [[flat[yi + xi].astype(jnp.float32) for xi in xs] for yi in ys]
  top = p[0][0] + (p[0][1] - p[0][0]) * dx
  bottom = p[1][0] + (p[1][1] - p[1][0]) * dx
  out = jnp.floor(top + (bottom - top) * dy)
  return jnp.where(inside[..., None], out, jnp.asarray(fill, jnp.float32)).astype(jnp.uint8)


def _about_centre(linear, h, w):
  """(2, 3) matrix applying the 2x2 ``linear`` about the image centre."""
  c = jnp.array([(w - 1) / 2, (h - 1) / 2], jnp.float32)
  return jnp.concatenate([linear, (c - linear @ c)[:, None]], 1)


def _rotation(degrees, h, w):
  # Counter-clockwise on screen, as PIL's Image.rotate (and the former host pipeline's cv2 op).
  t = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
  cos, sin = jnp.cos(t), jnp.sin(t)
  return _about_centre(jnp.stack([jnp.stack([cos, -sin]), jnp.stack([sin, cos])]), h, w)


def _shear(factor, h, w, axis):
  # Output -> input, so the content moves by +factor * (offset from the centre), as it did on the
  # host.
  f = -jnp.asarray(factor, jnp.float32)
  linear = jnp.eye(2).at[axis, 1 - axis].set(f)
  return _about_centre(linear, h, w)


def _translation(fraction, h, w, axis):
  shift = jnp.zeros(2).at[axis].set(-jnp.asarray(fraction, jnp.float32) * (w, h)[axis])
  return jnp.concatenate([jnp.eye(2), shift[:, None]], 1)


def rotate(image, degrees, fill=FILL_GRAY):
  return affine(image, _rotation(degrees, *image.shape[:2]), fill)


def shear_x(image, factor, fill=FILL_GRAY):
  return affine(image, _shear(factor, *image.shape[:2], 0), fill)


def shear_y(image, factor, fill=FILL_GRAY):
  return affine(image, _shear(factor, *image.shape[:2], 1), fill)


def translate_x(image, fraction, fill=FILL_GRAY):
  """Moves the content right by fraction * width."""
  return affine(image, _translation(fraction, *image.shape[:2], 0), fill)


def translate_y(image, fraction, fill=FILL_GRAY):
  return affine(image, _translation(fraction, *image.shape[:2], 1), fill)


# --- Point ops as per-channel lookup tables (3, 256), computed from cheap per-image stats. ---

def _apply_lut(image, lut):
  """lut (C, 256) -> image with channel c's values v replaced by lut[c, v]."""
  c = image.shape[-1]
  flat = _to_uint8(lut).reshape(-1)
  return flat[image.astype(jnp.int32) + 256 * jnp.arange(c)]


def _histogram(image):
  c = image.shape[-1]
  idx = (image.astype(jnp.int32) + 256 * jnp.arange(c)).reshape(-1)
  return jnp.zeros(256 * c, jnp.int32).at[idx].add(1).reshape(c, 256)


def _gray(image):
  """PIL's convert('L'): ITU-R 601-2 luma in 16-bit fixed point, int32 (H, W). Exact, unlike
  pix.rgb_to_grayscale's float weights, which move Color and Contrast results by one here and
  there."""
  r, g, b = (image[..., i].astype(jnp.int32) for i in range(3))
  return (19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16


def _bounds(hist):
  """Lowest and highest used value per channel, (C, 1) each."""
  used = hist > 0
  lo = jnp.argmax(used, 1)
  hi = 255 - jnp.argmax(used[:, ::-1], 1)
  return lo[:, None], hi[:, None]


def _auto_contrast_lut(image, hist=None):
  # ImageOps.autocontrast (cutoff 0): stretch [lo, hi] to [0, 255], identity when hi <= lo.
  # Exact integer floor; PIL's float64 int(i * scale + offset) sometimes lands 1 below (see tests).
  lo, hi = _bounds(_histogram(image) if hist is None else hist)
  stretched = jnp.floor_divide((_RAMP - lo) * 255, jnp.maximum(hi - lo, 1))
  return jnp.where(hi > lo, jnp.clip(stretched, 0, 255), _RAMP)


def _equalize_lut(image, hist=None):
  # ImageOps.equalize: step = (count - count of the last used value) // 255, identity when 0.
  hist = _histogram(image) if hist is None else hist
  last = jnp.take_along_axis(hist, _bounds(hist)[1], 1)
  step = (image.shape[0] * image.shape[1] - last) // 255
  before = jnp.cumsum(hist, 1) - hist
  return jnp.where(step > 0, jnp.minimum((step // 2 + before) // jnp.maximum(step, 1), 255), _RAMP)


def _posterize_lut(bits):
  return _RAMP & ((0xFF << (8 - jnp.asarray(bits, jnp.int32))) & 0xFF)


def _solarize_lut(threshold):
  return jnp.where(_RAMP < threshold, _RAMP, 255 - _RAMP)


def _solarize_add_lut(add, threshold=128):
  return jnp.where(_RAMP < threshold, jnp.minimum(_RAMP + add, 255), _RAMP)


def _times(factor, n):
  """float32 factor * n rounded as one float32 multiply, for integer-valued n (|n| < 4096), even
  where XLA fuses it with a following add into one multiply-add (rounded once, which moves the
  truncated blends below by one here and there): factor splits into two 12-bit halves whose
  products with n are exact, so any fusion rounds the same sum."""
  f = jnp.asarray(factor, jnp.float32)
  hi = jax.lax.bitcast_convert_type(
      jax.lax.bitcast_convert_type(f, jnp.uint32) & np.uint32(0xFFFFF000), jnp.float32)
  return hi * n + (f - hi) * n


def _blend_values(degenerate, image, factor):
  """PIL's Image.blend(degenerate, image, factor) on uint8 values: in float32,
  degenerate + factor * (image - degenerate), truncated and clipped."""
  d = jnp.asarray(degenerate).astype(jnp.float32)
  out = d + _times(factor, jnp.asarray(image).astype(jnp.float32) - d)
  return jnp.clip(jnp.floor(out), 0, 255)


def _blend_lut(degenerate, factor):
  # Image.blend(constant degenerate, image, factor) on every value.
  return _blend_values(degenerate, _RAMP, factor).astype(jnp.int32)


def _contrast_mean(image):
  # ImageEnhance.Contrast: the mean of the L image rounded half up, in exact integers (int32:
  # images up to 2048 x 2048).
  n = image.shape[0] * image.shape[1]
  return (2 * _gray(image).sum() + n) // (2 * n)


def auto_contrast(image):
  return _apply_lut(image, _auto_contrast_lut(image))


def equalize(image):
  return _apply_lut(image, _equalize_lut(image))


def invert(image):
  return 255 - image


def posterize(image, bits):
  return _apply_lut(image, jnp.broadcast_to(_posterize_lut(bits), (3, 256)))


def solarize(image, threshold):
  return _apply_lut(image, jnp.broadcast_to(_solarize_lut(threshold), (3, 256)))


def solarize_add(image, add, threshold=128):
  return _apply_lut(image, jnp.broadcast_to(_solarize_add_lut(add, threshold), (3, 256)))


def contrast(image, factor):
  lut = _blend_lut(_contrast_mean(image), factor)
  return _apply_lut(image, jnp.broadcast_to(lut, (3, 256)))


def brightness(image, factor):
  return _apply_lut(image, jnp.broadcast_to(_blend_lut(0, factor), (3, 256)))


# --- Blends with a degenerate image (ImageEnhance.Color and .Sharpness). ---

def _blend(degenerate, image, factor):
  return _blend_values(degenerate, image, factor).astype(jnp.uint8)


def _gray_rgb(image):
  return jnp.broadcast_to(_gray(image)[..., None], image.shape).astype(jnp.uint8)


def _smooth(image):
  """PIL's ImageFilter.SMOOTH ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, rounded), border pixels
  left as they are."""
  image = jnp.asarray(image)
  x = image.astype(jnp.int32)
  rows = x[:-2] + x[1:-1] + x[2:]
  s = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:] + 4 * x[1:-1, 1:-1]
  return image.at[1:-1, 1:-1].set(((2 * s + 13) // 26).astype(jnp.uint8))


def color(image, factor):
  return _blend(_gray_rgb(image), image, factor)


def sharpness(image, factor):
  return _blend(_smooth(image), image, factor)


# --- RandAugment and random erasing. ---

_LUT_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Posterize', 'Solarize', 'SolarizeAdd',
            'Contrast', 'Brightness')


def _slot(key, image, magnitude, magnitude_std, prob):
  """One RandAugment slot: a uniformly drawn op applied with probability ``prob``, as one warp,
  one lookup table and one blend (the parts the op does not use are identities)."""
  k_uniform, k_normal = jax.random.split(key)
  u = jax.random.uniform(k_uniform, (3,))
  op = jnp.where(u[1] < prob, _below(u[0], len(RAND_AUGMENT_OPS)), -1)  # -1: no op
  m = magnitude + magnitude_std * jax.random.normal(k_normal)
  level = jnp.clip(m, 0.0, 10.0) / 10.0
  sign = jnp.where(u[2] < 0.5, 1.0, -1.0)
  factor = 1.0 + sign * 0.9 * level
  h, w = image.shape[:2]
  is_ = lambda name: op == _OP[name]

  matrix = jnp.select(
      [is_('Rotate'), is_('ShearX'), is_('ShearY'), is_('TranslateX'), is_('TranslateY')],
      [_rotation(sign * 30.0 * level, h, w), _shear(sign * 0.3 * level, h, w, 0),
       _shear(sign * 0.3 * level, h, w, 1), _translation(sign * 0.45 * level, h, w, 0),
       _translation(sign * 0.45 * level, h, w, 1)],
      jnp.eye(2, 3))

  # Only one op is active, so the other two stages are identities and the table's stats and the
  # degenerate image can come from the slot's input: every stage reads one stored image, and XLA
  # does not recompute the warp inside each consumer.
  hist = _histogram(image)
  per_channel = lambda lut: jnp.broadcast_to(lut, (3, 256))
  luts = jnp.stack([
      per_channel(_RAMP), _auto_contrast_lut(image, hist), _equalize_lut(image, hist),
      per_channel(255 - _RAMP),
      per_channel(_posterize_lut(8 - jnp.round(4 * level).astype(jnp.int32))),
      per_channel(_solarize_lut(256 - jnp.round(256 * level))),
      per_channel(_solarize_add_lut(jnp.round(110 * level).astype(jnp.int32))),
      per_channel(_blend_lut(_contrast_mean(image), factor)),
      per_channel(_blend_lut(0, factor))])
  row = jnp.max(jnp.where(jnp.array([_OP[n] for n in _LUT_OPS]) == op, jnp.arange(1, 9), 0))
  # A one-hot sum rather than a select: XLA then builds the (3, 256) table once, instead of
  # inlining every candidate into the per-pixel gather that applies it.
  lut = (jax.nn.one_hot(row, 9, dtype=jnp.int32)[:, None, None] * luts).sum(0)
  degenerate = jnp.where(is_('Color'), _gray_rgb(image), _smooth(image))

  out = _apply_lut(affine(image, matrix, FILL_GRAY), lut)
  # Factor 1 returns ``out`` exactly, whatever the degenerate.
  return _blend(degenerate, out, jnp.where(is_('Color') | is_('Sharpness'), factor, 1.0))


def rand_augment(key, image, num_ops, magnitude, magnitude_std, prob=0.5):
  """``num_ops`` ops drawn uniformly with replacement from RAND_AUGMENT_OPS, each applied with
  probability ``prob`` at level clip(N(magnitude, magnitude_std), 0, 10) / 10 and a random sign:
  rotate 30 deg * level, shear 0.3 * level, translate 0.45 * level of the size, posterize to
  8 - round(4 * level) bits, solarize at 256 - round(256 * level), solarize_add round(110 * level),
  enhance factors 1 +- 0.9 * level."""
  for k in jax.random.split(key, num_ops):
    image = _slot(k, image, magnitude, magnitude_std, prob)
  return image


_rand_augment = rand_augment  # finetune_views' argument of that name hides it there


def random_erasing(key, image, prob, area=(0.02, 1 / 3), ratio=(0.3, 3.3)):
  """With probability ``prob`` replaces a random rectangle (area fraction in ``area``, aspect
  h / w in ``ratio``, 10 tries) with uniform uint8 noise."""
  h, w = image.shape[:2]
  k_draw, k_noise = jax.random.split(key)
  u = jax.random.uniform(k_draw, (23,))
  area, ratio = jnp.asarray(area, jnp.float32), jnp.asarray(ratio, jnp.float32)
  eh, ew, found = _first_fit(u[:20], h * w * area, ratio,
                             lambda eh, ew: (eh > 0) & (eh < h) & (ew > 0) & (ew < w))
  y, x = _below(u[20], h - eh + 1), _below(u[21], w - ew + 1)
  erase = found & (u[22] < prob)
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inside = erase & (rows >= y) & (rows < y + eh) & (cols >= x) & (cols < x + ew)
  # Noise for the whole image, kept only inside the box. Drawn as 32-bit words split into bytes:
  # JAX's generator draws uint8 one element at a time, four times the work.
  n = image.size
  words = jax.random.bits(k_noise, (-(-n // 4),), jnp.uint32)
  noise = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[:n].reshape(image.shape)
  return jnp.where(inside[..., None], noise, image)


# --- The batched recipes. ---

def pretrain_views(keys, images, *, size, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
  """MAE recipe: RandomResizedCrop (bicubic) to size x size + horizontal flip with p=1/2.
  keys: (B,) typed PRNG key array (one key per example, e.g. jax.random.fold_in(k, i) vmapped);
  images uint8 (B, H, W, 3). Returns uint8 (B, size, size, 3)."""
  return jax.vmap(functools.partial(_crop_and_flip, size=size, scale=scale, ratio=ratio))(
      keys, images)


def finetune_views(keys, images, *, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                   rand_augment=(2, 9.0, 0.5), erase_prob=0.25):
  """Fine-tuning recipe, in this order per example: RandomResizedCrop bicubic, flip p=1/2,
  RandAugment (num_ops, magnitude, magnitude_std) or None, random erasing with prob erase_prob
  (0: off). uint8 in, uint8 (B, size, size, 3) out."""
  def one(key, image):
    k_crop, k_ra, k_erase = jax.random.split(key, 3)
    image = _crop_and_flip(k_crop, image, size, scale, ratio)
    if rand_augment is not None:
      image = _rand_augment(k_ra, image, *rand_augment)
    if erase_prob:
      image = random_erasing(k_erase, image, erase_prob)
    return image
  return jax.vmap(one)(keys, images)


def paired_views(keys, face, region, *, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """Fusion training: RandomResizedCrop + flip with the SAME draw for face[i] and region[i] (both
  uint8 (B, H, W, 3), same H, W): pixel (u, v) of the output face and of the output region come
  from the same source location. Returns (face, region), each uint8 (B, size, size, 3)."""
  both = jnp.concatenate([face, region], -1)  # one resampling pass over six channels
  out = jax.vmap(functools.partial(_crop_and_flip, size=size, scale=scale, ratio=ratio))(
      keys, both)
  return out[..., :3], out[..., 3:]
