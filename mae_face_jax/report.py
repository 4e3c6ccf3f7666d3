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


def write_results_table(workdir: str, results: Mapping[str, Mapping[str, Any]]) -> None:
  """results.md, results.csv and results.json: macro F1 and per-class F1 (%) of each method; a
  method run with several seeds shows their mean ± standard deviation (per-class F1: the mean)."""
  names = list(results)
  md = ['| method | macro F1 | ' + ' | '.join(CLASSES) + ' |',
        '|---|---|' + '---|' * len(CLASSES)]
  lines = ['method,macro_f1,macro_f1_std,seeds,' + ','.join(CLASSES)]
  for name in names:
    r = results[name]
    f1 = [100 * x for x in r['per_class_f1']]
    seeds = len(r.get('macro_f1_seeds', [r['macro_f1']]))
    std = 100 * r.get('macro_f1_std', 0.0)
    cell = f'{100 * r["macro_f1"]:.2f}' + (f' ± {std:.2f}' if seeds > 1 else '')
    md.append(f'| {name} | {cell} | ' + ' | '.join(f'{x:.1f}' for x in f1) + ' |')
    lines.append(f'{name},{100 * r["macro_f1"]:.4f},{std:.4f},{seeds},' +
                 ','.join(f'{x:.4f}' for x in f1))
  if any('macro_f1_seeds' in r for r in results.values()):
    md.append('\nRows of several seeds: mean ± standard deviation over the seeds (each seed in '
              'seeds.md).')
  atomic_write_text(os.path.join(workdir, 'results.md'), '\n'.join(md) + '\n')
  atomic_write_text(os.path.join(workdir, 'results.csv'), '\n'.join(lines) + '\n')
  atomic_write_text(os.path.join(workdir, 'results.json'), json.dumps(results, indent=1))


def over_seeds(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """One row from the summaries of several seeds: mean macro F1, its standard deviation, each
  seed's, and the mean per-class F1. One seed's summary is returned as it is."""
  if len(summaries) == 1:
    return dict(summaries[0])
  f1 = np.array([s['macro_f1'] for s in summaries])
  return {'macro_f1': float(f1.mean()), 'macro_f1_std': float(f1.std(ddof=1)),
          'macro_f1_seeds': f1.tolist(),
          'per_class_f1': np.mean([s['per_class_f1'] for s in summaries], axis=0).tolist()}


def write_seeds_table(report_dir: str, seeds: Mapping[str, list[tuple[float, float, int]]]) -> None:
  """seeds.md and seeds.csv: each seed's raw and smoothed macro F1 (%) of every seeded method."""
  md = ['| method | seed | macro F1 | smoothed macro F1 | window |', '|---|---|---|---|---|']
  lines = ['method,seed,macro_f1,smoothed_macro_f1,window']
  for name, runs in seeds.items():
    for seed, (raw, smoothed, window) in enumerate(runs):
      md.append(f'| {name} | {seed} | {100 * raw:.2f} | {100 * smoothed:.2f} | {window} |')
      lines.append(f'{name},{seed},{100 * raw:.4f},{100 * smoothed:.4f},{window}')
  atomic_write_text(os.path.join(report_dir, 'seeds.md'), '\n'.join(md) + '\n')
  atomic_write_text(os.path.join(report_dir, 'seeds.csv'), '\n'.join(lines) + '\n')


def predictions_file(name: str, seed: int | None = None) -> str:
  """The per-frame predictions file of a report row (and seed)."""
  return f'predictions_val_{name.replace(" ", "_")}' + ('' if seed is None else f'_s{seed}') + '.csv'


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
                 windows: Sequence[int], num_timelines: int,
                 seeded: Mapping[str, Sequence[np.ndarray]] | None = None
                 ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
  """The report of several methods on the same frames (`frames`: label, video, frame; `probs`:
  method → per-frame probabilities; `seeded`: method → one such array per seed): results table of
  each method raw and smoothed with its best window (a seeded method: mean ± std over seeds, the
  window best for the mean), each seed's figures (seeds.md), the per-frame predictions behind every
  row and seed, per-class F1 and F1-vs-window plots, and the confusion matrix and timelines of the
  best method (its best seed). Returns the results and, per method, its window, mean smoothed macro
  F1 and best seed."""
  os.makedirs(report_dir, exist_ok=True)
  seeded = {k: list(v) for k, v in (seeded or {}).items()}
  runs = {name: [p] for name, p in probs.items()} | seeded
  results, chosen, curves, seeds_table = {}, {}, {}, {}
  labels, videos, frame_ids = frames['label'], frames['video'], frames['frame']
  for name, arrays in runs.items():
    seed_curves = [sweep_windows(p, frames, windows) for p in arrays]
    curves[name] = {w: float(np.mean([c[w] for c in seed_curves])) for w in windows}
    window = max(curves[name], key=curves[name].get)
    smoothed = [smoothing.sliding_window_smooth(p, videos, frame_ids, window) for p in arrays]
    raw_rows = [metrics.summary(labels, p) for p in arrays]
    smooth_rows = [metrics.summary(labels, p) for p in smoothed]
    results[name] = over_seeds(raw_rows)
    results[f'{name} + smoothing (w={window})'] = over_seeds(smooth_rows)
    best_seed = int(np.argmax([r['macro_f1'] for r in smooth_rows]))
    chosen[name] = {'window': window, 'smoothed_f1': curves[name][window], 'seed': best_seed}
    if name in seeded:
      seeds_table[name] = [(r['macro_f1'], q['macro_f1'], window)
                           for r, q in zip(raw_rows, smooth_rows)]
    for seed, p in enumerate(arrays):
      write_predictions(os.path.join(report_dir, predictions_file(
          name, seed if name in seeded else None)), videos, frame_ids, labels, p)
  results['chance (uniform random predictions)'] = metrics.uniform_chance(labels)
  write_results_table(report_dir, results)
  if seeds_table:
    write_seeds_table(report_dir, seeds_table)
  name = max(chosen, key=lambda n: chosen[n]['smoothed_f1'])
  window, seed = chosen[name]['window'], chosen[name]['seed']
  best_probs = runs[name][seed]
  smoothed = smoothing.sliding_window_smooth(best_probs, videos, frame_ids, window)
  label = name + (f' seed {seed}' if name in seeded else '')
  plot_confusion(os.path.join(report_dir, 'confusion_matrix.png'), labels, smoothed.argmax(-1),
                 f'{label}, smoothed (w={window})')
  plot_per_class_f1(os.path.join(report_dir, 'per_class_f1.png'), results)
  plot_f1_vs_window(os.path.join(report_dir, 'f1_vs_window.png'), curves)
  os.makedirs(os.path.join(report_dir, 'timelines'), exist_ok=True)
  for video in list(dict.fromkeys(videos))[:num_timelines]:
    rows = videos == video
    plot_timeline(os.path.join(report_dir, 'timelines', f'{video}.png'), video, frame_ids[rows],
                  labels[rows], best_probs[rows].argmax(-1), smoothed[rows].argmax(-1))
  logging.info('best: %s smoothed with window %d (mean macro F1 %.4f)', label, window,
               chosen[name]['smoothed_f1'])
  return results, chosen
