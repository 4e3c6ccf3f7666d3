"""On-device augmentation (mae_face_jax.augment) against its references: PIL and timm for every
op, resize and the eval transform, regions.synthesize_regions for the region view, the host rule
for crop boxes; and the batched recipes' randomness, determinism and view alignment.

Tolerances: lookup-table and blend ops are exact (AutoContrast: off by one only where PIL's float64
lands just below an exact integer); warps equal PIL except, rarely, by one where the exact value
is an integer and float32 and float64 round to either side; resizes are within one.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm.data
from PIL import Image
from scipy import ndimage
from skimage import data as skdata
from timm.data import auto_augment as aa

from input_pipeline import regions
from mae_face_jax import augment as A


def natural(h, w, seed=0):
  """The astronaut at h x w plus a little noise: natural content with edges and flat parts."""
  base = np.asarray(Image.fromarray(skdata.astronaut()).resize((w, h), Image.BICUBIC)).astype(int)
  noise = np.random.default_rng(seed).integers(-8, 9, base.shape)
  return np.clip(base + noise, 0, 255).astype(np.uint8)


def batch_keys(seed, n):
  key = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


def diff(a, b):
  return np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int))


IMG = natural(48, 64)


def test_op_names_and_fill():
  # The order the host pipeline had (configs and logs name ops by it).
  assert A.RAND_AUGMENT_OPS == (
      'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd',
      'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateX',
      'TranslateY')
  assert A.FILL_GRAY == (124, 116, 104)


def test_flip_exact():
  np.testing.assert_array_equal(A.flip_left_right(IMG), np.fliplr(IMG))


# --- Regions. ---

@pytest.mark.parametrize('variant', regions.VARIANTS)
def test_apply_regions_equals_synthesize_regions(variant):
  rng = np.random.default_rng(1)
  h, w = 56, 48
  five = regions.TEMPLATE_112 * np.array([w / 112, h / 112]) + rng.normal(0, 1.5, (5, 2))
  sixty_eight = rng.uniform([8, 8], [w - 8, h - 8], (68, 2))
  images, boxes, refs = [], [], []
  for i, (landmarks, fill) in enumerate([(None, 0), (five, (10, 200, 30)), (sixty_eight, 77)]):
    image = natural(h, w, seed=i)
    b = regions.region_boxes(variant, h, w, landmarks)
    padded = b + [(20, 5, 20, 40), (30, 30, 10, 10)] + [(0, 0, 0, 0)] * (4 - len(b))
    ref = regions.synthesize_regions(image, variant, fill, landmarks)
    np.testing.assert_array_equal(A.apply_regions(image, np.int32(padded), fill), ref)
    images.append(image)
    boxes.append(padded)
    refs.append(regions.synthesize_regions(image, variant, 5, landmarks))
  # Batched: each example its own boxes.
  np.testing.assert_array_equal(A.apply_regions(np.stack(images), np.int32(boxes), 5), refs)


# --- Resizing. ---

@pytest.mark.parametrize('size', [20, 72])
def test_resized_crop_matches_pil_bicubic(size):
  boxes = np.int32([(5, 7, 30, 24), (0, 0, 64, 48), (13, 2, 50, 41), (40, 30, 9, 13)])
  crop = jax.jit(jax.vmap(functools.partial(A.resized_crop, IMG, size=size)))
  outs = np.asarray(crop(boxes, flip=np.zeros(4, bool)))
  for (x, y, w, h), out in zip(boxes, outs):
    ref = Image.fromarray(IMG).resize((size, size), Image.BICUBIC, box=(x, y, x + w, y + h))
    d = diff(out, ref)
    # PIL's 22-bit fixed-point weights against float32: an odd value off by one (measured: at
    # most 1 value in 1200 at size 20, 1 in 15552 at 72).
    assert d.max() <= 1 and d.mean() < 0.01
  np.testing.assert_array_equal(crop(boxes, flip=np.ones(4, bool)), outs[:, :, ::-1])


@pytest.mark.parametrize('shape,size,crop_pct', [((48, 48), 32, 0.875), ((40, 64), 24, 0.9),
                                                ((64, 37), 40, 1.0)])
def test_eval_views_match_timm_eval_transform(shape, size, crop_pct):
  images = np.stack([natural(*shape, seed=s) for s in range(2)])
  tf = timm.data.create_transform(size, is_training=False, crop_pct=crop_pct,
                                  interpolation='bicubic', use_prefetcher=True)  # uint8, no norm
  refs = np.stack([tf(Image.fromarray(im)).numpy().transpose(1, 2, 0) for im in images])
  out = jax.jit(functools.partial(A.eval_views, size=size, crop_pct=crop_pct))(images)
  assert out.shape == (2, size, size, 3) and out.dtype == jnp.uint8
  d = diff(out, refs)
  assert d.max() <= 1 and d.mean() < 0.01


# --- Random resized crop boxes. ---

def host_box(rng, height, width, scale, ratio):
  """The host pipeline's rule (input_pipeline.transforms.random_resized_crop_box)."""
  area = height * width
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
  aspect = width / height
  if aspect < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif aspect > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _draw_boxes(n, height, width, scale, ratio):
  keys = jax.random.split(jax.random.key(0), n)
  return jax.vmap(lambda k: A.random_resized_crop_box(k, height, width, scale, ratio))(keys)


def draw_boxes(n, height, width, scale, ratio):
  return np.asarray(_draw_boxes(n, height, width, np.float32(scale), np.float32(ratio)))


@pytest.mark.parametrize('scale', [(0.08, 1.0), (0.2, 1.0)])
def test_crop_boxes_inside_in_range_and_distributed_as_the_host(scale):
  height, width, ratio, n = 48, 64, (3 / 4, 4 / 3), 4000
  x, y, w, h = draw_boxes(n, height, width, scale, ratio).T
  assert (x >= 0).all() and (y >= 0).all() and (w >= 1).all() and (h >= 1).all()
  assert (x + w <= width).all() and (y + h <= height).all()
  # Area fraction and aspect in range, up to the rounding of w and h to whole pixels.
  area = height * width
  assert ((w + .5) * (h + .5) >= scale[0] * area).all() and ((w - .5) * (h - .5) <= area).all()
  assert ((w + .5) / (h - .5) >= ratio[0]).all() and ((w - .5) / (h + .5) <= ratio[1]).all()
  rng = np.random.default_rng(0)
  hx, hy, hw, hh = np.array([host_box(rng, height, width, scale, ratio) for _ in range(n)]).T
  # Means agree within ~4 standard errors.
  assert abs((w * h).mean() - (hw * hh).mean()) / area < 0.025
  assert abs(np.log(w / h).mean() - np.log(hw / hh).mean()) < 0.03
  free = w < width
  assert abs((x[free] / (width - w[free])).mean() - 0.5) < 0.03  # positions uniform


@pytest.mark.parametrize('scale,ratio,expected', [
    ((0.95, 1.0), (3.0, 4.0), (0, 13, 64, 21)),  # image wider than allowed: full width
    ((0.95, 1.0), (0.1, 0.2), (27, 0, 10, 48)),  # image taller than allowed: full height
    ((1.2, 1.5), (1.0, 1.5), (0, 0, 64, 48))])   # nothing fits, aspect in range: all of it
def test_crop_box_fallback_equals_host_rule(scale, ratio, expected):
  assert host_box(np.random.default_rng(0), 48, 64, scale, ratio) == expected
  assert (draw_boxes(4000, 48, 64, scale, ratio) == np.array(expected)).all()


# --- RandAugment ops against PIL / timm. ---

def pil_coeffs(matrix):
  """Our output->input matrix (pixel centres at integers) as PIL AFFINE data (centres at .5)."""
  (a, b, c), (d, e, f) = np.asarray(matrix, np.float64)
  return a, b, c + 0.5 - 0.5 * (a + b), d, e, f + 0.5 - 0.5 * (d + e)


def sample_points(matrix, h, w):
  y, x = np.mgrid[0:h, 0:w]
  (a, b, c), (d, e, f) = np.asarray(matrix, np.float64)
  return a * x + b * y + c, d * x + e * y + f


GEOMETRIC = [
    ('rotate', A.rotate, lambda p, h, w: A._rotation(p, h, w), (17.3, -23.9, 29.99)),
    ('shear_x', A.shear_x, lambda p, h, w: A._shear(p, h, w, 0), (0.137, -0.271)),
    ('shear_y', A.shear_y, lambda p, h, w: A._shear(p, h, w, 1), (0.137, -0.271)),
    ('translate_x', A.translate_x, lambda p, h, w: A._translation(p, h, w, 0), (0.173, -0.311)),
    ('translate_y', A.translate_y, lambda p, h, w: A._translation(p, h, w, 1), (0.173, -0.311)),
]


@pytest.mark.parametrize('name,fn,matrix_fn,params', GEOMETRIC, ids=[g[0] for g in GEOMETRIC])
def test_geometric_ops_match_pil_affine_bilinear(name, fn, matrix_fn, params):
  h, w = IMG.shape[:2]
  pil = Image.fromarray(IMG)
  for p in params:
    matrix = matrix_fn(p, h, w)
    ref = pil.transform(pil.size, Image.AFFINE, pil_coeffs(matrix), Image.BILINEAR,
                        fillcolor=A.FILL_GRAY)
    d = diff(fn(IMG, p), ref).max(-1)
    sx, sy = sample_points(matrix, h, w)
    # A pixel centre within 1e-3 of the image edge may fall either side in float32 vs float64.
    clear = ((np.abs(sx + 0.5) > 1e-3) & (np.abs(sx - w + 0.5) > 1e-3)
             & (np.abs(sy + 0.5) > 1e-3) & (np.abs(sy - h + 0.5) > 1e-3))
    assert d[clear].max() <= 1 and (d > 0).mean() < 0.005, (p, d.max(), (d > 0).mean())
    if name == 'rotate':  # the matrix is PIL's own rotation
      ref = pil.rotate(p, Image.BILINEAR, fillcolor=A.FILL_GRAY)
      assert (diff(fn(IMG, p), ref).max(-1) > 0).mean() < 0.005


def test_warp_identity_is_exact_and_directions_follow_the_host():
  np.testing.assert_array_equal(A.affine(IMG, np.eye(2, 3)), IMG)
  np.testing.assert_array_equal(A.rotate(IMG, 0.0), IMG)
  # translate_x(+f) moves the content right by f * width (cv2's forward matrix on the host).
  out = np.asarray(A.translate_x(IMG, 0.25))
  np.testing.assert_array_equal(out[:, 16:], IMG[:, :-16])
  assert (out[:, :16] == A.FILL_GRAY).all()
  out = np.asarray(A.translate_y(IMG, -0.25))
  np.testing.assert_array_equal(out[:-12], IMG[12:])
  # Positive degrees turn counter-clockwise on screen: the top-right corner goes left.
  marker = np.zeros((33, 33, 3), np.uint8)
  marker[2:5, 28:31] = 255
  ys, xs = np.nonzero(np.asarray(A.rotate(marker, 90.0, 0))[..., 0] > 128)
  assert ys.mean() < 8 and xs.mean() < 8


@pytest.mark.parametrize('image', [IMG, (IMG // 3 + 60).astype(np.uint8),
                                   np.full((8, 8, 3), 9, np.uint8)], ids=['full', 'low', 'flat'])
def test_auto_contrast_matches_pil(image):
  ours, ref = np.asarray(A.auto_contrast(image)).astype(int), np.asarray(aa.auto_contrast(
      Image.fromarray(image))).astype(int)
  d = ours - ref
  # PIL computes int(i * 255 / (hi - lo) - lo * 255 / (hi - lo)) in float64: where the exact value
  # is an integer it can land just below it (e.g. lo=0, hi=25, i=25 gives 254). We take the exact
  # floor, so PIL is lower by one exactly there, and equal elsewhere.
  lo, hi = image.min((0, 1)), image.max((0, 1))
  exact = (image.astype(int) - lo) * 255 % np.maximum(hi - lo, 1) == 0
  assert (d[~exact] == 0).all() and np.isin(d[exact], (0, 1)).all()


@pytest.mark.parametrize('image', [IMG, (IMG // 3 + 60).astype(np.uint8), natural(20, 20, 3),
                                   np.full((8, 8, 3), 9, np.uint8)])
def test_equalize_matches_pil_exactly(image):
  # natural(20, 20): step 1, where PIL's table goes past 255 and point() clips it.
  np.testing.assert_array_equal(A.equalize(image), aa.equalize(Image.fromarray(image)))


def test_invert_posterize_solarize_solarize_add_match_timm_exactly():
  pil = Image.fromarray(IMG)
  np.testing.assert_array_equal(A.invert(IMG), aa.invert(pil))
  for bits in range(4, 9):
    np.testing.assert_array_equal(A.posterize(IMG, bits), aa.posterize(pil, bits))
  for threshold in (0, 30, 128, 200, 256):
    np.testing.assert_array_equal(A.solarize(IMG, threshold), aa.solarize(pil, threshold))
  for add in (0, 40, 110):
    np.testing.assert_array_equal(A.solarize_add(IMG, add), aa.solarize_add(pil, add))


@pytest.mark.parametrize('op', ['color', 'contrast', 'brightness', 'sharpness'])
def test_enhance_ops_match_pil_exactly(op):
  # Truncating float32 blends with the same degenerate images as ImageEnhance, op by op and
  # compiled (where XLA would fuse d + f * (x - d) into a multiply-add; 1.7 is a factor where
  # that moved 0.75% of the values).
  pil = Image.fromarray(IMG)
  fn = getattr(A, op)
  for factor in (0.1, 0.37, 1.0, 1.55, 1.7, 1.9):
    f = float(np.float32(factor))  # PIL's blend takes its factor as a C float
    ref = getattr(aa, op)(pil, f)
    np.testing.assert_array_equal(fn(IMG, f), ref, err_msg=str(f))
    np.testing.assert_array_equal(jax.jit(fn)(IMG, f), ref, err_msg=str(f))


def test_ops_work_under_jit_and_vmap_with_traced_parameters():
  images = np.stack([natural(24, 24, s) for s in range(3)])
  for fn, params in [(A.posterize, [4, 6, 8]), (A.contrast, [0.3, 1.0, 1.8]),
                     (A.rotate, [-20.0, 0.0, 11.0]), (A.sharpness, [0.2, 1.0, 1.7])]:
    batched = jax.jit(jax.vmap(fn))(images, jnp.asarray(params))
    for image, p, out in zip(images, params, batched):
      np.testing.assert_array_equal(out, fn(image, p))


# --- RandAugment. ---

def candidates(image, magnitude):
  """Every op of RAND_AUGMENT_OPS with either sign at a fixed magnitude (parameters rounded as
  float32, like the device)."""
  level = np.float32(magnitude) / np.float32(10)
  out = [A.auto_contrast(image), A.equalize(image), A.invert(image),
         A.posterize(image, 8 - int(np.round(4 * level))),
         A.solarize(image, 256 - int(np.round(256 * level))),
         A.solarize_add(image, int(np.round(110 * level)))]
  for sign in (-1.0, 1.0):
    factor = np.float32(1.0) + np.float32(sign * 0.9) * level
    out += [A.rotate(image, np.float32(sign * 30.0) * level), A.color(image, factor),
            A.contrast(image, factor), A.brightness(image, factor), A.sharpness(image, factor)]
    out += [fn(image, np.float32(sign * s) * level) for fn, s in
            ((A.shear_x, 0.3), (A.shear_y, 0.3), (A.translate_x, 0.45), (A.translate_y, 0.45))]
  return np.stack([np.asarray(o) for o in out])


@jax.jit
def one_slot(keys, image, magnitude, std, prob):
  return jax.vmap(lambda k: A.rand_augment(k, image, 1, magnitude, std, prob))(keys)


def test_rand_augment_applies_one_of_the_ops():
  image = natural(48, 64, 5)  # IMG's shape: the eager ops are compiled for it already
  cands = candidates(image, 7.0)
  outs = np.asarray(one_slot(jax.random.split(jax.random.key(3), 48), image, 7.0, 0.0, 1.0))
  matched = []
  for out in outs:
    agree = (diff(cands, out[None]).max(-1) == 0).mean((1, 2))
    assert agree.max() > 0.995, agree.max()  # one op, up to float32 ties in a warp
    matched.append(int(agree.argmax()))
  assert len(set(matched)) >= 12  # the ops are drawn from all of them


def test_rand_augment_determinism_probability_and_magnitude_noise():
  image = natural(48, 64, 6)
  keys = jax.random.split(jax.random.key(4), 128)
  first = np.asarray(one_slot(keys, image, 9.0, 0.5, 0.5))
  np.testing.assert_array_equal(first, one_slot(keys, image, 9.0, 0.5, 0.5))
  assert (np.asarray(one_slot(keys, image, 9.0, 0.5, 0.0)) == image).all()  # prob 0: identity
  unchanged = (first == image).all((1, 2, 3))
  assert 0.35 < unchanged.mean() < 0.65  # prob 1/2 (AutoContrast of a full-range image: no-op)
  assert len({o.tobytes() for o in first}) > 40  # different keys, different outputs
  # Always applied: a fixed magnitude gives at most 15 ops x 2 signs distinct outputs, a noisy
  # one many more.
  assert len({o.tobytes() for o in np.asarray(one_slot(keys, image, 7.0, 0.0, 1.0))}) <= 30
  assert len({o.tobytes() for o in np.asarray(one_slot(keys, image, 7.0, 3.0, 1.0))}) > 60


# --- Random erasing. ---

def test_random_erasing():
  h, w = 48, 64
  image = np.full((h, w, 3), 7, np.uint8)
  keys = jax.random.split(jax.random.key(5), 300)
  erase = jax.jit(jax.vmap(lambda k, p: A.random_erasing(k, image, p), in_axes=(0, None)))
  assert (np.asarray(erase(keys, 0.0)) == image).all()
  outs = np.asarray(erase(keys, 1.0))
  noise = []
  for out in outs:
    changed = (out != image).any(-1)
    ys, xs = np.nonzero(changed)
    assert ys.size, 'prob 1 erases'
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    assert changed[y0:y1, x0:x1].mean() > 0.99  # one rectangle: changed pixels fill their box
    eh, ew = y1 - y0, x1 - x0
    assert 0.02 * h * w <= (eh + .5) * (ew + .5) and (eh - .5) * (ew - .5) <= h * w / 3
    assert 0.3 <= (eh + .5) / (ew - .5) and (eh - .5) / (ew + .5) <= 3.3
    noise.append(out[y0:y1, x0:x1].ravel())
  noise = np.concatenate(noise)
  assert abs(noise.mean() - 127.5) < 1 and noise.min() == 0 and noise.max() == 255
  assert np.bincount(noise, minlength=256).min() > 0.8 * noise.size / 256  # uniform bytes
  erased = (np.asarray(erase(keys, 0.25)) != image).any((1, 2, 3)).mean()
  assert 0.17 < erased < 0.33


# --- Batched recipes. ---

def test_finetune_and_pretrain_views_jit_determinism_and_randomness():
  images = np.stack([natural(48, 48, 0)] * 3 + [natural(48, 48, 1)] * 3)
  finetune = jax.jit(lambda seed, x: A.finetune_views(batch_keys(seed, 6), x, size=32))
  pretrain = jax.jit(lambda seed, x: A.pretrain_views(batch_keys(seed, 6), x, size=32))
  for fn in (finetune, pretrain):
    out = fn(0, images)
    assert out.shape == (6, 32, 32, 3) and out.dtype == jnp.uint8
    np.testing.assert_array_equal(out, fn(0, images))
    assert (np.asarray(out) != np.asarray(fn(1, images))).any(-1).mean() > 0.5
    # Identical inputs at different batch positions get their own draws.
    assert not (np.asarray(out[0]) == np.asarray(out[1])).all()


def test_paired_views_share_the_draw():
  h = w = 64
  face = natural(h, w, 2)
  boxes = np.int32(regions.region_boxes('eyes_mouth', h, w))
  region = np.asarray(A.apply_regions(face, boxes, 0))
  mask = np.asarray(A.apply_regions(np.full_like(face, 255), boxes, 0))
  n, size = 8, 96
  keys = batch_keys(7, n)
  paired = jax.jit(lambda f, r: A.paired_views(keys, f, r, size=size, scale=(0.3, 1.0)))
  out_face, out_region = map(np.asarray, paired(np.stack([face] * n), np.stack([region] * n)))
  out_mask = np.asarray(paired(np.stack([mask] * n), np.stack([mask] * n))[1])
  assert out_face.shape == out_region.shape == (n, size, size, 3)
  checked = 0
  for f, r, m in zip(out_face, out_region, out_mask):
    # Well inside a kept box: the cubic filter reaches 2 source pixels, at most 96 / 30 * 2 < 7
    # output pixels here.
    keep = ndimage.binary_erosion(m[..., 0] == 255, np.ones((3, 3)), iterations=7)
    assert diff(f, r)[keep].max() <= 1
    checked += keep.sum()
  assert checked > 2000
  # Coordinate ramps: the face encodes (x, y) rising, the region falling; both decode to the
  # same source location at every output pixel.
  y, x = np.mgrid[0:h, 0:w]
  up = np.stack([4 * x, 4 * y, np.full_like(x, 128)], -1).astype(np.uint8)
  down = np.stack([252 - 4 * x, 252 - 4 * y, np.zeros_like(x)], -1).astype(np.uint8)
  out_up, out_down = map(np.asarray, paired(np.stack([up] * n), np.stack([down] * n)))
  src_up = out_up[..., :2].astype(float) / 4
  src_down = (252 - out_down[..., :2].astype(float)) / 4
  assert np.abs(src_up - src_down).max() <= 0.5  # rounding of both views to uint8
  assert np.ptp(src_up[:, 0, 0, 0]) > 5  # the draws differ between examples
