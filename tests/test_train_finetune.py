"""Fine-tuning: layer decay and weight-decay masks by MAE's rules, losses, and a run that resumes
exactly after being killed."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from input_pipeline import demo_data
from mae_face_jax import classification, optim, torch_interop
from mae_face_jax.models.vit import VisionTransformer
from tests.helpers import TINY_VIT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'tests', 'finetune_test_config.py')


def timm_named(tree_fn):
  """Applies `tree_fn` to our ViT's params and returns {timm name: value}."""
  model = VisionTransformer(**TINY_VIT, num_classes=8, global_pool=True, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  values = tree_fn(params)
  as_model = nnx.clone(model)
  nnx.update(as_model, jax.tree.map(lambda v, p: np.full(p.shape, v, np.float32), values, params))
  return {k: float(v.flat[0]) for k, v in torch_interop.export_state_dict(as_model).items()}


def mae_layer_id(name: str, num_layers: int) -> int:
  """MAE's `get_layer_id_for_vit`, written from its rule on timm names."""
  if name in ('cls_token', 'pos_embed') or name.startswith('patch_embed'):
    return 0
  if name.startswith('blocks'):
    return int(name.split('.')[1]) + 1
  return num_layers


def test_layer_decay_scales_follow_param_groups_lrd():
  depth, decay = TINY_VIT['depth'], 0.65
  got = timm_named(lambda p: optim.layer_decay_scales(p, depth, decay))
  assert len(got) > 20
  for name, scale in got.items():
    want = decay ** (depth + 1 - mae_layer_id(name, depth + 1))
    assert scale == pytest.approx(want, rel=1e-6), name
  assert got['head.weight'] == 1.0 and got['patch_embed.proj.weight'] == pytest.approx(decay ** 3)


def test_weight_decay_mask_excludes_1d_params_and_tokens():
  got = timm_named(lambda p: optim.weight_decay_mask(p))
  model = VisionTransformer(**TINY_VIT, num_classes=8, global_pool=True, rngs=nnx.Rngs(0))
  shapes = {k: v.shape for k, v in torch_interop.export_state_dict(model).items()}
  for name, decays in got.items():
    want = len(shapes[name]) > 1 and name not in ('cls_token', 'pos_embed')
    assert bool(decays) == want, name


def test_weighted_cross_entropy_matches_torch():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((16, 8)).astype(np.float32)
  labels = rng.integers(0, 8, 16)
  w = rng.uniform(0.5, 4, 8).astype(np.float32)
  ours = classification.weighted_cross_entropy(logits, classification.soft_targets(labels, 8, 0.0), w)
  ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels),
                                          weight=torch.from_numpy(w))
  assert float(ours) == pytest.approx(float(ref), rel=1e-5)
  ours = classification.weighted_cross_entropy(logits, classification.soft_targets(labels, 8, 0.1),
                                               np.ones(8, np.float32))
  ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels),
                                          label_smoothing=0.1)
  assert float(ours) == pytest.approx(float(ref), rel=1e-5)


def test_class_weights():
  counts = np.array([100, 10, 0, 50, 40, 0, 0, 0])
  w = classification.class_weights('inverse_frequency', counts)
  assert w[2] == 0 and w[1] == pytest.approx(10 * w[0])
  np.testing.assert_array_equal(classification.class_weights('none', counts), 1)
  with pytest.raises(ValueError, match='class_weights'):
    classification.class_weights('median', counts)
  with pytest.raises(ValueError, match='3 values'):
    classification.class_weights([1, 2, 3], counts)


@pytest.mark.parametrize('mixup,cutmix', [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_cutmix_targets_stay_distributions(mixup, cutmix):
  images = jax.numpy.asarray(np.random.default_rng(0).standard_normal((6, 16, 16, 3)), np.float32)
  targets = classification.soft_targets(jax.numpy.arange(6) % 8, 8, 0.1)
  for seed in range(4):
    mixed, t = classification.mixup_cutmix(jax.random.key(seed), images, targets,
                                           mixup_alpha=mixup, cutmix_alpha=cutmix)
    np.testing.assert_allclose(t.sum(-1), 1, rtol=1e-5)
    lam = float(t[0, 0] - targets[-1, 0]) / float(targets[0, 0] - targets[-1, 0])
    assert 0 <= lam <= 1
    if mixup == 0:  # cutmix: each pixel is the image's own or its partner's
      own = np.isclose(mixed, images).all(-1) | np.isclose(mixed, images[::-1]).all(-1)
      assert own.all()
      assert np.isclose(mixed[0], images[0]).all(-1).mean() == pytest.approx(lam, abs=1e-6)


@pytest.fixture(scope='module')
def abaw_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('abaw') / 'data')
  return demo_data.ensure_demo_data(root, num_videos=6, frames=(16, 24), size=48)


def run_main(workdir, root, extra=()):
  cmd = [sys.executable, os.path.join(REPO, 'main.py'), f'--config={CONFIG}',
         f'--workdir={workdir}', f'--config.data.root={root}', *extra]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu')
  return cmd, env


def final_params(workdir):
  from mae_face_jax.checkpointing import load_pretrained_params
  params, step = load_pretrained_params(workdir)
  from mae_face_jax.train_state import flatten
  return flatten(params), step


def test_finetune_writes_outputs_and_resumes_exactly(tmp_path, abaw_root):
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  cmd, env = run_main(a, abaw_root)
  res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-4000:]
  best = json.load(open(os.path.join(a, 'best.json')))
  assert 0 <= best['macro_f1'] <= 1 and len(best['per_class_f1']) == 8
  header = open(os.path.join(a, 'predictions_val.csv')).readline().strip()
  assert header.startswith('video,frame,label,Neutral')

  # B: killed (SIGKILL) after its step-5 line (a checkpoint exists at step 4), then restarted.
  cmd, env = run_main(b, abaw_root)
  proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  for line in proc.stdout:
    if line.startswith('step 5/'):
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait()
  assert os.path.isdir(os.path.join(b, 'checkpoints', '4'))
  assert not os.path.isdir(os.path.join(b, 'checkpoints', '8'))
  res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-4000:]
  pa, step_a = final_params(a)
  pb, step_b = final_params(b)
  assert step_a == step_b == 8
  for k in pa:
    np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
  assert json.load(open(os.path.join(b, 'best.json')))['macro_f1'] == best['macro_f1']
