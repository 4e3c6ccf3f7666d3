"""The train state every program shares: a plain dict of arrays that is also what a checkpoint holds.

  step       int32, optimizer updates done
  params     the model's trained parameters (nested dict, as `nnx.to_pure_dict`)
  opt_state  optax state, sharded like the parameters it mirrors
  rng        uint32 key data; update s draws its randomness from fold_in(rng, s)
The model's other variables (position tables, drop path's RNG slots, frozen encoders) live beside it
in `fixed`, not checkpointed: a program rebuilds them the same way on every start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from mae_face_jax import sharding

State = dict[str, Any]
Builder = Callable[[], nnx.Module]


class Placed(NamedTuple):
  """A model's train state and fixed variables on the mesh, with their shardings."""
  graphdef: nnx.GraphDef
  state: State
  shardings: Any        # like `state`
  fixed: nnx.State
  fixed_shardings: Any  # like `fixed`
  trained: Any          # the filter that tells trained variables (`params`) from fixed ones


Abstract = tuple[nnx.GraphDef, nnx.State, nnx.State]


def abstract_model(build: Builder, trained: Any = nnx.Param) -> Abstract:
  """Graph, trained and fixed variable shapes (with their metadata), without allocating."""
  return nnx.split(nnx.eval_shape(build), trained, ...)


def abstract_params(abstract: Abstract) -> dict[str, Any]:
  """Every parameter's shape (trained or fixed) of an `abstract_model`, as a nested dict."""
  graphdef, trained, fixed = abstract
  return nnx.to_pure_dict(nnx.state(nnx.merge(graphdef, trained, fixed), nnx.Param))


def flatten(tree: Any) -> dict[str, Any]:
  """Nested tree (or nnx State) → {'blocks.0.attn.qkv.kernel': leaf}."""
  if isinstance(tree, nnx.State):
    tree = nnx.to_pure_dict(tree)
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


def _init_and_shardings(build: Builder, seed: int, mesh: Mesh, rules: sharding.Rules,
                        tx: optax.GradientTransformation, trained: Any, abstract: Abstract | None
                        ) -> tuple[nnx.GraphDef, Callable[[], tuple[State, nnx.State]], Any, Any]:
  """The graph, the state's initialiser, and the shardings of its state and fixed variables
  (from `abstract`, `abstract_model`'s result, when the caller has it: tracing a model's
  construction is slow, seconds for the fusion stage's twelve heads)."""
  graphdef, params, fixed = abstract or abstract_model(build, trained)
  param_shardings = sharding.variable_shardings(params, mesh, rules)
  abstract_opt = jax.eval_shape(tx.init, nnx.to_pure_dict(params))
  replicated = sharding.replicated(mesh)
  state_shardings = {
      'step': replicated,
      'params': param_shardings,
      'opt_state': sharding.opt_state_shardings(tx, abstract_opt, param_shardings, mesh),
      'rng': replicated,
  }
  fixed_shardings = sharding.variable_shardings(fixed, mesh, rules, pure=False)

  def init() -> tuple[State, nnx.State]:
    _, p, f = nnx.split(build(), trained, ...)
    p = nnx.to_pure_dict(p)
    rng = jax.random.key_data(jax.random.key(seed + 1))
    return {'step': jnp.zeros((), jnp.int32), 'params': p, 'opt_state': tx.init(p),
            'rng': rng}, f
  return graphdef, init, state_shardings, fixed_shardings


def abstract_train_state(build: Builder, seed: int, mesh: Mesh, rules: sharding.Rules,
                         tx: optax.GradientTransformation, trained: Any = nnx.Param,
                         abstract: Abstract | None = None) -> Placed:
  """`create_train_state`'s result as shapes only (`jax.ShapeDtypeStruct`s), nothing allocated:
  what compiling a step ahead of time for devices one does not have needs."""
  graphdef, init, state_shardings, fixed_shardings = _init_and_shardings(build, seed, mesh, rules,
                                                                         tx, trained, abstract)
  state, fixed = jax.eval_shape(init)
  return Placed(graphdef, state, state_shardings, fixed, fixed_shardings, trained)


def create_train_state(build: Builder, seed: int, mesh: Mesh, rules: sharding.Rules,
                       tx: optax.GradientTransformation, overrides: Mapping[str, Any] | None = None,
                       trained: Any = nnx.Param, abstract: Abstract | None = None) -> Placed:
  """Initialises model and optimizer directly in their shardings (no full copy on any host),
  then overwrites the variables named in `overrides` (flat names of params or fixed variables,
  e.g. pretrained weights), which must have their shapes."""
  graphdef, init, state_shardings, fixed_shardings = _init_and_shardings(build, seed, mesh, rules,
                                                                         tx, trained, abstract)
  state, fixed = jax.jit(init, out_shardings=(state_shardings, fixed_shardings))()
  if overrides:
    unknown = set(overrides) - set(flatten(state['params'])) - set(flatten(fixed))
    if unknown:
      raise ValueError(f'no variable named {sorted(unknown)[0]} in the model')

    def fill(path, x):
      value = overrides.get(jax.tree_util.keystr(path, simple=True, separator='.'))
      if value is None:
        return x
      value = np.asarray(value, x.dtype)
      if value.shape != x.shape:
        raise ValueError(f'{jax.tree_util.keystr(path)}: shape {value.shape}, expected {x.shape}')
      return jax.make_array_from_callback(x.shape, x.sharding, lambda index: value[index])
    state['params'] = jax.tree_util.tree_map_with_path(fill, state['params'])
    nnx.replace_by_pure_dict(fixed, jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(fixed)))
  return Placed(graphdef, state, state_shardings, fixed, fixed_shardings, trained)


def merge_model(graphdef: nnx.GraphDef, params: Any, fixed: nnx.State,
                drop_key: jax.Array | None) -> nnx.Module:
  """The model with these parameters; drop path seeded by `drop_key`, or off when it is None."""
  # Fresh Variables of this trace level: reseeding mutates them, and `fixed` may come from an
  # outer trace (the step's scan over micro-batches).
  model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, fixed))
  if drop_key is None:
    model.eval()
  else:
    nnx.reseed(model, default=drop_key)
  return model
