"""Stage 1: MAE pretraining of the face encoder. Sharded (data × FSDP), multi-host, resumable.

`train_and_evaluate(config, workdir)` reads top to bottom: devices and mesh → data → model and
optimizer built straight into their shardings → resume → loop (step, log, grid, checkpoint,
preemption) → final checkpoint. The encoder for stage 2 is the `params` of the last checkpoint in
`workdir/checkpoints` (`load_pretrained_params`).

The train state (`mae_face_jax.train_state`) is a plain dict of arrays (step, params, opt_state,
rng), exactly what a checkpoint holds; step s draws its mask noise and drop path from
fold_in(rng, s). Fixed position tables live outside it, in `fixed`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from mae_face_jax import checkpointing, observe, optim, pretrain_data, sharding
from mae_face_jax import train_state as ts
from mae_face_jax.images import normalize
from mae_face_jax.models.build import build_mae



def total_steps(config: Any, examples_per_epoch: int | None) -> int:
  """`config.total_steps` if set (> 0), else `num_epochs` over the data at the global batch."""
  if config.get('total_steps', -1) > 0:
    return int(config.total_steps)
  if not examples_per_epoch:
    raise ValueError('set config.total_steps: the data source has no epoch length')
  return int(config.num_epochs * examples_per_epoch // config.batch_size)


def warmup_steps(config: Any, examples_per_epoch: int | None) -> int:
  if config.get('warmup_steps', -1) >= 0:
    return int(config.warmup_steps)
  return int(config.warmup_epochs * (examples_per_epoch or 0) // config.batch_size)


def build_model(config: Any) -> nnx.Module:
  return build_mae(config.model, nnx.Rngs(config.seed))


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, num_patches: int,
                    state_shardings: Any, fixed_shardings: Any, mesh: Mesh) -> Callable:
  """One jitted step: mask noise from the step's key, loss and grads, an optimizer update.

  Explicit in/out shardings; the state is donated (updated in place in device memory).
  """
  batch_shardings = {'image': sharding.batch_sharding(mesh, 4)}

  def train_step(state: ts.State, fixed: nnx.State, batch: dict[str, jax.Array]):
    images = normalize(batch['image'])
    noise_key, drop_key = ts.step_key(state, num=2)
    noise = jax.random.uniform(noise_key, (images.shape[0], num_patches))
    noise = jax.lax.with_sharding_constraint(noise, sharding.batch_sharding(mesh, 2))

    model = ts.merge_model(graphdef, state['params'], fixed, drop_key)
    loss, grads = nnx.value_and_grad(lambda m: m(images, noise).loss)(model)
    grads = nnx.to_pure_dict(grads)  # same tree as state['params']
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    new_state = {'step': state['step'] + 1,
                 'params': optax.apply_updates(state['params'], updates),
                 'opt_state': opt_state, 'rng': state['rng']}
    return new_state, {'loss': loss, 'grad_norm': optax.tree.norm(grads)}

  return jax.jit(train_step, donate_argnums=(0,),
                 in_shardings=(state_shardings, fixed_shardings, batch_shardings),
                 out_shardings=(state_shardings, sharding.replicated(mesh)))


def make_vis_step(graphdef: nnx.GraphDef, num_patches: int, mesh: Mesh) -> Callable:
  """Loss and reconstruction of a small replicated batch with fixed noise (same mask every time)."""
  def vis_step(params: Any, fixed: nnx.State, images: jax.Array, key: jax.Array):
    images = normalize(images)
    noise = jax.random.uniform(key, (images.shape[0], num_patches))
    out = ts.merge_model(graphdef, params, fixed, None)(images, noise)
    return out.loss, out.pred, out.mask, images
  return jax.jit(vis_step, out_shardings=sharding.replicated(mesh))


def load_pretrained_params(workdir: str, step: int | None = None) -> tuple[dict, int]:
  """The MAE parameters (encoder + decoder) of a pretraining workdir's latest (or given) checkpoint,
  as host numpy arrays: what stage 2 imports. Returns (params, step)."""
  ckpt = checkpointing.TrainCheckpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  steps = ckpt.all_steps()
  step = (steps[-1] if steps else None) if step is None else step
  if step not in steps:
    raise FileNotFoundError(f'{workdir}/checkpoints: no checkpoint of step {step} (has {steps})')
  params = ckpt.restore_params(step)
  ckpt.close()
  return params, step


def train_and_evaluate(config: Any, workdir: str) -> ts.State:
  """Pretrains per `config` in `workdir`, resuming from the latest checkpoint there. Returns the
  final train state."""
  sharding.initialize_distributed(config.get('distributed'))
  workdir = os.path.abspath(workdir)
  mesh = sharding.make_mesh(config.mesh)
  logging.info('process %d/%d, %d devices, mesh %s', jax.process_index(), jax.process_count(),
               jax.device_count(), dict(mesh.shape))
  if config.batch_size % mesh.size:
    raise ValueError(f'batch_size {config.batch_size} is not divisible by {mesh.size} devices')

  # Data: this host's rows of every global batch.
  data_iter, epoch_len = pretrain_data.pretrain_iterator(config, workdir)
  num_steps = total_steps(config, epoch_len)
  accum = int(config.get('grad_accum_steps', 1))

  # Model and optimizer, built straight into their shardings. Steps count batches; the schedule
  # counts optimizer updates (one per `accum` batches).
  _, abstract_params, _ = ts.abstract_model(lambda: build_model(config))
  tx, schedule = optim.make_optimizer(
      config, nnx.to_pure_dict(abstract_params), total_updates=max(num_steps // accum, 1),
      warmup_updates=warmup_steps(config, epoch_len) // accum)
  graphdef, state, state_shardings, fixed, fixed_shardings = ts.create_train_state(
      lambda: build_model(config), config.seed, mesh, tx)
  num_patches = (config.model.img_size // config.model.patch_size) ** 2

  # Resume if this workdir holds a checkpoint (a checkpoint of another config is refused).
  ckpt, state = checkpointing.open_and_resume(config, workdir, state, state_shardings, data_iter)
  step = int(state['step'])

  train_step = make_train_step(graphdef, tx, num_patches, state_shardings, fixed_shardings, mesh)
  vis_step = make_vis_step(graphdef, num_patches, mesh)
  writer = observe.SummaryWriter(os.path.join(workdir, 'tensorboard'))
  progress = observe.Progress(num_steps, config.batch_size, first_step=step)
  preemption = checkpointing.Preemption()
  vis_images, vis_key = None, jax.random.key(config.seed + 2)
  pending: list[dict[str, jax.Array]] = []

  def log_reconstructions(step: int) -> None:
    """Loss on the fixed images with a fixed mask, and their original | masked | reconstruction."""
    loss, pred, mask, images = vis_step(state['params'], fixed, jnp.asarray(vis_images), vis_key)
    writer.scalars(step, {'vis/loss_fixed_batch': float(loss)})
    writer.image(step, 'vis/original|masked|reconstruction', observe.reconstruction_grid(
        np.asarray(images), np.asarray(pred), np.asarray(mask), config.model.patch_size,
        config.model.norm_pix_loss))
    writer.flush()

  while step < num_steps:
    local_batch = next(data_iter)
    if vis_images is None:  # a few images of the first batch, the same on every host
      vis_images = multihost_utils.broadcast_one_to_all(local_batch['image'][:8])
      if step == 0:
        log_reconstructions(0)  # the untrained baseline
    state, metrics = train_step(state, fixed, sharding.global_batch(local_batch, mesh))
    pending.append(metrics)
    step += 1

    if step % config.log_every == 0 or step == num_steps:
      host = jax.device_get(pending)
      pending = []
      scalars = {'loss': float(np.mean([m['loss'] for m in host])),
                 'grad_norm': float(np.mean([m['grad_norm'] for m in host])),
                 'lr': float(schedule(max(step - 1, 0) // accum))}
      rates = progress.update(step, scalars)
      writer.scalars(step, {f'train/{k}': v for k, v in (scalars | rates).items()})

    if step % config.eval_every == 0 or step == num_steps:
      log_reconstructions(step)

    if preemption.reached(step):
      logging.warning('preemption notice: saving step %d and stopping', step)
      ckpt.save(step, state, data_iter, force=True)
      break
    if step % config.checkpoint_every == 0 or step == num_steps:
      ckpt.save(step, state, data_iter, force=True)

  ckpt.close()  # waits for the last async write
  writer.close()
  preemption.close()
  logging.info('done at step %d of %d', step, num_steps)
  return state
