"""The fusion program end to end on a tiny ABAW-layout tree: two fine-tuned tiny encoders, four
fusion heads trained together, smoothing and the report, whose table must equal metrics recomputed
from the saved per-frame predictions; exact resume after SIGKILL, two processes giving one
process's report (written once), and accumulation equal to the big batch."""

import csv
import json
import os
import re
import signal
import subprocess

import numpy as np
import pytest

from input_pipeline import abaw, demo_data
from mae_face_jax import checkpointing, metrics, report, smoothing, train_finetune, train_fusion
from mae_face_jax.train_state import flatten
from tests import finetune_test_config, fusion_test_config
from tests import pretrain_runner as runner

CONFIG = os.path.join(runner.REPO, 'tests', 'fusion_test_config.py')


@pytest.fixture(scope='module')
def encoders(tmp_path_factory):
  """The data root and the two fine-tuning workdirs (face, eyes_mouth)."""
  base = tmp_path_factory.mktemp('fusion')
  root = demo_data.ensure_demo_data(str(base / 'data'), num_videos=6, frames=(16, 24), size=48)
  workdirs = {}
  for view in ('face', 'eyes_mouth'):
    config = finetune_test_config.get_config()
    config.view = view
    config.data.root = root
    workdirs[view] = str(base / f'ft_{view}')
    train_finetune.train_and_evaluate(config, workdirs[view])
  return root, workdirs['face'], workdirs['eyes_mouth']


def overrides(encoders) -> dict:
  root, face, region = encoders
  return {'data.root': root, 'face_workdir': face, 'region_workdir': region}


def config_for(encoders):
  config = fusion_test_config.get_config()
  config.data.root, config.face_workdir, config.region_workdir = encoders
  return config


@pytest.fixture(scope='module')
def fused_run(encoders, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('fused') / 'fusion')
  results = train_fusion.train_and_evaluate(config_for(encoders), workdir)
  return workdir, results


def test_report_files_exist(fused_run):
  workdir, results = fused_run
  report_dir = os.path.join(workdir, 'report')
  for name in ('results.md', 'results.csv', 'results.json', 'confusion_matrix.png',
               'per_class_f1.png', 'f1_vs_window.png', 'submission_expr.txt'):
    assert os.path.getsize(os.path.join(report_dir, name)) > 0, name
  assert os.listdir(os.path.join(report_dir, 'timelines'))
  names = list(results)
  for method in ('face only', 'eyes_mouth only', 'late fusion (mean of both views)', 'fusion mean',
                 'fusion concat', 'fusion updown_mean', 'fusion updown_concat'):
    assert method in names
    assert any(n.startswith(f'{method} + smoothing (w=') for n in names), method
  # The heads live in the run's checkpoints, one subtree per key generator and seed.
  params, step = checkpointing.load_pretrained_params(workdir)
  assert step == 6 and set(params) == {'heads'}
  assert set(params['heads']) == {f'{m}_s{s}' for m in ('mean', 'concat', 'updown_mean',
                                                        'updown_concat') for s in (0, 1)}
  best = json.load(open(os.path.join(report_dir, 'best.json')))
  assert best['head'] == f'{best["method"]}_s{best["seed"]}' and best['window'] in (1, 3, 5)


def seed_files(report_dir: str, base: str) -> list[str]:
  """The per-frame predictions behind a report row: one file, or one per seed."""
  single = os.path.join(report_dir, report.predictions_file(base))
  if os.path.exists(single):
    return [single]
  return [os.path.join(report_dir, report.predictions_file(base, s)) for s in range(2)]


def test_table_equals_metrics_recomputed_from_predictions(fused_run):
  """Every row (seeded rows: the mean and standard deviation over the seeds) from the saved
  per-frame predictions."""
  report_dir = os.path.join(fused_run[0], 'report')
  rows = list(csv.DictReader(open(os.path.join(report_dir, 'results.csv'))))
  assert len(rows) == 15
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
    f1s = []
    for path in seed_files(report_dir, base):
      pred = report.read_predictions(path)
      probs = pred['probs']
      if m:
        probs = smoothing.sliding_window_smooth(probs, pred['video'], pred['frame'],
                                                int(m.group(2)))
      f1s.append(metrics.per_class_f1(pred['label'], probs.argmax(-1)))
    assert int(row['seeds']) == len(f1s) == (2 if base.startswith('fusion') else 1), method
    macro = [100 * f.mean() for f in f1s]
    assert float(row['macro_f1']) == pytest.approx(np.mean(macro), abs=1e-3), method
    assert float(row['macro_f1_std']) == pytest.approx(
        np.std(macro, ddof=1) if len(macro) > 1 else 0.0, abs=1e-3), method
    f1 = np.mean(f1s, axis=0)
    for name, value in zip(metrics.EXPR_CLASSES, f1):
      assert float(row[name]) == pytest.approx(100 * value, abs=1e-3), (method, name)


def test_seeds_table_equals_metrics_recomputed_from_predictions(fused_run):
  report_dir = os.path.join(fused_run[0], 'report')
  rows = list(csv.DictReader(open(os.path.join(report_dir, 'seeds.csv'))))
  assert sorted({r['method'] for r in rows}) == sorted(
      f'fusion {m}' for m in ('mean', 'concat', 'updown_mean', 'updown_concat'))
  assert len(rows) == 8
  for row in rows:
    pred = report.read_predictions(os.path.join(
        report_dir, report.predictions_file(row['method'], int(row['seed']))))
    raw = metrics.macro_f1(pred['label'], pred['probs'].argmax(-1))
    smoothed = metrics.macro_f1(pred['label'], smoothing.sliding_window_smooth(
        pred['probs'], pred['video'], pred['frame'], int(row['window'])).argmax(-1))
    assert float(row['macro_f1']) == pytest.approx(100 * raw, abs=1e-3), row
    assert float(row['smoothed_macro_f1']) == pytest.approx(100 * smoothed, abs=1e-3), row


def test_submission_covers_the_test_videos(fused_run, encoders):
  lines = open(os.path.join(fused_run[0], 'report', 'submission_expr.txt')).read().splitlines()
  assert lines[0] == 'image_location,' + ','.join(metrics.EXPR_CLASSES)
  assert len(lines) - 1 == len(abaw.load_test_set(encoders[0]))
  for line in lines[1:]:
    loc, label = line.split(',')
    assert re.fullmatch(r'[^/]+/\d{5}\.jpg', loc) and 0 <= int(label) < 8


def _heads(workdir):
  params, step = checkpointing.load_pretrained_params(workdir)
  return flatten(params), step


def test_sigkill_mid_training_then_rerun_is_bit_exact(tmp_path, encoders):
  straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
  runner.run(straight, overrides(encoders), config=CONFIG)
  proc = runner.start(killed, overrides(encoders), config=CONFIG)
  runner.read_until(proc, 'step 4/6')  # step 2's checkpoint is on disk, step 4's may be
  proc.kill()
  assert proc.wait() == -signal.SIGKILL
  ckpt = checkpointing.TrainCheckpointer(os.path.join(killed, 'checkpoints'), read_only=True)
  killed_at = ckpt.latest_step()
  ckpt.close()
  assert killed_at in (2, 4), killed_at
  resumed = runner.run(killed, overrides(encoders), config=CONFIG)
  assert f'resumed from {killed}/checkpoints/{killed_at}' in resumed.stderr
  (whole, step_a), (again, step_b) = _heads(straight), _heads(killed)
  assert step_a == step_b == 6 and whole.keys() == again.keys()
  for k in whole:
    np.testing.assert_array_equal(whole[k], again[k], err_msg=k)
  first = flatten(checkpointing.load_pretrained_params(killed, step=killed_at + 2)[0])
  assert any(not np.array_equal(first[k], again[k]) for k in again)  # training moved them


def test_two_processes_give_one_process_report_written_once(tmp_path, encoders):
  single = str(tmp_path / 'single')
  runner.run(single, overrides(encoders), devices=4, config=CONFIG)
  multi = str(tmp_path / 'multi')
  procs = runner.start_two(multi, overrides(encoders), config=CONFIG)
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-5000:]
  assert 'report written to' in outs[0] and 'report written to' not in outs[1]
  table = lambda d: list(csv.reader(open(os.path.join(d, 'report', 'results.csv'))))
  one, two = table(single), table(multi)
  assert [r[0] for r in one] == [r[0] for r in two]
  np.testing.assert_allclose(np.array([r[1:] for r in two[1:]], float),
                             np.array([r[1:] for r in one[1:]], float), atol=1e-3)
  (hs, _), (hm, _) = _heads(single), _heads(multi)
  for k in hs:
    np.testing.assert_allclose(hm[k], hs[k], rtol=1e-4, atol=2e-5, err_msg=k)


def test_accumulation_equals_the_big_batch(tmp_path, encoders):
  from tests.test_loop import assert_accumulation_equals_the_big_batch
  def one_seed():  # with several seeds the micro-batches are weighted by the seeds' mean weight
    config = config_for(encoders)
    config.fusion.seeds = 1
    return config
  assert_accumulation_equals_the_big_batch(tmp_path, one_seed,
                                           train_fusion.train_and_evaluate,
                                           len(abaw.load_split(encoders[0], 'Train_Set')))


def test_heads_train_on_augmented_paired_views(tmp_path, encoders):
  """Without cached tokens, each step crops and flips the face and its region view alike on the
  device (the pairing itself: tests/test_augment.py); the same seed gives the same heads."""
  def run(name):
    config = config_for(encoders)
    config.cache_features = False
    config.total_steps, config.checkpoint_steps = 2, 2
    results = train_fusion.train_and_evaluate(config, str(tmp_path / name))
    assert any(k.startswith('fusion ') for k in results)
    return _heads(str(tmp_path / name))
  (a, step_a), (b, step_b) = run('a'), run('b')
  assert step_a == step_b == 2
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
