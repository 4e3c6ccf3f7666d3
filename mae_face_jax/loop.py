"""The training core every program shares: durations, the one train-step builder, the loop.

A step is one optimizer update of `batch_size × grad_accum_steps` examples (`grad_accum_steps`
micro-batches of `batch_size`, their gradients summed inside the jitted step). Learning-rate
schedules, checkpoints, the progress line, TensorBoard and every duration count steps. A program
(`train_pretrain`, `train_finetune`, `train_fusion`) keeps only what is its own: its model and loss,
its evaluation and its outputs.

    mesh = loop.start(config)                        # hosts, devices, mesh
    run = loop.setup(config, mesh, build, examples_per_epoch)  # durations, optimizer, state
    run = loop.resume(run, workdir, data_iter)       # from the latest checkpoint, if any
    step = loop.train_step_for(run, loss_fn, batch_ndims={'image': 4})
    state = loop.train(run, step, writer, evaluate)  # logs, evaluates, checkpoints
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from mae_face_jax import checkpointing, observe, optim, report, sharding
from mae_face_jax import train_state as ts

# loss_fn(model, batch, example_keys) -> (loss_sum, weight, metrics): the loss is loss_sum / weight
# summed over micro-batches, so k micro-batches give exactly the big batch's loss and gradient;
# `example_keys` are one key per example, folded from the step's key by the example's index in the
# step. `metrics` are micro-batch means (averaged over micro-batches).
LossFn = Callable[[nnx.Module, Mapping[str, jax.Array], jax.Array],
                  tuple[jax.Array, jax.Array, dict[str, jax.Array]]]
UNITS = ('steps', 'epochs', 'percent')


def steps(name: str, config: Any, steps_per_epoch: float | None = None,
          total: int | None = None) -> int | None:
  """Duration `name` in steps, from exactly one of `<name>_steps`, `<name>_epochs` (× steps per
  epoch) or `<name>_percent` (of `total`); None when none is set."""
  given = {u: config.get(f'{name}_{u}') for u in UNITS if config.get(f'{name}_{u}') is not None}
  if len(given) > 1:
    spelled = ', '.join(f'{name}_{u}={v}' for u, v in given.items())
    raise ValueError(f'config sets {spelled}: set one of them (clear the others with =None)')
  if not given:
    return None
  unit, value = next(iter(given.items()))
  if unit == 'steps':
    return int(value)
  if unit == 'epochs':
    if not steps_per_epoch:
      raise ValueError(f'{name}_epochs={value}: this data source has no epoch length; set {name}_steps')
    return int(value * steps_per_epoch)
  if total is None:
    raise ValueError(f'{name}_percent={value}: a percentage needs the total duration')
  return int(value / 100 * total)


@dataclasses.dataclass(frozen=True)
class Durations:
  """Every duration of a run in steps; the cadences `log`, `eval`, `checkpoint` are "every n
  steps" (None: only at the end)."""
  total: int
  warmup: int
  log: int | None
  eval: int | None
  checkpoint: int | None

  def due(self, every: int | None, step: int) -> bool:
    return step == self.total or (every is not None and step % every == 0)


def durations(config: Any, examples_per_epoch: int | None) -> Durations:
  """The config's durations turned into step counts, for `examples_per_epoch` training examples."""
  per_step = config.batch_size * config.get('grad_accum_steps', 1)
  per_epoch = examples_per_epoch / per_step if examples_per_epoch else None
  total = steps('total', config, per_epoch)
  if total is None or total < 1:
    raise ValueError(f'the run has no length: set total_steps or total_epochs (got {total})')
  cadence = {n: steps(n, config, per_epoch, total) for n in ('log', 'eval', 'checkpoint')}
  cadence = {n: None if v is None else max(v, 1) for n, v in cadence.items()}
  return Durations(total, min(steps('warmup', config, per_epoch, total) or 0, total), **cadence)


class Run(NamedTuple):
  """What `setup` and `resume` prepare for a program's training: all but its step and evaluation."""
  config: Any
  mesh: Mesh
  durations: Durations
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  placed: ts.Placed        # the state to start from (resumed if the workdir holds a checkpoint)
  data_iter: Iterator | None  # this host's batches; its position is checkpointed
  ckpt: checkpointing.TrainCheckpointer | None


def start(config: Any) -> Mesh:
  """Joins the other hosts (if any) and builds the config's mesh over all devices."""
  sharding.initialize_distributed(config.get('distributed'))
  mesh = sharding.make_mesh(config.mesh)
  logging.info('process %d/%d, %d devices, mesh %s', jax.process_index(), jax.process_count(),
               jax.device_count(), dict(mesh.shape))
  if config.batch_size % mesh.size:
    raise ValueError(f'batch_size {config.batch_size} is not divisible by {mesh.size} devices')
  return mesh


def setup(config: Any, mesh: Mesh, build: ts.Builder, examples_per_epoch: int | None, *,
          lr_scales: Callable[[Any], Any] | None = None,
          overrides: Mapping[str, Any] | Callable[[dict], Mapping[str, Any]] | None = None,
          trained: Any = nnx.Param, abstract: bool = False) -> Run:
  """Durations, optimizer, and the train state built straight into its shardings (variables named
  in `overrides` replaced, e.g. by pretrained weights; a callable gets every parameter's shape,
  `ts.abstract_params`, and returns them); `resume` then completes the run.
  `lr_scales(abstract_params)` gives per-parameter lr multipliers (layer decay). With `abstract`
  the state is shapes only, for compiling the step ahead of time (`mae_face_jax.aot`)."""
  d = durations(config, examples_per_epoch)
  model = ts.abstract_model(build, trained)  # traced once, used by every step below
  abstract_params = nnx.to_pure_dict(model[1])
  tx, schedule = optim.make_optimizer(config, abstract_params, d.total, d.warmup,
                                      lr_scales(abstract_params) if lr_scales else None)
  if callable(overrides):
    overrides = overrides(ts.abstract_params(model))
  if abstract:
    placed = ts.abstract_train_state(build, config.seed, mesh, config.mesh.rules, tx, trained,
                                     model)
  else:
    placed = ts.create_train_state(build, config.seed, mesh, config.mesh.rules, tx, overrides,
                                   trained, model)
  return Run(config, mesh, d, tx, schedule, placed, None, None)


def resume(run: Run, workdir: str, data_iter: Iterator) -> Run:
  """The run with its data stream and checkpoints (`workdir/checkpoints`): from the latest
  checkpoint there if any (state and data position), else from the initial state. The config is
  written to `workdir/config.json`, so that tools reading the workdir know its model."""
  if observe.is_chief():
    os.makedirs(workdir, exist_ok=True)
    report.atomic_write_text(os.path.join(workdir, 'config.json'),
                             run.config.to_json_best_effort(indent=1))
  ckpt, state = checkpointing.open_and_resume(run.config, workdir, run.placed.state,
                                              run.placed.shardings, data_iter)
  d = run.durations
  logging.info('%d steps of %d examples (warmup %d, log every %s, eval every %s, checkpoint every '
               '%s); starting at step %d', d.total,
               run.config.batch_size * run.config.get('grad_accum_steps', 1), d.warmup, d.log,
               d.eval, d.checkpoint, int(state['step']))
  return run._replace(placed=run.placed._replace(state=state), data_iter=data_iter, ckpt=ckpt)


def make_train_step(loss_fn: LossFn, *, graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, state_shardings: Any, fixed_shardings: Any,
                    mesh: Mesh, batch_ndims: Mapping[str, int], grad_accum_steps: int = 1,
                    trained: Any = nnx.Param) -> Callable:
  """The jitted step `(state, fixed, batch) -> (state, metrics)`: merge the model, gradients of
  `loss_fn` (summed over `grad_accum_steps` micro-batches: batch arrays then have a leading
  micro-batch axis) with respect to the `trained` variables, one optimizer update. Explicit in/out
  shardings; the state is donated."""
  accum = int(grad_accum_steps)

  def micro_grads(params, fixed, batch, step_key, micro):
    size = jax.tree.leaves(batch)[0].shape[0]
    data_key, drop_key = jax.random.split(step_key)
    example_keys = jax.vmap(lambda i: jax.random.fold_in(data_key, i))(
        micro * size + jnp.arange(size))

    def loss(model):
      loss_sum, weight, metrics = loss_fn(model, batch, example_keys)
      return loss_sum, (weight, metrics)
    model = ts.merge_model(graphdef, params, fixed, jax.random.fold_in(drop_key, micro))
    (loss_sum, (weight, metrics)), grads = nnx.value_and_grad(
        loss, has_aux=True, argnums=nnx.DiffState(0, trained))(model)
    # Gradients placed as their parameters (sharded under FSDP): XLA reduces them straight into
    # each device's shard (a reduce-scatter) instead of choosing their layout itself.
    grads = jax.lax.with_sharding_constraint(nnx.to_pure_dict(grads), state_shardings['params'])
    return grads, loss_sum, weight, metrics

  def train_step(state, fixed, batch):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # per-device kernels split over it
      return _train_step(state, fixed, batch)

  def _train_step(state, fixed, batch):
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state['rng']), state['step'])
    if accum == 1:
      grads, loss_sum, weight, metrics = micro_grads(state['params'], fixed, batch, step_key, 0)
    else:
      def body(carry, xs):
        out = micro_grads(state['params'], fixed, xs[0], step_key, xs[1])
        return jax.tree.map(jnp.add, carry, out), None
      first = jax.tree.map(lambda x: x[0], batch)
      shapes = jax.eval_shape(micro_grads, state['params'], fixed, first, step_key, 0)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      (grads, loss_sum, weight, metrics), _ = jax.lax.scan(body, zeros, (batch, jnp.arange(accum)))
      metrics = jax.tree.map(lambda m: m / accum, metrics)
    grads = jax.tree.map(lambda g: g / weight, grads)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    new_state = {'step': state['step'] + 1, 'params': optax.apply_updates(state['params'], updates),
                 'opt_state': opt_state, 'rng': state['rng']}
    return new_state, {'loss': loss_sum / weight, 'grad_norm': optax.tree.norm(grads),
                       'lr': schedule(state['step']), **metrics}

  batch_shardings = {k: sharding.batch_sharding(mesh, n + (accum > 1), leading=int(accum > 1))
                     for k, n in batch_ndims.items()}
  return jax.jit(train_step, donate_argnums=(0,),
                 in_shardings=(state_shardings, fixed_shardings, batch_shardings),
                 out_shardings=(state_shardings, sharding.replicated(mesh)))


def train_step_for(run: Run, loss_fn: LossFn, batch_ndims: Mapping[str, int]) -> Callable:
  """`make_train_step` for a prepared run."""
  p = run.placed
  return make_train_step(loss_fn, graphdef=p.graphdef, tx=run.tx, schedule=run.schedule,
                         state_shardings=p.shardings, fixed_shardings=p.fixed_shardings,
                         mesh=run.mesh, batch_ndims=batch_ndims,
                         grad_accum_steps=run.config.get('grad_accum_steps', 1), trained=p.trained)


def next_batch(data_iter: Iterator, accum: int) -> dict[str, np.ndarray]:
  """The next batch, or `accum` of them stacked along a new leading micro-batch axis."""
  if accum == 1:
    return next(data_iter)
  micro = [next(data_iter) for _ in range(accum)]
  return {k: np.stack([m[k] for m in micro]) for k in micro[0]}


def train(run: Run, train_step: Callable, writer: observe.SummaryWriter,
          evaluate: Callable[[int, ts.State], None] | None = None) -> ts.State:
  """Steps from the run's (resumed) state to `durations.total`: every `log` steps the progress line
  and TensorBoard scalars, every `eval` steps `evaluate(step, state)`, every `checkpoint` steps
  (and at the end, or at a preemption notice: then it stops) a checkpoint. Returns the last state."""
  d, accum = run.durations, int(run.config.get('grad_accum_steps', 1))
  state, fixed = run.placed.state, run.placed.fixed
  step = int(state['step'])
  progress = observe.Progress(d.total, run.config.batch_size * accum, first_step=step)
  preemption = checkpointing.Preemption()
  pending: list[dict[str, jax.Array]] = []
  while step < d.total:
    batch = sharding.global_batch(next_batch(run.data_iter, accum), run.mesh,
                                  leading=int(accum > 1))
    state, metrics = train_step(state, fixed, batch)
    pending.append(metrics)
    step += 1

    if d.due(d.log, step):
      host, pending = jax.device_get(pending), []
      names = ['loss'] + sorted(set(host[0]) - {'loss', 'lr'})
      scalars = {k: float(np.mean([m[k] for m in host])) for k in names}
      scalars['lr'] = float(host[-1]['lr'])  # the rate of this step's update
      rates = progress.update(step, scalars)
      writer.scalars(step, {f'train/{k}': v for k, v in (scalars | rates).items()})
    if evaluate is not None and d.due(d.eval, step):
      evaluate(step, state)
    if preemption.reached(step):
      logging.warning('preemption notice: saving step %d and stopping', step)
      run.ckpt.save(step, state, run.data_iter)
      break
    if d.due(d.checkpoint, step):
      run.ckpt.save(step, state, run.data_iter)

  run.ckpt.close()  # waits for the last asynchronous write
  writer.close()
  preemption.close()
  logging.info('done at step %d of %d', step, d.total)
  return state
