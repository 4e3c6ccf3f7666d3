"""Mesh from config, Flax sharding metadata + the config's rules, and data-parallel = FSDP = one
device numerically."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from flax import nnx

from configs.common import FSDP_RULES
from mae_face_jax import loop, sharding
from mae_face_jax.models.build import build_model
from mae_face_jax.train_pretrain import mae_loss_fn
from tests.pretrain_test_config import get_config


def test_mesh_shape_resolves_minus_one():
  assert sharding.mesh_shape({'data': -1, 'fsdp': 4}, 8) == (2, 4)
  assert sharding.mesh_shape({'data': 8}, 8) == (8, 1)
  with pytest.raises(ValueError):
    sharding.mesh_shape({'data': 3, 'fsdp': -1}, 8)
  with pytest.raises(ValueError):
    sharding.mesh_shape({'data': -1, 'fsdp': -1}, 8)
  mesh = sharding.make_mesh({'data': 2, 'fsdp': -1})
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 4}


def test_rules_turn_flax_metadata_into_mesh_axes():
  config = get_config()
  model = nnx.eval_shape(lambda: build_model(config))
  params = nnx.state(model, nnx.Param)
  # Flax's own tooling reads our metadata: logical names before the rules, mesh axes under them.
  assert nnx.get_partition_spec(params)['blocks'][0]['attn']['qkv']['kernel'].get_value() == P(
      'embed', 'heads')
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 4})
  sh = sharding.variable_shardings(params, mesh, FSDP_RULES)
  assert sh['blocks'][0]['attn']['qkv']['kernel'].spec == P('fsdp', None)
  assert sh['blocks'][0]['mlp']['fc2']['kernel'].spec == P(None, 'fsdp')
  # Tiny tensors stay replicated: biases, norm scales, tokens.
  for spec in (sh['blocks'][0]['attn']['qkv']['bias'].spec, sh['norm']['scale'].spec,
               sh['cls_token'].spec, sh['mask_token'].spec):
    assert spec == P()
  assert sh['decoder_pred']['kernel'].spec == P('fsdp', None)
  # Other rules from the config: the decoder's width kept whole, the encoder's still sharded.
  rules = tuple((k, None if k == 'decoder_embed' else v) for k, v in FSDP_RULES)
  sh = sharding.variable_shardings(params, mesh, rules)
  assert sh['decoder_pred']['kernel'].spec == P(None, None)
  assert sh['blocks'][0]['mlp']['fc1']['kernel'].spec == P('fsdp', None)
  with pytest.raises(ValueError, match="logical axis 'mlp'"):
    sharding.variable_shardings(params, mesh, (('embed', 'fsdp'), ('heads', None)))
  # A dimension the mesh axis does not divide stays whole; data parallel replicates everything.
  assert sharding.fit_spec(P('fsdp'), (6,), mesh) == P(None)
  dp = sharding.make_mesh({'data': 8})
  assert sharding.variable_shardings(params, dp, FSDP_RULES)['blocks'][0]['attn']['qkv'][
      'kernel'].spec == P(None, None)


def _run(mesh_config, devices, steps=3):
  config = get_config()
  mesh = sharding.make_mesh(mesh_config, devices)
  run = loop.setup(config, mesh, lambda: build_model(config), None)
  step_fn = loop.train_step_for(run, mae_loss_fn(config), {'image': 4})
  state, fixed = run.placed.state, run.placed.fixed
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(steps):
    batch = {'image': rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)}
    state, metrics = step_fn(state, fixed, sharding.global_batch(batch, mesh))
    losses.append(float(metrics['loss']))
  return state, losses


def test_data_parallel_fsdp_and_one_device_agree():
  devices = jax.devices()
  assert len(devices) == 8, 'conftest sets 8 simulated CPU devices'
  one, one_losses = _run({'data': 1, 'fsdp': 1}, devices[:1])
  dp, dp_losses = _run({'data': 8, 'fsdp': 1}, devices)
  fsdp, fsdp_losses = _run({'data': 2, 'fsdp': 4}, devices)

  np.testing.assert_allclose(dp_losses, one_losses, rtol=1e-5)
  np.testing.assert_allclose(fsdp_losses, one_losses, rtol=1e-5)
  assert one_losses[0] != one_losses[2]  # the steps did change the model
  # Parameters agree to fp32 round-off amplified by Adam: where a gradient is ~0, Adam's step is
  # ~lr·sign(g), so a 1e-9 difference in g can move a parameter by a few % of one step (~6e-4).
  for other in (dp, fsdp):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                         rtol=1e-4, atol=2e-5),
                 other['params'], one['params'])

  # Under FSDP the big kernels (and their Adam moments) are really split 4 ways over 'fsdp'.
  qkv = fsdp['params']['blocks'][0]['attn']['qkv']['kernel']
  fc2 = fsdp['params']['blocks'][1]['mlp']['fc2']['kernel']
  assert qkv.sharding.spec == P('fsdp', None) and fc2.sharding.spec == P(None, 'fsdp')
  assert qkv.addressable_shards[0].data.shape == (64 // 4, 192)
  mu = fsdp['opt_state'][0].mu['blocks'][0]['attn']['qkv']['kernel']  # Adam's first moment
  assert mu.sharding.spec == P('fsdp', None)
  assert dp['params']['blocks'][0]['attn']['qkv']['kernel'].sharding.spec == P(None, None)

  # Per-device parameter bytes shrink by the fsdp factor; only tiny tensors (biases, norms,
  # tokens: 6% of this tiny model, far less of a real one) stay whole on every device.
  dp_bytes = sharding.per_device_bytes(dp['params'])
  fsdp_bytes = sharding.per_device_bytes(fsdp['params'])
  whole = sum(x.nbytes for x in jax.tree.leaves(fsdp['params']) if x.sharding.spec == P())
  assert fsdp_bytes == whole + (dp_bytes - whole) // 4, (dp_bytes, fsdp_bytes, whole)
  assert whole < 0.1 * dp_bytes
  opt_ratio = (sharding.per_device_bytes(dp['opt_state'])
               / sharding.per_device_bytes(fsdp['opt_state']))
  assert opt_ratio > 3.5, opt_ratio


def test_global_batch_is_sharded_over_all_axes():
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 4})
  x = np.arange(16 * 2, dtype=np.float32).reshape(16, 2)
  g = sharding.global_batch({'x': x}, mesh)['x']
  assert g.sharding.spec == P(('data', 'fsdp'), None)
  assert g.addressable_shards[0].data.shape == (2, 2)
  np.testing.assert_array_equal(np.asarray(g), x)
