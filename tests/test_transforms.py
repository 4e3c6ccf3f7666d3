"""The host's per-record work: decode (RGB, bytes or path), the stored size, off-size images
resized, region boxes, and DecodeBatch's skips (training rows refilled, evaluation rows left
out)."""

import cv2
import numpy as np
import pytest

from input_pipeline import regions, transforms as T


def jpeg_bytes(seed=0, size=32):
  img = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
  return cv2.imencode('.jpg', img)[1].tobytes()


def test_read_image_rgb_from_path_and_bytes(tmp_path):
  bgr = np.zeros((8, 8, 3), np.uint8)
  bgr[..., 2] = 200  # red in BGR
  path = str(tmp_path / 'red.png')
  cv2.imwrite(path, bgr)
  assert T.read_image({'path': path})[0, 0].tolist() == [200, 0, 0]  # RGB order
  assert T.read_image({'image_bytes': jpeg_bytes()}).shape == (32, 32, 3)


@pytest.mark.parametrize('content', [b'', b'garbage bytes, not an image', jpeg_bytes()[:300],
                                     jpeg_bytes()[:-40], None])
def test_read_image_bad_files_give_none(tmp_path, content):
  path = str(tmp_path / 'bad.jpg')
  if content is not None:  # None: the file vanished after listing
    with open(path, 'wb') as f:
      f.write(content)
  assert T.read_image({'path': path}) is None


def records(tmp_path, sizes):
  out = []
  for k, (h, w) in enumerate(sizes):
    img = np.full((h, w, 3), 10 * k, np.uint8)
    img[:, w // 2:] = 200  # right half bright: survives resizing at the same relative place
    path = str(tmp_path / f'{k:05d}.png')
    cv2.imwrite(path, img)
    out.append({'path': path, 'label': k, 'video': 0, 'frame': k + 1})
  return out


def sampler(recs, batch_size):
  def draw(index, stop):
    rows = range(index * batch_size, min((index + 1) * batch_size, stop))
    return [(recs[i % len(recs)], i // len(recs)) for i in rows]
  return draw


def test_stored_size_and_off_size_images_resized(tmp_path):
  recs = records(tmp_path, [(40, 40), (40, 40), (80, 60), (20, 20)])
  assert T.stored_size(recs) == (40, 40)
  decode = T.DecodeBatch(sampler(recs, 4), 4, ('image', 'label'), (40, 40), 'eyes_mouth')
  batch = decode.map(0)
  assert batch['image'].shape == (4, 40, 40, 3) and batch['image'].dtype == np.uint8
  np.testing.assert_array_equal(batch['label'], [0, 1, 2, 3])
  for img in batch['image']:  # the bright half stays the right half
    assert img[:, 24:].min() > 190 and img[:, :16].max() < 40
  # Boxes are those of the resized image: the template boxes of the stored size (up to the
  # rounding of boxes found at another size and scaled: 2 pixels).
  template = regions.region_boxes('eyes_mouth', 40, 40)
  for boxes in batch['boxes']:
    np.testing.assert_allclose(boxes[:len(template)], template, atol=2)


def test_decode_batch_skips(tmp_path):
  recs = records(tmp_path, [(16, 16)] * 5)
  with open(recs[1]['path'], 'wb') as f:
    f.write(b'not an image')
  keys = ('image', 'label', 'frame')
  train = T.DecodeBatch(sampler(recs, 5), 5, keys, (16, 16)).map(0)
  assert len(train['label']) == 5 and 1 not in train['label']  # the row refilled from the batch
  assert train[T.CARRIED] == [[0, recs[1]['path']]]
  np.testing.assert_array_equal(train['epoch'], [0, 0, 0, 0])  # the rows read
  ev = T.DecodeBatch(sampler(recs, 5), 5, keys, (16, 16), fill=False).map(0)
  np.testing.assert_array_equal(ev['label'], [0, 2, 3, 4])
  np.testing.assert_array_equal(ev['frame'], [1, 3, 4, 5])
  for k in range(5):
    with open(recs[k]['path'], 'wb') as f:
      f.write(b'')
  with pytest.raises(ValueError, match='no image of a whole batch'):
    T.DecodeBatch(sampler(recs, 5), 5, keys, (16, 16)).map(0)


def test_decode_batch_threads_give_the_same_batch(tmp_path):
  recs = records(tmp_path, [(24, 24)] * 7)
  one = T.DecodeBatch(sampler(recs, 7), 7, ('image', 'label'), (24, 24), threads=1).map(0)
  three = T.DecodeBatch(sampler(recs, 7), 7, ('image', 'label'), (24, 24), threads=3).map(0)
  for k in ('image', 'label'):
    np.testing.assert_array_equal(one[k], three[k])
