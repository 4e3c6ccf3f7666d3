"""Which images a pretraining run reads: a config's `data` section → this host's batch iterator.

Sources:
  'abaw'       every frame below `root`/cropped_aligned (`input_pipeline.abaw.load_frames`)
  'folder'     every image below `root` (`input_pipeline.folders.unlabeled_images`)
  'demo'       the procedural demo face videos, generated into `root` if not there yet
  'synthetic'  smooth random images made from the global example index, no files: host p's rows of
               step s are exactly rows [p·b, (p+1)·b) of the global batch s, so a run on any number
               of hosts sees the same global batches (multi-host tests, throughput benchmarks)
Every iterator yields {'image': uint8 (b, S, S, 3)} RGB like the pipeline, and has Grain's
`get_state`/`set_state`, which the checkpoints store.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import numpy as np

from input_pipeline import abaw, datasets, folders
from mae_face_jax import labeled_data


def source_records(data_config: Any, workdir: str) -> Any:
  """The random-access record source for 'abaw', 'folder' or 'demo'."""
  if data_config.source == 'folder':
    if not data_config.get('root'):
      raise ValueError("config.data.root is required for data.source='folder'")
    return folders.unlabeled_images(data_config.root)
  return abaw.load_frames(labeled_data.dataset_root(data_config, workdir))


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


def pretrain_iterator(config: Any, workdir: str) -> tuple[grain.DatasetIterator, int | None]:
  """This host's iterator over its share of the global batch, and the number of examples per epoch
  (None for the endless synthetic source)."""
  data, size = config.data, config.model.img_size
  if config.batch_size % jax.process_count():
    raise ValueError(f'batch_size {config.batch_size} is not divisible by {jax.process_count()} hosts')
  local = config.batch_size // jax.process_count()
  if data.source == 'synthetic':
    return iter(synthetic_dataset(config.batch_size, size, config.seed)), None
  records = source_records(data, workdir)
  ds = datasets.pretrain_dataset(records, batch_size=local, image_size=size, seed=config.seed,
                                 scale=tuple(data.get('scale', (0.2, 1.0))),
                                 num_workers=data.get('num_workers', 0),
                                 num_threads=data.get('num_threads', 2))
  return iter(ds), len(records)
