"""Accounting for unreadable images: count, log, report per epoch.

``transforms.DecodeBatch`` leaves an unreadable image out of its batch and lists its (epoch, path)
under '_skipped', with the epochs of the rows it read under 'epoch'. ``ReportSkips`` in the main
process logs each path once, counts skips, and reports an epoch's count once all of its records
(read or skipped) have been seen, which stays exact when worker processes deliver batches
interleaved. Its iterator state holds the counts, so they survive checkpoint and restore. It also
drops (training) or pads (evaluation) a short batch.
"""

from __future__ import annotations

import logging

import grain
import numpy as np

from input_pipeline.transforms import CARRIED

log = logging.getLogger('input_pipeline.datasets')


class _ReportSkipsIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, epoch_len: int, batch_size: int, pad: bool):
    super().__init__(parent)
    self._epoch_len, self._batch_size, self._pad = epoch_len, batch_size, pad
    self._seen: dict[int, int] = {}
    self._skipped: dict[int, int] = {}
    self._total = 0
    self._logged: set[str] = set()

  def _count(self, epoch: int, skipped: bool) -> None:
    self._seen[epoch] = self._seen.get(epoch, 0) + 1
    self._skipped[epoch] = self._skipped.get(epoch, 0) + skipped
    if self._seen[epoch] == self._epoch_len:
      self._report(epoch)

  def _report(self, epoch: int) -> None:
    n = self._skipped.pop(epoch, 0)
    self._seen.pop(epoch, None)
    if n:
      log.warning('epoch %d: %d unreadable images skipped', epoch, n)
    else:
      log.info('epoch %d: no unreadable images', epoch)

  def __next__(self) -> dict:
    while True:
      try:
        batch = next(self._parent)
      except StopIteration:
        for epoch in sorted(self._seen):  # a finite run ended: report what was seen
          self._report(epoch)
        raise
      batch = dict(batch)
      for epoch, path in batch.pop(CARRIED):
        self._total += 1
        if path not in self._logged:
          self._logged.add(path)
          log.warning('unreadable image skipped: %s', path)
        self._count(int(epoch), True)
      for epoch in batch.pop('epoch', np.zeros(0, np.int64)).tolist():
        self._count(int(epoch), False)
      rows = len(next(iter(batch.values()))) if batch else 0
      if rows and self._pad:
        return _pad(batch, self._batch_size)
      if rows == self._batch_size:
        return batch
      # A short batch only ends a finite stream (or a worker's slice of it): dropped in training.

  def get_state(self) -> dict:
    return {'parent': self._parent.get_state(), 'skipped_total': self._total,
            'seen': {str(k): v for k, v in self._seen.items()},
            'skipped': {str(k): v for k, v in self._skipped.items()}}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state['parent'])
    self._total = int(state['skipped_total'])
    self._seen = {int(k): int(v) for k, v in state['seen'].items()}
    self._skipped = {int(k): int(v) for k, v in state['skipped'].items()}


def _pad(batch: dict, batch_size: int) -> dict:
  n = len(next(iter(batch.values())))
  if n == batch_size:
    return {**batch, 'mask': np.ones(batch_size, np.float32)}
  out = {k: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)])
         for k, v in batch.items()}
  out['mask'] = (np.arange(batch_size) < n).astype(np.float32)
  return out


class ReportSkips(grain.IterDataset):
  """Counts and reports skips per epoch of ``epoch_len`` records; drops (or pads) short batches.

  With ``pad`` every batch gets 'mask' (1.0 real row, 0.0 padding) and a short batch is padded.
  """

  def __init__(self, parent: grain.IterDataset, epoch_len: int, batch_size: int, pad: bool):
    super().__init__(parent)
    self._args = (epoch_len, batch_size, pad)

  def __iter__(self) -> _ReportSkipsIterator:
    return _ReportSkipsIterator(self._parent.__iter__(), *self._args)
