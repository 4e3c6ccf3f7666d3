"""ABAW layout readers: annotations, frame<->label mapping, -1 dropping, _left/_right, bad input."""

import os

import cv2
import numpy as np
import pytest

from input_pipeline import abaw

HEADER = ','.join(abaw.CLASSES)


def write_jpeg(path, value=128, size=8):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  cv2.imwrite(str(path), np.full((size, size, 3), value, np.uint8))


def write_annotation(root, split, video, lines, header=HEADER):
  d = os.path.join(root, abaw.ANNOTATIONS_DIR, split)
  os.makedirs(d, exist_ok=True)
  path = os.path.join(d, video + '.txt')
  with open(path, 'w') as f:
    f.write(header + '\n' + ''.join(f'{l}\n' for l in lines))
  return path


@pytest.fixture
def tree(tmp_path):
  """a: labels 0,-1,4,7,2 with frame 4's image missing; b_left / b_right; c in validation."""
  root = str(tmp_path)
  images = os.path.join(root, abaw.IMAGES_DIR)
  for k in (1, 2, 3, 5):
    write_jpeg(os.path.join(images, 'a', f'{k:05d}.jpg'))
  for k in range(1, 4):
    write_jpeg(os.path.join(images, 'b_left', f'{k:05d}.jpg'))
    write_jpeg(os.path.join(images, 'b_right', f'{k:05d}.jpg'))
  for k in range(1, 3):
    write_jpeg(os.path.join(images, 'c', f'{k:05d}.jpg'))
  write_annotation(root, 'Train_Set', 'a', [0, -1, 4, 7, 2])
  write_annotation(root, 'Train_Set', 'b_left', [1, 1, 3])
  write_annotation(root, 'Train_Set', 'b_right', [5, 6, 6])
  write_annotation(root, 'Validation_Set', 'c', [6, -1])
  return root


def test_frame_label_mapping_and_drops(tree):
  src = abaw.load_split(tree, 'Train_Set')
  assert src.videos == ('a', 'b_left', 'b_right')
  records = [src[i] for i in range(len(src))]
  # a: frame 2 is -1 (dropped), frame 4 is annotated but its image is missing (counted skip).
  got = [(src.videos[r['video']], r['frame'], r['label'], os.path.basename(r['path'])) for r in records]
  assert got == [('a', 1, 0, '00001.jpg'), ('a', 3, 4, '00003.jpg'), ('a', 5, 2, '00005.jpg'),
                 ('b_left', 1, 1, '00001.jpg'), ('b_left', 2, 1, '00002.jpg'),
                 ('b_left', 3, 3, '00003.jpg'), ('b_right', 1, 5, '00001.jpg'),
                 ('b_right', 2, 6, '00002.jpg'), ('b_right', 3, 6, '00003.jpg')]
  assert src.missing == 1
  assert all(os.path.isfile(r['path']) for r in records)
  assert src.image_location(1) == 'a/00003.jpg'
  val = abaw.load_split(tree, 'Validation_Set')
  assert len(val) == 1 and val[0]['label'] == 6 and val.videos == ('c',)


def test_read_annotation_keeps_minus_one_and_trailing_blank(tmp_path):
  path = write_annotation(str(tmp_path), 'Train_Set', 'v', [3, -1, 0, ''])
  np.testing.assert_array_equal(abaw.read_annotation(path), [3, -1, 0])


@pytest.mark.parametrize('header,lines,line_no,what', [
    ('Neutral,Anger,Disgust,Fear,Happy,Sadness,Surprise,Other', [0], 1, 'wrong header'),
    (HEADER, [0, 'x', 1], 3, 'not an integer'),
    (HEADER, [0, 1, 8], 4, 'out of range'),
    (HEADER, [-2], 2, 'out of range'),
    (HEADER, [0, '', 1], 3, 'not an integer'),
])
def test_bad_annotation_names_file_and_line(tmp_path, header, lines, line_no, what):
  path = write_annotation(str(tmp_path), 'Train_Set', 'v', lines, header=header)
  with pytest.raises(ValueError, match=f'{path}:{line_no}:.*{what}'):
    abaw.read_annotation(path)


def test_bad_annotation_surfaces_from_load_split(tree):
  path = write_annotation(tree, 'Train_Set', 'a', [0, 1.5])
  with pytest.raises(ValueError, match=f'{path}:3'):
    abaw.load_split(tree, 'Train_Set')


def test_missing_root_and_empty_images(tmp_path):
  missing = str(tmp_path / 'nope')
  with pytest.raises(FileNotFoundError, match=f'{missing}.*Train_Set'):
    abaw.load_split(missing, 'Train_Set')
  root = str(tmp_path / 'empty')
  write_annotation(root, 'Train_Set', 'a', [0, 1])
  with pytest.raises(FileNotFoundError, match=os.path.join(root, abaw.IMAGES_DIR)):
    abaw.load_split(root, 'Train_Set')
  os.makedirs(os.path.join(root, abaw.IMAGES_DIR))
  with pytest.raises(FileNotFoundError, match='no images'):
    abaw.load_split(root, 'Train_Set')
  with pytest.raises(FileNotFoundError, match='no <video>/<frame:05d>.jpg'):
    abaw.load_frames(root)


def test_test_list_and_all_frames(tree):
  with open(os.path.join(tree, abaw.TEST_LIST), 'w') as f:
    f.write('b_right\n\nc\n')
  test = abaw.load_test_set(tree)
  assert test.videos == ('b_right', 'c')
  assert [(test[i]['video'], test[i]['frame'], test[i]['label']) for i in range(len(test))] == [
      (0, 1, -1), (0, 2, -1), (0, 3, -1), (1, 1, -1), (1, 2, -1)]
  frames = abaw.load_frames(tree)
  assert frames.videos == ('a', 'b_left', 'b_right', 'c') and len(frames) == 4 + 3 + 3 + 2


def test_landmark_files(tree):
  video = os.path.join(tree, abaw.IMAGES_DIR, 'b_left')
  pts = np.arange(136, dtype=np.float32).reshape(68, 2)
  with open(os.path.join(video, '00002.pts'), 'w') as f:
    f.write('version: 1\nn_points: 68\n{\n' + ''.join(f'{x} {y}\n' for x, y in pts) + '}\n')
  src = abaw.load_split(tree, 'Train_Set')
  recs = {(src.videos[src[i]['video']], src[i]['frame']): src[i] for i in range(len(src))}
  assert recs[('b_left', 1)]['landmarks'] == ''
  assert recs[('b_left', 2)]['landmarks'].endswith('b_left/00002.pts')
  np.testing.assert_array_equal(abaw.read_landmarks(recs[('b_left', 2)]['landmarks']), pts)
  five = os.path.join(video, '00003.txt')
  with open(five, 'w') as f:
    f.write('1,2\n3,4\n5,6\n7,8\n9,10\n')
  assert abaw.read_landmarks(five).shape == (5, 2)
  with open(five, 'w') as f:
    f.write('1 2\n3 4\n')
  with pytest.raises(ValueError, match='5 or 68'):
    abaw.read_landmarks(five)
