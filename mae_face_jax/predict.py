"""Inference on raw media: `align` (faces → ABAW-layout crops + landmarks.csv) and `predict`
(faces → expression per frame and track → predictions.csv, timelines, optional annotated video).

Both read a video, an image or a folder of them (`media`), detect faces in batches of frames
(`faces.Detector`), link them into tracks and align each face to the 5-point template. Outputs are
appended as each input is done, so an input that fails (its error names the file) leaves the
results of the others in place.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Iterator

import cv2
import numpy as np

from mae_face_jax import faces as faces_lib
from mae_face_jax import media, observe

log = logging.getLogger(__name__)
LANDMARK_HEADER = ('video,frame,track,score,x1,y1,x2,y2,'
                   + ','.join(f'lx{i},ly{i}' for i in range(1, 6)))
_CLASSIFY_EVERY = 256  # aligned faces per classifier call in predict
_PAD = 64  # photos are zero-padded (right, bottom) to a multiple of this: fewer compiled sizes


@dataclasses.dataclass
class Options:
  batch_size: int = 8          # frames per detector call
  largest_face: bool = False   # keep only the largest face of each frame, as track 0
  min_face_size: float = 20.0  # pixels; larger is faster on high-resolution video
  size: int = 112              # side of the aligned crops (the ABAW release's)


class Progress:
  """A line every few seconds: frames done, frames/s, ETA of the current input."""

  def __init__(self, name: str, total: int, every_s: float = 5.0, stream=None):
    self.name, self.total, self.every_s = name, total, every_s
    self.stream = stream or sys.stdout
    self.start = self._last = time.perf_counter()
    self.done = 0

  def update(self, n: int, final: bool = False) -> None:
    self.done += n
    now = time.perf_counter()
    if not final and now - self._last < self.every_s:
      return
    self._last = now
    rate = self.done / max(now - self.start, 1e-9)
    of = f'/{self.total}' if self.total else ''
    eta = f' | ETA {observe.format_seconds((self.total - self.done) / rate)}' if (
        self.total and not final and rate > 0) else ''
    self.stream.write(f'{self.name}: frame {self.done}{of} | {rate:.2f} frames/s{eta}\n')
    self.stream.flush()


def tracked_faces(source: media.Source, detector: faces_lib.Detector, options: Options,
                  progress: Progress | None = None
                  ) -> Iterator[tuple[int, np.ndarray, list[faces_lib.Face]]]:
  """(frame number, RGB frame, its faces with track ids) for every frame of the source."""
  tracker = faces_lib.Tracker()
  for numbers, frames in media.batches(source, options.batch_size):
    n, (h, w) = len(frames), frames.shape[1:3]
    # A video's frames share one size and batches one length (the last padded with black
    # frames), so the detector compiles once per video; photos are padded to fewer sizes.
    ph, pw = (h, w) if source.is_video else (-(-h // _PAD) * _PAD, -(-w // _PAD) * _PAD)
    batch = np.zeros((options.batch_size if source.is_video else n, ph, pw, 3), np.uint8)
    batch[:n, :h, :w] = frames
    found = detector.detect(batch)[:n]
    for number, frame, fs in zip(numbers, frames, found):
      if options.largest_face:  # one face, one track: the video's
        fs = faces_lib.largest(fs)
        for f in fs:
          f.track = 0
      else:
        fs = tracker.update(fs)
      yield int(number), frame, fs
    if progress:
      progress.update(n)


def make_detector(options: Options) -> faces_lib.Detector:
  return faces_lib.Detector(min_face_size=options.min_face_size)


def _landmark_row(video: str, number: int, face: faces_lib.Face) -> str:
  values = [face.score, *face.box, *face.landmarks.reshape(-1)]
  return f'{video},{number},{face.track},' + ','.join(f'{v:.6g}' for v in values)


def _track_dir(root: str, name: str, track: int) -> str:
  return os.path.join(root, f'{name}_{track}')


def _merge_single_track(root: str, name: str, tracks: set[int]) -> None:
  """One track in the video: its folder takes the video's own name (the ABAW layout)."""
  if len(tracks) != 1:
    return
  src, dst = _track_dir(root, name, next(iter(tracks))), os.path.join(root, name)
  if not os.path.exists(dst):
    os.replace(src, dst)
    return
  for f in os.listdir(src):  # a previous run's folder: this run's frames replace its frames
    os.replace(os.path.join(src, f), os.path.join(dst, f))
  os.rmdir(src)


def aligned_faces(source: media.Source, detector: faces_lib.Detector, options: Options,
                  summary: dict) -> Iterator[tuple[int, faces_lib.Face, np.ndarray, np.ndarray]]:
  """(frame number, face, aligned crop, landmarks in the crop) for every face of the source;
  counts frames and frames without a face into summary; prints progress."""
  progress = Progress(source.name, media.frame_count(source))
  try:
    for number, frame, found in tracked_faces(source, detector, options, progress):
      summary['frames'] += 1
      summary['frames_without_face'] += not found
      for face in found:
        crop, points = faces_lib.align(frame, face.landmarks, options.size)
        yield number, face, crop, points
  finally:
    progress.update(0, final=True)


def for_each_source(input_path: str, summary: dict, work) -> None:
  """work(source) for every input; with several inputs, one that cannot be read is named in the
  log and in summary['failed'], and the others go on (only all failing is an error)."""
  sources = media.sources(input_path)
  summary.update(inputs=len(sources), failed=[], frames=0, faces=0, frames_without_face=0)
  for source in sources:
    try:
      work(source)
    except media.MediaError as e:
      if len(sources) == 1:
        raise
      log.error('%s; skipped', e)
      summary['failed'].append(source.path)
  if len(summary['failed']) == len(sources):
    raise media.MediaError(f'{input_path}: none of its {len(sources)} inputs could be read')


def align(input_path: str, output_dir: str, options: Options = Options(),
          detector: faces_lib.Detector | None = None) -> dict:
  """Writes output_dir/cropped_aligned/<video>[_<track>]/<frame:05d>.jpg and landmarks.csv.
  Returns counts: inputs, failed (their paths), frames, faces, frames_without_face."""
  detector = detector or make_detector(options)
  crops_root = os.path.join(output_dir, 'cropped_aligned')
  os.makedirs(crops_root, exist_ok=True)
  summary: dict = {}
  with open(os.path.join(output_dir, 'landmarks.csv'), 'w') as table:
    table.write(LANDMARK_HEADER + '\n')

    def work(source: media.Source) -> None:
      tracks: set[int] = set()
      try:
        for number, face, crop, _ in aligned_faces(source, detector, options, summary):
          folder = _track_dir(crops_root, source.name, face.track)
          if face.track not in tracks:
            os.makedirs(folder, exist_ok=True)
            tracks.add(face.track)
          cv2.imwrite(os.path.join(folder, f'{number:05d}.jpg'),
                      cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
          table.write(_landmark_row(source.name, number, face) + '\n')
          summary['faces'] += 1
          table.flush()
      finally:
        _merge_single_track(crops_root, source.name, tracks)

    for_each_source(input_path, summary, work)
  return summary


# --- predict -----------------------------------------------------------------------------------

def _prediction_header() -> str:
  from mae_face_jax.metrics import EXPR_CLASSES  # pylint: disable=import-outside-toplevel
  return ('video,frame,time_s,track,x1,y1,x2,y2,label_raw,label_smoothed,'
          + ','.join(EXPR_CLASSES))


def plot_track(path: str, title: str, frames: np.ndarray, probs: np.ndarray,
               smoothed: np.ndarray) -> None:
  """A track's timeline: smoothed class probabilities stacked, raw and smoothed labels on top."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from mae_face_jax.metrics import EXPR_CLASSES  # pylint: disable=import-outside-toplevel
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 4), sharex=True,
                                    gridspec_kw={'height_ratios': [2, 1]})
  top.plot(frames, probs.argmax(-1), drawstyle='steps-mid', lw=0.8, alpha=0.6, label='raw')
  top.plot(frames, smoothed.argmax(-1), drawstyle='steps-mid', lw=1.5, label='smoothed')
  top.set_yticks(range(len(EXPR_CLASSES)), EXPR_CLASSES, fontsize=7)
  top.legend(fontsize=7, loc='upper right')
  top.set_title(title)
  bottom.stackplot(frames, smoothed.T, labels=EXPR_CLASSES)
  bottom.set_ylim(0, 1)
  bottom.set_xlabel('frame')
  bottom.legend(fontsize=6, ncol=8, loc='upper center', bbox_to_anchor=(0.5, -0.45))
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _annotate(source: media.Source, path: str, rate: float, labels: dict) -> None:
  """The video again with each face's box, track and smoothed label drawn (MP4)."""
  writer = None
  for numbers, frames in media.batches(source, 16):
    for number, frame in zip(numbers, frames):
      image = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
      if writer is None:
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), rate or 25.0,
                                 (image.shape[1], image.shape[0]))
      for (box, track, label) in labels.get(int(number), []):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(image, (x1, y1), (x2, y2), (0, 255, 0), 2)
        cv2.putText(image, f'{track}: {label}', (x1, max(y1 - 6, 12)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, (0, 255, 0), 1, cv2.LINE_AA)
      writer.write(image)
  if writer is not None:
    writer.release()


def predict(input_path: str, model: object, output_dir: str, options: Options = Options(),
            annotated_video: bool = False, config: object = None,
            detector: faces_lib.Detector | None = None) -> dict:
  """Writes output_dir/predictions.csv, timelines/<video>_<track>.png and, with annotated_video,
  <video>_annotated.mp4; `model` is a path (`classifiers.load`) or a loaded Classifier. Returns
  counts: inputs, failed, frames, faces, frames_without_face."""
  from mae_face_jax import classifiers  # pylint: disable=import-outside-toplevel
  from mae_face_jax.metrics import EXPR_CLASSES  # pylint: disable=import-outside-toplevel
  classifier = (model if isinstance(model, classifiers.Classifier)
                else classifiers.load(model, config))
  detector = detector or make_detector(options)
  os.makedirs(os.path.join(output_dir, 'timelines'), exist_ok=True)
  print(f'model: {classifier.name}, smoothing window {classifier.window}')
  summary: dict = {}
  with open(os.path.join(output_dir, 'predictions.csv'), 'w') as table:
    table.write(_prediction_header() + '\n')

    def work(source: media.Source) -> None:
      rate = media.fps(source)
      found, probs, pending = [], [], []  # crops are classified as they come: memory stays flat
      for number, face, crop, points in aligned_faces(source, detector, options, summary):
        found.append((number, face))
        pending.append((crop, points))
        if len(pending) == _CLASSIFY_EVERY:
          probs.append(classifier(*map(np.stack, zip(*pending))))
          pending = []
      if pending:
        probs.append(classifier(*map(np.stack, zip(*pending))))
      if not found:
        log.warning('%s: no face in any frame', source.path)
        return
      probs = np.concatenate(probs)
      numbers = np.array([n for n, _ in found])
      tracks = np.array([f.track for _, f in found])
      smoothed = smoothing_per_track(probs, tracks, numbers, classifier.window)
      drawn: dict[int, list] = {}
      for (number, face), p, s in zip(found, probs, smoothed):
        raw, smooth = EXPR_CLASSES[int(p.argmax())], EXPR_CLASSES[int(s.argmax())]
        time_s = (number - 1) / rate if rate else 0.0
        table.write(f'{source.name},{number},{time_s:.3f},{face.track},'
                    + ','.join(f'{v:.1f}' for v in face.box) + f',{raw},{smooth},'
                    + ','.join(f'{v:.6g}' for v in p) + '\n')
        drawn.setdefault(number, []).append((face.box, face.track, smooth))
      table.flush()
      summary['faces'] += len(found)
      for track in np.unique(tracks):
        sel = tracks == track
        plot_track(os.path.join(output_dir, 'timelines', f'{source.name}_{track}.png'),
                   f'{source.name}, track {track}', numbers[sel], probs[sel], smoothed[sel])
      if annotated_video and source.is_video:
        _annotate(source, os.path.join(output_dir, f'{source.name}_annotated.mp4'), rate, drawn)

    for_each_source(input_path, summary, work)
  return summary | {'model': classifier.name, 'window': classifier.window}


def smoothing_per_track(probs: np.ndarray, tracks: np.ndarray, frames: np.ndarray, window: int
                        ) -> np.ndarray:
  """Sliding-window smoothing within each track (tracks never mix)."""
  from mae_face_jax import smoothing  # pylint: disable=import-outside-toplevel
  return smoothing.sliding_window_smooth(probs, tracks.astype(str), frames, window)


# --- evaluate ----------------------------------------------------------------------------------

def evaluate(model_path: str, output_dir: str, config: object = None) -> dict:
  """Scores the model on its data's ABAW validation split (the pipeline its training evaluated
  with) and writes output_dir/report as the fusion stage does. Returns the results table."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from input_pipeline import abaw  # pylint: disable=import-outside-toplevel
  from mae_face_jax import classifiers, inputs, report  # pylint: disable=import-outside-toplevel
  classifier = classifiers.load(model_path, config)
  cfg = classifier.config
  source = abaw.load_split(inputs.dataset_root(cfg.data, output_dir), 'Validation_Set')
  paired = len(classifier.views) == 2
  cols: dict[str, list[np.ndarray]] = {'probs': [], 'label': [], 'video': [], 'frame': []}
  progress = Progress(f'{classifier.name} on validation', len(source))
  for batch in inputs.eval_batches(cfg, source, classifier.views[0], paired=paired):
    probs = np.asarray(classifier.apply(
        {k: jnp.asarray(batch[k]) for k in ('image', 'boxes', 'region_image') if k in batch}))
    keep = batch['mask'] > 0
    cols['probs'].append(probs[keep])
    for k in ('label', 'video', 'frame'):
      cols[k].append(batch[k][keep])
    progress.update(int(keep.sum()))
  progress.update(0, final=True)
  out = {k: np.concatenate(v) for k, v in cols.items()}
  frames = {'label': out['label'], 'frame': out['frame'],
            'video': np.array([source.videos[i] for i in out['video']])}
  results, _ = report.write_report(os.path.join(output_dir, 'report'), frames,
                                   {classifier.name: out['probs']},
                                   list(cfg.get('windows', classifiers.WINDOWS)),
                                   cfg.get('num_timelines', 4))
  return results


def run_mode(mode: str, config: object, *, input_path: str | None, output: str | None,
             model: str | None, largest_face: bool, annotated_video: bool,
             min_face_size: float) -> None:
  """main.py's align / predict / evaluate; a bad input or model ends with a message naming it."""
  from mae_face_jax import classifiers  # pylint: disable=import-outside-toplevel
  needs = {'align': ('input', 'output'), 'predict': ('input', 'model', 'output'),
           'evaluate': ('model', 'output')}[mode]
  given = {'input': input_path, 'model': model, 'output': output}
  missing = [f'--{n}' for n in needs if not given[n]]
  if missing:
    sys.exit(f'--mode={mode} needs {" and ".join(missing)}')
  os.makedirs(output, exist_ok=True)
  observe.route_logs(os.path.join(output, 'log.txt'))
  if config is not None and config.get('program') == 'demo':
    config = config.finetune_face  # the demo's face view: what its exported ViT is
  options = Options(largest_face=largest_face, min_face_size=min_face_size)
  try:
    if mode == 'align':
      summary = align(input_path, output, options)
    elif mode == 'predict':
      summary = predict(input_path, model, output, options, annotated_video, config)
    else:
      results = evaluate(model, output, config)
      print(open(os.path.join(output, 'report', 'results.md')).read())
      summary = {'report': os.path.join(output, 'report'), 'methods': len(results)}
  except (media.MediaError, classifiers.ModelError) as e:
    sys.exit(f'error: {e}')
  print(f'{mode}: ' + ', '.join(f'{k} {v}' for k, v in summary.items()) + f' → {output}')
