import numpy as np
import pytest
from sklearn.metrics import f1_score

from mae_face_jax import metrics


def sk_macro(y, p):
  return f1_score(y, p, average='macro', labels=list(range(8)))


@pytest.mark.parametrize('seed', range(5))
def test_macro_f1_equals_sklearn_on_random_labels(seed):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 8, 500)
  p = np.where(rng.random(500) < 0.5, y, rng.integers(0, 8, 500))
  assert metrics.macro_f1(y, p) == pytest.approx(sk_macro(y, p), abs=1e-12)


@pytest.mark.filterwarnings('ignore::sklearn.exceptions.UndefinedMetricWarning')
@pytest.mark.parametrize('y,p', [
    ([0, 0, 0, 0], [0, 0, 0, 0]),        # all one class: 1 class perfect, 7 absent → 1/8
    ([0, 1, 2, 3], [0, 1, 2, 2]),        # classes 4..7 absent from truth and prediction
    ([5, 5, 5], [6, 6, 6]),              # everything wrong
    ([7, 7, 1], [7, 1, 1]),
])
def test_macro_f1_edge_cases_match_sklearn(y, p):
  assert metrics.macro_f1(np.array(y), np.array(p)) == pytest.approx(sk_macro(y, p), abs=1e-12)


def test_all_one_class_perfect_is_one_eighth():
  assert metrics.macro_f1(np.zeros(10, int), np.zeros(10, int)) == pytest.approx(1 / 8)


def test_summary_and_confusion():
  y = np.array([0, 1, 1, 2])
  probs = np.eye(8)[[0, 1, 2, 2]]
  s = metrics.summary(y, probs)
  assert s['accuracy'] == 0.75 and len(s['per_class_f1']) == 8
  cm = metrics.confusion(y, probs.argmax(-1))
  assert cm.shape == (8, 8) and cm[1, 2] == 1 and cm.sum() == 4


def test_uniform_chance_matches_the_expected_f1_of_random_guessing():
  # A class of frequency f guessed with probability 1/8 has precision f, recall 1/8: F1 = 2f/(8f + 1).
  freq = np.array([0.3, 0.05, 0.02, 0.03, 0.2, 0.1, 0.1, 0.2])
  labels = np.repeat(np.arange(8), (freq * 20000).astype(int))
  chance = metrics.uniform_chance(labels, draws=20)
  expected = 2 * freq / (8 * freq + 1)
  np.testing.assert_allclose(chance['per_class_f1'], expected, atol=0.01)
  assert chance['macro_f1'] == pytest.approx(expected.mean(), abs=0.005)
