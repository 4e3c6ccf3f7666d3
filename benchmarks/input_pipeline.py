"""The input pipeline's two halves, each against what it feeds or competes with, in one run.

Host: the fine-tuning pipeline (read + decode + region boxes + uint8 batch at the stored size;
`input_pipeline.datasets.finetune_dataset`, one batch in flight per core) on every core, against
plain file read + `cv2.imdecode` of the same files on the same cores, timed in turns. Claim: ``ratio = pipeline images/s / raw decode images/s >= 0.8``. Also the images/s
one core feeds (one thread) against one thread of raw decoding.

Device: the fine-tuning recipe's augmentation on the device (region fill, RandomResizedCrop to
224, flip, RandAugment, erasing; `train_finetune.augmented_images`) against the whole ViT-B/16
fine-tuning train step that contains it (`loop.make_train_step` with the program's loss), same
device, same batch. Claim: ``augmentation / step <= 0.05``.

    python benchmarks/input_pipeline.py [--data_dir /tmp/mae_face_demo] [--view eyes_mouth]
        [--batch_size 64] [--num_workers 0] [--seconds 30] [--rounds 6]
        [--device_batch (default 32 on CPU, 256 on an accelerator)] [--model_size base]
        [--device_steps 3] [--skip_device] [--skip_host]
"""

import os
import statistics
import sys
import time
from concurrent import futures

from absl import app, flags
import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from input_pipeline import abaw, datasets, demo_data  # pylint: disable=g-import-not-at-top
from mae_face_jax import host_memory  # pylint: disable=g-import-not-at-top

_DATA = flags.DEFINE_string('data_dir', '/tmp/mae_face_demo', 'ABAW-layout root (demo data made if absent)')
_VIEW = flags.DEFINE_string('view', 'eyes_mouth', "'face' or a region variant")
_BATCH = flags.DEFINE_integer('batch_size', 64, 'host pipeline batch size')
_WORKERS = flags.DEFINE_integer('num_workers', 0, 'grain worker processes (0: decode in this '
                                'process, one thread per core)')
_SECONDS = flags.DEFINE_float('seconds', 30.0, 'timed duration of each host side, all rounds')
_THREADS = flags.DEFINE_integer('num_threads', 0, 'grain prefetch threads, batches in flight '
                                '(0: cores)')
_DECODE_THREADS = flags.DEFINE_integer('decode_threads', 1, 'threads decoding each batch (0: cores)')
_ROUNDS = flags.DEFINE_integer('rounds', 6, 'turns of raw decode and pipeline timing')
_DEVICE_BATCH = flags.DEFINE_integer('device_batch', 0, 'train step batch (0: 32 on CPU, 256 else)')
_MODEL = flags.DEFINE_string('model_size', 'base', 'ViT size of the train step (patch 16, 224 px)')
_STEPS = flags.DEFINE_integer('device_steps', 3, 'timed repetitions of each device side')
_SKIP_DEVICE = flags.DEFINE_bool('skip_device', False, 'host half only')
_SKIP_HOST = flags.DEFINE_bool('skip_host', False, 'device half only')


class RawDecode:
  """File read + cv2.imdecode of the same files on `cores` threads (OpenCV releases the GIL)."""

  def __init__(self, paths: list[str], cores: int):
    self.chunks = [paths[i:i + 64] for i in range(0, len(paths), 64)]
    self.pool = futures.ThreadPoolExecutor(cores)
    self.cores, self.next = cores, 0
    list(self.pool.map(self._work, self.chunks[:cores]))  # warm-up

  @staticmethod
  def _work(chunk: list[str]) -> int:
    for p in chunk:
      with open(p, 'rb', buffering=0) as f:
        assert cv2.imdecode(np.frombuffer(f.readall(), np.uint8), cv2.IMREAD_COLOR_RGB) is not None
    return len(chunk)

  def run(self, seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
      work = [self.chunks[(self.next + j) % len(self.chunks)] for j in range(self.cores)]
      self.next += len(work)
      done += sum(self.pool.map(self._work, work))
    return done / (time.perf_counter() - start)


class Pipeline:
  """A running grain pipeline (5 batches of warm-up), timed in turns."""

  def __init__(self, ds):
    self.it = iter(ds)
    for _ in range(5):
      self.batch = next(self.it)

  def run(self, seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
      self.batch = next(self.it)  # endless: training pipelines repeat
      done += len(self.batch['label'])
    return done / (time.perf_counter() - start)


def alternate(a, b, seconds: float, rounds: int) -> tuple[float, float]:
  """Mean rates of two sides timed in turns (a, b, a, b, ...): load drift hits both alike."""
  rates = [(a.run(seconds / rounds), b.run(seconds / rounds)) for _ in range(rounds)]
  return statistics.mean(r[0] for r in rates), statistics.mean(r[1] for r in rates)


def host_half(source, cores: int) -> np.ndarray:
  paths = [source[i]['path'] for i in range(len(source))]
  workers = _WORKERS.value
  threads = _THREADS.value or cores
  common = dict(batch_size=_BATCH.value, view=_VIEW.value, shard=(0, 1), seed=0)
  pipe_side = Pipeline(datasets.finetune_dataset(source, num_workers=workers, num_threads=threads,
                                                 decode_threads=_DECODE_THREADS.value, **common))
  raw, pipe = alternate(RawDecode(paths, cores), pipe_side, _SECONDS.value, _ROUNDS.value)
  batch = pipe_side.batch
  pipe_side.it.close()
  one_side = Pipeline(datasets.finetune_dataset(source, num_threads=1, decode_threads=1, **common))
  one_raw, one = alternate(RawDecode(paths, 1), one_side, _SECONDS.value / 2, _ROUNDS.value)
  print(f'batch {tuple(batch["image"].shape)} {batch["image"].dtype}'
        + (f', boxes {tuple(batch["boxes"].shape)}' if 'boxes' in batch else ''))
  how = (f'{workers} worker processes' if workers else
         f'in-process, {threads} batches in flight, {_DECODE_THREADS.value or cores} '
         f'decode thread(s) each')
  print(f'raw read + cv2.imdecode ({cores} threads): {raw:.0f} images/s; host pipeline ({how}): '
        f'{pipe:.0f} images/s; {_ROUNDS.value} rounds each, in turns')
  print(f'one core: host pipeline {one:.0f} images/s (one thread), raw decode '
        f'{one_raw:.0f} images/s ({one / one_raw:.3f})')
  print(f'host ratio = pipeline images/s / raw decode images/s = {pipe / raw:.3f} (target >= 0.8)')
  return batch


def device_half(source) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from configs.finetune import finetune_config  # pylint: disable=g-import-not-at-top
  from mae_face_jax import loop, sharding  # pylint: disable=g-import-not-at-top
  from mae_face_jax.models.build import build_model  # pylint: disable=g-import-not-at-top
  from mae_face_jax.train_finetune import (  # pylint: disable=g-import-not-at-top
      augmented_images, classification_loss_fn)

  device = jax.devices()[0]
  on_cpu = device.platform == 'cpu'
  b = _DEVICE_BATCH.value or (32 if on_cpu else 256)
  config = finetune_config(_VIEW.value, _MODEL.value, 224)
  config.batch_size, config.total_steps, config.total_epochs = b, 100, None
  config.warmup_epochs, config.warmup_steps = None, 10
  config.eval_epochs = None
  if not on_cpu:
    config.model.dtype = 'bfloat16'
  batch = next(iter(datasets.finetune_dataset(source, batch_size=b, view=_VIEW.value,
                                              shard=(0, 1))))
  batch = {k: v for k, v in batch.items() if k in ('image', 'label', 'boxes')}
  mesh = sharding.make_mesh(config.mesh, [device])
  run = loop.setup(config, mesh, lambda: build_model(config), None)
  ndims = {'image': 4, 'label': 1} | ({'boxes': 3} if 'boxes' in batch else {})
  step = loop.train_step_for(run, classification_loss_fn(config, np.ones(8, np.float32)), ndims)
  placed = sharding.global_batch(batch, mesh)
  augment_batch = jax.jit(augmented_images(config))
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(b))

  state = run.placed.state
  state, metrics = step(state, run.placed.fixed, placed)  # compiles
  jax.block_until_ready(metrics)
  jax.block_until_ready(augment_batch(placed, keys))
  aug_times, step_times = [], []
  for i in range(_STEPS.value):  # alternating, so load drift hits both sides alike
    keys_i = jax.vmap(lambda j: jax.random.fold_in(jax.random.key(i + 1), j))(jnp.arange(b))
    start = time.perf_counter()
    jax.block_until_ready(augment_batch(placed, keys_i))
    aug_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    state, metrics = step(state, run.placed.fixed, placed)
    jax.block_until_ready(metrics)
    step_times.append(time.perf_counter() - start)
  aug, full = statistics.median(aug_times), statistics.median(step_times)
  print(f'device {device.device_kind} ({device.platform}), batch {b}, '
        f'{tuple(batch["image"].shape[1:3])} -> 224, ViT-{_MODEL.value}/16 {config.model.dtype}')
  print(f'device augmentation: {aug * 1e3:.1f} ms per batch ({b / aug:.0f} images/s); train step '
        f'(augmentation included): {full * 1e3:.1f} ms ({b / full:.1f} images/s); medians of '
        f'{_STEPS.value}')
  print(f'device ratio = augmentation / train step = {aug / full:.4f} (target <= 0.05)')


def main(argv):
  del argv
  kept = host_memory.keep_freed_memory()  # before workers start, as main.py does
  cores = os.cpu_count()
  root = demo_data.ensure_demo_data(_DATA.value)
  source = abaw.load_split(root, 'Train_Set')
  print(f'{len(source)} frames of {root}, {cores} cores, view {_VIEW.value}; malloc keeps freed '
        f'memory: {kept}; load average before: {os.getloadavg()[0]:.2f}')
  if not _SKIP_HOST.value:
    host_half(source, cores)
  if not _SKIP_DEVICE.value:
    device_half(source)
  print(f'load average after: {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
  app.run(main)
