"""ABAW expression metrics: macro F1 over the 8 classes, per-class F1, accuracy, confusion matrix."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

EXPR_CLASSES = ('Neutral', 'Anger', 'Disgust', 'Fear', 'Happiness', 'Sadness', 'Surprise', 'Other')
NUM_CLASSES = len(EXPR_CLASSES)


def per_class_f1(labels: np.ndarray, preds: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
  """F1 of each class; a class absent from both truth and prediction scores 0, as sklearn does."""
  return skm.f1_score(labels, preds, labels=list(range(num_classes)), average=None, zero_division=0)


def macro_f1(labels: np.ndarray, preds: np.ndarray, num_classes: int = NUM_CLASSES) -> float:
  """The ABAW expression metric: the mean of the per-class F1s over all classes."""
  return float(np.mean(per_class_f1(labels, preds, num_classes)))


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
  """(truth, prediction) counts."""
  return skm.confusion_matrix(labels, preds, labels=list(range(num_classes)))


def summary(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | list[float]]:
  """Macro F1, accuracy and per-class F1 of per-frame class probabilities."""
  preds = np.asarray(probs).argmax(-1)
  f1 = per_class_f1(labels, preds, probs.shape[-1])
  return {'macro_f1': float(f1.mean()), 'accuracy': float(np.mean(preds == labels)),
          'per_class_f1': [float(v) for v in f1]}


def uniform_chance(labels: np.ndarray, num_classes: int = NUM_CLASSES, draws: int = 200,
                   seed: int = 0) -> dict[str, float | list[float]]:
  """The `summary` of predictions drawn uniformly at random, averaged over `draws` draws: the
  chance level of macro F1 on this split (it depends on the class frequencies)."""
  rng = np.random.default_rng(seed)
  f1s = np.stack([per_class_f1(labels, rng.integers(0, num_classes, len(labels)), num_classes)
                  for _ in range(draws)])
  return {'macro_f1': float(f1s.mean(1).mean()), 'accuracy': 1.0 / num_classes,
          'per_class_f1': [float(v) for v in f1s.mean(0)]}
