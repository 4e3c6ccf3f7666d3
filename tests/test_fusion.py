import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mae_face_jax.models.fusion import (KEY_GENERATORS, FusionHead, FusionModel,
                                        frozen_view_tokens, local_attention_mask)
from mae_face_jax.models.vit import VisionTransformer
from tests.helpers import TINY_VIT, images, randomize_params


class Fused(nnx.Module):
  def __init__(self, method, aux_blocks):
    self.face = VisionTransformer(**TINY_VIT, rngs=nnx.Rngs(0))
    self.region = VisionTransformer(**TINY_VIT, rngs=nnx.Rngs(1))
    self.head = FusionHead(dim=64, grid_size=(4, 4), num_classes=8, key_generator=method,
                           rngs=nnx.Rngs(2))
    self.aux_blocks = aux_blocks

  def __call__(self, face, region):
    return self.head(frozen_view_tokens(self.face, face),
                     frozen_view_tokens(self.region, region, self.aux_blocks))


@pytest.mark.parametrize('method', KEY_GENERATORS)
def test_shape_and_gradients_reach_head_not_encoders(method):
  model = Fused(method, aux_blocks=1)
  face, region = jnp.asarray(images(3, 32, 0)), jnp.asarray(images(3, 32, 1))
  logits = model(face, region)
  assert logits.shape == (3, 8)
  labels = jnp.array([0, 3, 7])

  def loss_fn(m):
    return -jnp.mean(jax.nn.log_softmax(m(face, region))[jnp.arange(3), labels])

  grads = nnx.grad(loss_fn)(model)
  for name in ('face', 'region'):
    for path, g in jax.tree_util.tree_leaves_with_path(grads[name]):
      assert not np.any(np.asarray(g)), f'{name}{jax.tree_util.keystr(path)} got a gradient'
  head_leaves = jax.tree_util.tree_leaves_with_path(grads['head'])
  assert head_leaves
  for path, g in head_leaves:
    assert np.any(np.asarray(g)), f'head{jax.tree_util.keystr(path)} got no gradient'


def test_unknown_key_generator_is_named():
  with pytest.raises(ValueError, match='sum'):
    FusionHead(dim=64, grid_size=(4, 4), num_classes=8, key_generator='sum', rngs=nnx.Rngs(0))


def test_local_mask_is_exactly_the_neighbourhood():
  mask = local_attention_mask((5, 6), 3)
  i = 2 * 6 + 3  # row 2, col 3
  allowed = {(r, c) for r in (1, 2, 3) for c in (2, 3, 4)}
  for j in range(30):
    assert mask[i, j] == (divmod(j, 6) in allowed)
  assert mask[0].sum() == 4  # corner: 2×2 neighbours exist
  assert local_attention_mask((4, 4), 5)[0].sum() == 9


def test_token_outside_window_has_zero_weight():
  head = FusionHead(dim=64, grid_size=(4, 4), num_classes=8, local_window=3, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 16, 64)), jnp.float32)
  h = head.norm_local(x)
  base = head.local_attn(h, h, mask=head.local_mask[None, None])
  # Token 15 (row 3, col 3) is outside token 0's 3×3 window: changing it leaves token 0 unchanged.
  h2 = h.at[:, 15].add(5.0)
  moved = head.local_attn(h2, h2, mask=head.local_mask[None, None])
  np.testing.assert_allclose(moved[:, 0], base[:, 0], atol=1e-6)
  assert not np.allclose(moved[:, 10], base[:, 10])  # token 10 (row 2, col 2) sees it


@pytest.mark.parametrize('method', KEY_GENERATORS)
def test_head_started_from_the_main_view_is_its_classifier(method):
  """Before training, a head started from the face encoder gives the face encoder's own logits,
  whatever the auxiliary view shows (the attention residuals start at zero)."""
  from mae_face_jax.train_fusion import start_from_main_view
  from mae_face_jax.train_state import flatten
  face = VisionTransformer(**TINY_VIT, num_classes=8, rngs=nnx.Rngs(0))
  randomize_params(face)  # a trained-looking classifier, not the near-zero initial head
  model = FusionModel(face, VisionTransformer(**TINY_VIT, num_classes=8, rngs=nnx.Rngs(1)), None,
                      (method,), num_heads=4, local_window=3, updown_ratio=4.0, rngs=nnx.Rngs(2))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  start = start_from_main_view(params['heads'], params['face_encoder'])
  assert start and all(name.startswith(f'heads.{method}.') for name in start)
  flat = flatten(params) | start
  nnx.replace_by_pure_dict(state := nnx.state(model, nnx.Param), jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(params), [flat[k] for k in flatten(params)]))
  nnx.update(model, state)
  face_img, region_img = jnp.asarray(images(3, 32, 0)), jnp.asarray(images(3, 32, 1))
  for region in (region_img, region_img[::-1]):
    logits = model(*model.tokens(face_img, region))[method]
    np.testing.assert_allclose(logits, face(face_img), atol=1e-5)
