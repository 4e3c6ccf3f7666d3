"""Progress line, TensorBoard events (read back with tensorboard's EventAccumulator), image grid."""

import io
import os

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mae_face_jax import observe
from mae_face_jax.images import IMAGENET_MEAN, IMAGENET_STD
from mae_face_jax import train_pretrain as tp
from tests.pretrain_test_config import get_config


def test_progress_line_has_step_loss_lr_rates_and_eta():
  out = io.StringIO()
  progress = observe.Progress(total_steps=100, global_batch=32, stream=out)
  rates = progress.update(10, {'loss': 0.5, 'lr': 1e-4})
  line = out.getvalue()
  assert line.startswith('step 10/100 | loss 0.5 | lr 0.0001 | ')
  assert 'steps/s' in line and 'img/s' in line and 'ETA ' in line
  assert rates['images_per_s'] == 32 * rates['steps_per_s'] > 0


def test_progress_is_a_bar_on_a_terminal():
  class Tty(io.StringIO):
    def isatty(self):
      return True
  out = Tty()
  progress = observe.Progress(total_steps=4, global_batch=8, stream=out)
  progress.update(2, {'loss': 1.0})
  progress.update(4, {'loss': 0.5})
  first, last = out.getvalue().split('\r')[1:]
  assert first.startswith('[' + '#' * 15 + '.' * 15 + '] step 2/4 | loss 1 | ')
  assert last.startswith('[' + '#' * 30 + '] step 4/4') and last.endswith('\n')  # rewritten in place


def test_reconstruction_grid_pastes_visible_patches_and_grays_masked_ones():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
  mask = np.array([[1, 0, 0, 1], [0, 1, 1, 0]], np.float32)
  pred = rng.normal(size=(2, 4, 8 * 8 * 3)).astype(np.float32)
  grid = observe.reconstruction_grid(images, pred, mask, patch_size=8, norm_pix_loss=False)
  assert grid.shape == (2 * 16, 3 * 16, 3)
  original, masked, recon = grid[:16, :16], grid[:16, 16:32], grid[:16, 32:]
  mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
  rgb = np.clip(images[0] * std + mean, 0, 1)
  np.testing.assert_allclose(original, rgb, atol=1e-6)
  np.testing.assert_allclose(masked[:8, :8], 0.5)          # patch 0 removed: gray
  np.testing.assert_allclose(masked[:8, 8:], rgb[:8, 8:])  # patch 1 kept
  np.testing.assert_allclose(recon[:8, 8:], rgb[:8, 8:], atol=1e-6)  # kept patch pasted back
  # Patch 0's prediction, flattened (p, q, c) like patchify, back to pixels.
  want = np.clip(pred[0, 0].reshape(8, 8, 3) * std + mean, 0, 1)
  np.testing.assert_allclose(recon[:8, :8], want, atol=1e-6)  # removed patch: the prediction


def test_training_writes_loss_scalars_and_the_image_grid(tmp_path):
  config = get_config()
  config.eval_steps = 3
  tp.train_and_evaluate(config, str(tmp_path))
  acc = EventAccumulator(os.path.join(tmp_path, 'tensorboard'), size_guidance={'images': 0})
  acc.Reload()
  losses = acc.Scalars('train/loss')
  assert [e.step for e in losses] == [1, 2, 3] and all(np.isfinite(e.value) for e in losses)
  assert {'train/lr', 'train/steps_per_s', 'train/images_per_s', 'vis/loss_fixed_batch'} <= set(
      acc.Tags()['scalars'])
  start, image = acc.Images('vis/original|masked|reconstruction')
  assert (start.step, image.step) == (0, 3)  # the untrained baseline, then every eval_steps
  assert (image.height, image.width) == (8 * 32, 3 * 32)
  assert image.encoded_image_string.startswith(b'\x89PNG')
