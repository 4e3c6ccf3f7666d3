"""Pretraining on a TPU pod slice, checked without one: the step compiled ahead of time.

`libtpu` compiles for a TPU topology on a CPU-only machine
(`jax.experimental.topologies.get_topology_desc`): the pretraining program's own step
(`loop.train_step_for` with `train_pretrain.mae_loss_fn`) is built with the config's mesh over the
topology's abstract devices and compiled. The executable reports its memory per device and XLA's
cost model (FLOPs, bytes, `optimal_seconds`); the HLO shows which collectives FSDP and data
parallelism turned into. Every time, rate and MFU here is XLA's cost-model ESTIMATE, not a
measurement (`benchmarks/mae_step.py` measures on a real device).

    python main.py --mode=aot --config=configs/pretrain_accel.py:large --topology=v5p:4x4x4
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.experimental import topologies

from mae_face_jax import loop, sharding, train_pretrain
from mae_face_jax.models.build import build_model, resolve_attention_impl, resolve_token_matmul

GIB = 2**30
# The recipe's epoch (ImageNet-1k's training set): the schedule's length in steps, and the unit of
# the wall-time estimate.
IMAGENET_IMAGES = 1_281_167


class Chip(NamedTuple):
  hbm_gib: float      # HBM per chip
  peak_tflops: float  # dense bf16 peak per chip


# Google's published figures per chip.
CHIPS = {
    'v4': Chip(32, 275),
    'v5e': Chip(16, 197),
    'v5p': Chip(95, 459),
    'v6e': Chip(32, 918),
}
COLLECTIVES = ('all-gather', 'reduce-scatter', 'all-reduce', 'all-to-all', 'collective-permute')
_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2, 'f32': 4,
                's32': 4, 'u32': 4, 'f64': 8, 's64': 8, 'u64': 8}


def chip_of(topology: str) -> tuple[str, Chip]:
  """'v5p:4x4x4' → ('v5p', its Chip)."""
  kind = topology.split(':')[0].split('-')[0].lower()
  if kind not in CHIPS:
    raise ValueError(f'topology {topology!r}: chip {kind!r} is not one of {", ".join(CHIPS)}')
  return kind, CHIPS[kind]


def topology_devices(topology: str) -> list:
  """The abstract (compile-only) devices of a TPU topology such as 'v5p:8x8x8'."""
  # libtpu takes a machine-wide lock on loading, meant for processes that drive real chips;
  # compiling touches none, so other processes (tests, a second compile) may load it too.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  # A v4 topology lists each of a chip's two TensorCores as a device unless asked for the chips
  # ("megacore", how v4 runs JAX): one device per chip, as on v5p, v5e and v6e.
  kwargs = {'chip_config_name': 'megacore'} if chip_of(topology)[0] == 'v4' else {}
  return list(topologies.get_topology_desc(topology_name=topology, platform='tpu',
                                           **kwargs).devices)


def mae_train_flops(model: Any) -> float:
  """Model FLOPs of one MAE training example (2 per multiply-add, backward = 2 × forward), from
  the shapes alone: what MFU counts (rematerialised recomputation does not count)."""
  num_patches = (model.img_size // model.patch_size) ** 2
  patch_dim = model.patch_size**2 * model.in_chans
  kept = 1 + int(num_patches * (1 - model.mask_ratio))

  def blocks(tokens: int, width: int, depth: int) -> float:
    mlp = int(width * model.mlp_ratio)
    per_token = 4 * width * width + 2 * width * mlp  # qkv, proj, fc1, fc2
    return depth * (tokens * per_token + 2 * tokens * tokens * width)  # + scores and weighted sum

  dec = model.decoder_embed_dim
  macs = (num_patches * patch_dim * model.embed_dim
          + blocks(kept, model.embed_dim, model.depth)
          + kept * model.embed_dim * dec
          + blocks(num_patches + 1, dec, model.decoder_depth)
          + (num_patches + 1) * dec * patch_dim)
  return 3 * 2 * macs


def collectives(hlo_text: str) -> dict[str, tuple[int, int]]:
  """{collective: (count, bytes)} over the instructions of compiled HLO, bytes being the whole
  array each covers per device (an all-gather's output, a reduce-scatter's input). An asynchronous
  pair (`-start`/`-done`) counts once. The TPU compiler writes a reduce-scatter as an all-reduce
  inside a fusion computation named `all-reduce-scatter`: it counts as a reduce-scatter."""
  found = {name: [0, 0] for name in COLLECTIVES}
  op = re.compile(r'=\s*(.*?)\s(' + '|'.join(COLLECTIVES) + r')(-start)?\(')
  computation = ''
  for line in hlo_text.splitlines():
    if line and not line[0].isspace():  # a computation's header: '%name (...) -> ... {'
      computation = line.split()[1] if line.startswith('ENTRY') else line.split()[0]
      continue
    m = op.search(line)
    if not m:
      continue
    shapes = re.findall(r'\b([a-z]+\d*)\[([\d,]*)\]', m.group(1))
    sizes = [_DTYPE_BYTES.get(t, 4) * math.prod(int(d) for d in dims.split(',') if d)
             for t, dims in shapes]
    if m.group(3) and m.group(2) == 'all-gather' and len(sizes) % 2 == 0:
      sizes = sizes[len(sizes) // 2:]  # (operands..., outputs...)
    name = m.group(2)
    if name == 'all-reduce' and computation.startswith('%all-reduce-scatter'):
      name = 'reduce-scatter'
    found[name][0] += 1
    found[name][1] += sum(sizes)
  return {k: (c, b) for k, (c, b) in found.items()}


def hotspots(hlo_text: str, top: int = 8) -> list[tuple[str, float, int]]:
  """The JAX operations taking the most of XLA's estimated cycles in compiled TPU HLO:
  [(op name, share of all estimated cycles, instructions)], largest first."""
  cycles: dict[str, list[float]] = {}
  for line in hlo_text.splitlines():
    c = re.search(r'"estimated_cycles":"(\d+)"', line)
    if not c:
      continue
    name = re.search(r'op_name="([^"]*)"', line)
    name = re.sub(r'^jit\([^)]*\)/', '', name.group(1)) if name else '?'
    entry = cycles.setdefault(name, [0.0, 0])
    entry[0] += float(c.group(1))
    entry[1] += 1
  total = sum(c for c, _ in cycles.values()) or 1.0
  ranked = sorted(cycles.items(), key=lambda kv: -kv[1][0])[:top]
  return [(name, c / total, n) for name, (c, n) in ranked]


_SHAPE = re.compile(r'\b(pred|[a-z]+\d+)\[([\d,]*)\]')
_INSTRUCTION = re.compile(r'\s*(?:ROOT )?%(\S+) = (.*?) ([\w-]+)\((.*)')
_NOT_ACCESSES = {'parameter', 'constant', 'get-tuple-element', 'tuple', 'bitcast', 'after-all',
                 'partition-id', 'replica-id'}
BYTE_KINDS = ('memory-space copies', 'matrix products', 'layout copies', 'collectives', 'other')


def _shape_bytes(text: str) -> int:
  return sum(_DTYPE_BYTES[t] * math.prod(int(d) for d in dims.split(',') if d)
             for t, dims in _SHAPE.findall(text) if t in _DTYPE_BYTES)


def bytes_by_kind(hlo_text: str) -> dict[str, float]:
  """Shares of the bytes the executed instructions of compiled HLO read and write (operands +
  results, as XLA's cost analysis counts them), by kind: memory-space copies (`copy-start` /
  `copy-done`, the compiler moving arrays between HBM and on-chip VMEM), fusions holding a matrix
  product, layout copies (`copy`, `reshape`, `transpose`), collectives, and the rest (elementwise
  and reductions)."""
  computations: dict[str, list[str]] = {}
  lines: list[str] = []
  for line in hlo_text.splitlines():
    if line and not line[0].isspace():
      lines = computations.setdefault(line.split()[1] if line.startswith('ENTRY')
                                      else line.split()[0], [])
    else:
      lines.append(line)
  fused = {'%' + c for body in computations.values() for line in body
           for c in re.findall(r'calls=%([\w.\-]+)', line)}
  shapes: dict[str, str] = {}
  found = dict.fromkeys(BYTE_KINDS, 0.0)
  for name, body in computations.items():
    if name in fused:  # inside a fusion: on-chip, not accesses
      continue
    for line in body:
      m = _INSTRUCTION.match(line)
      if not m:
        continue
      result, shape, op, rest = m.groups()
      shapes[result] = shape
      if op in _NOT_ACCESSES:
        continue
      operands = re.findall(r'%([\w.\-]+)', rest.split(')')[0])
      size = _shape_bytes(shape) + sum(_shape_bytes(shapes.get(a, '')) for a in operands)
      calls = re.search(r'calls=%([\w.\-]+)', line)
      body_text = '\n'.join(computations.get('%' + calls.group(1), [])) if calls else ''
      if op in ('copy-start', 'copy-done'):
        kind = 'memory-space copies'
      elif op in ('convolution', 'dot') or re.search(r' (convolution|dot)\(', body_text):
        kind = 'matrix products'
      elif op in ('copy', 'reshape', 'transpose'):
        kind = 'layout copies'
      elif any(c in op for c in COLLECTIVES) or any(c + '(' in body_text for c in COLLECTIVES):
        kind = 'collectives'
      else:
        kind = 'other'
      found[kind] += size
  total = sum(found.values()) or 1.0
  return {k: v / total for k, v in found.items()}


def per_device_bytes(shapes: Any, shardings: Any) -> int:
  """Bytes one device holds of arrays with these shapes under these shardings."""
  total = 0
  for s, sh in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)):
    total += math.prod(sh.shard_shape(s.shape)) * np.dtype(s.dtype).itemsize
  return total


class DoesNotFit(Exception):
  """XLA could not fit the step in the chip's HBM (or a kernel in its VMEM); the message has the
  numbers."""


@dataclasses.dataclass
class Estimate:
  """One compiled step on one topology; bytes and FLOPs per device, times are XLA's estimates."""
  topology: str
  chip: str
  mesh: dict[str, int]
  images_per_step: int
  params_bytes: int
  opt_state_bytes: int
  batch_bytes: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int
  xla_flops: float           # what XLA counts, rematerialised recomputation included
  model_flops: float         # mae_train_flops × the device's share of the batch
  bytes_accessed: float
  est_step_s: float          # XLA's cost model: `optimal_seconds`
  collectives: dict[str, tuple[int, int]]
  hotspots: list[tuple[str, float, int]]
  byte_kinds: dict[str, float]
  compile_s: float

  @property
  def used_bytes(self) -> int:
    """Peak HBM per device: arguments + outputs not aliased to donated arguments + temporaries."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes \
        + self.code_bytes

  @property
  def hbm_bytes(self) -> int:
    return int(CHIPS[self.chip].hbm_gib * GIB)

  @property
  def fits(self) -> bool:
    return self.used_bytes <= self.hbm_bytes

  @property
  def has_step_estimate(self) -> bool:
    """False where XLA's cost analysis is unusable (seen on v4 and v6e: a negative time)."""
    return self.est_step_s > 0 and self.xla_flops >= 0.9 * self.model_flops

  @property
  def compute_s(self) -> float:
    """The counted FLOPs at the chip's peak: the part of the estimate no byte saving removes."""
    return self.xla_flops / (CHIPS[self.chip].peak_tflops * 1e12)

  @property
  def est_images_per_s(self) -> float:
    return self.images_per_step / self.est_step_s

  @property
  def est_mfu(self) -> float:
    return self.model_flops / (self.est_step_s * CHIPS[self.chip].peak_tflops * 1e12)


def compile_pretrain_step(config: Any, topology: str) -> tuple[Any, Estimate]:
  """Compiles the pretraining program's step for `topology` with `config`'s mesh and model;
  returns the executable and its estimate. Raises `DoesNotFit` if XLA cannot fit it in HBM."""
  chip, _ = chip_of(topology)
  config = config.copy_and_resolve_references()  # the choices below are the TPU's, not this host's
  config.model.attention_impl = resolve_attention_impl(config.model.attention_impl, 'tpu')
  config.model.token_matmul = resolve_token_matmul(config.model.token_matmul, 'tpu')
  mesh = sharding.make_mesh(config.mesh, topology_devices(topology))
  if config.batch_size % mesh.size:
    raise ValueError(f'batch_size {config.batch_size} is not divisible by {mesh.size} devices')
  run = loop.setup(config, mesh, lambda: build_model(config), IMAGENET_IMAGES, abstract=True)
  step = loop.train_step_for(run, train_pretrain.mae_loss_fn(config), {'image': 4})
  accum = int(config.get('grad_accum_steps', 1))
  size = config.model.img_size
  batch = {'image': jax.ShapeDtypeStruct(
      (accum,) * (accum > 1) + (config.batch_size, size, size, config.model.in_chans), np.uint8)}
  batch_sharding = sharding.batch_sharding(mesh, batch['image'].ndim, leading=int(accum > 1))
  state, shardings = run.placed.state, run.placed.shardings

  params_bytes = per_device_bytes(state['params'], shardings['params'])
  opt_state_bytes = per_device_bytes(state['opt_state'], shardings['opt_state'])
  batch_bytes = per_device_bytes(batch['image'], batch_sharding)
  start = time.perf_counter()
  try:
    compiled = step.lower(state, run.placed.fixed, batch).compile()
  except jax.errors.JaxRuntimeError as error:
    if 'RESOURCE_EXHAUSTED' not in str(error):
      raise
    step_named = f'{topology}, mesh {dict(mesh.shape)}, global batch {config.batch_size}'
    if 'memory space vmem' in str(error):  # a kernel's on-core scratch, not the chip's HBM
      raise DoesNotFit(
          f'{step_named}: a kernel needs more VMEM than {chip} allows it (attention_impl '
          f'{config.model.get("attention_impl")!r}; try --config.model.attention_impl=einsum). '
          'XLA says:\n' + '\n'.join(str(error).splitlines()[:4])) from error
    hbm = CHIPS[chip].hbm_gib
    raise DoesNotFit(
        f'{step_named}: DOES NOT FIT in {hbm:g} GiB of HBM per chip. Per device: parameters '
        f'{params_bytes / GIB:.2f} GiB + optimizer state {opt_state_bytes / GIB:.2f} GiB + batch '
        f'{batch_bytes / GIB:.2f} GiB, plus activations. XLA says:\n'
        + '\n'.join(str(error).splitlines()[:8])) from error
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  images = config.batch_size * accum
  hlo = compiled.as_text()
  return compiled, Estimate(
      topology=topology, chip=chip, mesh=dict(mesh.shape), images_per_step=images,
      params_bytes=params_bytes, opt_state_bytes=opt_state_bytes, batch_bytes=batch_bytes,
      argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
      alias_bytes=memory.alias_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
      code_bytes=memory.generated_code_size_in_bytes,
      xla_flops=float(cost.get('flops', 0.0)),
      model_flops=mae_train_flops(config.model) * images / mesh.size,
      bytes_accessed=float(cost.get('bytes accessed', 0.0)),
      est_step_s=float(cost.get('optimal_seconds', float('nan'))),
      collectives=collectives(hlo), hotspots=hotspots(hlo),
      byte_kinds=bytes_by_kind(hlo), compile_s=compile_s)


def format_estimate(e: Estimate, config: Any) -> str:
  """The report a researcher reads before spending a pod's budget."""
  g = lambda b: f'{b / GIB:.2f} GiB'
  m = config.model
  memory_s = e.est_step_s - e.compute_s  # what XLA adds for the bytes moved
  lines = [
      f'{e.topology}: {math.prod(e.mesh.values())} chips, mesh {e.mesh}; MAE embed {m.embed_dim} '
      f'depth {m.depth}, {m.dtype} compute, remat {m.get("remat", "none")!r}, attention '
      f'{resolve_attention_impl(m.attention_impl, "tpu") or "xla"}, token matmul '
      f'{resolve_token_matmul(m.token_matmul, "tpu")}; global batch '
      f'{e.images_per_step} (compiled in {e.compile_s:.0f} s)',
      'Memory per device (XLA\'s buffer assignment):',
      f'  parameters {g(e.params_bytes)} + optimizer state {g(e.opt_state_bytes)} '
      f'+ batch {g(e.batch_bytes)} (arguments {g(e.argument_bytes)})',
      f'  temporaries {g(e.temp_bytes)}, outputs not aliased to donated arguments '
      f'{g(e.output_bytes - e.alias_bytes)}, code {g(e.code_bytes)}',
      f'  total {g(e.used_bytes)} of {g(e.hbm_bytes)} HBM ({e.chip}): '
      + (f'fits, headroom {g(e.hbm_bytes - e.used_bytes)}' if e.fits
         else f'DOES NOT FIT, over by {g(e.used_bytes - e.hbm_bytes)}'),
      'Compute per device per step:',
      f'  model FLOPs {e.model_flops / 1e12:.2f} T; XLA-counted FLOPs {e.xla_flops / 1e12:.2f} T '
      f'(includes recomputation); bytes accessed {e.bytes_accessed / GIB:.1f} GiB',
      'XLA\'s cost-model ESTIMATE (not a measurement):',
      (f'  est. step {e.est_step_s * 1e3:.1f} ms; est. {e.est_images_per_s:,.0f} images/s for the '
       f'slice; est. MFU {100 * e.est_mfu:.1f}% of {CHIPS[e.chip].peak_tflops:.0f} TFLOP/s bf16 '
       f'peak per chip\n'
       f'  = the counted FLOPs at that peak, {e.compute_s * 1e3:.1f} ms, + {memory_s * 1e3:.1f} '
       f'ms: the bytes accessed at {e.bytes_accessed / max(memory_s, 1e-12) / 1e12:.2f} TB/s')
      if e.has_step_estimate else
      (f'  none usable: XLA\'s cost analysis gave optimal_seconds = {e.est_step_s:.3g}, '
       f'{e.xla_flops / 1e12:.2f} TFLOPs counted (the model: {e.model_flops / 1e12:.2f})'),
      'Collectives in the compiled HLO (count, bytes of results per device):',
  ]
  lines += [f'  {k:<18} {c:5d}  {b / GIB:8.3f} GiB' for k, (c, b) in e.collectives.items()]
  lines.append('Where XLA\'s estimated cycles go (share, instructions, JAX operation):')
  lines += [f'  {100 * share:5.1f}%  {n:4d}  {name}' for name, share, n in e.hotspots]
  lines.append('What the bytes accessed are: ' + ', '.join(
      f'{kind} {100 * share:.0f}%' for kind, share in e.byte_kinds.items()))
  return '\n'.join(lines)


def run(config: Any, topology: str, workdir: str | None = None) -> Estimate | None:
  """Compiles and prints the estimate; a step XLA cannot fit in HBM is reported with the numbers
  (and returns None) instead of a traceback. With a `workdir`, the estimate (JSON) and the
  compiled HLO go there too, to read which collectives and fusions the step became."""
  try:
    compiled, estimate = compile_pretrain_step(config, topology)
  except DoesNotFit as error:
    print(error)
    return None
  print(format_estimate(estimate, config))
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    name = os.path.join(workdir, f'aot_{topology.replace(":", "_")}')
    with open(name + '.hlo.txt', 'w') as f:
      f.write(compiled.as_text())
    with open(name + '.json', 'w') as f:
      json.dump(dataclasses.asdict(estimate) | {'config': config.to_dict()}, f, indent=1,
                default=str)
  return estimate
