"""Plain image folders: unlabeled recursive listing, class sub-folders, bad roots."""

import os

import cv2
import numpy as np
import pytest

from input_pipeline import abaw, folders


def touch_jpeg(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  cv2.imwrite(str(path), np.zeros((4, 4, 3), np.uint8))


def test_unlabeled_recursive_sorted(tmp_path):
  for rel in ('b/x/2.jpg', 'a/1.png', 'c.JPG', 'b/x/deep/3.jpeg'):
    touch_jpeg(tmp_path / rel)
  (tmp_path / 'notes.txt').write_text('not an image')
  records = folders.unlabeled_images(str(tmp_path))
  rel = [os.path.relpath(r['path'], tmp_path) for r in records]
  assert rel == ['c.JPG', 'a/1.png', 'b/x/2.jpg', 'b/x/deep/3.jpeg']
  assert {r['label'] for r in records} == {-1} and {r['video'] for r in records} == {-1}


def test_labeled_sorted_classes_and_fixed_order(tmp_path):
  for rel in ('sad/1.jpg', 'sad/2.jpg', 'happy/1.jpg', 'happy/more/2.jpg', 'happy/3.jpg'):
    touch_jpeg(tmp_path / rel)
  records, names = folders.labeled_images(str(tmp_path))
  assert names == ('happy', 'sad')
  assert [r['label'] for r in records] == [0, 0, 0, 1, 1]
  # Class names given (ABAW order): sub-folders match case-insensitively.
  os.rename(tmp_path / 'happy', tmp_path / 'HAPPINESS')
  os.rename(tmp_path / 'sad', tmp_path / 'sadness')
  records, names = folders.labeled_images(str(tmp_path), abaw.CLASSES)
  assert names == abaw.CLASSES
  assert sorted(r['label'] for r in records) == [4, 4, 4, 5, 5]


def test_bad_roots(tmp_path):
  missing = str(tmp_path / 'missing')
  with pytest.raises(FileNotFoundError, match=missing):
    folders.unlabeled_images(missing)
  with pytest.raises(FileNotFoundError, match=missing):
    folders.labeled_images(missing)
  (tmp_path / 'empty' / 'cls').mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match='no images'):
    folders.unlabeled_images(str(tmp_path / 'empty'))
  with pytest.raises(FileNotFoundError, match='one sub-folder per class'):
    folders.labeled_images(str(tmp_path / 'empty'))
  with pytest.raises(ValueError, match="'cls' is not one of"):
    folders.labeled_images(str(tmp_path / 'empty'), ['a', 'b'])
