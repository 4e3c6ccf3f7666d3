"""The fusion program end to end on a tiny ABAW-layout tree: two fine-tuned tiny encoders, four
fusion heads, smoothing and the report, whose table must equal metrics recomputed from the saved
per-frame predictions."""

import csv
import importlib.util
import os
import re

import numpy as np
import pytest

from configs.fusion import fusion_config
from input_pipeline import demo_data
from mae_face_jax import metrics, report, smoothing, train_finetune, train_fusion

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def finetune_test_config():
  spec = importlib.util.spec_from_file_location(
      'ftc', os.path.join(REPO, 'tests', 'finetune_test_config.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture(scope='module')
def fused_run(tmp_path_factory):
  base = tmp_path_factory.mktemp('fusion')
  root = demo_data.ensure_demo_data(str(base / 'data'), num_videos=6, frames=(16, 24), size=48)
  workdirs = {}
  for view in ('face', 'eyes_mouth'):
    config = finetune_test_config()
    config.view = view
    config.data.root = root
    config.async_checkpoints = True
    workdirs[view] = str(base / f'ft_{view}')
    train_finetune.train_and_evaluate(config, workdirs[view])
  config = fusion_config('tiny', 32)
  ft = finetune_test_config()
  config.model = ft.model
  config.model.drop_path_rate = 0.0
  config.data = ft.data
  config.data.root = root
  config.face_workdir, config.region_workdir = workdirs['face'], workdirs['eyes_mouth']
  config.aux_blocks = 1
  config.fusion.num_heads = 2
  config.cache_features = True
  config.batch_size = 8
  config.eval_batch_size = 16
  config.total_steps = 6
  config.log_every = 3
  config.windows = (1, 3, 5)
  workdir = str(base / 'fusion')
  results = train_fusion.train_and_evaluate(config, workdir)
  return os.path.join(workdir, 'report'), results, root


def test_report_files_exist(fused_run):
  report_dir, results, _ = fused_run
  for name in ('results.md', 'results.csv', 'results.json', 'confusion_matrix.png',
               'per_class_f1.png', 'f1_vs_window.png', 'submission_expr.txt'):
    assert os.path.getsize(os.path.join(report_dir, name)) > 0, name
  assert os.listdir(os.path.join(report_dir, 'timelines'))
  names = list(results)
  for method in ('face only', 'eyes_mouth only', 'fusion mean', 'fusion concat',
                 'fusion updown_mean', 'fusion updown_concat'):
    assert method in names
    assert any(n.startswith(f'{method} + smoothing (w=') for n in names), method


def test_table_equals_metrics_recomputed_from_predictions(fused_run):
  report_dir, _, _ = fused_run
  rows = list(csv.DictReader(open(os.path.join(report_dir, 'results.csv'))))
  assert len(rows) == 13
  for row in rows:
    method = row['method']
    if method.startswith('chance'):  # expected F1 of uniform random guesses on the same labels
      labels = report.read_predictions(
          os.path.join(report_dir, 'predictions_val_face_only.csv'))['label']
      assert float(row['macro_f1']) == pytest.approx(
          100 * metrics.uniform_chance(labels)['macro_f1'], abs=1e-3)
      continue
    m = re.fullmatch(r'(.*) \+ smoothing \(w=(\d+)\)', method)
    base = m.group(1) if m else method
    pred = report.read_predictions(
        os.path.join(report_dir, f'predictions_val_{base.replace(" ", "_")}.csv'))
    probs = pred['probs']
    if m:
      probs = smoothing.sliding_window_smooth(probs, pred['video'], pred['frame'], int(m.group(2)))
    f1 = metrics.per_class_f1(pred['label'], probs.argmax(-1))
    assert float(row['macro_f1']) == pytest.approx(100 * f1.mean(), abs=1e-3), method
    for name, value in zip(metrics.EXPR_CLASSES, f1):
      assert float(row[name]) == pytest.approx(100 * value, abs=1e-3), (method, name)


def test_submission_covers_the_test_videos(fused_run):
  report_dir, _, root = fused_run
  lines = open(os.path.join(report_dir, 'submission_expr.txt')).read().splitlines()
  assert lines[0] == 'image_location,' + ','.join(metrics.EXPR_CLASSES)
  from input_pipeline import abaw
  test = abaw.load_test_set(root)
  assert len(lines) - 1 == len(test)
  for line in lines[1:]:
    loc, label = line.split(',')
    assert re.fullmatch(r'[^/]+/\d{5}\.jpg', loc) and 0 <= int(label) < 8
