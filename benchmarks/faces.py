"""Frames/s of inference on raw video: decoding alone, our MTCNN detection, `align` and `predict`
end to end, and the reference MTCNN (facenet-pytorch, PyTorch) on the same frames, as ratios.

The video is generated: a 720p clip (default) with the astronaut's face (scikit-image) drifting
over a smooth background, written with OpenCV. Every side runs once untimed first (compilation,
caches), then is timed over the whole clip.

    python benchmarks/faces.py [--frames 48] [--height 720] [--width 1280] [--batch 8]
        [--model DIR_OR_PTH] [--min_face_size 20]

Without --model, `predict` is not timed. Needs the test requirements (facenet-pytorch,
scikit-image) for the reference side and the clip.
"""

import os
import sys
import tempfile
import time

from absl import app, flags
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests import face_videos  # pylint: disable=g-import-not-at-top
from mae_face_jax import classifiers, media, predict  # pylint: disable=g-import-not-at-top

_FRAMES = flags.DEFINE_integer('frames', 48, 'frames in the clip')
_HEIGHT = flags.DEFINE_integer('height', 720, 'frame height')
_WIDTH = flags.DEFINE_integer('width', 1280, 'frame width')
_BATCH = flags.DEFINE_integer('batch', 8, 'frames per detector call (both detectors)')
_MODEL = flags.DEFINE_string('model', None, 'model for predict (fusion/fine-tuning workdir, .pth)')
OURS, REFERENCE = 'detect (ours, frames in memory)', 'detect (reference, frames in memory)'
ALIGN = 'align (decode + detect + align + write)'
PREDICT = 'predict (align + classify + smooth + write)'
_MIN_FACE = flags.DEFINE_float('min_face_size', 20, 'smallest face, pixels (both detectors)')


def make_clip(path: str, n: int, height: int, width: int) -> None:
  rng = np.random.default_rng(0)
  base = face_videos.background(rng, height, width)
  frames = []
  for k in range(n):
    frame = base.copy()
    face_videos.paste(frame, face_videos.similarity(
        1.5 + 0.3 * np.sin(k / 7), 10 * np.sin(k / 5), (0.3 * width + 4 * k, 0.5 * height)))
    frames.append(frame)
  face_videos.write_video(path, frames)


def timed(fn, frames: int) -> float:
  """Frames/s of fn() after one untimed run."""
  fn()
  start = time.perf_counter()
  fn()
  return frames / (time.perf_counter() - start)


def main(argv):
  del argv
  import torch  # pylint: disable=import-outside-toplevel
  from facenet_pytorch import MTCNN  # pylint: disable=import-outside-toplevel
  n, batch = _FRAMES.value, _BATCH.value
  tmp = tempfile.mkdtemp()
  clip = os.path.join(tmp, 'clip.avi')
  make_clip(clip, n, _HEIGHT.value, _WIDTH.value)
  source = media.sources(clip)[0]
  frames = np.concatenate([f for _, f in media.batches(source, batch)])
  options = predict.Options(batch_size=batch, min_face_size=_MIN_FACE.value)
  detector = predict.make_detector(options)
  print(f'clip: {n} frames of {_WIDTH.value}x{_HEIGHT.value}; batches of {batch}; '
        f'{os.cpu_count()} cores; torch threads {torch.get_num_threads()}')

  rates = {}
  rates['decode'] = timed(lambda: [None for _ in media.batches(source, batch)], n)
  rates[OURS] = timed(
      lambda: [detector.detect(frames[i:i + batch]) for i in range(0, n, batch)], n)
  reference = MTCNN(keep_all=True, min_face_size=_MIN_FACE.value, device='cpu')
  rates[REFERENCE] = timed(
      lambda: [reference.detect(list(frames[i:i + batch])) for i in range(0, n, batch)], n)
  rates[ALIGN] = timed(
      lambda: predict.align(clip, os.path.join(tmp, 'align'), options, detector), n)
  if _MODEL.value:
    model = classifiers.load(_MODEL.value)
    print(f'model: {model.name} ({_MODEL.value})')
    rates[PREDICT] = timed(lambda: predict.predict(clip, model, os.path.join(tmp, 'predict'),
                                                   options, detector=detector), n)
  found = sum(len(f) for f in detector.detect(frames[:batch]))
  print(f'faces in the first {batch} frames: ours {found}')
  for name, rate in rates.items():
    print(f'{name:48s} {rate:8.2f} frames/s')
  ours, ref = rates[OURS], rates[REFERENCE]
  print(f'ratio = our detection / reference detection = {ours / ref:.2f}')
  print(f'ratio = align / decode = {rates[ALIGN] / rates["decode"]:.3f}')
  if _MODEL.value:
    print(f'ratio = predict / decode = {rates[PREDICT] / rates["decode"]:.3f}')
    print(f'ratio = predict / align = {rates[PREDICT] / rates[ALIGN]:.3f}')


if __name__ == '__main__':
  app.run(main)
