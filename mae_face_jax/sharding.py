"""Device mesh, logical-axis rules, and placement of train state and batches.

Parameters carry Flax's standard sharding metadata: logical axis names in `out_sharding` (e.g. qkv
kernel ('embed', 'heads')). The rules, `config.mesh.rules` (pairs of logical name → mesh axis or
None), turn them into mesh axes through Flax's own `nnx.logical_axis_rules` +
`nnx.get_partition_spec`, so data parallelism and FSDP are the same code with another mesh or rule
table: with fsdp=1 every parameter is replicated; with fsdp=k the 'embed'-like dimension of each
matrix (and of its optimizer moments) is split k ways and XLA all-gathers it where used. Variables
without names (biases, norm scales, tokens) are replicated. The batch dimension is split over every
mesh axis (data × fsdp).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp')
BATCH_AXES = MESH_AXES  # the batch dimension is sharded over all of them
Rules = Sequence[tuple[str, str | None]]


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Axis sizes in MESH_AXES order; one axis may be -1 = "all remaining devices"."""
  sizes = [int(mesh_config.get(name, 1)) for name in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f'mesh {dict(mesh_config)}: at most one axis may be -1')
  known = math.prod(s for s in sizes if s != -1)
  if num_devices % known:
    raise ValueError(f'mesh {dict(mesh_config)} does not divide {num_devices} devices')
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != num_devices:
    raise ValueError(f'mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices, '
                     f'not the {num_devices} available')
  return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices: list | None = None) -> Mesh:
  """A ('data', 'fsdp') mesh over all devices (of all processes), sizes from the config."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  # Auto axes: shardings of intermediates are left to XLA's propagation (GSPMD), as in pjit.
  axis_types = (jax.sharding.AxisType.Auto,) * len(shape)
  try:
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  except NotImplementedError:
    # An axis that is no product of the slice's torus dimensions (data 4 on v5p 8x8x8): the
    # devices are laid out with a physical axis split instead of refusing the config.
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES, axis_types=axis_types)


def fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """`spec` with the mesh axes that do not divide their dimension, have size 1, or an earlier
  dimension already uses (e.g. decoder_embed's ('embed', 'decoder_embed') kernel) dropped: such a
  dimension stays whole instead of failing to shard."""
  fitted, used = [], set()
  for axis, dim in zip(spec, shape):
    axes = tuple(a for a in (axis if isinstance(axis, tuple) else (axis,)) if a is not None)
    size = math.prod(mesh.shape[a] for a in axes)
    keep = axes and size > 1 and dim % size == 0 and not used & set(axes)
    fitted.append(axis if keep else None)
    used |= set(axes) if keep else set()
  return P(*fitted)


def variable_shardings(variables: nnx.State, mesh: Mesh, rules: Rules, pure: bool = True) -> Any:
  """NamedShardings of an nnx State's variables from their `out_sharding` names and `rules`: a
  nested plain dict (for `nnx.to_pure_dict` trees), or with `pure=False` a tree of the State's
  own structure (for the jit in/out shardings of a State)."""
  rules = tuple((str(k), v) for k, v in rules)

  def place(v: nnx.Variable | jax.Array) -> NamedSharding:
    if not isinstance(v, nnx.Variable):  # a plain array attribute (e.g. an attention mask)
      return replicated(mesh)
    with nnx.logical_axis_rules(rules):
      spec = nnx.get_partition_spec(v).get_value()
    unknown = [a for a in jax.tree.leaves(tuple(spec)) if a not in mesh.axis_names]
    if unknown:
      raise ValueError(f'sharding rules {rules} leave logical axis {unknown[0]!r} without a mesh '
                       f'axis (mesh axes {mesh.axis_names}); map it to one of them or to None')
    return NamedSharding(mesh, fit_spec(spec, np.shape(v.get_value()), mesh))

  tree = jax.tree.map(place, variables, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return _to_pure(tree) if pure else tree


def _to_pure(tree: Any) -> Any:
  """nnx State (possibly of non-array leaves) → nested plain dicts with the same keys."""
  if isinstance(tree, Mapping):
    return {k: _to_pure(v) for k, v in tree.items()}
  return tree


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def opt_state_shardings(tx: optax.GradientTransformation, abstract_opt_state: Any,
                        param_shardings: Any, mesh: Mesh) -> Any:
  """Optimizer state placed like the parameters it mirrors (moments are sharded as params are)."""
  return optax.tree_map_params(tx, lambda _, s: s, abstract_opt_state, param_shardings,
                               transform_non_params=lambda _: replicated(mesh),
                               is_leaf=lambda x: isinstance(x, NamedSharding))


def batch_sharding(mesh: Mesh, ndim: int, leading: int = 0) -> NamedSharding:
  """The batch dimension (after `leading` unsplit ones, e.g. micro-batches) split over
  data × fsdp, the rest whole."""
  return NamedSharding(mesh, P(*([None] * leading), BATCH_AXES, *([None] * (ndim - leading - 1))))


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh, leading: int = 0
                 ) -> dict[str, jax.Array]:
  """This host's rows → one global jax.Array per key (rows of process p follow those of p-1)."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v), leading),
                                                    np.asarray(v))
          for k, v in local_batch.items()}


def per_device_bytes(tree: Any) -> int:
  """Bytes of `tree` held by one device (the first addressable one): what FSDP shrinks."""
  total = 0
  for x in jax.tree.leaves(tree):
    shard = x.addressable_shards[0]
    total += int(np.prod(shard.data.shape)) * x.dtype.itemsize
  return total


def initialize_distributed(dist_config: Any | None) -> None:
  """`jax.distributed.initialize` when the config (`distributed.enabled`) or the environment
  (JAX_COORDINATOR_ADDRESS, as set by launchers) asks for it. On TPU pods and SLURM/Open MPI
  every argument is auto-detected; on CPU hosts collectives go through gloo.

  Must run before anything touches a JAX device.
  """
  dist_config = dist_config or {}
  if not (dist_config.get('enabled', False) or os.environ.get('JAX_COORDINATOR_ADDRESS')):
    return
  if jax.distributed.is_initialized():
    return
  if dist_config.get('cpu_collectives'):
    jax.config.update('jax_cpu_collectives_implementation', dist_config.get('cpu_collectives'))
  kwargs = {k: dist_config.get(k) for k in ('coordinator_address', 'num_processes', 'process_id')
            if dist_config.get(k) is not None}
  jax.distributed.initialize(**kwargs)
