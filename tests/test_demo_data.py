"""Demo dataset: ABAW layout, determinism, no regeneration, imbalance, classes that look different."""

import hashlib
import os

import cv2
import numpy as np
import pytest

from input_pipeline import abaw, datasets, demo_data

SMALL = dict(num_videos=6, frames=(12, 16), size=48, seed=3)


def digest(root):
  h = hashlib.sha256()
  for dirpath, dirnames, files in os.walk(root):
    dirnames.sort()
    for f in sorted(files):
      p = os.path.join(dirpath, f)
      h.update(os.path.relpath(p, root).encode())
      with open(p, 'rb') as fh:
        h.update(fh.read())
  return h.hexdigest()


@pytest.fixture(scope='module')
def small(tmp_path_factory):
  return demo_data.ensure_demo_data(str(tmp_path_factory.mktemp('demo') / 'data'), **SMALL)


def test_layout_readable_by_the_abaw_readers(small):
  assert os.path.isfile(os.path.join(small, demo_data.MARKER))
  train = abaw.load_split(small, 'Train_Set')
  val = abaw.load_split(small, 'Validation_Set')
  test = abaw.load_test_set(small)
  assert len(train) and len(val) and len(test)
  names = set(train.videos) | set(val.videos) | set(test.videos)
  assert len(names) == 6 and not set(train.videos) & set(val.videos)
  assert any(n.endswith('_left') for n in names) and any(n.endswith('_right') for n in names)
  for n in names:  # both halves of a two-person clip land in the same split
    if n.endswith('_left'):
      for split in (train, val, test):
        assert (n in split.videos) == (n[:-5] + '_right' in split.videos)
  img = datasets.T.read_image(train[0])
  assert img.shape == (48, 48, 3)
  b = next(iter(datasets.eval_dataset(val, batch_size=2, shard=(0, 1))))
  assert b['image'].shape == (2, 48, 48, 3)  # the stored size: the step resizes


def test_deterministic_and_not_regenerated(small, tmp_path):
  again = demo_data.ensure_demo_data(str(tmp_path / 'again'), **SMALL)
  assert digest(again) == digest(small)
  other = demo_data.ensure_demo_data(str(tmp_path / 'other'), **dict(SMALL, seed=4))
  assert digest(other) != digest(small)
  marker = os.path.join(small, demo_data.MARKER)
  mtime = os.stat(marker).st_mtime_ns
  assert demo_data.ensure_demo_data(small, **SMALL) == small
  assert os.stat(marker).st_mtime_ns == mtime
  foreign = tmp_path / 'foreign'
  foreign.mkdir()
  (foreign / 'keep.txt').write_text('user data')
  with pytest.raises(FileExistsError, match=str(foreign)):
    demo_data.ensure_demo_data(str(foreign))
  assert os.listdir(foreign) == ['keep.txt']
  assert not [n for n in os.listdir(tmp_path) if '.partial-' in n]


def test_concurrent_generation_keeps_the_first(tmp_path, monkeypatch):
  root = str(tmp_path / 'shared')
  real = demo_data.generate_demo_data

  def racing(target, *args):  # another process completes `root` while this one is generating
    real(root, *args)
    real(target, *args)
  monkeypatch.setattr(demo_data, 'generate_demo_data', racing)
  assert demo_data.ensure_demo_data(root, **SMALL) == root
  assert os.path.isfile(os.path.join(root, demo_data.MARKER))
  assert os.listdir(tmp_path) == ['shared']  # this process's temporary copy is gone


def test_labels_imbalanced_segmented_and_noisy():
  rng = np.random.default_rng(0)
  labels = np.concatenate([demo_data._video_script(300, rng)[1] for _ in range(40)])
  counts = np.bincount(labels[labels >= 0], minlength=8)
  common = counts[[0, 4, 7]].min()
  assert common > 3 * counts[[2, 3]].max()  # Neutral/Happiness/Other vs Disgust/Fear
  assert (labels == -1).any()
  valid = labels[labels >= 0]
  changes = (np.diff(valid) != 0).mean()
  assert 0.02 < changes < 0.2  # segments (mostly constant) with some label noise


def test_classes_are_learnable_from_the_face():
  """A nearest-centroid classifier on small grey faces beats chance (1/8) by far, across identities
  and pose jitter: classes differ in appearance."""
  def features(c, seed):
    rng = np.random.default_rng(seed)
    identity = demo_data._identity(rng, 112)
    img = demo_data.render_face(identity, demo_data.PROTOTYPES[c], rng)
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[30:110, 16:96].astype(float)
    grey = cv2.resize(grey, (20, 20), interpolation=cv2.INTER_AREA)
    return ((grey - grey.mean()) / (grey.std() + 1e-6)).ravel()
  centroids = np.stack([np.mean([features(c, s) for s in range(12)], 0) for c in range(8)])
  hits = [np.argmin(((centroids - features(c, s)) ** 2).sum(1)) == c
          for c in range(8) for s in range(100, 110)]
  assert np.mean(hits) > 0.5
