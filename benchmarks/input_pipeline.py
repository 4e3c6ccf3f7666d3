"""Images/s of the full fine-tuning input pipeline next to raw OpenCV decoding of the same files.

Claim (issue 4): the pipeline (read + decode + region view + RandomResizedCrop + flip + RandAugment +
random erasing + batch + float32 normalisation) keeps up with plain ``cv2.imdecode`` of the same
JPEGs on the same cores: ``ratio = pipeline images/s / raw decode images/s`` >= 0.8 with all cores.

Both sides read each file from disk (page cache) and decode it; both use every core (raw: a thread
per core, OpenCV releases the GIL; pipeline: grain worker processes or reader threads).

    python benchmarks/input_pipeline.py [--data_dir /tmp/mae_face_demo] [--image_size 224]
        [--batch_size 64] [--num_workers N (default: cores)] [--num_threads 0] [--seconds 20] [--view eyes_mouth]
"""

import os
import sys
import time
from concurrent import futures

from absl import app, flags
import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from input_pipeline import abaw, datasets, demo_data  # pylint: disable=g-import-not-at-top

_DATA = flags.DEFINE_string('data_dir', '/tmp/mae_face_demo', 'ABAW-layout root (demo data made if absent)')
_SIZE = flags.DEFINE_integer('image_size', 224, 'output image size of the pipeline')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'batch size')
_WORKERS = flags.DEFINE_integer('num_workers', -1, 'grain worker processes (-1: one per core)')
_THREADS = flags.DEFINE_integer('num_threads', 0, 'grain reader threads per process (0: none; '
                                'threads cost more per record than they save here)')
_SECONDS = flags.DEFINE_float('seconds', 20.0, 'timed duration of each side')
_VIEW = flags.DEFINE_string('view', 'eyes_mouth', "'face' or a region variant")


def raw_decode_rate(paths: list[str], seconds: float, cores: int) -> float:
  """Images/s of file read + cv2.imdecode on `cores` threads, cycling over the files."""
  def work(chunk):
    for p in chunk:
      img = cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_COLOR)
      assert img is not None
    return len(chunk)
  chunks = [paths[i:i + 64] for i in range(0, len(paths), 64)]
  with futures.ThreadPoolExecutor(cores) as pool:
    list(pool.map(work, chunks[:cores]))  # warm-up
    done, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
      batch = [chunks[(i + j) % len(chunks)] for j in range(4 * cores)]
      i += len(batch)
      done += sum(pool.map(work, batch))
    return done / (time.perf_counter() - start)


def pipeline_rate(ds, seconds: float, size: int) -> float:
  """Images/s of a grain pipeline after a warm-up of 5 batches."""
  it = iter(ds)
  try:
    for _ in range(5):  # warm-up: workers started, buffers filled
      next(it)
    done, start = 0, time.perf_counter()
    for batch in it:  # a one-pass (eval) pipeline may end first
      done += len(batch['label'])
      if time.perf_counter() - start >= seconds:
        break
    assert batch['image'].shape == (_BATCH.value, size, size, 3)
    assert batch['image'].dtype == np.float32
    return done / (time.perf_counter() - start)
  finally:
    it.close()


def main(argv):
  del argv
  cores = os.cpu_count()
  workers = cores if _WORKERS.value < 0 else _WORKERS.value
  threads = _THREADS.value
  root = demo_data.ensure_demo_data(_DATA.value)
  source = abaw.load_split(root, 'Train_Set')
  paths = [source[i]['path'] for i in range(len(source))]
  print(f'{len(paths)} frames of {root}, {cores} cores; pipeline: view={_VIEW.value}, '
        f'image_size={_SIZE.value}, batch={_BATCH.value}, workers={workers}, threads={threads}')
  raw = raw_decode_rate(paths, _SECONDS.value, cores)
  print(f'raw cv2.imdecode (read + decode, {cores} threads): {raw:.0f} images/s')
  common = dict(batch_size=_BATCH.value, shard=(0, 1), num_workers=workers, num_threads=threads)
  pipe = pipeline_rate(datasets.finetune_dataset(source, image_size=_SIZE.value, seed=0,
                                                 view=_VIEW.value, **common), _SECONDS.value, _SIZE.value)
  print(f'fine-tuning pipeline: {pipe:.0f} images/s')
  # Context: the same grain machinery with no augmentation at the files' own size (read, decode,
  # batch, normalise), to separate framework cost from augmentation cost.
  native = datasets.T.read_image(source[0]).shape[0]
  plain = pipeline_rate(datasets.eval_dataset(source, image_size=native, crop_pct=1.0, **common),
                        _SECONDS.value / 2, native)
  print(f'decode + batch only pipeline ({native}px, no augmentation): {plain:.0f} images/s, '
        f'{plain / raw:.3f} of raw')
  print(f'ratio = pipeline images/s / raw decode images/s = {pipe / raw:.3f}')


if __name__ == '__main__':
  app.run(main)
