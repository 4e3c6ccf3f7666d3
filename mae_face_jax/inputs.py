"""A program's data, from its config: the dataset root (generating the demo data when asked), the
labelled splits and class weights, and this host's iterators (`input_pipeline.datasets`) over
them: pretraining, fine-tuning, fusion's paired views, and ordered evaluation passes.

Pretraining sources (`data.source`):
  'abaw'       every frame below `root`/cropped_aligned (`input_pipeline.abaw.load_frames`)
  'folder'     every image below `root` (`input_pipeline.folders.unlabeled_images`)
  'demo'       the procedural demo face videos, generated into `root` if not there yet
  'synthetic'  smooth random images made from the global example index, no files: host p's rows of
               step s are exactly rows [p·b, (p+1)·b) of the global batch s, so a run on any number
               of hosts sees the same global batches (multi-host tests, throughput benchmarks)
Fine-tuning and fusion read 'abaw' or 'demo'. Every training iterator yields uint8 RGB images and
has Grain's `get_state`/`set_state`, which the checkpoints store. Images come at their stored
size; the programs' steps crop, augment or resize them (`mae_face_jax.images`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np
from absl import logging

from input_pipeline import abaw, datasets, demo_data, folders
from mae_face_jax import classification


def dataset_root(data_config: Any, workdir: str) -> str:
  """`data.root`, or for `data.source='demo'` the demo dataset there (generated on first use)."""
  root = data_config.get('root') or ''
  if data_config.source == 'demo':
    return demo_data.ensure_demo_data(root or os.path.join(workdir, 'demo_data'))
  if data_config.source != 'abaw':
    raise ValueError(f'config.data.source={data_config.source!r} is not one of abaw, demo '
                     '(pretraining also reads folder, synthetic)')
  if not root:
    raise ValueError('config.data.root is required for data.source=abaw (the Aff-Wild2 root)')
  return root


def local_batch_size(global_batch: int) -> int:
  if global_batch % jax.process_count():
    raise ValueError(f'batch_size {global_batch} is not divisible by {jax.process_count()} hosts')
  return global_batch // jax.process_count()


def labelled_splits(config: Any, workdir: str
                    ) -> tuple[str, abaw.FrameSource, abaw.FrameSource, np.ndarray]:
  """The dataset root, training and validation splits, and the loss's class weights (from the
  training labels, as `config.class_weights` says)."""
  root = dataset_root(config.data, workdir)
  train = abaw.load_split(root, config.data.train_split)
  val = abaw.load_split(root, config.data.val_split)
  num_classes = len(abaw.CLASSES)
  counts = np.bincount(np.asarray(train.label, np.int64), minlength=num_classes)[:num_classes]
  weights = classification.class_weights(config.class_weights, counts)
  logging.info('%d train frames (per class %s), %d validation frames; class weights %s',
               len(train), counts.tolist(), len(val), np.round(weights, 2).tolist())
  return root, train, val, weights


def finetune_iterator(config: Any, source: abaw.FrameSource) -> Iterator:
  """This host's endless, checkpointable iterator over a training split of one view (stored-size
  images, and the region boxes of a region view; the step augments)."""
  d = config.data
  return iter(datasets.finetune_dataset(
      source, batch_size=local_batch_size(config.batch_size), seed=config.seed, view=config.view,
      region_margin=d.region_margin, class_balanced=d.class_balanced,
      balance_power=d.get('balance_power', 1.0), num_workers=d.num_workers,
      num_threads=d.num_threads))


def paired_iterator(config: Any, source: abaw.FrameSource) -> Iterator:
  """This host's endless iterator over training frames and their region boxes (fusion)."""
  d = config.data
  return iter(datasets.paired_dataset(
      source, batch_size=local_batch_size(config.batch_size), variant=config.region_view,
      train=True, seed=config.seed, region_margin=d.region_margin, num_workers=d.num_workers,
      num_threads=d.num_threads))


def eval_batches(config: Any, source: abaw.FrameSource, view: str, paired: bool = False
                 ) -> Iterator[dict[str, np.ndarray]]:
  """One ordered pass over this host's contiguous part of `source` (one view, or with `paired`
  the face and `config.region_view`). Every host yields the same number of batches (hosts with
  fewer frames pad with rows of mask 0), so a collective eval step never waits forever."""
  d = config.data
  local = local_batch_size(config.eval_batch_size)
  common = dict(batch_size=local, region_margin=d.region_margin, num_workers=0,
                num_threads=d.num_threads)
  if paired:
    ds = datasets.paired_dataset(source, variant=config.region_view, train=False, **common)
  else:
    ds = datasets.eval_dataset(source, view=view, **common)
  it, blank = iter(ds), None
  for _ in range(math.ceil(math.ceil(len(source) / jax.process_count()) / local)):
    batch = next(it, None)
    if batch is None:
      batch = {k: np.zeros_like(v) for k, v in blank.items()}
    blank = blank or batch
    yield batch


# --- pretraining -------------------------------------------------------------------------------

class _SyntheticImages(grain.transforms.Map):
  """Global example index → a smooth random uint8 image (a few random sinusoids per channel)."""

  def __init__(self, size: int, seed: int):
    self.size, self.seed = size, seed
    self.grid = np.mgrid[0:size, 0:size].astype(np.float32) / size

  def map(self, index: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, int(index)])
    yy, xx = self.grid
    freq = rng.uniform(0.5, 4.0, (3, 3, 2)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (3, 3)).astype(np.float32)
    img = np.zeros((self.size, self.size, 3), np.float32)
    for c in range(3):
      for k in range(3):
        img[..., c] += np.sin(2 * np.pi * (freq[c, k, 0] * yy + freq[c, k, 1] * xx) + phase[c, k])
    return {'image': np.round((img / 3.0 + 1.0) * 127.5).astype(np.uint8)}


def synthetic_dataset(global_batch: int, image_size: int, seed: int,
                      shard: tuple[int, int] | None = None) -> grain.IterDataset:
  """Endless batches; host `index` of `count` gets its contiguous slice of every global batch."""
  index, count = shard if shard is not None else (jax.process_index(), jax.process_count())
  local = global_batch // count

  def global_index(i: int) -> int:  # i-th example this host reads → its index in the global stream
    return (i // local) * global_batch + index * local + i % local

  ds = grain.MapDataset.range(0, 2**62).map(global_index).map(_SyntheticImages(image_size, seed))
  return ds.batch(local, drop_remainder=True).to_iter_dataset()


def pretrain_iterator(config: Any, workdir: str, num_workers: int | None = None
                      ) -> tuple[Iterator, int | None]:
  """This host's iterator over its share of the global batch, and the number of examples per epoch
  (None for the endless synthetic source). `num_workers` overrides `data.num_workers`."""
  data, size = config.data, config.model.img_size
  local = local_batch_size(config.batch_size)
  if data.source == 'synthetic':
    return iter(synthetic_dataset(config.batch_size, size, config.seed)), None
  if data.source == 'folder':
    if not data.get('root'):
      raise ValueError("config.data.root is required for data.source='folder'")
    records = folders.unlabeled_images(data.root)
  else:
    records = abaw.load_frames(dataset_root(data, workdir))
  ds = datasets.pretrain_dataset(records, batch_size=local, seed=config.seed,
                                 num_workers=(data.get('num_workers', 0) if num_workers is None
                                              else num_workers),
                                 num_threads=data.get('num_threads', 2))
  return iter(ds), len(records)
