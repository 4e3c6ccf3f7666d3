"""What a run shows while it trains: a progress line, TensorBoard events, reconstruction grids, and
where log lines go (`route_logs`: the console keeps ours, a file in the workdir keeps all).

Only process 0 prints or writes; on other hosts the same calls do nothing, so programs need no
`if jax.process_index() == 0` of their own. Events are written with tensorboard's own event-file
writer (no TensorFlow needed); scalars as `simple_value`, images as PNG `Summary.Image`.
"""

from __future__ import annotations

import datetime
import io
import logging
import os
import sys
import time

import jax
import numpy as np
from absl import logging as absl_logging
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from mae_face_jax import images as images_lib
from mae_face_jax.models.mae import patchify, unpatchify


# The lowest level a library's line needs to reach the console; below it, the log file only.
# Orbax writes several INFO lines per file it saves and WARNINGs about its own options (read-only
# managers, metadata it does not find); what goes wrong in it raises.
CONSOLE_LEVELS = {'/orbax/': logging.ERROR, '/grain/': logging.ERROR,
                  '/tensorflow_datasets/': logging.ERROR, '/etils/': logging.ERROR,
                  '/optax/': logging.WARNING, '/jax/': logging.WARNING, '/flax/': logging.WARNING}


def is_chief() -> bool:
  return jax.process_index() == 0


class _LibraryChatter(logging.Filter):
  """Drops a library's line below that library's console level (`CONSOLE_LEVELS`)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return all(record.levelno >= level for part, level in CONSOLE_LEVELS.items()
               if part in record.pathname)


def route_logs(log_path: str) -> None:
  """Every log line (INFO and up) appended to `log_path`; on the console our own lines and what
  reaches each library's console level."""
  console = absl_logging.get_absl_handler().python_handler  # absl's handler delegates to it
  if not any(isinstance(f, _LibraryChatter) for f in console.filters):
    console.addFilter(_LibraryChatter())
  if not any(getattr(h, 'baseFilename', None) == os.path.abspath(log_path)
             for h in logging.root.handlers):
    log_file = logging.FileHandler(log_path)
    log_file.setFormatter(absl_logging.PythonFormatter())
    log_file.setLevel(logging.INFO)
    logging.root.addHandler(log_file)


# Where a chain of stages (the main job) stands, for the progress line's whole-chain ETA: the
# stage's name, its place, and the seconds the stages after it are expected to take.
_chain: dict | None = None


def set_chain_stage(name: str, index: int, count: int, seconds_after: float) -> None:
  global _chain
  _chain = dict(name=name, index=index, count=count, seconds_after=seconds_after)


def clear_chain() -> None:
  global _chain
  _chain = None


def format_seconds(seconds: float) -> str:
  return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


class Progress:
  """Every `log_every` steps: step, loss, lr, steps/s, images/s, ETA (a bar when stdout is a tty);
  inside a chain of stages also the stage and the whole chain's ETA."""

  def __init__(self, total_steps: int, global_batch: int, first_step: int = 0, stream=None):
    self.total_steps, self.global_batch = total_steps, global_batch
    self.stream = stream or sys.stdout
    self.tty = self.stream.isatty()
    self._t, self._step = time.perf_counter(), first_step

  def update(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
    """Prints the line for `step` (steps done so far); returns the rates it computed."""
    now = time.perf_counter()
    steps_per_s = (step - self._step) / max(now - self._t, 1e-9)
    self._t, self._step = now, step
    rates = {'steps_per_s': steps_per_s, 'images_per_s': steps_per_s * self.global_batch}
    if not is_chief():
      return rates
    eta = (self.total_steps - step) / max(steps_per_s, 1e-9)
    fields = ' | '.join(f'{k} {v:.4g}' for k, v in metrics.items())
    line = (f'step {step}/{self.total_steps} | {fields} | {steps_per_s:.2f} steps/s | '
            f'{rates["images_per_s"]:.1f} img/s | ETA {format_seconds(eta)}')
    if _chain is not None:
      line += (f' | stage {_chain["index"]}/{_chain["count"]} {_chain["name"]}, '
               f'all stages ETA {format_seconds(eta + _chain["seconds_after"])}')
    if self.tty:
      done = int(30 * step / max(self.total_steps, 1))
      end = '\n' if step >= self.total_steps else ''
      self.stream.write(f'\r[{"#" * done}{"." * (30 - done)}] {line}\x1b[K{end}')
    else:
      self.stream.write(line + '\n')
    self.stream.flush()
    return rates


def encode_png(image: np.ndarray) -> bytes:
  """(H, W, 3) float in [0, 1] or uint8 → PNG bytes (matplotlib's writer; no TF, no PIL needed)."""
  import matplotlib.image
  if image.dtype != np.uint8:
    image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  buf = io.BytesIO()
  matplotlib.image.imsave(buf, image, format='png')
  return buf.getvalue()


class SummaryWriter:
  """TensorBoard event file under `logdir`; a no-op on every process but 0."""

  def __init__(self, logdir: str):
    self._writer = None
    if is_chief():
      os.makedirs(logdir, exist_ok=True)
      self._writer = EventFileWriter(logdir)

  def _emit(self, step: int, value: summary_pb2.Summary.Value) -> None:
    if self._writer is not None:
      self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                             summary=summary_pb2.Summary(value=[value])))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    for tag, v in values.items():
      self._emit(step, summary_pb2.Summary.Value(tag=tag, simple_value=float(v)))

  def image(self, step: int, tag: str, image: np.ndarray) -> None:
    h, w = image.shape[:2]
    img = summary_pb2.Summary.Image(height=h, width=w, colorspace=3,
                                    encoded_image_string=encode_png(image))
    self._emit(step, summary_pb2.Summary.Value(tag=tag, image=img))

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def reconstruction_grid(images: np.ndarray, pred: np.ndarray, mask: np.ndarray, patch_size: int,
                        norm_pix_loss: bool, max_rows: int = 8) -> np.ndarray:
  """Rows of original | masked | reconstruction (visible patches pasted back), in [0, 1].

  `images` are normalised NHWC inputs, `pred` the decoder output per patch; with `norm_pix_loss`
  the prediction is in per-patch normalised units and is mapped back with the original patch's
  mean and (unbiased) std, as MAE's visualisation does.
  """
  images, pred = np.asarray(images, np.float32)[:max_rows], np.asarray(pred, np.float32)[:max_rows]
  mask = np.asarray(mask, np.float32)[:max_rows]
  b, _, _, c = images.shape
  target = np.asarray(patchify(images, patch_size))
  if norm_pix_loss:
    mean = target.mean(-1, keepdims=True)
    std = np.sqrt(target.var(-1, keepdims=True, ddof=1) + 1e-6)
    pred = pred * std + mean
  m = mask[:, :, None]
  recon = np.asarray(unpatchify(target * (1 - m) + pred * m, patch_size, c))
  to_rgb = images_lib.to_unit_rgb
  masked_rgb = to_rgb(images)
  masked_rgb[np.asarray(unpatchify(np.broadcast_to(m, target.shape), patch_size, c)) > 0] = 0.5  # gray
  rows = [np.concatenate([to_rgb(images[i]), masked_rgb[i], to_rgb(recon[i])], axis=1)
          for i in range(b)]
  return np.concatenate(rows, axis=0)
