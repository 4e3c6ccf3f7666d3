"""Grain pipelines, one function per mode: pretrain, finetune, eval, paired.

Each function takes a random-access ``source`` of frame records (``abaw.load_split`` /
``load_frames`` / ``load_test_set``, ``folders.*_images``, ``tfds_build.load_build``, or any sequence of
dicts with 'path' or 'image_bytes', 'label', 'video', 'frame') and returns a ``grain.IterDataset``.
``it = iter(ds)`` yields dicts of numpy arrays; ``it.get_state()`` / ``it.set_state(state)`` checkpoint
and restore it exactly (the state is JSON-serialisable; ``state['skipped_total']`` counts the
unreadable images skipped so far).

Order of operations: source -> per-host shard (jax.process_index() of jax.process_count(), or
``shard=(index, count)``) -> seeded shuffle (or class-balanced sampling) -> repeat -> decode (OpenCV) ->
region view -> augmentation -> drop unreadable images -> batch -> count and report the unreadable
images (``skips``). With ``num_workers`` training modes run everything up to the
batch in worker processes (each batches its own records); eval modes move records, keeping order.

Batch layout (B = batch_size, S = image_size), all numpy:
    'image'         uint8 (B, S, S, 3)    RGB; programs normalise on the device (mae_face_jax.images)
    'region_image'  uint8 (B, S, S, 3)    paired mode only
    'label'         int32 (B,)            -1 where unlabeled (test set, pretraining folders)
    'video'         int32 (B,)            index into ``source.videos`` (-1 for image folders)
    'frame'         int32 (B,)            1-based frame number (-1 for image folders)
    'mask'          float32 (B,)          eval/paired-eval only: 0 for padding rows of the last batch

Signatures (keyword-only after ``source``):
    pretrain_dataset(source, *, batch_size, image_size=224, seed=0, num_epochs=None,
                     scale=(0.2, 1.0), shard=None, num_workers=0, num_threads=0)
        keys image. MAE recipe: RandomResizedCrop bicubic + flip.
    finetune_dataset(source, *, batch_size, image_size=224, seed=0, num_epochs=None, view='face',
                     region_fill=0, region_margin=0.1, scale=(0.08, 1.0), rand_augment=(2, 9.0, 0.5),
                     erase_prob=0.25, class_balanced=False, balance_power=1.0, shard=None,
                     num_workers=0, num_threads=0)
        keys image, label. view 'face' or a region variant synthesised on the fly.
    eval_dataset(source, *, batch_size, image_size=224, crop_pct=0.875, view='face', region_fill=0,
                 region_margin=0.1, shard=None, num_workers=0, num_threads=0)
        keys image, label, video, frame, mask; one pass, ordered by video then frame, last batch padded.
    paired_dataset(source, *, batch_size, image_size=224, variant='eyes_mouth', train=False, seed=0,
                   num_epochs=None, region_fill=0, region_margin=0.1, region_images_dir=None,
                   scale=(0.08, 1.0), crop_pct=0.875, shard=None, num_workers=0, num_threads=0)
        keys image, region_image, label, video, frame (+ mask when not train). Both views get the same
        crop and flip (train) or resize and centre crop (eval). ``region_images_dir`` reads a written
        view (``cropped_aligned_<variant>``) instead of synthesising it.

``num_epochs=None`` repeats forever (training loops count steps); each epoch is reshuffled. With a
finite ``num_epochs``, training modes drop the short batch that ends the stream (one per worker).
``num_threads`` are grain reader threads in the consuming process (0: records are made on demand;
measured on 2 cores, threads cost more per record than they overlap, because the work is GIL-bound).
``num_workers > 0`` adds grain ``mp_prefetch`` worker processes: the caller needs an
``if __name__ == '__main__'`` guard (workers are spawned) and absl flags parsed (``absl.app.run``; if
they are not, this module marks them parsed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from input_pipeline import regions, skips, transforms as T

Shard = tuple[int, int]


def host_shard() -> Shard:
  """(jax.process_index(), jax.process_count()): the only place the input pipeline touches jax."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index(), jax.process_count()


def shard_dataset(ds: grain.MapDataset, shard: Shard | None, contiguous: bool = False
                  ) -> grain.MapDataset:
  """This host's part: every count-th record (training) or a contiguous block (ordered eval)."""
  index, count = shard if shard is not None else host_shard()
  if not 0 <= index < count:
    raise ValueError(f'shard index {index} not in [0, {count})')
  if contiguous:
    n = len(ds)
    return ds[index * n // count:(index + 1) * n // count]
  return ds[index::count]


class _AddEpoch(grain.transforms.MapWithIndex):
  """Tags each record with its epoch so skips can be reported when an epoch ends."""

  def __init__(self, epoch_len: int):
    self.epoch_len = max(epoch_len, 1)

  def map_with_index(self, index: int, record: dict) -> dict:
    return {**record, 'epoch': index // self.epoch_len}


class _BalancedPick(grain.transforms.RandomMap):
  """Element i -> a record index drawn with weight count(label)^-power (with replacement)."""

  def __init__(self, labels: np.ndarray, power: float):
    labels = np.asarray(labels)
    if not (labels >= 0).any():
      raise ValueError('class-balanced sampling needs labelled records; all labels are -1')
    counts = np.bincount(labels[labels >= 0], minlength=1)
    weights = np.where(labels >= 0, counts[np.maximum(labels, 0)].astype(np.float64) ** -power, 0)
    self.cdf = np.cumsum(weights) / weights.sum()

  def random_map(self, index: int, rng: np.random.Generator) -> int:
    return int(min(np.searchsorted(self.cdf, rng.random(), side='right'), len(self.cdf) - 1))


class _Lookup(grain.transforms.Map):
  def __init__(self, source: Any):
    self.source = source

  def map(self, index: int) -> dict:
    return self.source[index]


def _labels(ds: grain.MapDataset) -> np.ndarray:
  return np.array([ds[i]['label'] for i in range(len(ds))], np.int64)


def _ordered_source(source: Any, shard: Shard | None, contiguous: bool) -> grain.MapDataset:
  if len(source) == 0:
    raise ValueError('the data source holds no records')
  return shard_dataset(grain.MapDataset.source(source), shard, contiguous)


def _training_order(source: Any, shard: Shard | None, seed: int, num_epochs: int | None,
                    class_balanced: bool = False, balance_power: float = 1.0
                    ) -> tuple[grain.MapDataset, int]:
  """This host's records, shuffled (or class-balanced draws) and repeated; and the epoch length."""
  ds = _ordered_source(source, shard, contiguous=False)
  epoch_len = len(ds)
  if class_balanced:
    if hasattr(source, 'label'):  # a column: no need to read every record
      index, count = shard if shard is not None else host_shard()
      labels = np.asarray(source.label)[index::count]
    else:
      labels = _labels(ds)
    picks = grain.MapDataset.range(epoch_len).repeat(num_epochs).random_map(
        _BalancedPick(labels, balance_power), seed=seed)
    ds = picks.map(_Lookup(ds))
  else:
    ds = ds.shuffle(seed=seed).repeat(num_epochs)
  return ds.map_with_index(_AddEpoch(epoch_len)), epoch_len


def _eval_order(source: Any, shard: Shard | None) -> tuple[grain.MapDataset, int]:
  """This host's contiguous block of records in source order (one epoch); and its length."""
  ds = _ordered_source(source, shard, contiguous=True)
  return ds.map_with_index(_AddEpoch(len(ds))), len(ds)


class _RegionFromDisk(grain.transforms.Map):
  """Reads the region view written by ``regions.write_region_views`` for the same frame."""

  def __init__(self, images_dir: str):
    self.images_dir = images_dir

  def map(self, record: dict) -> dict:
    if T.SKIPPED in record:
      return record
    head, file = os.path.split(record['path'])
    head, video = os.path.split(head)
    path = os.path.join(os.path.dirname(head), self.images_dir, video, file)
    image = T.read_image({'path': path})
    if image is None:
      return {T.SKIPPED: path, 'epoch': record.get('epoch', 0)}
    return {**record, 'region_image': image}


def _worker_init(worker_index: int, worker_count: int) -> None:
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe


def _finish(ds: grain.MapDataset, keys: Sequence[str], batch_size: int, num_workers: int,
            num_threads: int, epoch_len: int, ordered: bool = False) -> grain.IterDataset:
  """Per-record stages done: add workers, skip accounting, batching.

  Training (not ``ordered``): each worker process batches its own records, so whole batches cross
  process boundaries rather than single images. Evaluation (``ordered``): workers hand over records,
  which keeps the global video/frame order, and the last batch is padded.
  """
  it = ds.map(T.SelectKeys(tuple(keys) + ('epoch',))).to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2 * batch_size, 16)))
  if ordered:
    it = _workers(it, num_workers)
  it = skips.CarrySkips(it).batch(batch_size, batch_fn=T.collate)
  if not ordered:
    it = _workers(it, num_workers)
  return skips.ReportSkips(it, epoch_len, batch_size, pad=ordered)


def _workers(it: grain.IterDataset, num_workers: int) -> grain.IterDataset:
  if num_workers <= 0:
    return it
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags; a library caller may have none
  return it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2),
                        worker_init_fn=_worker_init)


def _check_view(view: str) -> None:
  if view != 'face' and view not in regions.VARIANTS:
    raise ValueError(f"unknown view {view!r}, expected 'face' or one of {regions.VARIANTS}")


def pretrain_dataset(source: Any, *, batch_size: int, image_size: int = 224, seed: int = 0,
                     num_epochs: int | None = None, scale: tuple[float, float] = (0.2, 1.0),
                     shard: Shard | None = None, num_workers: int = 0, num_threads: int = 0
                     ) -> grain.IterDataset:
  """Unlabeled frames, MAE augmentation: RandomResizedCrop (bicubic) + horizontal flip."""
  ds, epoch_len = _training_order(source, shard, seed, num_epochs)
  ds = ds.map(T.Decode())
  ds = ds.random_map(T.RandomResizedCrop(image_size, scale), seed=seed)
  ds = ds.random_map(T.RandomFlip(), seed=seed + 1)
  return _finish(ds, ('image',), batch_size, num_workers, num_threads, epoch_len)


def finetune_dataset(source: Any, *, batch_size: int, image_size: int = 224, seed: int = 0,
                     num_epochs: int | None = None, view: str = 'face',
                     region_fill: int | Sequence[int] = 0, region_margin: float = 0.1,
                     scale: tuple[float, float] = (0.08, 1.0),
                     rand_augment: tuple[int, float, float] | None = (2, 9.0, 0.5),
                     erase_prob: float = 0.25, class_balanced: bool = False,
                     balance_power: float = 1.0, shard: Shard | None = None, num_workers: int = 0,
                     num_threads: int = 0) -> grain.IterDataset:
  """Labelled frames of one view with the fine-tuning recipe's augmentation.

  ``class_balanced`` draws records with weight count(label)^-balance_power (1.0: classes equally
  likely) instead of shuffling. ``rand_augment`` is (num_ops, magnitude, magnitude_std) or None.
  """
  _check_view(view)
  ds, epoch_len = _training_order(source, shard, seed, num_epochs, class_balanced, balance_power)
  ds = ds.map(T.Decode())
  if view != 'face':
    ds = ds.map(T.RegionView(view, region_fill, region_margin))
  ds = ds.random_map(T.RandomResizedCrop(image_size, scale), seed=seed)
  ds = ds.random_map(T.RandomFlip(), seed=seed + 1)
  if rand_augment is not None:
    num_ops, magnitude, magnitude_std = rand_augment
    ds = ds.random_map(T.RandAugment(num_ops, magnitude, magnitude_std), seed=seed + 2)
  if erase_prob > 0:
    ds = ds.random_map(T.RandomErasing(erase_prob), seed=seed + 3)
  return _finish(ds, ('image', 'label'), batch_size, num_workers, num_threads, epoch_len)


def eval_dataset(source: Any, *, batch_size: int, image_size: int = 224, crop_pct: float = 0.875,
                 view: str = 'face', region_fill: int | Sequence[int] = 0,
                 region_margin: float = 0.1, shard: Shard | None = None, num_workers: int = 0,
                 num_threads: int = 0) -> grain.IterDataset:
  """One deterministic pass in source order (video, frame); resize + centre crop; padded last batch."""
  _check_view(view)
  ds, epoch_len = _eval_order(source, shard)
  ds = ds.map(T.Decode())
  if view != 'face':
    ds = ds.map(T.RegionView(view, region_fill, region_margin))
  ds = ds.map(T.ResizeCenterCrop(image_size, crop_pct))
  return _finish(ds, ('image', 'label', 'video', 'frame'), batch_size, num_workers, num_threads,
                 epoch_len, ordered=True)


def paired_dataset(source: Any, *, batch_size: int, image_size: int = 224,
                   variant: str = 'eyes_mouth', train: bool = False, seed: int = 0,
                   num_epochs: int | None = None, region_fill: int | Sequence[int] = 0,
                   region_margin: float = 0.1, region_images_dir: str | None = None,
                   scale: tuple[float, float] = (0.08, 1.0), crop_pct: float = 0.875,
                   shard: Shard | None = None, num_workers: int = 0, num_threads: int = 0
                   ) -> grain.IterDataset:
  """Face and region view of the same frame, with identical crop/flip (train) or resize/crop (eval).

  Train mode shuffles and repeats like ``finetune_dataset`` (RandomResizedCrop + flip only, so the
  region view keeps its meaning); eval mode is one ordered pass with a padded last batch.
  """
  _check_view(variant)
  if train:
    ds, epoch_len = _training_order(source, shard, seed, num_epochs)
  else:
    ds, epoch_len = _eval_order(source, shard)
  ds = ds.map(T.Decode())
  if region_images_dir:
    ds = ds.map(_RegionFromDisk(region_images_dir))
  else:
    ds = ds.map(T.RegionView(variant, region_fill, region_margin, keep_face=True))
  if train:
    ds = ds.random_map(T.RandomResizedCrop(image_size, scale), seed=seed)
    ds = ds.random_map(T.RandomFlip(), seed=seed + 1)
  else:
    ds = ds.map(T.ResizeCenterCrop(image_size, crop_pct))
  keys = ('image', 'region_image', 'label', 'video', 'frame')
  return _finish(ds, keys, batch_size, num_workers, num_threads, epoch_len, ordered=not train)
