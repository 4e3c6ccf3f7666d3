"""Device mesh, the logical-axis rules table, and placement of train state and batches.

Every parameter carries `logical_axes` metadata (e.g. qkv kernel ('embed', 'heads')). One table,
`LOGICAL_RULES`, maps those names to mesh axes, so data parallelism and FSDP are the same code with a
different mesh: with fsdp=1 every parameter is replicated; with fsdp=k the 'embed'-like dimension of
each parameter (and of its optimizer moments) is split k ways and XLA all-gathers it where used.
The batch dimension is split over every mesh axis (data × fsdp).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp')
BATCH_AXES = MESH_AXES  # the batch dimension is sharded over all of them

# logical axis name → mesh axis (None = replicated). The single source of truth for placement.
LOGICAL_RULES: dict[str, str | None] = {
    'embed': 'fsdp',          # encoder width: the FSDP dimension of every encoder matrix
    'decoder_embed': 'fsdp',  # decoder width
    'norm': 'fsdp',           # LayerNorm scale/bias (width-sized vectors)
    'heads': None,            # the other dimension of a matrix stays whole
    'mlp': None,
    'classes': None,
}


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
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
                       devices=devices)


def logical_to_spec(axes: tuple[str | None, ...] | None, shape: tuple[int, ...], mesh: Mesh,
                    rules: Mapping[str, str | None] = LOGICAL_RULES) -> P:
  """PartitionSpec for a parameter; a dimension the mesh axis does not divide stays whole."""
  if axes is None:
    return P()
  if len(axes) != len(shape):
    raise ValueError(f'logical axes {axes} do not match shape {shape}')
  spec, used = [], set()
  for name, dim in zip(axes, shape):
    mesh_axis = rules.get(name) if name is not None else None
    if mesh_axis is not None and (mesh_axis in used or dim % mesh.shape[mesh_axis]):
      mesh_axis = None
    if mesh_axis is not None and mesh.shape[mesh_axis] == 1:
      mesh_axis = None  # size-1 axis: plainly replicated, keeps specs readable
    used.add(mesh_axis)
    spec.append(mesh_axis)
  return P(*spec)


def _is_var(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def variable_sharding(v: nnx.Variable, mesh: Mesh) -> NamedSharding:
  """Where one nnx Variable lives, read from its `logical_axes` metadata (none = replicated)."""
  axes = v.get_metadata().get('logical_axes')
  return NamedSharding(mesh, logical_to_spec(axes, np.shape(v.get_value()), mesh))


def variable_shardings(variables: nnx.State, mesh: Mesh, pure: bool = True) -> Any:
  """NamedShardings for an nnx State: a plain nested dict (for `nnx.to_pure_dict` trees), or with
  `pure=False` a State-shaped tree (a prefix of the State itself, for jit in/out shardings)."""
  tree = jax.tree.map(lambda v: variable_sharding(v, mesh), variables, is_leaf=_is_var)
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


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) dimension split over data × fsdp, the rest whole."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This host's rows → one global jax.Array per key (rows of process p follow those of p-1)."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
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
