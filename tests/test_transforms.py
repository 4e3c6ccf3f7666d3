"""Transforms: decode with skips, crops, flips, RandAugment-style ops, paired views, normalisation."""


import cv2
import numpy as np
import pytest

from input_pipeline import transforms as T


def jpeg_bytes(seed=0, size=32):
  img = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
  return cv2.imencode('.jpg', img)[1].tobytes()


def test_decode_ok_and_rgb(tmp_path):
  bgr = np.zeros((8, 8, 3), np.uint8)
  bgr[..., 2] = 200  # red in BGR
  path = str(tmp_path / 'red.png')
  cv2.imwrite(path, bgr)
  out = T.Decode().map({'path': path, 'label': 3})
  assert out['label'] == 3 and out['image'].shape == (8, 8, 3)
  assert out['image'][0, 0].tolist() == [200, 0, 0]  # RGB order
  out = T.Decode().map({'image_bytes': jpeg_bytes(), 'label': 1})
  assert out['image'].shape == (32, 32, 3)


@pytest.mark.parametrize('content', [b'', b'garbage bytes, not an image', jpeg_bytes()[:300],
                                     jpeg_bytes()[:-40], None])
def test_decode_bad_files_become_skip_markers(tmp_path, content):
  path = str(tmp_path / 'bad.jpg')
  if content is not None:  # None: the file vanished after listing
    with open(path, 'wb') as f:
      f.write(content)
  out = T.Decode().map({'path': path, 'label': 0, 'epoch': 2})
  assert out == {T.SKIPPED: path, 'epoch': 2}
  # Later transforms pass the marker through untouched.
  rng = np.random.default_rng(0)
  for t in (T.RandomResizedCrop(16), T.RandomFlip(), T.RandAugment(), T.RandomErasing(1.0)):
    assert t.random_map(out, rng) is out
  assert T.ResizeCenterCrop(16).map(out) is out and T.SelectKeys(['image']).map(out) is out


def test_random_resized_crop_box_respects_scale_and_ratio():
  rng = np.random.default_rng(0)
  for _ in range(500):
    x, y, w, h = T.random_resized_crop_box(rng, 112, 112, (0.2, 1.0), (3 / 4, 4 / 3))
    assert 0 <= x and x + w <= 112 and 0 <= y and y + h <= 112
    assert 0.2 * 112 * 112 * 0.9 <= w * h <= 112 * 112
    assert 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15
  # Impossible ranges fall back to a centred crop with a clamped ratio.
  x, y, w, h = T.random_resized_crop_box(rng, 100, 40, (2.0, 3.0), (1.0, 1.0))
  assert (x, y, w, h) == (0, 30, 40, 40)


def paired_record(seed=0):
  img = np.random.default_rng(seed).integers(0, 255, (48, 48, 3), dtype=np.uint8)
  return {'image': img, 'region_image': img.copy(), 'label': 1}


def test_views_get_identical_augmentation():
  for seed in range(20):
    rng = np.random.default_rng(seed)
    rec = paired_record(seed)
    for t in (T.RandomResizedCrop(24), T.RandomFlip(), T.RandAugment(num_ops=3, prob=1.0),
              T.RandomErasing(1.0)):
      rec = t.random_map(rec, rng)
    assert rec['image'].shape == (24, 24, 3) and rec['image'].dtype == np.uint8
    np.testing.assert_array_equal(rec['image'], rec['region_image'])


def test_random_maps_are_deterministic_in_the_rng():
  def run(seed):
    rng = np.random.default_rng(seed)
    rec = paired_record()
    for t in (T.RandomResizedCrop(24), T.RandomFlip(), T.RandAugment(), T.RandomErasing(0.5)):
      rec = t.random_map(rec, rng)
    return rec['image']
  np.testing.assert_array_equal(run(1), run(1))
  assert any((run(1) != run(s)).any() for s in range(2, 6))


def test_flip_flips():
  rec = paired_record()
  flipped = [T.RandomFlip().random_map(rec, np.random.default_rng(s))['image'] for s in range(20)]
  n_flipped = sum((f == rec['image'][:, ::-1]).all() for f in flipped)
  n_same = sum((f == rec['image']).all() for f in flipped)
  assert n_flipped + n_same == 20 and 3 <= n_flipped <= 17


@pytest.mark.parametrize('name', sorted(T.RAND_AUGMENT_OPS))
def test_rand_augment_ops(name):
  img = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8), (5, 5), 2)
  out = T.RAND_AUGMENT_OPS[name](img, 0.9, -1.0)
  assert out.shape == img.shape and out.dtype == np.uint8
  if name not in ('AutoContrast', 'Equalize'):  # their effect is independent of level and may be tiny
    assert (out != img).any(), name
  if name in ('Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Posterize', 'Solarize',
              'SolarizeAdd', 'Color', 'Contrast', 'Brightness', 'Sharpness'):
    np.testing.assert_allclose(T.RAND_AUGMENT_OPS[name](img, 0.0, 1.0), img, atol=1)


def test_resize_center_crop():
  img = np.zeros((60, 80, 3), np.uint8)
  img[:, 40:] = 255
  out = T.ResizeCenterCrop(32, crop_pct=1.0).map({'image': img})['image']
  assert out.shape == (32, 32, 3)
  assert out[:, :14].max() < 10 and out[:, 18:].min() > 245  # centred: the edge stays in the middle
  out = T.ResizeCenterCrop(28, crop_pct=0.875).map({'image': np.zeros((112, 112, 3), np.uint8)})['image']
  assert out.shape == (28, 28, 3)


def test_select_keys_and_collate():
  rec = {'image': np.full((2, 2, 3), 255, np.uint8), 'label': 4, 'video': 1, 'frame': 7, 'path': 'x'}
  sel = T.SelectKeys(['image', 'label', 'frame']).map(rec)
  assert set(sel) == {'image', 'label', 'frame'} and sel['frame'].dtype == np.int32
  img = np.random.default_rng(0).integers(0, 256, (2, 2, 3), dtype=np.uint8)
  batch = T.collate([{'image': img, 'label': np.int32(1), T.CARRIED: [[0, 'a.jpg']]},
                     {T.CARRIED: [[0, 'b.jpg']]},  # skips with no good record left to ride on
                     {'image': sel['image'], 'label': np.int32(2), T.CARRIED: []}])
  assert batch[T.CARRIED] == [[0, 'a.jpg'], [0, 'b.jpg']]
  assert batch['image'].shape == (2, 2, 2, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].dtype == np.int32
  np.testing.assert_array_equal(batch['image'][0], img)
  np.testing.assert_array_equal(batch['image'][1], rec['image'])
