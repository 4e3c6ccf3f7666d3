"""TFDS ArrayRecord build (no TensorFlow) and read-back as a grain source feeding the same pipeline."""

import os

import numpy as np
import pytest

from input_pipeline import abaw, datasets, folders, tfds_build
from test_datasets import assert_batches_equal, make_tree


def test_build_abaw_and_read_back(tmp_path):
  root = make_tree(str(tmp_path / 'data'))
  with open(os.path.join(root, abaw.TEST_LIST), 'w') as f:
    f.write('v2_right\n')
  # make_tree writes Train_Set only; the build also wants Validation_Set.
  val = os.path.join(root, abaw.ANNOTATIONS_DIR, 'Validation_Set')
  os.makedirs(val)
  with open(os.path.join(val, 'v1.txt'), 'w') as f:
    f.write(','.join(abaw.CLASSES) + '\n1\n2\n')
  build_dir = tfds_build.build_abaw(root, str(tmp_path / 'tfds'))
  assert any(n.startswith('face_frames-train.array_record') for n in os.listdir(build_dir))
  train = abaw.load_split(root, 'Train_Set')
  packed = tfds_build.load_build(build_dir, 'train')
  assert len(packed) == len(train) and packed.videos == train.videos
  np.testing.assert_array_equal(packed.label, train.label)
  for i in (0, 7, len(train) - 1):
    r, p = train[i], packed[i]
    with open(r['path'], 'rb') as f:
      assert p['image_bytes'] == f.read()
    assert (p['label'], p['video'], p['frame']) == (r['label'], r['video'], r['frame'])
  assert len(tfds_build.load_build(build_dir, 'validation')) == 2
  assert len(tfds_build.load_build(build_dir, 'test')) == 5
  # The packed source feeds the pipeline and gives the same batches as the files.
  kw = dict(batch_size=4, shard=(0, 1))
  assert_batches_equal(list(datasets.eval_dataset(packed, **kw)), list(datasets.eval_dataset(train, **kw)))
  it_a, it_b = iter(datasets.finetune_dataset(packed, seed=1, class_balanced=True, **kw)), iter(
      datasets.finetune_dataset(train, seed=1, class_balanced=True, **kw))
  assert_batches_equal([next(it_a) for _ in range(3)], [next(it_b) for _ in range(3)])
  with pytest.raises(KeyError, match='no split'):
    tfds_build.load_build(build_dir, 'nope')
  with pytest.raises(FileNotFoundError, match='not a TFDS build'):
    tfds_build.load_build(str(tmp_path), 'train')


def test_build_labeled_folder(tmp_path):
  root = make_tree(str(tmp_path / 'data'))
  folder = os.path.join(root, abaw.IMAGES_DIR)  # sub-folders v1, v2_left, v2_right as 3 classes
  build_dir = tfds_build.build_folder(folder, str(tmp_path / 'tfds'), labeled=True)
  packed = tfds_build.load_build(build_dir, 'train')
  records, _ = folders.labeled_images(folder)
  assert len(packed) == len(records) == 24
  assert [packed[i]['label'] for i in range(len(packed))] == [r['label'] for r in records]
  assert packed.videos == ()
