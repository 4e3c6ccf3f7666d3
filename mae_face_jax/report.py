"""Evaluation outputs a person reads: per-frame prediction tables, results tables, plots, the
smoothing-window sweep, the whole report of several methods (`write_report`) and the ABAW
test-submission file."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use('Agg')  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from absl import logging  # noqa: E402

from mae_face_jax import metrics, smoothing  # noqa: E402

CLASSES = metrics.EXPR_CLASSES


def atomic_write_text(path: str, text: str) -> None:
  """Writes `text` to a temporary file beside `path`, then renames it over `path`: a reader never
  sees a half-written file and a crash leaves the previous one intact."""
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def write_predictions(path: str, videos: Sequence[str], frames: np.ndarray, labels: np.ndarray,
                      probs: np.ndarray) -> None:
  """CSV of per-frame class probabilities: video, frame, label (-1 if unknown), one column a class."""
  rows = ['video,frame,label,' + ','.join(CLASSES)]
  for v, f, y, p in zip(videos, frames, labels, probs):
    rows.append(f'{v},{int(f)},{int(y)},' + ','.join(f'{x:.6g}' for x in p))
  atomic_write_text(path, '\n'.join(rows) + '\n')


def read_predictions(path: str) -> dict[str, np.ndarray]:
  """The table of `write_predictions` as arrays: video, frame, label, probs."""
  with open(path) as f:
    reader = csv.reader(f)
    header = next(reader)
    if header[:3] != ['video', 'frame', 'label'] or len(header) != 3 + len(CLASSES):
      raise ValueError(f'{path}: not a predictions table (header {header[:4]}...)')
    rows = list(reader)
  return {'video': np.array([r[0] for r in rows]),
          'frame': np.array([int(r[1]) for r in rows]),
          'label': np.array([int(r[2]) for r in rows]),
          'probs': np.array([[float(x) for x in r[3:]] for r in rows], np.float32)}


def write_results_table(workdir: str, results: Mapping[str, Mapping[str, float | list[float]]]
                        ) -> None:
  """results.md, results.csv and results.json: macro F1 and per-class F1 (%) of each method."""
  names = list(results)
  md = ['| method | macro F1 | ' + ' | '.join(CLASSES) + ' |',
        '|---|---|' + '---|' * len(CLASSES)]
  lines = ['method,macro_f1,' + ','.join(CLASSES)]
  for name in names:
    r = results[name]
    f1 = [100 * x for x in r['per_class_f1']]
    md.append(f'| {name} | {100 * r["macro_f1"]:.2f} | ' + ' | '.join(f'{x:.1f}' for x in f1) + ' |')
    lines.append(f'{name},{100 * r["macro_f1"]:.4f},' + ','.join(f'{x:.4f}' for x in f1))
  atomic_write_text(os.path.join(workdir, 'results.md'), '\n'.join(md) + '\n')
  atomic_write_text(os.path.join(workdir, 'results.csv'), '\n'.join(lines) + '\n')
  atomic_write_text(os.path.join(workdir, 'results.json'), json.dumps(results, indent=1))


def plot_confusion(path: str, labels: np.ndarray, preds: np.ndarray, title: str) -> None:
  cm = metrics.confusion(labels, preds).astype(np.float64)
  norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
  fig, ax = plt.subplots(figsize=(6.5, 5.5))
  im = ax.imshow(norm, cmap='Blues', vmin=0, vmax=1)
  for i in range(len(CLASSES)):
    for j in range(len(CLASSES)):
      ax.text(j, i, int(cm[i, j]), ha='center', va='center', fontsize=7,
              color='white' if norm[i, j] > 0.5 else 'black')
  ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=45, ha='right')
  ax.set_yticks(range(len(CLASSES)), CLASSES)
  ax.set_xlabel('prediction')
  ax.set_ylabel('truth (row-normalised colour, counts)')
  ax.set_title(title)
  fig.colorbar(im)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_per_class_f1(path: str, results: Mapping[str, Mapping[str, float | list[float]]]) -> None:
  names = list(results)
  width = 0.8 / len(names)
  fig, ax = plt.subplots(figsize=(10, 4))
  for i, name in enumerate(names):
    ax.bar(np.arange(len(CLASSES)) + i * width, results[name]['per_class_f1'], width, label=name)
  ax.set_xticks(np.arange(len(CLASSES)) + 0.4 - width / 2, CLASSES)
  ax.set_ylabel('F1')
  ax.set_ylim(0, 1)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_f1_vs_window(path: str, curves: Mapping[str, Mapping[int, float]]) -> None:
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, curve in curves.items():
    windows = sorted(curve)
    ax.plot(windows, [curve[w] for w in windows], marker='o', label=name)
  ax.set_xlabel('smoothing window (frames)')
  ax.set_ylabel('validation macro F1')
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_timeline(path: str, video: str, frames: np.ndarray, labels: np.ndarray, raw: np.ndarray,
                  smoothed: np.ndarray) -> None:
  """Truth, raw and smoothed per-frame predictions of one video."""
  order = np.argsort(frames)
  fig, ax = plt.subplots(figsize=(10, 3))
  for y, name, off in ((labels, 'truth', 0.0), (raw, 'raw', 0.15), (smoothed, 'smoothed', 0.3)):
    ax.plot(frames[order], np.asarray(y)[order] + off, drawstyle='steps-mid', label=name, lw=1)
  ax.set_yticks(range(len(CLASSES)), CLASSES)
  ax.set_xlabel('frame')
  ax.set_title(video)
  ax.legend(fontsize=7, loc='upper right')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_submission(path: str, videos: Sequence[str], frames: np.ndarray, preds: np.ndarray
                     ) -> None:
  """ABAW expression test submission: header of the class names, then `video/00001.jpg,label`."""
  order = sorted(range(len(frames)), key=lambda i: (videos[i], int(frames[i])))
  rows = ['image_location,' + ','.join(CLASSES)]
  rows += [f'{videos[i]}/{int(frames[i]):05d}.jpg,{int(preds[i])}' for i in order]
  atomic_write_text(path, '\n'.join(rows) + '\n')


def sweep_windows(probs: np.ndarray, frames: Mapping[str, np.ndarray], windows: Sequence[int]
                  ) -> dict[int, float]:
  """Validation macro F1 of `probs` smoothed with each window (`frames`: label, video, frame)."""
  return {w: metrics.macro_f1(frames['label'], smoothing.sliding_window_smooth(
      probs, frames['video'], frames['frame'], w).argmax(-1)) for w in windows}


def write_report(report_dir: str, frames: Mapping[str, np.ndarray], probs: Mapping[str, np.ndarray],
                 windows: Sequence[int], num_timelines: int
                 ) -> tuple[dict[str, Any], dict[str, dict[int, float]]]:
  """The report of several methods on the same frames (`frames`: label, video, frame; `probs`:
  method → per-frame probabilities): results table of each method raw and smoothed with its best
  window, the per-frame predictions behind every row, per-class F1 and F1-vs-window plots, and the
  confusion matrix and timelines of the best method. Returns the results and F1-vs-window curves."""
  os.makedirs(report_dir, exist_ok=True)
  results, curves, best = {}, {}, (-1.0, '', 1)
  labels, videos, frame_ids = frames['label'], frames['video'], frames['frame']
  for name, p in probs.items():
    curves[name] = sweep_windows(p, frames, windows)
    window = max(curves[name], key=curves[name].get)
    results[name] = metrics.summary(labels, p)
    results[f'{name} + smoothing (w={window})'] = metrics.summary(
        labels, smoothing.sliding_window_smooth(p, videos, frame_ids, window))
    if curves[name][window] > best[0]:
      best = (curves[name][window], name, window)
  results['chance (uniform random predictions)'] = metrics.uniform_chance(labels)
  write_results_table(report_dir, results)
  _, name, window = best
  smoothed = smoothing.sliding_window_smooth(probs[name], videos, frame_ids, window)
  plot_confusion(os.path.join(report_dir, 'confusion_matrix.png'), labels, smoothed.argmax(-1),
                 f'{name}, smoothed (w={window})')
  plot_per_class_f1(os.path.join(report_dir, 'per_class_f1.png'), results)
  plot_f1_vs_window(os.path.join(report_dir, 'f1_vs_window.png'), curves)
  os.makedirs(os.path.join(report_dir, 'timelines'), exist_ok=True)
  for video in list(dict.fromkeys(videos))[:num_timelines]:
    rows = videos == video
    plot_timeline(os.path.join(report_dir, 'timelines', f'{video}.png'), video, frame_ids[rows],
                  labels[rows], probs[name][rows].argmax(-1), smoothed[rows].argmax(-1))
  for method, p in probs.items():
    write_predictions(os.path.join(report_dir, f'predictions_val_{method.replace(" ", "_")}.csv'),
                      videos, frame_ids, labels, p)
  logging.info('best: %s smoothed with window %d (macro F1 %.4f)', name, window, best[0])
  return results, curves
