"""The train state every program shares: a plain dict of arrays that is also what a checkpoint holds.

  step       int32, batches consumed
  params     the model's trainable parameters (nested dict, as `nnx.to_pure_dict`)
  opt_state  optax state, sharded like the parameters it mirrors
  rng        uint32 key data; step s draws its randomness from fold_in(rng, s)
Fixed variables (position tables of the MAE, drop path's RNG slots) live beside it in `fixed`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from mae_face_jax import sharding

State = dict[str, Any]
Builder = Callable[[], nnx.Module]


def abstract_model(build: Builder) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """Graph, parameter and fixed-variable shapes (with their metadata), without allocating."""
  return nnx.split(nnx.eval_shape(build), nnx.Param, ...)


def flatten(tree: Any) -> dict[str, Any]:
  """Nested tree → {'blocks.0.attn.qkv.kernel': leaf}."""
  return {jax.tree_util.keystr(path, simple=True, separator='.'): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def select_pretrained(params: Any, pretrained: Mapping[str, np.ndarray], source: str,
                      keep_fresh: tuple[str, ...] = ('head.',)) -> dict[str, np.ndarray]:
  """The entries of `pretrained` (flat names) that fill parameters of the same name in `params`.

  Names under `keep_fresh` stay as initialised (a new head); any other shape mismatch is an error
  naming `source`, the parameter and both shapes. Missing and unused names are logged.
  """
  flat = flatten(params)
  chosen = {}
  for name, value in flat.items():
    if name not in pretrained or name.startswith(keep_fresh):
      continue
    if tuple(np.shape(pretrained[name])) != tuple(value.shape):
      raise ValueError(f'{source}: {name} has shape {tuple(np.shape(pretrained[name]))} there but '
                       f'{tuple(value.shape)} in the model config')
    chosen[name] = np.asarray(pretrained[name], value.dtype)
  if not chosen:
    raise ValueError(f'{source}: no parameter of the model found there')
  missing = sorted(set(flat) - set(chosen))
  unused = sorted(set(pretrained) - set(flat))
  logging.info('%s: loaded %d parameters; left as initialised: %s; unused: %d (%s)', source,
               len(chosen), ', '.join(missing) or 'none', len(unused), ', '.join(unused[:6]))
  return chosen


def create_train_state(build: Builder, seed: int, mesh: Mesh, tx: optax.GradientTransformation,
                       pretrained: Mapping[str, np.ndarray] | None = None,
                       pretrained_source: str = '') -> tuple[nnx.GraphDef, State, Any, nnx.State, Any]:
  """Initialises model and optimizer directly in their shardings (no full copy on any host),
  then overwrites parameters found in `pretrained` (flat names), if given.

  Returns (graphdef, state, state shardings, fixed variables, fixed shardings).
  """
  graphdef, params, fixed = abstract_model(build)
  param_shardings = sharding.variable_shardings(params, mesh)
  abstract_opt = jax.eval_shape(tx.init, nnx.to_pure_dict(params))
  replicated = sharding.replicated(mesh)
  state_shardings = {
      'step': replicated,
      'params': param_shardings,
      'opt_state': sharding.opt_state_shardings(tx, abstract_opt, param_shardings, mesh),
      'rng': replicated,
  }
  fixed_shardings = jax.tree.map(
      lambda v: NamedSharding(mesh, sharding.logical_to_spec(
          v.get_metadata().get('logical_axes'), np.shape(v.get_value()), mesh)),
      fixed, is_leaf=lambda x: isinstance(x, nnx.Variable))

  def init() -> tuple[State, nnx.State]:
    _, p, f = nnx.split(build(), nnx.Param, ...)
    p = nnx.to_pure_dict(p)
    rng = jax.random.key_data(jax.random.key(seed + 1))
    return {'step': jnp.zeros((), jnp.int32), 'params': p, 'opt_state': tx.init(p),
            'rng': rng}, f

  state, fixed = jax.jit(init, out_shardings=(state_shardings, fixed_shardings))()
  if pretrained is not None:
    chosen = select_pretrained(state['params'], pretrained, pretrained_source)

    def fill(path, x, s):
      value = chosen.get(jax.tree_util.keystr(path, simple=True, separator='.'))
      if value is None:
        return x
      return jax.make_array_from_callback(x.shape, s, lambda index: value[index])  # multi-host
    state['params'] = jax.tree_util.tree_map_with_path(fill, state['params'], param_shardings)
  return graphdef, state, state_shardings, fixed, fixed_shardings


def step_key(state: State, *, num: int) -> list[jax.Array]:
  """`num` keys for this step, from fold_in(rng, step): the same on resume."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state['rng']), state['step'])
  return list(jax.random.split(key, num))


def merge_model(graphdef: nnx.GraphDef, params: Any, fixed: nnx.State,
                drop_key: jax.Array | None) -> nnx.Module:
  """The model with these parameters; drop path seeded by `drop_key`, or off when it is None."""
  model = nnx.merge(graphdef, params, fixed)
  if drop_key is None:
    model.eval()
  else:
    nnx.reseed(model, default=drop_key)
  return model
