"""`--mode=predict` and `--mode=evaluate` with the demo chain's trained models (its smoke size,
trained here once through main.py): every output written, and evaluation reproducing the training
runs' own validation scores, also through a ViT exported to PyTorch."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import face_videos
from mae_face_jax import classifiers, media, predict
from mae_face_jax.metrics import EXPR_CLASSES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def demo(smoke_demo):
  workdir, out = smoke_demo
  assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
  return workdir


@pytest.fixture(scope='module')
def two_face_video(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('video') / 'two.avi')
  face_videos.write_video(path, face_videos.two_face_frames(8))
  return path


def test_predict_with_the_fusion_workdir_writes_every_output(tmp_path, demo, two_face_video):
  out = tmp_path / 'out'
  run = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), '--mode=predict',
                        f'--input={two_face_video}', f'--model={demo / "fusion"}',
                        f'--output={out}', '--annotated_video'], capture_output=True, text=True,
                       cwd=tmp_path)
  assert run.returncode == 0, run.stderr[-2000:]
  assert 'frames/s' in run.stdout
  with open(out / 'predictions.csv') as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ['video', 'frame', 'time_s', 'track', 'x1', 'y1', 'x2', 'y2',
                           'label_raw', 'label_smoothed', *EXPR_CLASSES]
  assert len(rows) == 16 and {r['track'] for r in rows} == {'0', '1'}
  assert [r['frame'] for r in rows[:4]] == ['1', '1', '2', '2']
  assert float(rows[2]['time_s']) == pytest.approx(1 / 25, abs=1e-3)
  for r in rows:
    probs = np.array([float(r[c]) for c in EXPR_CLASSES])
    assert abs(probs.sum() - 1) < 1e-4 and r['label_raw'] == EXPR_CLASSES[probs.argmax()]
    assert r['label_smoothed'] in EXPR_CLASSES
  assert sorted(os.listdir(out / 'timelines')) == ['two_0.png', 'two_1.png']
  assert media.frame_count(media.Source(str(out / 'two_annotated.mp4'), 'two', True)) == 8


def test_predict_with_a_region_view_matches_the_model_on_its_views(tmp_path, demo, two_face_video):
  """A single fine-tuned view (here the eyes+mouth one): the table's probabilities are the model's
  on the region view built from the aligned face and its landmarks."""
  model = classifiers.load(str(demo / 'finetune_region'))
  assert model.views == ('eyes_mouth',)
  summary = predict.predict(two_face_video, str(demo / 'finetune_region'), str(tmp_path),
                            predict.Options(largest_face=True))
  assert summary['faces'] == 8 and summary['frames_without_face'] == 0
  with open(tmp_path / 'predictions.csv') as f:
    rows = list(csv.DictReader(f))
  source = media.sources(two_face_video)[0]
  number, frame, found = next(iter(predict.tracked_faces(
      source, predict.make_detector(predict.Options()), predict.Options(largest_face=True))))
  crop, points = predict.faces_lib.align(frame, found[0].landmarks, 112)
  expected = model(crop[None], points[None])[0]
  np.testing.assert_allclose([float(rows[0][c]) for c in EXPR_CLASSES], expected, atol=1e-5)


def test_evaluate_reproduces_the_fine_tuning_runs_score(tmp_path, demo):
  best = json.loads((demo / 'finetune_face' / 'best.json').read_text())
  results = predict.evaluate(str(demo / 'finetune_face'), str(tmp_path / 'workdir'))
  assert results['finetune face']['macro_f1'] == pytest.approx(best['macro_f1'], abs=1e-6)
  for name in ('results.md', 'confusion_matrix.png', 'per_class_f1.png', 'f1_vs_window.png'):
    assert (tmp_path / 'workdir' / 'report' / name).exists()
  # The same run exported by --mode=export_torch as a timm state dict, scored from the .pth file.
  pth = str(tmp_path / 'exported.pth')
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), '--mode=export_torch',
                        f'--workdir={demo / "finetune_face"}', f'--torch_checkpoint={pth}'],
                       check=True, capture_output=True, text=True, cwd=tmp_path)
  assert f'exported {demo / "finetune_face" / "best"} to {pth}' in out.stdout
  config = classifiers.read_config(str(demo / 'finetune_face'))
  results = predict.evaluate(pth, str(tmp_path / 'torch'), config)
  assert results['torch exported.pth']['macro_f1'] == pytest.approx(best['macro_f1'], abs=1e-6)
  with pytest.raises(classifiers.ModelError, match='finetune config'):
    predict.evaluate(pth, str(tmp_path / 'torch2'), None)


def test_evaluate_a_fusion_workdir_and_refuse_other_paths(tmp_path, demo):
  results = predict.evaluate(str(demo / 'fusion'), str(tmp_path / 'fusion'))
  name = next(iter(results))
  assert name.startswith('fusion ') and 0 <= results[name]['macro_f1'] <= 1
  with pytest.raises(classifiers.ModelError, match='pretrain'):
    classifiers.load(str(demo / 'pretrain'))
  with pytest.raises(classifiers.ModelError, match='demo_data'):
    classifiers.load(str(demo / 'demo_data'))
