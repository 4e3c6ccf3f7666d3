import csv
import json
import os

import numpy as np

from mae_face_jax import metrics, report


def test_predictions_table_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(8), 20).astype(np.float32)
  videos = ['v1'] * 10 + ['v2_left'] * 10
  path = str(tmp_path / 'predictions.csv')
  report.write_predictions(path, videos, np.arange(20) + 1, rng.integers(-1, 8, 20), probs)
  back = report.read_predictions(path)
  assert list(back['video']) == videos and back['frame'][0] == 1
  np.testing.assert_allclose(back['probs'], probs, rtol=1e-5)


def test_results_table_numbers(tmp_path):
  rng = np.random.default_rng(1)
  y = rng.integers(0, 8, 100)
  probs = np.eye(8)[np.where(rng.random(100) < 0.6, y, rng.integers(0, 8, 100))]
  results = {'face': metrics.summary(y, probs)}
  report.write_results_table(str(tmp_path), results)
  rows = list(csv.DictReader(open(tmp_path / 'results.csv')))
  assert float(rows[0]['macro_f1']) == round(100 * metrics.macro_f1(y, probs.argmax(-1)), 4)
  assert json.load(open(tmp_path / 'results.json'))['face']['macro_f1'] == results['face']['macro_f1']
  assert '| face |' in (tmp_path / 'results.md').read_text()


def test_plots_are_written(tmp_path):
  y = np.array([0, 1, 2, 4, 4, 7])
  report.plot_confusion(str(tmp_path / 'cm.png'), y, y[::-1], 'test')
  report.plot_per_class_f1(str(tmp_path / 'f1.png'), {'a': metrics.summary(y, np.eye(8)[y])})
  report.plot_f1_vs_window(str(tmp_path / 'w.png'), {'a': {1: 0.3, 5: 0.4}})
  report.plot_timeline(str(tmp_path / 't.png'), 'v', np.arange(6), y, y, y)
  for name in ('cm.png', 'f1.png', 'w.png', 't.png'):
    assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_submission_format(tmp_path):
  path = str(tmp_path / 'sub.txt')
  report.write_submission(path, ['b', 'a', 'a'], np.array([1, 2, 1]), np.array([3, 0, 7]))
  lines = open(path).read().splitlines()
  assert lines[0] == 'image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other'
  assert lines[1:] == ['a/00001.jpg,7', 'a/00002.jpg,0', 'b/00001.jpg,3']
