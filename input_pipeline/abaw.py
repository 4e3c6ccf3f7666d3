"""ABAW / Aff-Wild2 expression-track layout: frames, annotations, splits, test list, landmarks.

Layout (under a dataset root)::

    cropped_aligned/<video>/<frame:05d>.jpg                      aligned faces, frame numbers 1-based
    cropped_aligned/<video>/<frame:05d>.pts|.txt                 optional landmarks (68 iBUG or 5 points)
    EXPR_Classification_Challenge/Train_Set/<video>.txt          header line, then one label per frame
    EXPR_Classification_Challenge/Validation_Set/<video>.txt
    EXPR_test_set_release.txt                                    test videos, one name a line

Annotation files: the first line is ``Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other``;
line k after it (1-based) labels frame k, i.e. file ``<k:05d>.jpg``; ``-1`` marks an unannotated frame and
is dropped. Videos with two people carry ``_left``/``_right`` suffixes and are separate videos.

Public API:
    CLASSES: tuple[str, ...]                       the 8 class names, ids 0-7
    read_annotation(path) -> np.ndarray            int labels per frame (-1 kept), validated
    read_test_list(path) -> list[str]
    read_landmarks(path) -> np.ndarray             (N, 2) float32, N in {5, 68}
    load_split(root, split, images_dir='cropped_aligned') -> FrameSource
    load_test_set(root, list_file='EXPR_test_set_release.txt', images_dir=...) -> FrameSource
    load_frames(root, images_dir=...) -> FrameSource          every frame, unlabeled (pretraining)

A ``FrameSource`` is a grain random-access source of records
``{'path', 'label', 'video', 'frame', 'landmarks'}`` where ``video`` is an index into ``source.videos``,
``frame`` is the 1-based frame number and ``landmarks`` a path or ''. It stores columns, not dicts, so
the 2.7M frames of the real dataset stay small when pickled to worker processes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Sequence

import numpy as np

CLASSES = ('Neutral', 'Anger', 'Disgust', 'Fear', 'Happiness', 'Sadness', 'Surprise', 'Other')
IMAGES_DIR = 'cropped_aligned'
ANNOTATIONS_DIR = 'EXPR_Classification_Challenge'
SPLITS = ('Train_Set', 'Validation_Set')
TEST_LIST = 'EXPR_test_set_release.txt'
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp')
LANDMARK_EXTS = ('.pts', '.txt')

log = logging.getLogger(__name__)


def read_annotation(path: str) -> np.ndarray:
  """Labels of one video, index k-1 for frame k; -1 kept. Raises ValueError naming file:line."""
  with open(path, encoding='utf-8') as f:
    lines = f.read().splitlines()
  if not lines:
    raise ValueError(f'{path}:1: empty annotation file, expected the header {",".join(CLASSES)}')
  header = tuple(name.strip() for name in lines[0].split(','))
  if header != CLASSES:
    raise ValueError(f'{path}:1: wrong header {lines[0]!r}, expected {",".join(CLASSES)}')
  # Trailing blank lines are harmless; a blank line in the middle would shift frame numbers.
  while len(lines) > 1 and not lines[-1].strip():
    lines.pop()
  labels = np.empty(len(lines) - 1, np.int16)
  for k, line in enumerate(lines[1:], start=1):
    try:
      value = int(line.strip())
    except ValueError:
      raise ValueError(f'{path}:{k + 1}: label {line!r} is not an integer') from None
    if not -1 <= value < len(CLASSES):
      raise ValueError(f'{path}:{k + 1}: label {value} out of range -1..{len(CLASSES) - 1}')
    labels[k - 1] = value
  return labels


def read_test_list(path: str) -> list[str]:
  """Video names of a test-set release file, one a line (blank lines ignored)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: test list not found, expected one video name a line')
  with open(path, encoding='utf-8') as f:
    names = [line.strip() for line in f]
  # Some releases list names with a file suffix or a header; keep only plain video names.
  names = [os.path.splitext(n)[0] if n.endswith('.txt') else n for n in names if n]
  if names and names[0].lower() in ('video', 'videos', 'name'):
    names = names[1:]
  return names


def read_landmarks(path: str) -> np.ndarray:
  """(N, 2) float32 landmarks from an iBUG .pts file or a text file of 'x y' / 'x,y' rows."""
  with open(path, encoding='utf-8') as f:
    text = f.read()
  if '{' in text:  # iBUG .pts: "version: 1", "n_points: 68", "{", rows, "}"
    text = text[text.index('{') + 1:text.rindex('}')]
  rows = [line.replace(',', ' ').split() for line in text.splitlines() if line.strip()]
  try:
    points = np.asarray(rows, np.float32)
  except ValueError:
    raise ValueError(f'{path}: landmarks must be rows of two numbers') from None
  if points.ndim != 2 or points.shape[1] != 2 or len(points) not in (5, 68):
    raise ValueError(f'{path}: expected 5 or 68 rows of "x y", got shape {points.shape}')
  return points


@dataclasses.dataclass
class FrameSource:
  """Random-access source of frame records (columns; see the module docstring)."""

  root: str  # the images directory, e.g. <dataset>/cropped_aligned
  videos: tuple[str, ...]
  video: np.ndarray  # int32 index into videos
  frame: np.ndarray  # int32, 1-based
  label: np.ndarray  # int16, -1 when unlabeled
  landmarks: np.ndarray  # int8 index into LANDMARK_EXTS of the file next to the image, -1 none
  missing: int = 0  # annotated frames whose image is absent (skipped)

  def __len__(self) -> int:
    return len(self.frame)

  def __getitem__(self, i: int) -> dict:
    v, k, mark = int(self.video[i]), int(self.frame[i]), int(self.landmarks[i])
    stem = f'{self.root}{os.sep}{self.videos[v]}{os.sep}{k:05d}'  # os.path.join costs a decode's tenth
    return {
        'path': stem + '.jpg',
        'label': int(self.label[i]),
        'video': v,
        'frame': k,
        'landmarks': stem + LANDMARK_EXTS[mark] if mark >= 0 else '',
    }

  def image_location(self, i: int) -> str:
    """The submission key of record i, ``video/00001.jpg``."""
    return f'{self.videos[int(self.video[i])]}/{int(self.frame[i]):05d}.jpg'


def _check_images_dir(images_root: str) -> None:
  if not os.path.isdir(images_root):
    raise FileNotFoundError(
        f'{images_root}: images directory not found, expected <video>/<frame:05d>.jpg under it')


def _frames_on_disk(video_dir: str) -> tuple[dict[int, None], dict[int, int]]:
  """Frame numbers with a .jpg image, and with a landmark file, in one directory listing."""
  images, landmarks = {}, {}
  try:
    entries = os.listdir(video_dir)
  except FileNotFoundError:
    return images, landmarks
  for name in entries:
    stem, ext = os.path.splitext(name)
    if not stem.isdigit():
      continue
    if ext.lower() == '.jpg':
      images[int(stem)] = None
    elif ext in LANDMARK_EXTS:
      landmarks[int(stem)] = LANDMARK_EXTS.index(ext)
  return images, landmarks


def _build(images_root: str, per_video: Iterable[tuple[str, np.ndarray | None]]) -> FrameSource:
  """Columns for videos given as (name, labels-per-frame or None for every frame on disk)."""
  videos, cols, missing = [], [], 0
  for name, labels in per_video:
    on_disk, landmarks = _frames_on_disk(os.path.join(images_root, name))
    if labels is None:
      frames = np.array(sorted(on_disk), np.int32)
      frame_labels = np.full(len(frames), -1, np.int16)
    else:
      annotated = np.flatnonzero(labels >= 0).astype(np.int32) + 1
      present = np.array([k in on_disk for k in annotated.tolist()], bool)
      if not present.all():
        missing += int((~present).sum())
        log.debug('%s: %d annotated frames have no image; skipped', name, int((~present).sum()))
      frames = annotated[present]
      frame_labels = labels[frames - 1]
    v = len(videos)
    videos.append(name)
    lm = np.array([landmarks.get(k, -1) for k in frames.tolist()], np.int8)
    cols.append((np.full(len(frames), v, np.int32), frames, frame_labels, lm))
  if cols:
    video, frame, label, lm = (np.concatenate(c) for c in zip(*cols))
  else:
    video, frame, label, lm = (np.zeros(0, t) for t in (np.int32, np.int32, np.int16, np.int8))
  return FrameSource(images_root, tuple(videos), video, frame, label.astype(np.int16), lm, missing)


def load_split(root: str, split: str, images_dir: str = IMAGES_DIR) -> FrameSource:
  """Annotated frames of Train_Set or Validation_Set, ordered by video name then frame.

  Frames labelled -1 are dropped; annotated frames without an image are counted in ``missing`` and
  skipped. ``images_dir`` may name a synthesised region view (``cropped_aligned_eyes_mouth``).
  """
  split_dir = os.path.join(root, ANNOTATIONS_DIR, split)
  if not os.path.isdir(split_dir):
    raise FileNotFoundError(
        f'{split_dir}: annotation directory not found, expected {ANNOTATIONS_DIR}/{split}/<video>.txt')
  names = sorted(n[:-4] for n in os.listdir(split_dir) if n.endswith('.txt'))
  if not names:
    raise FileNotFoundError(f'{split_dir}: no <video>.txt annotation files')
  images_root = os.path.join(root, images_dir)
  _check_images_dir(images_root)
  source = _build(images_root, ((n, read_annotation(os.path.join(split_dir, n + '.txt')))
                                for n in names))
  if not len(source):
    raise FileNotFoundError(f'{images_root}: no images for the {len(names)} videos of {split}')
  if source.missing:
    log.warning('%s: %d annotated frames without an image were skipped', split, source.missing)
  return source


def load_test_set(root: str, list_file: str = TEST_LIST, images_dir: str = IMAGES_DIR
                  ) -> FrameSource:
  """Every frame on disk of the listed test videos (label -1), in list order then frame order."""
  images_root = os.path.join(root, images_dir)
  _check_images_dir(images_root)
  names = read_test_list(os.path.join(root, list_file))
  absent = [n for n in names if not os.path.isdir(os.path.join(images_root, n))]
  if absent:
    log.warning('%d test videos have no image directory, e.g. %s', len(absent), absent[0])
  return _build(images_root, ((n, None) for n in names))


def load_frames(root: str, images_dir: str = IMAGES_DIR, videos: Sequence[str] | None = None
                ) -> FrameSource:
  """Every frame image of every (or the given) video, unlabeled: the pretraining view of ABAW."""
  images_root = os.path.join(root, images_dir)
  _check_images_dir(images_root)
  names = sorted(videos if videos is not None else
                 (d for d in os.listdir(images_root) if os.path.isdir(os.path.join(images_root, d))))
  source = _build(images_root, ((n, None) for n in names))
  if not len(source):
    raise FileNotFoundError(f'{images_root}: no <video>/<frame:05d>.jpg images found')
  return source
