"""Checkpoint import/export: round trips, resizing, head re-initialisation and bad files."""

import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from flax import nnx

from mae_face_jax import checkpointing, torch_interop
from mae_face_jax.models.mae import MaskedAutoencoder
from mae_face_jax.models.vit import VisionTransformer
from tests.helpers import TINY_MAE, TINY_VIT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timm_state_dict(seed=0, **kw):
  torch.manual_seed(seed)
  args = dict(TINY_VIT, num_classes=8, global_pool='token') | kw
  model = timm.models.vision_transformer.VisionTransformer(**args)
  with torch.no_grad():
    for p in model.parameters():
      p.normal_()
  return model.state_dict()


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_timm_round_trip_is_exact(tmp_path, suffix):
  sd = timm_state_dict()
  path = str(tmp_path / f'vit{suffix}')
  if suffix == '.pth':
    torch.save(sd, path)
  else:
    from safetensors.torch import save_file
    save_file(sd, path)
  ours = VisionTransformer(**TINY_VIT, num_classes=8, global_pool=False, rngs=nnx.Rngs(0))
  report = torch_interop.import_torch_checkpoint(ours, path)
  assert sorted(report.loaded) == sorted(sd) and not report.missing and not report.unexpected
  out = str(tmp_path / f'back{suffix}')
  torch_interop.save_torch_checkpoint(torch_interop.export_state_dict(ours), out)
  back = torch_interop.load_torch_checkpoint(out)
  assert list(back) == list(sd) or set(back) == set(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)
  # The exported file loads into timm strictly.
  timm.models.vision_transformer.VisionTransformer(
      **TINY_VIT, num_classes=8, global_pool='token').load_state_dict(
          {k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


def test_mae_wrapped_checkpoint_into_finetune_vit(tmp_path):
  """An MAE pretrain checkpoint ({'model': ...}, with decoder) into a global-pool classifier:
  decoder and `norm` unexpected, `fc_norm` and `head` missing, as MAE's fine-tuning reports."""
  mae = MaskedAutoencoder(**TINY_MAE, rngs=nnx.Rngs(0))
  sd = torch_interop.export_state_dict(mae)
  path = str(tmp_path / 'mae.pth')
  torch.save({'model': {k: torch.from_numpy(v) for k, v in sd.items()}, 'epoch': 3}, path)
  vit = VisionTransformer(**TINY_VIT, num_classes=8, global_pool=True, rngs=nnx.Rngs(1))
  report = torch_interop.import_torch_checkpoint(vit, path)
  assert set(report.missing) == {'fc_norm.weight', 'fc_norm.bias', 'head.weight', 'head.bias'}
  assert 'norm.weight' in report.unexpected and 'decoder_pred.weight' in report.unexpected
  np.testing.assert_array_equal(vit.blocks[1].mlp.fc2.kernel[...], sd['blocks.1.mlp.fc2.weight'].T)
  # And into an MAE it loads completely.
  mae2 = MaskedAutoencoder(**TINY_MAE, rngs=nnx.Rngs(2))
  report = torch_interop.import_torch_checkpoint(mae2, path)
  assert not report.missing and not report.unexpected


def test_head_of_other_classes_is_reinitialised_and_pos_embed_resized():
  sd = {k: v.numpy() for k, v in timm_state_dict(num_classes=1000, img_size=32).items()}
  ours = VisionTransformer(**(TINY_VIT | dict(img_size=48)), num_classes=8, global_pool=False,
                           rngs=nnx.Rngs(0))
  head_before = np.array(ours.head.kernel[...])
  report = torch_interop.import_state_dict(ours, sd)
  assert report.reinitialised == ['head.weight', 'head.bias']
  assert report.resized == ['pos_embed']
  np.testing.assert_array_equal(ours.head.kernel[...], head_before)
  assert ours.pos_embed[...].shape == (1, 1 + 36, 64)
  np.testing.assert_array_equal(ours.pos_embed[...][0, 0], sd['pos_embed'][0, 0])


def test_wrong_architecture_names_file_key_and_shapes(tmp_path):
  large = timm_state_dict(embed_dim=96, num_heads=4)  # wider model, like ViT-L into ViT-B
  path = str(tmp_path / 'large.pth')
  torch.save({'model': large}, path)
  ours = VisionTransformer(**TINY_VIT, num_classes=8, global_pool=False, rngs=nnx.Rngs(0))
  with pytest.raises(torch_interop.CheckpointError) as e:
    torch_interop.import_torch_checkpoint(ours, path)
  msg = str(e.value)
  assert path in msg and 'cls_token' in msg and '(1, 1, 96)' in msg and '(1, 1, 64)' in msg


def test_truncated_file_is_named(tmp_path):
  path = str(tmp_path / 'cut.pth')
  torch.save(timm_state_dict(), path)
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[: len(data) // 2])
  with pytest.raises(torch_interop.CheckpointError, match='cut.pth'):
    torch_interop.load_torch_checkpoint(path)
  st = str(tmp_path / 'cut.safetensors')
  from safetensors.torch import save_file
  save_file(timm_state_dict(), st)
  open(st, 'r+b').truncate(os.path.getsize(st) // 2)
  with pytest.raises(torch_interop.CheckpointError, match='cut.safetensors'):
    torch_interop.load_torch_checkpoint(st)


def test_not_a_checkpoint_is_named(tmp_path):
  path = tmp_path / 'notes.pth'
  path.write_text('these are not weights\n')
  with pytest.raises(torch_interop.CheckpointError, match='notes.pth'):
    torch_interop.load_torch_checkpoint(str(path))
  other = tmp_path / 'list.pth'
  torch.save([1, 2, 3], str(other))
  with pytest.raises(torch_interop.CheckpointError, match='list.pth'):
    torch_interop.load_torch_checkpoint(str(other))
  with pytest.raises(FileNotFoundError, match='missing.pth'):
    torch_interop.load_torch_checkpoint(str(tmp_path / 'missing.pth'))


def test_import_cli_writes_orbax_params_that_restore(tmp_path):
  mae = MaskedAutoencoder(**TINY_MAE, rngs=nnx.Rngs(5))
  sd = torch_interop.export_state_dict(mae)
  path = str(tmp_path / 'mae.safetensors')
  torch_interop.save_torch_checkpoint(sd, path)
  workdir = str(tmp_path / 'wd')
  overrides = [f'--config.model.{k}={v}' for k, v in TINY_MAE.items()]
  cmd = [sys.executable, 'main.py', '--mode=import_torch', '--config=configs/pretrain.py:tiny',
         f'--torch_checkpoint={path}', f'--workdir={workdir}', *overrides]
  res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  restored = MaskedAutoencoder(**TINY_MAE, rngs=nnx.Rngs(9))
  checkpointing.restore_params(os.path.join(workdir, 'params'), restored)
  again = torch_interop.export_state_dict(restored)
  for k, v in sd.items():
    np.testing.assert_array_equal(again[k], v, err_msg=k)
  # Export back through the CLI gives the same tensors.
  out = str(tmp_path / 'out.safetensors')
  cmd[2] = '--mode=export_torch'
  cmd[4] = f'--torch_checkpoint={out}'
  res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  back = torch_interop.load_torch_checkpoint(out)
  for k, v in sd.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
