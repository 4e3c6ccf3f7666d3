"""Our ViT against timm's VisionTransformer, weights moved through our exporter and importer."""

import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from flax import nnx
from jax.sharding import PartitionSpec as P

from mae_face_jax import torch_interop
from mae_face_jax.models.vit import VisionTransformer
from tests.helpers import TINY_VIT, images, randomize_params, to_nchw


def timm_vit(global_pool: bool, num_classes: int = 8):
  return timm.models.vision_transformer.VisionTransformer(
      **TINY_VIT, num_classes=num_classes, global_pool='avg' if global_pool else 'token').eval()


@pytest.mark.parametrize('global_pool', [True, False])
def test_export_to_timm_matches(global_pool):
  ours = VisionTransformer(**TINY_VIT, num_classes=8, global_pool=global_pool, rngs=nnx.Rngs(0))
  randomize_params(ours, seed=1)
  ours.eval()
  ref = timm_vit(global_pool)
  sd = torch_interop.export_state_dict(ours)
  ref.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  x = images(3, 32)
  with torch.no_grad():
    want = ref(to_nchw(x)).numpy()
  got = np.asarray(ours(jnp.asarray(x)))
  assert np.abs(want).max() > 0.1  # a comparison of non-trivial logits
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize('global_pool', [True, False])
def test_import_from_timm_matches(global_pool):
  torch.manual_seed(0)
  ref = timm_vit(global_pool)
  with torch.no_grad():
    for p in ref.parameters():
      p.normal_(0, 0.2)
  ours = VisionTransformer(**TINY_VIT, num_classes=8, global_pool=global_pool, rngs=nnx.Rngs(0))
  report = torch_interop.import_state_dict(
      ours, {k: v.numpy() for k, v in ref.state_dict().items()})
  assert not report.missing and not report.unexpected
  ours.eval()
  x = images(2, 32, seed=3)
  with torch.no_grad():
    want = ref(to_nchw(x)).numpy()
    want_tokens = ref.blocks(ref._pos_embed(ref.patch_embed(to_nchw(x)))).numpy()
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))), want, atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(ours.forward_tokens(jnp.asarray(x))), want_tokens,
                             atol=1e-5, rtol=0)


def test_drop_path_drops_whole_samples():
  model = VisionTransformer(**TINY_VIT, drop_path_rate=0.5, rngs=nnx.Rngs(0, dropout=1))
  x = jnp.asarray(images(16, 32))
  model.train()
  a, b = model(x), model(x)
  assert not np.allclose(a, b)  # fresh drop-path masks each call
  model.eval()
  np.testing.assert_array_equal(model(x), model(x))


def test_bfloat16_compute_keeps_float32_params():
  model = VisionTransformer(**TINY_VIT, num_classes=8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  out = model(jnp.asarray(images(2, 32)))
  assert out.dtype == jnp.bfloat16
  assert model.blocks[0].attn.qkv.kernel[...].dtype == jnp.float32


def test_einsum_attention_matches_xla_attention():
  """attention_impl='einsum' (TPUs' 'auto'): the same attention; in bfloat16 its scores are
  rounded to bfloat16 between the two products, so it agrees to bfloat16 precision only."""
  import jax
  from mae_face_jax.models.build import resolve_attention_impl
  from mae_face_jax.models.vit import einsum_attention
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 17, 4, 8))
  np.testing.assert_allclose(einsum_attention(q, k, v), jax.nn.dot_product_attention(q, k, v),
                             rtol=1e-5, atol=1e-6)
  bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  got = einsum_attention(*bf)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32),
                             np.asarray(jax.nn.dot_product_attention(*bf), np.float32), atol=3e-2)
  assert [resolve_attention_impl('auto', b) for b in ('tpu', 'gpu', 'cpu')] == [
      'pallas', 'cudnn', None]
  x = jnp.asarray(images(2, 32))
  plain = VisionTransformer(**TINY_VIT, rngs=nnx.Rngs(0))
  fused = VisionTransformer(**TINY_VIT, attention_impl='einsum', rngs=nnx.Rngs(0))
  np.testing.assert_allclose(fused(x), plain(x), rtol=1e-4, atol=1e-5)


def test_pallas_attention_matches_einsum_attention():
  """attention_impl='pallas' (TPUs' 'auto'; here in Pallas's interpreter): the kernels read the
  fused qkv, add its bias, attend and project, and give the einsum attention's output and
  gradients (of qkv, its bias, and the projection's weight and bias), whole or split over a mesh."""
  import jax
  from mae_face_jax.models.pallas_attention import qkv_attention
  from mae_face_jax.models.vit import einsum_attention

  def reference(qkv, qkv_bias, w, b, heads):
    n, c = qkv.shape[1:]
    q, k, v = jnp.moveaxis((qkv + qkv_bias).reshape(-1, n, 3, heads, c // 3 // heads), 2, 0)
    return einsum_attention(q, k, v).reshape(-1, n, c // 3) @ w + b

  keys = jax.random.split(jax.random.key(0), 5)
  qkv, qkv_bias = jax.random.normal(keys[0], (8, 13, 3 * 4 * 8)), jax.random.normal(keys[4], (96,))
  w, b = jax.random.normal(keys[1], (32, 24)) / 6, jax.random.normal(keys[2], (24,))
  cotangent = jax.random.normal(keys[3], (8, 13, 24))
  grads = lambda f: jax.grad(lambda *a: jnp.sum(f(*a) * cotangent), (0, 1, 2, 3))(qkv, qkv_bias,
                                                                                    w, b)
  kernel = lambda *a: qkv_attention(*a, 4)
  expected = reference(qkv, qkv_bias, w, b, 4), grads(lambda *a: reference(*a, 4))
  np.testing.assert_allclose(kernel(qkv, qkv_bias, w, b), expected[0], rtol=1e-5, atol=1e-5)
  for got, want in zip(grads(kernel), expected[1]):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
  mesh = jax.make_mesh((2, 4), ('data', 'fsdp'), axis_types=(jax.sharding.AxisType.Auto,) * 2)

  @jax.jit
  def per_device(x):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return kernel(x, qkv_bias, w, b), grads(kernel)
  out, got = per_device(jax.device_put(qkv, jax.NamedSharding(mesh, P(('data', 'fsdp')))))
  np.testing.assert_allclose(out, expected[0], rtol=1e-5, atol=1e-5)
  for g, want in zip(got, expected[1]):
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=2e-5)
  bf = [a.astype(jnp.bfloat16) for a in (qkv, qkv_bias, w, b)]
  np.testing.assert_allclose(np.asarray(kernel(*bf), np.float32),
                             np.asarray(reference(*bf, 4), np.float32), atol=5e-2)
  # bf16 gradients (the accelerator configs' compute dtype) within bf16 rounding of float32's
  bf_grads = jax.grad(lambda *a: jnp.sum(kernel(*a).astype(jnp.float32) * cotangent),
                      (0, 1, 2, 3))(*bf)
  for got, want in zip(bf_grads, expected[1]):
    assert got.dtype == jnp.bfloat16
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.02 * scale)
  with pytest.raises(ValueError, match='qkv width 96 is not 3 × 5 heads'):
    qkv_attention(qkv, qkv_bias, w, b, 5)
  x = jnp.asarray(images(2, 32))
  plain = VisionTransformer(**TINY_VIT, rngs=nnx.Rngs(0))
  fused = VisionTransformer(**TINY_VIT, attention_impl='pallas', rngs=nnx.Rngs(0))
  np.testing.assert_allclose(fused(x), plain(x), rtol=1e-4, atol=1e-5)


def test_batched_token_matmul_matches_flat():
  """token_matmul='batched' (TPUs' 'auto': no layout copies at 50 or 197 tokens) multiplies the
  (B, N, D) tokens directly: the same parameters and outputs as the flat (B*N, D) products."""
  from mae_face_jax.models.build import resolve_token_matmul
  from mae_face_jax.models.mae import MaskedAutoencoder
  from tests.helpers import TINY_MAE
  x = jnp.asarray(images(2, 32))
  flat = VisionTransformer(**TINY_VIT, num_classes=8, rngs=nnx.Rngs(0))
  randomize_params(flat, seed=1)
  batched = VisionTransformer(**TINY_VIT, num_classes=8, token_matmul='batched', rngs=nnx.Rngs(0))
  nnx.update(batched, nnx.state(flat, nnx.Param))
  np.testing.assert_allclose(batched(x), flat(x), rtol=1e-5, atol=1e-5)
  noise = jnp.asarray(np.random.default_rng(0).random((2, (32 // TINY_MAE['patch_size']) ** 2)))
  mae_flat = MaskedAutoencoder(**TINY_MAE, rngs=nnx.Rngs(0))
  mae_batched = MaskedAutoencoder(**TINY_MAE, token_matmul='batched', rngs=nnx.Rngs(0))
  np.testing.assert_allclose(mae_batched(x, noise).loss, mae_flat(x, noise).loss, rtol=1e-5)
  assert [resolve_token_matmul('auto', b) for b in ('tpu', 'gpu', 'cpu')] == [
      'batched', 'flat', 'flat']
  with pytest.raises(ValueError, match='token_matmul'):
    VisionTransformer(**TINY_VIT, token_matmul='rows', rngs=nnx.Rngs(0))
