"""Our MAE against the PyTorch reference in `benchmarks/torch_mae.py` (timm blocks, MAE's
structure): same weights and noise give the same mask, loss, predictions, latent and gradients."""

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('timm')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.torch_mae import build_torch_mae, state_dict_numpy  # noqa: E402
from configs.common import model_config  # noqa: E402
from mae_face_jax.models.build import build_mae  # noqa: E402
from mae_face_jax.torch_interop import export_state_dict, import_state_dict  # noqa: E402


@pytest.fixture(scope='module')
def pair():
  torch.manual_seed(0)
  tmodel = build_torch_mae('tiny')
  jmodel = build_mae(model_config('tiny'), nnx.Rngs(1))
  report = import_state_dict(jmodel, state_dict_numpy(tmodel))
  assert not report.missing and not report.unexpected
  rng = np.random.default_rng(0)
  imgs = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
  noise = rng.random((2, 196)).astype(np.float32)
  return tmodel, jmodel, imgs, noise


def test_forward_matches_reference(pair):
  tmodel, jmodel, imgs, noise = pair
  with torch.no_grad():
    t_loss, t_pred, t_mask, t_ids, t_latent = tmodel(torch.from_numpy(imgs),
                                                     torch.from_numpy(noise))
  out = jmodel(jnp.asarray(imgs.transpose(0, 2, 3, 1)), jnp.asarray(noise))
  np.testing.assert_array_equal(np.asarray(out.mask), t_mask.numpy())
  np.testing.assert_array_equal(np.asarray(out.ids_restore), t_ids.numpy())
  np.testing.assert_allclose(float(out.loss), float(t_loss), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out.pred), t_pred.numpy(), atol=1e-5)
  np.testing.assert_allclose(np.asarray(out.latent), t_latent.numpy(), atol=1e-5)


def test_gradients_match_reference(pair):
  tmodel, jmodel, imgs, noise = pair
  tmodel.zero_grad()
  tmodel(torch.from_numpy(imgs), torch.from_numpy(noise))[0].backward()
  t_grads = {k: p.grad.numpy() for k, p in tmodel.named_parameters() if p.grad is not None}
  graphdef, params, rest = nnx.split(jmodel, nnx.Param, ...)

  def loss(p):
    return nnx.merge(graphdef, p, rest)(jnp.asarray(imgs.transpose(0, 2, 3, 1)),
                                        jnp.asarray(noise)).loss

  grads_model = nnx.merge(graphdef, jax.grad(loss)(params), rest)
  j_grads = export_state_dict(grads_model)
  assert set(t_grads) <= set(j_grads)
  for key, g in t_grads.items():
    scale = max(float(np.abs(g).max()), 1e-8)
    np.testing.assert_allclose(j_grads[key] / scale, g / scale, atol=1e-5, err_msg=key)
