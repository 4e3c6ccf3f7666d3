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
  def __init__(self, method, aux_blocks, values='main', pool='main'):
    self.face = VisionTransformer(**TINY_VIT, rngs=nnx.Rngs(0))
    self.region = VisionTransformer(**TINY_VIT, rngs=nnx.Rngs(1))
    self.head = FusionHead(dim=64, grid_size=(4, 4), num_classes=8, key_generator=method,
                           values=values, pool=pool, rngs=nnx.Rngs(2))
    self.aux_blocks = aux_blocks

  def __call__(self, face, region):
    return self.head(frozen_view_tokens(self.face, face),
                     frozen_view_tokens(self.region, region, self.aux_blocks))


@pytest.mark.parametrize('method,values,pool', [(m, 'main', 'main') for m in KEY_GENERATORS] +
                         [('concat', 'fused', 'both'), ('updown_mean', 'both', 'both')])
def test_shape_and_gradients_reach_head_not_encoders(method, values, pool):
  model = Fused(method, aux_blocks=1, values=values, pool=pool)
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


def started_model(init, *, main_view='face', pool='main', method='concat', aux_blocks=None):
  """A FusionModel over two randomised classifiers, its heads set by `head_start(init)`."""
  from mae_face_jax.train_fusion import head_start
  from mae_face_jax.train_state import flatten
  face = VisionTransformer(**TINY_VIT, num_classes=8, rngs=nnx.Rngs(0))
  region = VisionTransformer(**TINY_VIT, num_classes=8, rngs=nnx.Rngs(1))
  randomize_params(face, seed=0)  # trained-looking classifiers, not the near-zero initial heads
  randomize_params(region, seed=1)
  model = FusionModel(face, region, aux_blocks, (method,), main_view=main_view, pool=pool,
                      num_heads=4, local_window=3, updown_ratio=4.0, rngs=nnx.Rngs(2))
  randomize_params(model.heads, seed=2)  # the start must replace what matters, whatever it was
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  main, aux = ('face_encoder', 'region_encoder')[::1 if main_view == 'face' else -1]
  start = head_start(init, params['heads'], params[main], params[aux])
  assert start and all(name.startswith(f'heads.{method}_s0.') for name in start)
  flat = flatten(params) | start
  nnx.replace_by_pure_dict(state := nnx.state(model, nnx.Param), jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(params), [flat[k] for k in flatten(params)]))
  nnx.update(model, state)
  return model, face, region


@pytest.mark.parametrize('method', KEY_GENERATORS)
@pytest.mark.parametrize('main_view,pool', [('face', 'main'), ('face', 'both'), ('region', 'main')])
def test_head_started_from_the_main_view_is_its_classifier(method, main_view, pool):
  """Before training, a head started from the main view gives that view's own logits, whatever
  the auxiliary view shows (the attention residuals and the pooled auxiliary half start at zero)."""
  model, face, region = started_model('main_view', main_view=main_view, pool=pool, method=method)
  face_img, region_img = jnp.asarray(images(3, 32, 0)), jnp.asarray(images(3, 32, 1))
  expected = face(face_img) if main_view == 'face' else region(region_img)
  for other in (0, 2):  # two different auxiliary images
    aux_img = jnp.asarray(images(3, 32, other))
    pair = (face_img, aux_img) if main_view == 'face' else (aux_img, region_img)
    logits = model(*model.tokens(*pair))[f'{method}_s0']
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_head_started_from_both_views_is_their_late_fusion():
  model, face, region = started_model('both_views', pool='both')
  face_img, region_img = jnp.asarray(images(3, 32, 0)), jnp.asarray(images(3, 32, 1))
  logits = model(*model.tokens(face_img, region_img))['concat_s0']
  np.testing.assert_allclose(logits, (face(face_img) + region(region_img)) / 2, atol=1e-5)


def test_both_views_start_needs_a_head_that_sees_both_views():
  with pytest.raises(ValueError, match='pool'):
    started_model('both_views', pool='main')


def uniform_self_attention_head(values, pool='main', seed=0):
  """A randomised head whose self-attention weights are uniform (query and key maps zeroed)."""
  head = FusionHead(dim=64, grid_size=(4, 4), num_classes=8, values=values, pool=pool,
                    rngs=nnx.Rngs(seed))
  randomize_params(head, seed=seed)
  for layer in (head.self_attn.q, head.self_attn.k):
    layer.kernel[...] = jnp.zeros_like(layer.kernel[...])
    layer.bias[...] = jnp.zeros_like(layer.bias[...])
  return head


def tokens(seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((2, 16, 64)), jnp.float32)


@pytest.mark.parametrize('values', ['main', 'fused', 'both'])
def test_values_say_where_the_attended_content_comes_from(values):
  """With uniform attention weights the auxiliary tokens can only reach the output through the
  values: they do with values from both views ('fused', 'both'), not with values from the main view;
  with learned weights they reach it through the weights in every reading."""
  main, aux = tokens(0), tokens(1)
  head = uniform_self_attention_head(values)
  moved = not np.allclose(head.features(main, aux), head.features(main, jnp.zeros_like(aux)),
                          atol=1e-6)
  assert moved == (values != 'main')
  weighted = FusionHead(dim=64, grid_size=(4, 4), num_classes=8, values=values, rngs=nnx.Rngs(1))
  randomize_params(weighted, seed=1)
  assert not np.allclose(weighted.features(main, aux),
                         weighted.features(main, jnp.zeros_like(aux)), atol=1e-6)


@pytest.mark.parametrize('pool', ['main', 'both'])
def test_pool_both_lets_the_classifier_see_the_auxiliary_view(pool):
  """With the self-attention's output projection zeroed the fused tokens ignore the auxiliary
  view; the logits still depend on it only when the pooled auxiliary tokens reach the head."""
  head = uniform_self_attention_head('fused', pool=pool)
  head.self_attn.proj.kernel[...] = jnp.zeros_like(head.self_attn.proj.kernel[...])
  main, aux = tokens(0), tokens(1)
  moved = not np.allclose(head(main, aux), head(main, aux[::-1] * 2), atol=1e-6)
  assert moved == (pool == 'both')


def test_each_seed_reads_its_own_rows():
  model = FusionModel(VisionTransformer(**TINY_VIT, num_classes=8, rngs=nnx.Rngs(0)),
                      VisionTransformer(**TINY_VIT, num_classes=8, rngs=nnx.Rngs(1)), None,
                      ('mean',), seeds=2, num_heads=4, local_window=3, updown_ratio=4.0,
                      rngs=nnx.Rngs(2))
  assert set(model.heads) == {'mean_s0', 'mean_s1'}
  randomize_params(model.heads)
  main = jnp.stack([tokens(0), tokens(1)], axis=1)  # (batch, seeds, tokens, dim)
  aux = jnp.stack([tokens(2), tokens(3)], axis=1)
  out = model(main, aux)
  for s in (0, 1):
    np.testing.assert_allclose(out[f'mean_s{s}'], model.heads[f'mean_s{s}'](main[:, s], aux[:, s]),
                               atol=1e-6)
  shared = model(tokens(0), tokens(2))  # (batch, tokens, dim): one batch for every seed
  np.testing.assert_allclose(shared['mean_s0'], out['mean_s0'], atol=1e-6)
