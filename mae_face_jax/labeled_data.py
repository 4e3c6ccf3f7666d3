"""ABAW-layout data for the programs: the dataset root (generating the demo data when asked), and
for stage 2 the labelled splits and this host's iterators over them."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from input_pipeline import abaw, datasets, demo_data


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


def class_counts(source: abaw.FrameSource, num_classes: int) -> np.ndarray:
  return np.bincount(np.asarray(source.label, np.int64), minlength=num_classes)[:num_classes]


def train_iterator(config: Any, source: abaw.FrameSource, view: str) -> Iterator:
  """This host's endless, augmented, checkpointable iterator over a training split."""
  d = config.data
  ra = d.get('rand_augment', None)
  return iter(datasets.finetune_dataset(
      source, batch_size=local_batch_size(config.batch_size), image_size=config.model.img_size,
      seed=config.seed, view=view, region_fill=d.region_fill, region_margin=d.region_margin,
      scale=tuple(d.scale), rand_augment=tuple(ra) if ra else None, erase_prob=d.erase_prob,
      class_balanced=d.class_balanced, balance_power=d.get('balance_power', 1.0),
      num_workers=d.num_workers, num_threads=d.num_threads))


def eval_batches(config: Any, source: abaw.FrameSource, view: str) -> Iterator[dict[str, np.ndarray]]:
  """One ordered pass over `source`. Every host yields the same number of batches (hosts with
  fewer frames pad with rows of mask 0), so a collective eval step never waits forever."""
  d = config.data
  local = local_batch_size(config.eval_batch_size)
  per_host = math.ceil(len(source) / jax.process_count())
  it = iter(datasets.eval_dataset(
      source, batch_size=local, image_size=config.model.img_size, crop_pct=d.crop_pct, view=view,
      region_fill=d.region_fill, region_margin=d.region_margin, num_workers=0,
      num_threads=d.num_threads))
  blank = None
  for _ in range(math.ceil(per_host / local)):
    batch = next(it, None)
    if batch is None:
      batch = {k: np.zeros_like(v) for k, v in blank.items()}
    blank = blank or batch
    yield batch
