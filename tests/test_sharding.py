"""Mesh from config, the logical-axis rules, and data-parallel = FSDP = one device numerically."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from flax import nnx

from mae_face_jax import optim, sharding
from mae_face_jax import train_pretrain as tp
from mae_face_jax import train_state as ts
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


def test_logical_rules():
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 4})
  assert sharding.logical_to_spec(('embed', 'heads'), (64, 192), mesh) == P('fsdp', None)
  assert sharding.logical_to_spec(('mlp', 'embed'), (256, 64), mesh) == P(None, 'fsdp')
  assert sharding.logical_to_spec(('embed',), (6,), mesh) == P(None)  # 6 % 4: stays whole
  assert sharding.logical_to_spec(None, (3,), mesh) == P()
  dp = sharding.make_mesh({'data': 8})
  assert sharding.logical_to_spec(('embed', 'heads'), (64, 192), dp) == P(None, None)


def _run(mesh_config, devices, steps=3):
  config = get_config()
  mesh = sharding.make_mesh(mesh_config, devices)
  build = lambda: tp.build_model(config)
  _, abstract_params, _ = ts.abstract_model(build)
  tx, _ = optim.make_optimizer(config, nnx.to_pure_dict(abstract_params), total_updates=steps)
  graphdef, state, state_sh, fixed, fixed_sh = ts.create_train_state(build, config.seed, mesh, tx)
  num_patches = (config.model.img_size // config.model.patch_size) ** 2
  step_fn = tp.make_train_step(graphdef, tx, num_patches, state_sh, fixed_sh, mesh)
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

  # Per-device parameter bytes shrink by the fsdp factor (up to the few vectors 4 does not divide).
  dp_bytes = sharding.per_device_bytes(dp['params'])
  fsdp_bytes = sharding.per_device_bytes(fsdp['params'])
  assert dp_bytes / fsdp_bytes > 3.8, (dp_bytes, fsdp_bytes)
  opt_ratio = (sharding.per_device_bytes(dp['opt_state'])
               / sharding.per_device_bytes(fsdp['opt_state']))
  assert opt_ratio > 3.8, opt_ratio


def test_global_batch_is_sharded_over_all_axes():
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 4})
  x = np.arange(16 * 2, dtype=np.float32).reshape(16, 2)
  g = sharding.global_batch({'x': x}, mesh)['x']
  assert g.sharding.spec == P(('data', 'fsdp'), None)
  assert g.addressable_shards[0].data.shape == (2, 2)
  np.testing.assert_array_equal(np.asarray(g), x)
