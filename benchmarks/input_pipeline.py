"""Images/s of the full fine-tuning input pipeline next to raw OpenCV decoding of the same files.

Claim: the pipeline (read + decode + region view + RandomResizedCrop + flip + RandAugment +
random erasing + uint8 batch; the programs normalise on the device) keeps up with plain
``cv2.imdecode`` of the same JPEGs on the same cores: ``ratio = pipeline images/s / raw decode
images/s`` >= 0.8 with all cores.

Also timed, same threads: decode + one bicubic resize of each whole frame to the output size, the
least work any recipe that hands over image_size² crops does per image. Its rate over the raw rate
bounds what ratio any such host pipeline can reach on these files.

Both sides read each file from disk (page cache) and decode it; both use every core (raw: a thread
per core, OpenCV releases the GIL; pipeline: grain worker processes or reader threads).

    python benchmarks/input_pipeline.py [--data_dir /tmp/mae_face_demo] [--image_size 224]
        [--batch_size 64] [--num_workers N (default: cores)] [--num_threads 0] [--seconds 20]
        [--view eyes_mouth] [--stages] [--system_malloc]

``--stages`` adds a cost table: each per-record stage of the fine-tuning pipeline run alone on one
core over the same records (µs per image, and as a multiple of decoding one image), then batching,
so the ratio can be read against what each step of the recipe costs.
"""

import os
import sys
import time
from concurrent import futures

from absl import app, flags
import cv2
import grain
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from input_pipeline import abaw, datasets, demo_data  # pylint: disable=g-import-not-at-top
from mae_face_jax import host_memory  # pylint: disable=g-import-not-at-top

_DATA = flags.DEFINE_string('data_dir', '/tmp/mae_face_demo', 'ABAW-layout root (demo data made if absent)')
_SIZE = flags.DEFINE_integer('image_size', 224, 'output image size of the pipeline')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'batch size')
_WORKERS = flags.DEFINE_integer('num_workers', -1, 'grain worker processes (-1: one per core)')
_THREADS = flags.DEFINE_integer('num_threads', 0, 'grain reader threads per process (0: none; '
                                'threads cost more per record than they save here)')
_SECONDS = flags.DEFINE_float('seconds', 20.0, 'timed duration of each side')
_VIEW = flags.DEFINE_string('view', 'eyes_mouth', "'face' or a region variant")
_STAGES = flags.DEFINE_bool('stages', False, 'also print the one-core cost of each pipeline stage')
_SYSTEM_MALLOC = flags.DEFINE_bool('system_malloc', False, "leave glibc's malloc as it is (by default "
                                   'the run keeps freed memory, as main.py does: host_memory)')


class RawDecode:
  """File read + cv2.imdecode of the same files on `cores` threads (OpenCV releases the GIL);
  with `resize_to`, each decoded frame is also resized (bicubic) to resize_to²."""

  def __init__(self, paths: list[str], cores: int, resize_to: int | None = None):
    self.chunks = [paths[i:i + 64] for i in range(0, len(paths), 64)]
    self.pool = futures.ThreadPoolExecutor(cores)
    self.cores, self.next, self.resize_to = cores, 0, resize_to
    list(self.pool.map(self._work, self.chunks[:cores]))  # warm-up

  def _work(self, chunk: list[str]) -> int:
    for p in chunk:
      image = cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_COLOR)
      assert image is not None
      if self.resize_to:
        cv2.resize(image, (self.resize_to, self.resize_to), interpolation=cv2.INTER_CUBIC)
    return len(chunk)

  def run(self, seconds: float) -> tuple[int, float]:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
      work = [self.chunks[(self.next + j) % len(self.chunks)] for j in range(4 * self.cores)]
      self.next += len(work)
      done += sum(self.pool.map(self._work, work))
    return done, time.perf_counter() - start


class Pipeline:
  """A running grain pipeline (workers started, 5 batches of warm-up)."""

  def __init__(self, ds, size: int):
    self.it, self.size = iter(ds), size
    for _ in range(5):
      next(self.it)

  def run(self, seconds: float) -> tuple[int, float]:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
      batch = next(self.it)  # endless: training pipelines repeat
      done += len(batch['label'])
    assert batch['image'].shape == (_BATCH.value, self.size, self.size, 3)
    assert batch['image'].dtype == np.uint8
    return done, time.perf_counter() - start


def stage_costs(source, view: str, size: int, batch_size: int, count: int = 512) -> None:
  """One core, no grain: each per-record transform of `finetune_dataset` over the same records in
  pipeline order, then batching; µs per image and multiples of one decode."""
  T = datasets.T
  cv2.setNumThreads(1)
  records = [source[i * len(source) // count] for i in range(count)]
  stages = [('read + decode (RGB)', T.Decode())]
  if view != 'face':
    stages.append((f'{view} region view', T.RegionView(view)))
  stages += [(f'RandomResizedCrop {size} bicubic', T.RandomResizedCrop(size, (0.08, 1.0))),
             ('horizontal flip', T.RandomFlip()), ('RandAugment m9 n2', T.RandAugment(2, 9.0, 0.5)),
             ('random erasing 0.25', T.RandomErasing(0.25)),
             ('select keys', T.SelectKeys(('image', 'label')))]
  rng = np.random.default_rng(0)
  costs = {}
  start = time.perf_counter()
  for r in records:
    assert cv2.imdecode(np.fromfile(r['path'], np.uint8), cv2.IMREAD_COLOR) is not None
  costs['raw: read + cv2.imdecode'] = (time.perf_counter() - start) / count
  for name, stage in stages:
    start = time.perf_counter()
    records = [stage.random_map(r, rng) if isinstance(stage, grain.transforms.RandomMap)
               else stage.map(r) for r in records]
    costs[name] = (time.perf_counter() - start) / count
  batches = [records[i:i + batch_size] for i in range(0, count - batch_size + 1, batch_size)]
  start = time.perf_counter()
  batches = [T.collate(b) for b in batches]
  costs['batch (np.stack)'] = (time.perf_counter() - start) / (len(batches) * batch_size)
  decode = costs['raw: read + cv2.imdecode']
  print(f'one-core cost per image ({count} records, view={view}, size={size}):')
  for name, cost in costs.items():
    print(f'  {name:32s} {cost * 1e6:8.1f} us  {cost / decode:5.2f} x decode')
  added = sum(costs.values()) - 2 * decode  # every stage, less the decode inside 'read + decode'
  print(f'  the recipe adds {added / decode:.2f} x decode per image beyond decoding; ratio 0.8 '
        f'allows 0.25 x')


def main(argv):
  del argv
  kept = not _SYSTEM_MALLOC.value and host_memory.keep_freed_memory()  # before workers start
  cores = os.cpu_count()
  workers = cores if _WORKERS.value < 0 else _WORKERS.value
  threads = _THREADS.value
  root = demo_data.ensure_demo_data(_DATA.value)
  source = abaw.load_split(root, 'Train_Set')
  paths = [source[i]['path'] for i in range(len(source))]
  native = datasets.T.read_image(source[0]).shape[0]
  print(f'{len(paths)} frames of {root} ({native}px JPEGs), {cores} cores; pipeline: '
        f'view={_VIEW.value}, image_size={_SIZE.value}, batch={_BATCH.value}, workers={workers}, '
        f'threads={threads}; malloc: {"keeps freed memory" if kept else "system default"}; '
        f'load average before: {os.getloadavg()[0]:.2f}')
  common = dict(batch_size=_BATCH.value, shard=(0, 1), num_workers=workers, num_threads=threads, seed=0)
  raw_side = RawDecode(paths, cores)
  least_side = RawDecode(paths, cores, resize_to=_SIZE.value)

  def timed_pipeline(ds, size: int, seconds: float) -> tuple[int, float]:
    side = Pipeline(ds, size)  # one pipeline alive at a time: its workers never run beside others
    try:
      return side.run(seconds)
    finally:
      side.it.close()

  # Raw decoding is timed before and after the pipeline, so slow drift in background load shows
  # up on both sides of the ratio.
  raw = [raw_side.run(_SECONDS.value / 2)]
  pipe = timed_pipeline(datasets.finetune_dataset(source, image_size=_SIZE.value, view=_VIEW.value,
                                                  **common), _SIZE.value, _SECONDS.value)
  raw.append(raw_side.run(_SECONDS.value / 2))
  least = least_side.run(_SECONDS.value / 2)
  # Context: the same machinery without augmentation at the files' own size (read, decode,
  # batch), separating framework cost from augmentation cost.
  plain = timed_pipeline(datasets.finetune_dataset(source, image_size=native, scale=(1.0, 1.0),
                                                   rand_augment=None, erase_prob=0.0, **common),
                         native, _SECONDS.value / 2)
  rate = {'raw': sum(d for d, _ in raw) / sum(t for _, t in raw),
          'pipeline': pipe[0] / pipe[1], 'plain': plain[0] / plain[1], 'least': least[0] / least[1]}
  print(f'raw decode before / after the pipeline: {raw[0][0] / raw[0][1]:.0f} / '
        f'{raw[1][0] / raw[1][1]:.0f} images/s')
  print(f'raw cv2.imdecode (read + decode, {cores} threads): {rate["raw"]:.0f} images/s')
  print(f'fine-tuning pipeline (decode + {_VIEW.value} region + RandomResizedCrop {_SIZE.value} + '
        f'flip + RandAugment + erasing + uint8 batch): {rate["pipeline"]:.0f} images/s')
  print(f'decode + batch only ({native}px, no augmentation): {rate["plain"]:.0f} images/s '
        f'({rate["plain"] / rate["raw"]:.3f} of raw)')
  print(f'decode + one bicubic resize to {_SIZE.value}, {cores} threads, no batching (the least a '
        f'recipe handing over {_SIZE.value}px crops does): {rate["least"]:.0f} images/s '
        f'({rate["least"] / rate["raw"]:.3f} of raw: the most any such pipeline can reach here)')
  print(f'load average after: {os.getloadavg()[0]:.2f}')
  print(f'ratio = pipeline images/s / raw decode images/s = {rate["pipeline"] / rate["raw"]:.3f}')
  if _STAGES.value:
    stage_costs(source, _VIEW.value, _SIZE.value, _BATCH.value)


if __name__ == '__main__':
  app.run(main)
