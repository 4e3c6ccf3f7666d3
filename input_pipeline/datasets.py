"""Grain pipelines, one function per mode: pretrain, finetune, eval, paired.

Each function takes a random-access ``source`` of frame records (``abaw.load_split`` /
``load_frames`` / ``load_test_set``, ``folders.*_images``, ``tfds_build.load_build``, or any sequence of
dicts with 'path' or 'image_bytes', 'label', 'video', 'frame') and returns a ``grain.IterDataset``.
``it = iter(ds)`` yields dicts of numpy arrays; ``it.get_state()`` / ``it.set_state(state)`` checkpoint
and restore it exactly (the state is JSON-serialisable; ``state['skipped_total']`` counts the
unreadable images skipped so far).

Order of operations: source -> per-host shard (jax.process_index() of jax.process_count(), or
``shard=(index, count)``) -> seeded shuffle (or class-balanced sampling) -> repeat -> read + decode
(OpenCV; region boxes from landmarks) a batch at a time (``transforms.DecodeBatch``) -> count and
report the unreadable images (``skips``). Nothing else touches a pixel here: every crop, flip,
RandAugment op, erasing, region fill and evaluation resize runs in the programs' jitted steps
(``mae_face_jax.augment``), with the train state's RNG. With ``num_workers`` the decoding runs in
worker processes, a batch each in turn (the stream does not depend on their number).

Batch layout (B = batch_size; H x W = the stored size: that of the source's first readable image,
or ``stored_size``; an image of another size is resized to it on the host), all numpy:
    'image'         uint8 (B, H, W, 3)    RGB as stored
    'boxes'         int32 (B, K, 4)       region views only: [x0, y0, x1, y1) boxes of the kept
                                          regions (K = transforms.MAX_BOXES, unused rows zero)
    'region_image'  uint8 (B, H, W, 3)    paired mode with ``region_images_dir`` (instead of boxes)
    'label'         int32 (B,)            -1 where unlabeled (test set, pretraining folders)
    'video'         int32 (B,)            index into ``source.videos`` (-1 for image folders)
    'frame'         int32 (B,)            1-based frame number (-1 for image folders)
    'mask'          float32 (B,)          eval/paired-eval only: 0 for padding rows of the last batch

Signatures (keyword-only after ``source``; every one also takes ``stored_size=None, shard=None,
num_workers=0, num_threads=0, decode_threads=1``):
    pretrain_dataset(source, *, batch_size, seed=0, num_epochs=None)            keys image
    finetune_dataset(source, *, batch_size, seed=0, num_epochs=None, view='face', region_margin=0.1,
                     class_balanced=False, balance_power=1.0)       keys image, label (+ boxes)
    eval_dataset(source, *, batch_size, view='face', region_margin=0.1)
        keys image, label, video, frame, mask (+ boxes); one pass, ordered by video then frame,
        last batch padded.
    paired_dataset(source, *, batch_size, variant='eyes_mouth', train=False, seed=0,
                   num_epochs=None, region_margin=0.1, region_images_dir=None)
        keys image, boxes (or region_image), label, video, frame (+ mask when not train).
        ``region_images_dir`` reads a written view (``cropped_aligned_<variant>``) instead.

``num_epochs=None`` repeats forever (training loops count steps); each epoch is reshuffled. With a
finite ``num_epochs``, training modes drop the short batch that ends the stream.
``num_threads`` are grain prefetch threads in the consuming process, each making whole batches
(0: batches are made on demand); one per core is the way to use every core (OpenCV releases the
GIL while it reads and decodes). ``decode_threads`` split one batch's images further (0: one per
core), for when batches in flight are fewer than cores. Measured on 2 cores: 2 prefetch threads of
one decode thread each beat 1 of 2, and grain's worker processes cost more than they save here
(each batch crosses to the consumer through freshly mapped shared memory).
``num_workers > 0`` adds grain ``mp_prefetch`` worker processes: the caller needs an
``if __name__ == '__main__'`` guard (workers are spawned) and absl flags parsed (``absl.app.run``; if
they are not, this module marks them parsed).
"""

from __future__ import annotations

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


def shard_indices(n: int, shard: Shard | None, contiguous: bool = False) -> np.ndarray:
  """Indices of this host's records among `n`: every count-th (training) or a contiguous block
  (ordered evaluation)."""
  index, count = shard if shard is not None else host_shard()
  if not 0 <= index < count:
    raise ValueError(f'shard index {index} not in [0, {count})')
  if n == 0:
    raise ValueError('the data source holds no records')
  if contiguous:
    return np.arange(index * n // count, (index + 1) * n // count)
  return np.arange(index, n, count)


class Sampler:
  """Batch b → its records and their epochs: positions b·B … b·B + B - 1 of this host's stream of
  records, where an epoch is one pass over the host's `indices` of `source`, in order, shuffled
  anew each epoch (a permutation drawn from (seed, epoch)), or drawn class-balanced with
  replacement (weight count(label)^-power). One draw per epoch rather than grain's per-record
  shuffle: per record, grain's shuffle and lookup cost a tenth of a JPEG decode each."""

  def __init__(self, source: Any, indices: np.ndarray, batch_size: int, order: str, seed: int = 0,
               labels: np.ndarray | None = None, power: float = 1.0):
    self.source, self.indices, self.batch_size = source, indices, batch_size
    self.order, self.seed, self.epoch_len = order, seed, len(indices)
    self._cached: tuple[int, np.ndarray] | None = None
    if order == 'balanced':
      labels = np.asarray(labels)
      if not (labels >= 0).any():
        raise ValueError('class-balanced sampling needs labelled records; all labels are -1')
      counts = np.bincount(labels[labels >= 0], minlength=1)
      weights = np.where(labels >= 0, counts[np.maximum(labels, 0)].astype(np.float64) ** -power, 0)
      self.cdf = np.cumsum(weights) / weights.sum()

  def _epoch(self, epoch: int) -> np.ndarray:
    """This epoch's record indices (positions within it → index into `source`)."""
    if self._cached is None or self._cached[0] != epoch:
      n, rng = self.epoch_len, np.random.default_rng([self.seed, epoch])
      if self.order == 'shuffled':
        local = rng.permutation(n)
      elif self.order == 'balanced':
        local = np.minimum(np.searchsorted(self.cdf, rng.random(n), side='right'), n - 1)
      else:
        local = np.arange(n)
      self._cached = (epoch, self.indices[local])
    return self._cached[1]

  def __call__(self, batch: int, stop: int) -> list[tuple[dict, int]]:
    """(record, epoch) of the batch's positions below `stop` (the stream's end)."""
    out, start = [], batch * self.batch_size
    end = min(start + self.batch_size, stop)
    while start < end:  # one slice of each epoch the batch spans
      epoch, k = divmod(start, self.epoch_len)
      take = min(end - start, self.epoch_len - k)
      out += [(self.source[i], epoch) for i in self._epoch(epoch)[k:k + take].tolist()]
      start += take
    return out


def _labels(source: Any, indices: np.ndarray) -> np.ndarray:
  if hasattr(source, 'label'):  # a column: no need to read every record
    return np.asarray(source.label)[indices]
  return np.array([source[int(i)]['label'] for i in indices], np.int64)


def _training_sampler(source: Any, shard: Shard | None, batch_size: int, seed: int,
                      class_balanced: bool = False, balance_power: float = 1.0) -> Sampler:
  indices = shard_indices(len(source), shard)
  if class_balanced:
    return Sampler(source, indices, batch_size, 'balanced', seed, _labels(source, indices),
                   balance_power)
  return Sampler(source, indices, batch_size, 'shuffled', seed)


def _eval_sampler(source: Any, shard: Shard | None, batch_size: int) -> Sampler:
  return Sampler(source, shard_indices(len(source), shard, contiguous=True), batch_size, 'ordered')


def _worker_init(worker_index: int, worker_count: int) -> None:
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe


def _finish(sampler: Sampler, keys: Sequence[str], *, stored: tuple[int, int] | None,
            num_epochs: int | None, num_workers: int, num_threads: int, ordered: bool = False,
            variant: str | None = None, margin: float = 0.1, region_dir: str | None = None,
            decode_threads: int = 1) -> grain.IterDataset:
  """Batch indices → decoded batches (in worker processes, if any) → skip accounting. Batches are
  formed before the workers, so they do not depend on their number. Training drops a short last
  batch of a finite stream; evaluation (``ordered``) keeps it, padded with mask-0 rows, as it pads
  a batch shortened by unreadable images."""
  stop = 2**62 if num_epochs is None else sampler.epoch_len * num_epochs
  batches = -(-stop // sampler.batch_size) if ordered else stop // sampler.batch_size
  size = tuple(stored) if stored else T.stored_size(sampler.source)
  decode = T.DecodeBatch(sampler, stop, keys, size, variant, margin, region_dir, fill=not ordered,
                         threads=decode_threads)
  it = grain.MapDataset.range(batches).map(decode).to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2, num_threads)))
  it = _workers(it, num_workers)
  return skips.ReportSkips(it, sampler.epoch_len, sampler.batch_size, pad=ordered)


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


def pretrain_dataset(source: Any, *, batch_size: int, seed: int = 0, num_epochs: int | None = None,
                     stored_size: tuple[int, int] | None = None, shard: Shard | None = None,
                     num_workers: int = 0, num_threads: int = 0, decode_threads: int = 1
                     ) -> grain.IterDataset:
  """Unlabeled frames (the MAE recipe's crop and flip happen on the device)."""
  return _finish(_training_sampler(source, shard, batch_size, seed), ('image',),
                 stored=stored_size, num_epochs=num_epochs, num_workers=num_workers,
                 num_threads=num_threads, decode_threads=decode_threads)


def finetune_dataset(source: Any, *, batch_size: int, seed: int = 0,
                     num_epochs: int | None = None, view: str = 'face', region_margin: float = 0.1,
                     class_balanced: bool = False, balance_power: float = 1.0,
                     stored_size: tuple[int, int] | None = None, shard: Shard | None = None,
                     num_workers: int = 0, num_threads: int = 0, decode_threads: int = 1
                     ) -> grain.IterDataset:
  """Labelled frames of one view (a region view: the image and its boxes).

  ``class_balanced`` draws records with weight count(label)^-balance_power (1.0: classes equally
  likely) instead of shuffling.
  """
  _check_view(view)
  sampler = _training_sampler(source, shard, batch_size, seed, class_balanced, balance_power)
  return _finish(sampler, ('image', 'label'), stored=stored_size, num_epochs=num_epochs,
                 num_workers=num_workers, num_threads=num_threads, decode_threads=decode_threads,
                 variant=None if view == 'face' else view, margin=region_margin)


def eval_dataset(source: Any, *, batch_size: int, view: str = 'face', region_margin: float = 0.1,
                 stored_size: tuple[int, int] | None = None, shard: Shard | None = None,
                 num_workers: int = 0, num_threads: int = 0, decode_threads: int = 1
                 ) -> grain.IterDataset:
  """One pass in source order (video, frame); padded last batch."""
  _check_view(view)
  return _finish(_eval_sampler(source, shard, batch_size), ('image', 'label', 'video', 'frame'),
                 stored=stored_size, num_epochs=1, num_workers=num_workers,
                 num_threads=num_threads, decode_threads=decode_threads, ordered=True,
                 variant=None if view == 'face' else view, margin=region_margin)


def paired_dataset(source: Any, *, batch_size: int, variant: str = 'eyes_mouth',
                   train: bool = False, seed: int = 0, num_epochs: int | None = None,
                   region_margin: float = 0.1, region_images_dir: str | None = None,
                   stored_size: tuple[int, int] | None = None, shard: Shard | None = None,
                   num_workers: int = 0, num_threads: int = 0, decode_threads: int = 1
                 ) -> grain.IterDataset:
  """The face and the boxes of its region view (or, with ``region_images_dir``, the written region
  image) of each frame. Train mode shuffles and repeats like ``finetune_dataset``; eval mode is
  one ordered pass with a padded last batch.
  """
  _check_view(variant)
  sampler = (_training_sampler(source, shard, batch_size, seed) if train
             else _eval_sampler(source, shard, batch_size))
  return _finish(sampler, ('image', 'label', 'video', 'frame'), stored=stored_size,
                 num_epochs=num_epochs if train else 1, num_workers=num_workers,
                 num_threads=num_threads, decode_threads=decode_threads, ordered=not train,
                 variant=None if region_images_dir else variant, margin=region_margin,
                 region_dir=region_images_dir)
