"""The pretraining step compiled ahead of time for a TPU topology (`v5p:2x2x2`, 8 chips) on this
CPU machine, through libtpu: per-device memory and the collectives data parallelism and FSDP imply."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from mae_face_jax import aot, sharding
from mae_face_jax import train_state as ts
from mae_face_jax.models.build import build_model
from tests.pretrain_test_config import get_config

TOPOLOGY = 'v5p:2x2x2'
BATCH = 16


def tiny_config(data: int, fsdp: int, remat: str = 'none'):
  config = get_config()
  config.batch_size = BATCH
  config.model.remat = remat
  config.mesh.data, config.mesh.fsdp = data, fsdp
  config.model.dtype = 'bfloat16'  # as on TPUs: bf16 compute, fp32 master weights
  return config


@pytest.fixture(scope='module')
def estimates():
  return {name: aot.compile_pretrain_step(tiny_config(*mesh), TOPOLOGY)[1]
          for name, mesh in (('data', (8, 1)), ('fsdp', (2, 4)), ('remat', (2, 4, 'full')))}


def test_fsdp_shards_parameters_and_optimizer_state(estimates):
  dp, fsdp = estimates['data'], estimates['fsdp']
  assert dp.mesh == {'data': 8, 'fsdp': 1} and fsdp.mesh == {'data': 2, 'fsdp': 4}
  assert dp.chip == 'v5p' and dp.hbm_bytes == 95 * 2**30
  # Exactly: tensors without logical axes (biases, norms, tokens) stay whole, the rest is split 4
  # ways.
  config = tiny_config(2, 4)
  params = nnx.to_pure_dict(ts.abstract_model(lambda: build_model(config))[1])
  specs = sharding.variable_shardings(ts.abstract_model(lambda: build_model(config))[1],
                                      sharding.make_mesh({'data': 2, 'fsdp': 4}), config.mesh.rules)
  nbytes = lambda x: int(np.prod(x.shape)) * 4
  whole = sum(nbytes(x) for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(specs))
              if s.spec == P())
  total = sum(nbytes(x) for x in jax.tree.leaves(params))
  assert dp.params_bytes == total
  assert fsdp.params_bytes == whole + (total - whole) // 4
  assert dp.opt_state_bytes / fsdp.opt_state_bytes > 3.5  # Adam's two moments, placed alike
  # The batch is split over all 8 devices on either mesh.
  assert dp.batch_bytes == fsdp.batch_bytes == BATCH * 32 * 32 * 3 // 8
  assert fsdp.argument_bytes < dp.argument_bytes


def test_collectives_follow_the_mesh(estimates):
  dp, fsdp = estimates['data'].collectives, estimates['fsdp'].collectives
  # Data parallel: every parameter whole everywhere, gradients all-reduced; nothing gathered.
  assert dp['all-gather'][0] == 0 and dp['reduce-scatter'][0] == 0
  assert dp['all-reduce'][0] > 0
  # FSDP: parameters all-gathered where used, gradients reduce-scattered back to their shards.
  assert fsdp['all-gather'][0] > 0 and fsdp['reduce-scatter'][0] > 0


def test_estimates_are_consistent(estimates):
  for e in estimates.values():
    assert e.fits and 0 < e.used_bytes < e.hbm_bytes
    assert e.est_step_s > 0 and 0 < e.est_mfu < 1
    assert e.est_images_per_s == pytest.approx(BATCH / e.est_step_s)
    # XLA counts the matmuls the model FLOPs count, plus norms, softmax and the optimizer.
    assert e.xla_flops > 0.9 * e.model_flops
    assert e.model_flops == pytest.approx(aot.mae_train_flops(tiny_config(8, 1).model) * BATCH / 8)
    # The estimate is at least the counted FLOPs at peak; the rest is for the bytes moved.
    assert 0 < e.compute_s < e.est_step_s
    assert sum(e.byte_kinds.values()) == pytest.approx(1) and e.byte_kinds['matrix products'] > 0
    assert 'bytes accessed at' in aot.format_estimate(e, tiny_config(8, 1))


def test_remat_recomputes_in_the_tpu_program(estimates):
  # (What it saves in memory shows at scale only: this tiny step's buffers are mostly fixed.)
  plain, remat = estimates['fsdp'], estimates['remat']
  assert remat.xla_flops > 1.05 * plain.xla_flops  # the blocks' forward runs again in the backward
  assert remat.model_flops == plain.model_flops


def test_pallas_attention_compiles_for_the_tpu_per_device(estimates):
  """attention_impl='pallas' (TPUs' 'auto'): the Mosaic kernel compiles inside the sharded step,
  forward and backward in every block, each device on its own images: no more collective traffic
  than XLA's attention (no activations gathered; the projection's gradient still reduce-scattered
  to its shards), and fewer bytes accessed."""
  config = tiny_config(2, 4)
  config.model.attention_impl = 'pallas'
  compiled, e = aot.compile_pretrain_step(config, TOPOLOGY)
  hlo = compiled.as_text()
  blocks = config.model.depth + config.model.decoder_depth
  assert hlo.count('custom_call_target="tpu_custom_call"') == 2 * blocks
  xla = estimates['fsdp'].collectives
  for kind, (count, size) in e.collectives.items():
    assert size <= xla[kind][1], kind
  assert e.collectives['reduce-scatter'] == xla['reduce-scatter']
  assert e.bytes_accessed < estimates['fsdp'].bytes_accessed


@pytest.mark.parametrize('topology', ['v4:2x2x1', 'v5p:2x2x1'])
def test_pallas_attention_fits_vmem_at_vit_h_shapes(topology):
  """The kernels' VMEM does not grow with the batch but with the sequence and the width: ViT-H's
  encoder (65 tokens, 1280 wide, 16 heads of 80) and decoder (257 tokens, 512 wide, 16 heads of
  32) compile, forward and backward, within v4's 16 MiB of VMEM a core and v5p's scoped limit."""
  import jax.numpy as jnp
  from mae_face_jax.models.pallas_attention import qkv_attention
  device = jax.sharding.SingleDeviceSharding(aot.topology_devices(topology)[0])
  for tokens, width in ((65, 1280), (257, 512)):
    shapes = ((4, tokens, 3 * width), (3 * width,), (width, width), (width,))
    args = [jax.ShapeDtypeStruct(s, jnp.bfloat16, sharding=device) for s in shapes]
    loss = lambda *a: jnp.sum(qkv_attention(*a, 16).astype(jnp.float32))
    hlo = jax.jit(jax.value_and_grad(loss, (0, 1, 2, 3))).lower(*args).compile().as_text()
    assert hlo.count('custom_call_target="tpu_custom_call"') == 2  # forward, backward


def test_a_step_that_does_not_fit_says_so(capsys):
  config = tiny_config(16, 1)
  config.batch_size = 2**22  # 0.75 GiB of images and tens of GiB of activations a v5e chip
  assert aot.run(config, 'v5e:4x4') is None
  out = capsys.readouterr().out
  assert 'DOES NOT FIT in 16 GiB' in out and 'batch 0.75 GiB' in out
  assert 'RESOURCE_EXHAUSTED' in out  # XLA's own numbers follow


def test_an_unusable_cost_analysis_is_not_printed_as_an_estimate(estimates):
  broken = dataclasses.replace(estimates['data'], est_step_s=-573.8)
  assert not broken.has_step_estimate and estimates['data'].has_step_estimate
  text = aot.format_estimate(broken, tiny_config(8, 1))
  assert 'none usable' in text and 'MFU' not in text


def test_collectives_reads_tpu_hlo():
  hlo = '\n'.join([
      '%all-reduce-scatter.1 (input_0: f32[64,8]) -> f32[16,8] {',
      '  %all-reduce.3 = f32[64,8]{1,0:T(8,128)} all-reduce(%input_0), to_apply=%add',
      '}',
      'ENTRY %main.1 (p: bf16[16,8]) -> f32[] {',
      '  %all-gather-start = (bf16[16,8]{1,0}, bf16[64,8]{1,0}) all-gather-start(%p), dims={0}',
      '  %all-gather-done = bf16[64,8]{1,0} all-gather-done(%all-gather-start)',
      '  %all-reduce.1 = (f32[]{:T(128)}, f32[4]{0}) all-reduce(%a, %b), to_apply=%add',
      '}'])
  found = aot.collectives(hlo)
  assert found['reduce-scatter'] == (1, 64 * 8 * 4)
  assert found['all-gather'] == (1, 64 * 8 * 2)
  assert found['all-reduce'] == (1, 4 + 16)
  assert found['all-to-all'] == (0, 0)


def test_chip_table_and_unknown_chip():
  assert aot.chip_of('v5p:8x8x8') == ('v5p', aot.Chip(95, 459))
  assert aot.chip_of('v6e:16x16')[1].peak_tflops == 918
  with pytest.raises(ValueError, match='v3'):
    aot.chip_of('v3:4x4')
  # One device per chip: a v4 chip's two TensorCores run as one (megacore), as on v5p.
  assert len(aot.topology_devices('v4:2x2x4')) == 16
  assert len(aot.topology_devices('v5p:2x2x2')) == 8


def test_a_mesh_axis_across_the_torus_dimensions():
  """Data 4 on a v5p 8x8x8 slice, where 4 is no product of the torus sides: the mesh splits a
  physical axis rather than refusing the config."""
  devices = aot.topology_devices('v5p:8x8x8')
  mesh = sharding.make_mesh({'data': 4, 'fsdp': -1}, devices)
  assert dict(mesh.shape) == {'data': 4, 'fsdp': 128}
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)
  assert dict(sharding.make_mesh({'data': 8, 'fsdp': -1}, devices).shape) == {'data': 8,
                                                                               'fsdp': 64}


def test_bytes_by_kind_reads_tpu_hlo():
  """Operands + results of each executed instruction, a fusion's insides not counted."""
  hlo = '\n'.join([
      '%fused_computation.1 (p0: bf16[8,16], p1: bf16[16,4]) -> bf16[8,4] {',
      '  %p0 = bf16[8,16]{1,0} parameter(0)',
      '  %p1 = bf16[16,4]{1,0} parameter(1)',
      '  ROOT %convolution.1 = bf16[8,4]{1,0} convolution(%p0, %p1), dim_labels=bf_io->bf',
      '}',
      'ENTRY %main.1 (a: bf16[8,16], w: bf16[16,4]) -> f32[8,4] {',
      '  %a = bf16[8,16]{1,0} parameter(0)',
      '  %w = bf16[16,4]{1,0} parameter(1)',
      '  %fusion.1 = bf16[8,4]{1,0} fusion(%a, %w), kind=kOutput, calls=%fused_computation.1',
      '  %copy-start = (bf16[8,4]{1,0:S(1)}, bf16[8,4]{1,0}, u32[]) copy-start(%fusion.1)',
      '  %copy-done = bf16[8,4]{1,0:S(1)} copy-done(%copy-start)',
      '  %copy.1 = bf16[8,4]{0,1} copy(%copy-done)',
      '  ROOT %convert.1 = f32[8,4]{1,0} convert(%copy.1)',
      '}'])
  product = 2 * (8 * 16 + 16 * 4 + 8 * 4)
  copies = 2 * (3 * 32) + 4 + 2 * (3 * 32) + 4  # start: operand + (2 arrays, u32) result; done
  layout = 2 * 2 * 32
  other = 2 * 32 + 4 * 32
  total = product + copies + layout + other
  shares = aot.bytes_by_kind(hlo)
  assert shares['matrix products'] == pytest.approx(product / total)
  assert shares['memory-space copies'] == pytest.approx(copies / total)
  assert shares['layout copies'] == pytest.approx(layout / total)
  assert shares['other'] == pytest.approx(other / total)
  assert shares['collectives'] == 0
