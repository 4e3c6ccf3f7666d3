"""MAE's AdamW: lr scaling and schedule, the weight-decay mask, the update, clipping, lr scales.
(Gradient accumulation is the train step's: tests/test_loop.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs.pretrain import pretrain_config
from mae_face_jax import optim


def _config(**kw):
  c = pretrain_config('tiny', img_size=32)
  c.update(dict(batch_size=512, base_lr=1.5e-4, min_lr=1e-6) | kw)
  return c


def _params():
  return {'blocks': {0: {'attn': {'qkv': {'kernel': jnp.ones((4, 12)), 'bias': jnp.ones((12,))}},
                         'norm1': {'scale': jnp.ones((4,)), 'bias': jnp.zeros((4,))}}},
          'cls_token': jnp.ones((1, 1, 4)), 'mask_token': jnp.ones((1, 1, 4)),
          'patch_embed': {'proj': {'kernel': jnp.ones((2, 2, 3, 4))}}}


def test_lr_scaling_warmup_and_half_cosine():
  c = _config()
  peak = 1.5e-4 * 512 / 256
  assert optim.peak_lr(c) == peak
  assert optim.peak_lr(_config(grad_accum_steps=4)) == 4 * peak  # effective batch
  sched = optim.lr_schedule(c, 110, 10)
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(float(sched(5)), peak * 5 / 10, rtol=1e-6)
  np.testing.assert_allclose(float(sched(10)), peak, rtol=1e-6)
  # Half-cycle cosine from peak at step 10 to min_lr at 110: halfway is the mean of the two.
  np.testing.assert_allclose(float(sched(60)), (peak + 1e-6) / 2, rtol=1e-5)
  np.testing.assert_allclose(float(sched(110)), 1e-6, rtol=1e-5)


def test_weight_decay_mask():
  mask = optim.weight_decay_mask(_params())
  assert mask['blocks'][0]['attn']['qkv']['kernel']
  assert mask['patch_embed']['proj']['kernel']
  assert not mask['blocks'][0]['attn']['qkv']['bias']
  assert not mask['blocks'][0]['norm1']['scale'] and not mask['blocks'][0]['norm1']['bias']
  assert not mask['cls_token'] and not mask['mask_token']


def test_update_is_decoupled_adamw_like_pytorch():
  """One step against a hand-written torch.optim.AdamW step (lr × wd × param, no decay on 1-D)."""
  c = _config()
  params = {'w': jnp.full((2, 3), 2.0), 'b': jnp.full((3,), 2.0)}
  grads = {'w': jnp.full((2, 3), 0.5), 'b': jnp.full((3,), -0.25)}
  tx, sched = optim.make_optimizer(c, params, 100)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  lr, b1, b2, eps, wd = float(sched(0)), 0.9, 0.95, 1e-8, 0.05
  for k, decay in (('w', True), ('b', False)):
    g, p = np.asarray(grads[k]), np.asarray(params[k])
    m_hat = (1 - b1) * g / (1 - b1)
    v_hat = (1 - b2) * g**2 / (1 - b2)
    expected = p - lr * (m_hat / (np.sqrt(v_hat) + eps) + (wd * p if decay else 0))
    np.testing.assert_allclose(np.asarray(new[k]), expected, rtol=1e-6)


def test_clipping_bounds_the_global_norm():
  c = _config()
  c.optim.grad_clip_norm = 1.0
  params = {'w': jnp.zeros((4,))}
  tx, _ = optim.make_optimizer(c, params, 10)
  _, state = tx.update({'w': jnp.full((4,), 100.0)}, tx.init(params), params)
  # Adam saw the clipped gradient: its first moment is (1 - b1) × g / |g|.
  mu = state[1].mu['w']
  np.testing.assert_allclose(float(optax.tree.norm(mu)), 0.1 * 1.0, rtol=1e-5)


def test_lr_scales_multiply_the_step():
  """The hook fine-tuning's layer-wise lr decay uses: a per-parameter factor on the whole step."""
  c = _config()
  params = {'a': jnp.ones((2, 2)), 'b': jnp.ones((2, 2))}
  grads = {'a': jnp.ones((2, 2)), 'b': jnp.ones((2, 2))}
  tx, _ = optim.make_optimizer(c, params, 10, lr_scales={'a': 1.0, 'b': 0.25})
  upd, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(upd['b']), 0.25 * np.asarray(upd['a']), rtol=1e-6)
