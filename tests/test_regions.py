"""Region boxes and synthesis: masks (outside == fill, inside == face), landmarks, the writer CLI."""

import os

import cv2
import numpy as np
import pytest

from input_pipeline import abaw, regions


def random_face(size=112, seed=0):
  return np.random.default_rng(seed).integers(1, 255, (size, size, 3), dtype=np.uint8)


def inside(box, point):
  x0, y0, x1, y1 = box
  return x0 <= point[0] < x1 and y0 <= point[1] < y1


def test_template_boxes_cover_their_parts():
  t = regions.TEMPLATE_112
  eyes, = regions.region_boxes('eyes', 112, 112)
  mouth, = regions.region_boxes('mouth', 112, 112)
  assert inside(eyes, t[0]) and inside(eyes, t[1]) and not inside(eyes, t[3])
  assert inside(mouth, t[3]) and inside(mouth, t[4]) and not inside(mouth, t[0])
  assert not inside(eyes, t[2]) and not inside(mouth, t[2])  # nose tip only in eyes_nose_mouth
  nose = regions.region_boxes('eyes_nose_mouth', 112, 112)[1]
  assert inside(nose, t[2])
  assert eyes[1] < t[0][1] - 15  # brows (about 10 px above the eyes) are kept
  big = regions.region_boxes('eyes_mouth', 224, 224)
  small = regions.region_boxes('eyes_mouth', 112, 112)
  np.testing.assert_allclose(np.array(big), 2 * np.array(small), atol=2)


@pytest.mark.parametrize('variant', regions.VARIANTS)
@pytest.mark.parametrize('fill', [0, (10, 20, 30)])
def test_mask_outside_fill_inside_face(variant, fill):
  face = random_face()
  out = regions.synthesize_regions(face, variant, fill)
  mask = regions.region_mask(112, 112, regions.region_boxes(variant, 112, 112))
  assert 0.05 < mask.mean() < 0.7
  np.testing.assert_array_equal(out[mask], face[mask])
  np.testing.assert_array_equal(out[~mask], np.broadcast_to(np.asarray(fill, np.uint8), out[~mask].shape))
  assert (face[~mask] != out[~mask]).any()  # the fill really replaced something


def test_landmarks_override_template():
  five = regions.TEMPLATE_112.copy()
  assert regions.region_boxes('eyes_mouth', 112, 112, five) == regions.region_boxes('eyes_mouth', 112, 112)
  shifted = five + np.array([10, 5], np.float32)
  a = np.array(regions.region_boxes('eyes', 112, 112, shifted, margin=0))
  b = np.array(regions.region_boxes('eyes', 112, 112, five, margin=0))
  np.testing.assert_allclose(a - b, [[10, 5, 10, 5]], atol=1)
  pts = np.zeros((68, 2), np.float32)
  pts[17:27] = [[30 + i * 5, 40] for i in range(10)]
  pts[36:42], pts[42:48] = [35, 50], [75, 50]
  pts[48:68] = [[40 + i, 90 + (i % 3)] for i in range(20)]
  eyes, mouth = regions.region_boxes('eyes_mouth', 112, 112, pts, margin=0)
  assert eyes[0] <= 30 and eyes[2] >= 75 and eyes[1] <= 40 and eyes[3] >= 50
  assert mouth[0] <= 40 and mouth[2] >= 59 and mouth[1] <= 90 and mouth[3] >= 92
  with pytest.raises(ValueError, match='unknown region variant'):
    regions.region_boxes('nose', 112, 112)


def snapshot(root):
  out = {}
  for dirpath, _, files in os.walk(root):
    for f in files:
      p = os.path.join(dirpath, f)
      with open(p, 'rb') as fh:
        out[os.path.relpath(p, root)] = (fh.read(), os.stat(p).st_mtime_ns)
  return out


def test_write_region_views_layout_content_and_input_untouched(tmp_path):
  root = str(tmp_path)
  images = os.path.join(root, abaw.IMAGES_DIR)
  for v in ('a', 'b_left'):
    os.makedirs(os.path.join(images, v))
    for k in (1, 2):
      cv2.imwrite(os.path.join(images, v, f'{k:05d}.jpg'), cv2.GaussianBlur(random_face(seed=k), (9, 9), 3))
  open(os.path.join(images, 'a', '00003.jpg'), 'wb').close()  # empty file: counted skip
  with open(os.path.join(images, 'b_left', '00004.jpg'), 'wb') as f:
    f.write(b'not a jpeg at all')  # corrupt: counted skip
  before = snapshot(images)
  totals = regions.write_region_views(root, 'eyes_mouth', fill=0)
  assert snapshot(images) == before
  out = os.path.join(root, 'cropped_aligned_eyes_mouth')
  assert totals == {'output': out, 'written': 4, 'existing': 0, 'skipped': 2}
  assert sorted(os.listdir(out)) == ['a', 'b_left']
  assert sorted(os.listdir(os.path.join(out, 'a'))) == ['00001.jpg', '00002.jpg']
  face = cv2.imread(os.path.join(images, 'a', '00001.jpg'))
  view = cv2.imread(os.path.join(out, 'a', '00001.jpg'))
  expected = regions.synthesize_regions(face, 'eyes_mouth', 0)
  assert np.abs(view.astype(int) - expected).mean() < 3  # equal up to JPEG re-encoding
  mask = regions.region_mask(112, 112, regions.region_boxes('eyes_mouth', 112, 112))
  far = cv2.erode((~mask).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
  assert view[far].mean() < 0.5 and view[far].max() <= 10  # black fill, up to JPEG ringing
  # Resumable: a second run finds every frame done; the CLI runs the same function.
  regions.main(['--root', root, '--variant', 'eyes_mouth'])
  assert regions.write_region_views(root, 'eyes_mouth')['existing'] == 4
  with pytest.raises(FileNotFoundError, match=os.path.join(str(tmp_path / 'nope'), abaw.IMAGES_DIR)):
    regions.write_region_views(str(tmp_path / 'nope'), 'eyes')
