"""TFDS ArrayRecord builds of frame sources, and read-back as a grain random-access source.

For users who pre-pack data for TPU hosts: one build holds several splits (e.g. ABAW Train_Set,
Validation_Set and test), each as ``array_record`` shards. Images are stored as their encoded file
bytes (no re-encoding, and no TensorFlow needed: ``tfds.features.Image`` would encode with TF).
An unreadable image is packed as-is and counted/skipped by the pipeline's decoder like a file.

Public API:
    build(splits: dict[str, source], data_dir: str) -> str            build directory
    build_abaw(root, data_dir, images_dir='cropped_aligned') -> str   train, validation (+ test)
    build_folder(root, data_dir, labeled=False) -> str                split 'train'
    load_build(build_dir: str, split: str) -> TfdsSource              records like abaw.FrameSource

A ``TfdsSource`` yields ``{'image_bytes', 'label', 'video', 'frame', 'landmarks': ''}`` and has
``videos`` and ``label`` (from the build's metadata), so every ``datasets`` mode accepts it.

Command line:
    python -m input_pipeline.tfds_build --root DATA --data_dir OUT [--images_dir cropped_aligned]
    python -m input_pipeline.tfds_build --folder IMAGES --data_dir OUT [--labeled]
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import abaw, folders

log = logging.getLogger(__name__)
NAME = 'face_frames'
VERSION = '1.0.0'


def _video_name(source: Any, record: dict) -> str:
  videos = getattr(source, 'videos', None)
  return videos[record['video']] if videos is not None and record['video'] >= 0 else ''


class FaceFrames(tfds.core.GeneratorBasedBuilder):
  """Frames with encoded image bytes, label, video name/id and frame number."""

  VERSION = tfds.core.Version(VERSION)
  # tfds derives code_path from the module's package and, for a package outside tfds, needs the
  # `importlib_resources` backport, which is not a dependency here; there are no checksums to find.
  code_path = None

  def __init__(self, *, splits: dict[str, Any] | None = None, **kwargs):
    self._splits = splits or {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    metadata = tfds.core.MetadataDict()
    for split, source in self._splits.items():
      metadata[split] = {'videos': list(getattr(source, 'videos', ())),
                         'label': [int(source[i]['label']) for i in range(len(source))]
                         if not hasattr(source, 'label') else np.asarray(source.label).tolist()}
    return tfds.core.DatasetInfo(
        builder=self,
        description='Face frames packed by mae-face-jax input_pipeline.tfds_build.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(), dtype=np.object_),  # encoded bytes
            'label': tfds.features.Scalar(np.int64),
            'video': tfds.features.Text(),
            'video_id': tfds.features.Scalar(np.int64),
            'frame': tfds.features.Scalar(np.int64),
        }),
        metadata=metadata,
        disable_shuffling=True,  # keep video/frame order: eval and smoothing rely on it
    )

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(source) for split, source in self._splits.items()}

  def _generate_examples(self, source):
    unreadable = 0
    for i in range(len(source)):
      record = source[i]
      try:
        with open(record['path'], 'rb') as f:
          data = f.read()
      except OSError:
        data = b''
      unreadable += not data
      yield i, {'image': data, 'label': int(record['label']), 'video': _video_name(source, record),
                'video_id': int(record['video']), 'frame': int(record['frame'])}
    if unreadable:
      log.warning('%d missing or empty image files packed as empty records', unreadable)


def build(splits: dict[str, Any], data_dir: str) -> str:
  """Writes the splits (name -> frame source) as an ArrayRecord build; returns its directory."""
  if not splits or not all(len(s) for s in splits.values()):
    raise ValueError('build needs at least one split and no empty split')
  builder = FaceFrames(splits=splits, data_dir=data_dir, file_format='array_record')
  builder.download_and_prepare()
  return str(builder.data_dir)


def build_abaw(root: str, data_dir: str, images_dir: str = abaw.IMAGES_DIR) -> str:
  """ABAW splits 'train', 'validation' and, when the test list exists, 'test'."""
  splits = {'train': abaw.load_split(root, 'Train_Set', images_dir),
            'validation': abaw.load_split(root, 'Validation_Set', images_dir)}
  if os.path.isfile(os.path.join(root, abaw.TEST_LIST)):
    splits['test'] = abaw.load_test_set(root, images_dir=images_dir)
  return build(splits, data_dir)


def build_folder(root: str, data_dir: str, labeled: bool = False) -> str:
  """An image folder as split 'train' (labels from class sub-folders when ``labeled``)."""
  records = folders.labeled_images(root)[0] if labeled else folders.unlabeled_images(root)
  return build({'train': records}, data_dir)


class TfdsSource:
  """Random-access frame records of one split of a build (picklable for worker processes)."""

  def __init__(self, build_dir: str, split: str):
    if not os.path.isfile(os.path.join(build_dir, 'dataset_info.json')):
      raise FileNotFoundError(f'{build_dir}: not a TFDS build directory (no dataset_info.json)')
    builder = tfds.builder_from_directory(build_dir)
    if split not in builder.info.splits:
      raise KeyError(f'{build_dir}: no split {split!r}, has {list(builder.info.splits)}')
    self._data = builder.as_data_source(split)
    meta = builder.info.metadata.get(split, {}) if builder.info.metadata else {}
    self.videos = tuple(meta.get('videos', ()))
    self.label = np.asarray(meta.get('label', ()), np.int64)
    if len(self.label) != len(self._data):  # metadata missing: labels cost one pass
      self.label = np.array([self._data[i]['label'] for i in range(len(self._data))], np.int64)

  def __len__(self) -> int:
    return len(self._data)

  def __getitem__(self, i: int) -> dict:
    r = self._data[i]
    return {'image_bytes': r['image'], 'label': int(r['label']), 'video': int(r['video_id']),
            'frame': int(r['frame']), 'landmarks': ''}


def load_build(build_dir: str, split: str) -> TfdsSource:
  """A split of a build as a grain random-access source (``tfds`` ArrayRecord data source)."""
  return TfdsSource(build_dir, split)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description='Pack frames as a TFDS ArrayRecord build.')
  parser.add_argument('--data_dir', required=True, help='TFDS data directory to write into')
  group = parser.add_mutually_exclusive_group(required=True)
  group.add_argument('--root', help='ABAW dataset root')
  group.add_argument('--folder', help='plain image folder')
  parser.add_argument('--images_dir', default=abaw.IMAGES_DIR)
  parser.add_argument('--labeled', action='store_true', help='folder has one sub-folder per class')
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO)
  out = (build_abaw(args.root, args.data_dir, args.images_dir) if args.root else
         build_folder(args.folder, args.data_dir, args.labeled))
  print(out)


if __name__ == '__main__':
  main()
