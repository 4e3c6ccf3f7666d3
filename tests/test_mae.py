"""Our MAE against a PyTorch MAE built from timm Blocks as the reference `models_mae.py`:
same weights, same noise, fp32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from benchmarks.torch_mae import TorchMAE, state_dict_numpy
from mae_face_jax import torch_interop
from mae_face_jax.models.mae import MaskedAutoencoder, mae_loss, patchify, random_masking, unpatchify
from tests.helpers import TINY_MAE, images, to_nchw


@pytest.fixture(scope='module')
def pair():
  torch.manual_seed(0)
  ref = TorchMAE(**TINY_MAE)
  with torch.no_grad():  # non-zero biases and norms so every weight matters
    for name, p in ref.named_parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  ours = MaskedAutoencoder(**TINY_MAE, rngs=nnx.Rngs(0))
  report = torch_interop.import_state_dict(ours, state_dict_numpy(ref))
  assert not report.missing and not report.unexpected
  return ref, ours


def test_patchify_order_and_inverse():
  x = jnp.asarray(images(2, 32))
  p = patchify(x, 8)
  assert p.shape == (2, 16, 192)
  # Patch (row 1, col 2), pixel (p=3, q=5), channel 1 sits at index (3*8 + 5)*3 + 1.
  np.testing.assert_array_equal(p[:, 1 * 4 + 2, (3 * 8 + 5) * 3 + 1], x[:, 8 + 3, 16 + 5, 1])
  np.testing.assert_array_equal(unpatchify(p, 8), x)


def test_random_masking_keeps_smallest_noise():
  noise = jax.random.uniform(jax.random.key(0), (3, 16))
  x = jnp.arange(3 * 16 * 2, dtype=jnp.float32).reshape(3, 16, 2)
  kept, mask, ids_restore = random_masking(x, noise, 0.75)
  assert kept.shape == (3, 4, 2) and mask.sum() == 3 * 12
  order = np.argsort(np.asarray(noise), axis=1)
  np.testing.assert_array_equal(kept[..., 0], np.take_along_axis(np.asarray(x[..., 0]), order[:, :4], 1))
  np.testing.assert_array_equal(mask, np.asarray(noise) > np.sort(noise, axis=1)[:, 3:4])
  np.testing.assert_array_equal(np.take_along_axis(order, np.asarray(ids_restore), 1),
                                np.tile(np.arange(16), (3, 1)))


def test_norm_pix_loss_uses_unbiased_variance_on_masked_patches():
  imgs = jnp.asarray(images(1, 16))
  target = np.asarray(patchify(imgs, 8))
  mask = jnp.asarray([[1.0, 0.0, 0.0, 1.0]])
  pred = jnp.zeros_like(target)
  norm = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
  want = ((norm ** 2).mean(-1) * np.asarray(mask)).sum() / 2
  np.testing.assert_allclose(mae_loss(imgs, pred, mask, 8, True), want, rtol=1e-6)
  assert abs(float(mae_loss(imgs, pred, mask, 8, True)) - want) < 1e-5
  raw = ((target ** 2).mean(-1) * np.asarray(mask)).sum() / 2
  np.testing.assert_allclose(mae_loss(imgs, pred, mask, 8, False), raw, rtol=1e-6)


def test_forward_parity(pair):
  ref, ours = pair
  x = images(4, 32, seed=1)
  noise = np.random.default_rng(2).random((4, 16)).astype(np.float32)
  with torch.no_grad():
    want = [t.numpy() for t in ref(to_nchw(x), torch.from_numpy(noise))]
  got = ours(jnp.asarray(x), jnp.asarray(noise))
  for name, w, g in zip(['loss', 'pred', 'mask', 'ids_restore', 'latent'], want,
                        [got.loss, got.pred, got.mask, got.ids_restore, got.latent]):
    assert np.shape(g) == np.shape(w), name
    np.testing.assert_allclose(np.asarray(g), w, atol=1e-5, rtol=0, err_msg=name)


def test_gradient_parity(pair):
  ref, ours = pair
  x = images(4, 32, seed=3)
  noise = np.random.default_rng(4).random((4, 16)).astype(np.float32)
  ref.zero_grad()
  ref(to_nchw(x), torch.from_numpy(noise))[0].backward()
  want = {k: p.grad.numpy() for k, p in ref.named_parameters() if p.requires_grad}

  grads = nnx.grad(lambda m: m(jnp.asarray(x), jnp.asarray(noise)).loss)(ours)
  as_model = nnx.clone(ours)
  nnx.update(as_model, grads)  # lay the gradients out as parameters, to export them by name
  got = torch_interop.export_state_dict(as_model)
  assert set(want) <= set(got)
  for key, w in want.items():
    scale = np.abs(w).max()
    assert scale > 0, key
    err = np.abs(got[key] - w).max() / scale
    assert err <= 1e-4, f'{key}: relative gradient error {err:.2e}'


@pytest.mark.parametrize('remat', ['dots', 'full'])
def test_remat_keeps_loss_and_gradients(remat):
  """Rematerialised blocks recompute activations in the backward pass: same numbers, and the
  recomputation is really there (more forward ops in the gradient's program)."""
  x, noise = jnp.asarray(images(2, 32, seed=5)), jax.random.uniform(jax.random.key(6), (2, 16))

  def loss_and_grads(remat):
    model = MaskedAutoencoder(**TINY_MAE, drop_path_rate=0.1, remat=remat, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    step = jax.jit(lambda s: nnx.value_and_grad(lambda m: m(x, noise).loss)(nnx.merge(graphdef, s)))
    return step(state), step.lower(state).as_text().count('stablehlo.dot_general')

  ((want_loss, want), plain_dots), ((loss, got), remat_dots) = (loss_and_grads('none'),
                                                                 loss_and_grads(remat))
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, want)
  if remat == 'full':
    assert remat_dots > plain_dots, (remat_dots, plain_dots)
  with pytest.raises(ValueError, match='remat'):
    MaskedAutoencoder(**TINY_MAE, remat='everything', rngs=nnx.Rngs(0))
