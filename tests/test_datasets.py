"""Grain pipelines: layout, labels through the pipeline, region boxes, ordering, determinism,
sharding, exact resume, class balancing, skipped bad images, worker processes, input tree left
untouched."""

import json
import logging
import os

import cv2
import numpy as np
import pytest

from input_pipeline import abaw, datasets, transforms as T

HEADER = ','.join(abaw.CLASSES)
# video -> labels per frame (-1: unannotated). Every image is a flat colour encoding (label, frame, video).
VIDEOS = {'v1': [0, 0, 4, 4, 4, 7, -1, 7, 1, 2, 2, 0],
          'v2_left': [5, 5, 6, 6, 3, 3, 4],
          'v2_right': [7, 7, 7, 0, 0]}


def colour(label, frame, video):
  return (20 + 25 * label, 8 * frame, 60 + 60 * video)  # RGB


def make_tree(root, size=16):
  for v, (name, labels) in enumerate(VIDEOS.items()):
    d = os.path.join(root, abaw.IMAGES_DIR, name)
    os.makedirs(d)
    for k, label in enumerate(labels, start=1):
      img = np.empty((size, size, 3), np.uint8)
      img[:] = colour(max(label, 0), k, v)[::-1]  # written as BGR
      cv2.imwrite(os.path.join(d, f'{k:05d}.jpg'), img, [cv2.IMWRITE_JPEG_QUALITY, 100])
    ann = os.path.join(root, abaw.ANNOTATIONS_DIR, 'Train_Set')
    os.makedirs(ann, exist_ok=True)
    with open(os.path.join(ann, name + '.txt'), 'w') as f:
      f.write(HEADER + '\n' + ''.join(f'{l}\n' for l in labels))
  return root


@pytest.fixture
def source(tmp_path):
  return abaw.load_split(make_tree(str(tmp_path)), 'Train_Set')


def pixels(batch_image):
  """Centre pixel of each image (uint8 RGB) as float."""
  return batch_image[:, batch_image.shape[1] // 2, batch_image.shape[2] // 2].astype(np.float64)


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_eval_order_labels_and_padding(source):
  n = len(source)
  assert n == sum(l >= 0 for labels in VIDEOS.values() for l in labels) == 23
  batches = list(datasets.eval_dataset(source, batch_size=5, shard=(0, 1)))
  assert len(batches) == 5
  for b in batches:
    assert b['image'].shape == (5, 16, 16, 3) and b['image'].dtype == np.uint8
    assert {k: v.dtype for k, v in b.items() if k != 'image'} == {
        'label': np.int32, 'video': np.int32, 'frame': np.int32, 'mask': np.float32}
  cat = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  np.testing.assert_array_equal(cat['mask'], [1] * 23 + [0] * 2)
  real = cat['mask'] == 1
  np.testing.assert_array_equal(cat['video'][real], source.video)
  np.testing.assert_array_equal(cat['frame'][real], source.frame)
  np.testing.assert_array_equal(cat['label'][real], source.label)
  # The image shown is the one of that video's frame, and carries that frame's label.
  want = np.array([colour(l, f, v) for l, f, v in zip(source.label, source.frame, source.video)])
  np.testing.assert_allclose(pixels(cat['image'])[real], want, atol=3)
  assert 7 not in cat['frame'][real & (cat['video'] == 0)]  # the -1 frame was dropped


def test_training_modes_layout_and_labels(source):
  b = next(iter(datasets.pretrain_dataset(source, batch_size=4, shard=(0, 1))))
  assert list(b) == ['image'] and b['image'].shape == (4, 16, 16, 3)
  ds = datasets.finetune_dataset(source, batch_size=4, shard=(0, 1), view='face')
  for b in take(iter(ds), 6):
    assert sorted(b) == ['image', 'label']
    # The pixel's red channel encodes the label: each image arrives with its own label.
    np.testing.assert_allclose(pixels(b['image'])[:, 0], 20 + 25 * b['label'], atol=3)
  b = next(iter(datasets.finetune_dataset(source, batch_size=4, shard=(0, 1), view='eyes_mouth')))
  assert sorted(b) == ['boxes', 'image', 'label']
  assert b['boxes'].shape == (4, T.MAX_BOXES, 4) and b['boxes'].dtype == np.int32
  b = next(iter(datasets.paired_dataset(source, batch_size=4, shard=(0, 1), train=True)))
  assert sorted(b) == ['boxes', 'frame', 'image', 'label', 'video']
  b = next(iter(datasets.paired_dataset(source, batch_size=4, shard=(0, 1))))
  assert 'mask' in b and b['boxes'].shape == (4, T.MAX_BOXES, 4)


def test_region_boxes_are_the_frames_boxes(tmp_path):
  from input_pipeline import regions
  root = str(tmp_path)
  d = os.path.join(root, abaw.IMAGES_DIR, 'v')
  os.makedirs(d)
  for k in (1, 2):
    cv2.imwrite(os.path.join(d, f'{k:05d}.jpg'), np.zeros((112, 112, 3), np.uint8))
  # Frame 2 has its own 5 landmarks (shifted right by 6 pixels): its boxes follow them.
  five = regions.TEMPLATE_112 + np.array([6.0, 0.0], np.float32)
  np.savetxt(os.path.join(d, '00002.txt'), five)
  src = abaw.load_frames(root)
  b = next(iter(datasets.paired_dataset(src, batch_size=2, shard=(0, 1))))
  want = [regions.region_boxes('eyes_mouth', 112, 112),
          regions.region_boxes('eyes_mouth', 112, 112, five)]
  for boxes, expected in zip(b['boxes'], want):
    np.testing.assert_array_equal(boxes[:len(expected)], expected)
    assert not boxes[len(expected):].any()  # unused rows are empty boxes


def test_paired_region_view_read_from_disk(tmp_path):
  from input_pipeline import regions
  root = str(tmp_path)
  d = os.path.join(root, abaw.IMAGES_DIR, 'v')
  os.makedirs(d)
  for k in (1, 2):
    img = cv2.GaussianBlur(np.random.default_rng(k).integers(0, 255, (112, 112, 3), np.uint8), (9, 9), 3)
    cv2.imwrite(os.path.join(d, f'{k:05d}.jpg'), img, [cv2.IMWRITE_JPEG_QUALITY, 100])
  regions.write_region_views(root, 'eyes')
  src = abaw.load_frames(root)
  kw = dict(batch_size=2, shard=(0, 1), variant='eyes')
  disk = next(iter(datasets.paired_dataset(src, region_images_dir='cropped_aligned_eyes', **kw)))
  fly = next(iter(datasets.paired_dataset(src, **kw)))
  np.testing.assert_array_equal(disk['image'], fly['image'])
  assert 'boxes' not in disk and 'region_image' not in fly
  fly['region_image'] = np.stack([regions.synthesize_regions(im, 'eyes') for im in fly['image']])
  # Mean difference in uint8 levels; the bounds are 0.05 and 0.3 in normalised units (÷ 255·std),
  # taken at the channel std that makes each one strictest.
  level = lambda a, b: np.abs(a.astype(np.int32) - b).mean()
  assert level(disk['region_image'], fly['region_image']) < 0.05 * 255 * 0.224  # JPEG re-encoding
  assert level(disk['region_image'], disk['image']) > 0.3 * 255 * 0.229  # it is not the face again


def finetune(source, seed=0, **kw):
  return datasets.finetune_dataset(source, batch_size=4, seed=seed, shard=(0, 1), **kw)


def test_same_seed_same_batches_other_seed_differs(source):
  a, b = take(iter(finetune(source, 3)), 8), take(iter(finetune(source, 3)), 8)
  assert_batches_equal(a, b)
  c = take(iter(finetune(source, 4)), 8)
  assert any((x['image'] != y['image']).any() for x, y in zip(a, c))


def test_epochs_reshuffle_and_cover(source):
  ds = datasets.paired_dataset(source, batch_size=1, shard=(0, 1), train=True,
                               num_epochs=2, seed=1)
  keys = [(int(b['video'][0]), int(b['frame'][0])) for b in ds]
  assert len(keys) == 46
  first, second = keys[:23], keys[23:]
  assert sorted(first) == sorted(second) == sorted(zip(source.video.tolist(), source.frame.tolist()))
  assert first != second  # each epoch has its own order


@pytest.mark.parametrize('train', [True, False])
def test_two_host_shards_disjoint_and_cover(source, train):
  seen = []
  for index in range(2):
    ds = datasets.paired_dataset(source, batch_size=1, train=train, num_epochs=1,
                                 shard=(index, 2))
    seen.append([(int(b['video'][0]), int(b['frame'][0])) for b in ds if b.get('mask', [1])[0] == 1])
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == sorted(zip(source.video.tolist(), source.frame.tolist()))
  assert abs(len(seen[0]) - len(seen[1])) <= 1
  if not train:  # eval shards are contiguous blocks in video/frame order
    assert seen[0] + seen[1] == list(zip(source.video.tolist(), source.frame.tolist()))


def test_default_shard_is_jax_process(source):
  assert datasets.host_shard() == (0, 1)
  a = take(iter(finetune(source, 5)), 2)
  b = take(iter(datasets.finetune_dataset(source, batch_size=4, seed=5)), 2)
  assert_batches_equal(a, b)


@pytest.mark.parametrize('kw', [{}, {'class_balanced': True}, {'view': 'eyes_mouth'}])
def test_checkpoint_restore_gives_identical_next_batches(source, kw):
  it = iter(finetune(source, 7, **kw))
  take(it, 9)  # crosses an epoch boundary (23 records, batches of 4)
  state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
  expected = take(it, 5)
  restored = iter(finetune(source, 7, **kw))
  restored.set_state(state)
  assert_batches_equal(take(restored, 5), expected)


def test_class_balanced_sampling_flattens_classes(source):
  counts = np.bincount(source.label, minlength=8)
  assert counts.max() / counts[counts > 0].min() >= 3
  labels = np.concatenate([b['label'] for b in take(iter(finetune(source, 0, class_balanced=True)), 200)])
  freq = np.bincount(labels, minlength=8) / len(labels)
  present = counts > 0
  np.testing.assert_allclose(freq[present], 1 / present.sum(), atol=0.04)
  assert freq[~present].sum() == 0


def test_bad_images_counted_logged_once_and_reported(source, caplog):
  corrupt, empty = source[2]['path'], source[10]['path']
  with open(corrupt, 'wb') as f:
    f.write(b'\xff\xd8\xff truncated')
  open(empty, 'wb').close()
  caplog.set_level(logging.INFO, logger='input_pipeline.datasets')
  ds = datasets.paired_dataset(source, batch_size=3, shard=(0, 1), train=True,
                               num_epochs=2)
  it = iter(ds)
  batches = list(it)
  # Training batches keep their shape: an unreadable image's row holds another image of its batch.
  assert len(batches) == 46 // 3 and all(len(b['frame']) == 3 for b in batches)
  bad = {(int(source.video[i]), int(source.frame[i])) for i in (2, 10)}
  assert not {(int(v), int(f)) for b in batches for v, f in zip(b['video'], b['frame'])} & bad
  state = it.get_state()
  assert state['skipped_total'] == 4
  path_logs = [r.message for r in caplog.records if 'unreadable image skipped' in r.message]
  assert sorted(path_logs) == sorted([f'unreadable image skipped: {corrupt}',
                                      f'unreadable image skipped: {empty}'])
  epoch_logs = [r.message for r in caplog.records if r.message.startswith('epoch')]
  assert epoch_logs == ['epoch 0: 2 unreadable images skipped', 'epoch 1: 2 unreadable images skipped']
  # Evaluation drops them too and keeps the order of the rest.
  ev = list(datasets.eval_dataset(source, batch_size=8, shard=(0, 1)))
  assert sum(b['mask'].sum() for b in ev) == 21


def snapshot(root):
  out = {}
  for dirpath, _, files in os.walk(root):
    for f in files:
      p = os.path.join(dirpath, f)
      out[p] = (os.stat(p).st_size, os.stat(p).st_mtime_ns)
  return out


def test_input_tree_untouched(tmp_path):
  root = make_tree(str(tmp_path))
  before = snapshot(root)
  src = abaw.load_split(root, 'Train_Set')
  for ds in (finetune(src, view='eyes'),
             datasets.eval_dataset(src, batch_size=4, shard=(0, 1)),
             datasets.pretrain_dataset(src, batch_size=4, shard=(0, 1))):
    take(iter(ds), 3)
  assert snapshot(root) == before


def test_bad_arguments(source):
  with pytest.raises(ValueError, match='unknown view'):
    finetune(source, view='nose')
  with pytest.raises(ValueError, match='shard index'):
    datasets.eval_dataset(source, batch_size=2, shard=(2, 2))
  with pytest.raises(ValueError, match='needs labelled records'):
    datasets.finetune_dataset(abaw.load_frames(os.path.dirname(source.root)), batch_size=2,
                              shard=(0, 1), class_balanced=True)
  with pytest.raises(ValueError, match='no records'):
    datasets.eval_dataset([], batch_size=2, shard=(0, 1))


def test_worker_processes_cover_data_and_resume(source):
  def run(state=None):
    it = iter(datasets.paired_dataset(source, batch_size=1, seed=2, shard=(0, 1),
                                      train=True, num_epochs=1, num_workers=2))
    try:
      if state is not None:
        it.set_state(state)
        return None, list(it)
      head = take(it, 5)
      return (head, json.loads(json.dumps(it.get_state()))), list(it)
    finally:
      it.close()
  (head, state), rest = run()
  keys = sorted((int(b['video'][0]), int(b['frame'][0])) for b in head + rest)
  assert keys == sorted(zip(source.video.tolist(), source.frame.tolist()))
  assert_batches_equal(run(state)[1], rest)  # restored in fresh worker processes
  # Batches do not depend on the number of workers.
  with_workers = head + rest
  alone = list(datasets.paired_dataset(source, batch_size=1, seed=2, shard=(0, 1), train=True,
                                       num_epochs=1))
  assert_batches_equal(with_workers, alone)
  # Eval with workers keeps the global video/frame order.
  ev = list(datasets.eval_dataset(source, batch_size=4, shard=(0, 1), num_workers=2))
  frames = np.concatenate([b['frame'][b['mask'] == 1] for b in ev])
  np.testing.assert_array_equal(frames, source.frame)
