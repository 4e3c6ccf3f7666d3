"""Plain image folders: unlabeled (recursive, for pretraining) and labeled (one sub-folder per class).

Public API:
    unlabeled_images(root) -> list[dict]                 every image below root, sorted by path
    labeled_images(root, class_names=None) -> (list[dict], tuple[str, ...])

Records have the same keys as ABAW frame records (``path``, ``label``, ``video``, ``frame``,
``landmarks``) so every pipeline mode takes either; folders have no videos (``video = frame = -1``).
``class_names`` fixes the label order (e.g. ``abaw.CLASSES``); sub-folders are matched to it
case-insensitively. Without it the sorted sub-folder names are the classes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from input_pipeline.abaw import IMAGE_EXTS


def _record(path: str, label: int) -> dict:
  return {'path': path, 'label': label, 'video': -1, 'frame': -1, 'landmarks': ''}


def _images_below(root: str) -> list[str]:
  paths = []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames.sort()
    paths.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                 if f.lower().endswith(IMAGE_EXTS))
  return paths


def _check_root(root: str) -> None:
  if not os.path.isdir(root):
    raise FileNotFoundError(f'{root}: image folder not found')


def unlabeled_images(root: str) -> list[dict]:
  """Every image file below root (any depth), label -1."""
  _check_root(root)
  paths = _images_below(root)
  if not paths:
    raise FileNotFoundError(f'{root}: no images ({", ".join(IMAGE_EXTS)}) found at any depth')
  return [_record(p, -1) for p in paths]


def labeled_images(root: str, class_names: Sequence[str] | None = None
                   ) -> tuple[list[dict], tuple[str, ...]]:
  """Images of root/<class>/**, labelled by the class sub-folder; returns (records, class names)."""
  _check_root(root)
  folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if class_names is None:
    class_names = tuple(folders)
  by_name = {name.lower(): i for i, name in enumerate(class_names)}
  unknown = [d for d in folders if d.lower() not in by_name]
  if unknown:
    raise ValueError(f'{root}: sub-folder {unknown[0]!r} is not one of the classes {list(class_names)}')
  records = []
  for d in folders:
    records.extend(_record(p, by_name[d.lower()]) for p in _images_below(os.path.join(root, d)))
  if not records:
    raise FileNotFoundError(f'{root}: no images found, expected one sub-folder per class holding images')
  return records, tuple(class_names)
