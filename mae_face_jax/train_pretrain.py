"""Stage 1: MAE pretraining of the face encoder. Sharded (data × FSDP), multi-host, resumable.

What is this program's own: the MAE loss with crop, flip and mask noise drawn per example on the
device, and the evaluation every `eval` steps (the loss on 8 fixed images with a fixed mask, and
their original | masked | reconstruction grid in TensorBoard). Steps, loop, checkpoints and
logging are `mae_face_jax.loop`'s. Stage 2 reads the encoder from the last checkpoint in
`workdir/checkpoints` (`checkpointing.load_pretrained_params`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from mae_face_jax import augment, inputs, loop, observe, sharding
from mae_face_jax import train_state as ts
from mae_face_jax.images import normalize
from mae_face_jax.models.build import build_model


def mae_loss_fn(config: Any) -> loop.LossFn:
  """MAE's loss on a batch of stored-size uint8 images, cropped and flipped here (MAE's recipe);
  example e's crop and mask noise come from its own key, so they do not depend on how a step's
  examples are split into micro-batches or hosts."""
  size = config.model.img_size
  num_patches = (size // config.model.patch_size) ** 2
  scale = tuple(config.data.get('scale', (0.2, 1.0)))

  def loss_fn(model, batch, example_keys):
    crop_keys, noise_keys = jnp.moveaxis(jax.vmap(jax.random.split)(example_keys), 1, 0)
    images = augment.pretrain_views(crop_keys, batch['image'], size=size, scale=scale)
    noise = jax.vmap(lambda k: jax.random.uniform(k, (num_patches,)))(noise_keys)
    out = model(normalize(images), noise)
    removed = jnp.sum(out.mask)
    return out.loss * removed, removed, {}
  return loss_fn


def make_vis_step(graphdef: nnx.GraphDef, config: Any, mesh: jax.sharding.Mesh) -> Callable:
  """Loss and reconstruction of a small replicated batch (resized and centre-cropped as for
  evaluation) with fixed noise (same mask every time)."""
  num_patches = (config.model.img_size // config.model.patch_size) ** 2

  def vis_step(params: Any, fixed: nnx.State, images: jax.Array, key: jax.Array):
    images = augment.eval_views(images, size=config.model.img_size, crop_pct=1.0)
    images = normalize(images)
    noise = jax.random.uniform(key, (images.shape[0], num_patches))
    out = ts.merge_model(graphdef, params, fixed, None)(images, noise)
    return out.loss, out.pred, out.mask, images
  return jax.jit(vis_step, out_shardings=sharding.replicated(mesh))


def train_and_evaluate(config: Any, workdir: str) -> ts.State:
  """Pretrains per `config` in `workdir`, resuming from the latest checkpoint there. Returns the
  final train state."""
  workdir = os.path.abspath(workdir)
  mesh = loop.start(config)
  data_iter, epoch_len = inputs.pretrain_iterator(config, workdir)
  run = loop.resume(loop.setup(config, mesh, lambda: build_model(config), epoch_len), workdir,
                   data_iter)
  train_step = loop.train_step_for(run, mae_loss_fn(config), {'image': 4})

  # A few images of a fresh pass's first batch, the same on every host, with a fixed mask.
  vis_images = multihost_utils.broadcast_one_to_all(
      next(inputs.pretrain_iterator(config, workdir, num_workers=0)[0])['image'][:8])
  vis_step = make_vis_step(run.placed.graphdef, config, mesh)
  vis_key = jax.random.key(config.seed + 2)
  writer = observe.SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def log_reconstructions(step: int, state: ts.State) -> None:
    loss, pred, mask, images = vis_step(state['params'], run.placed.fixed,
                                        jnp.asarray(vis_images), vis_key)
    writer.scalars(step, {'vis/loss_fixed_batch': float(loss)})
    writer.image(step, 'vis/original|masked|reconstruction', observe.reconstruction_grid(
        np.asarray(images), np.asarray(pred), np.asarray(mask), config.model.patch_size,
        config.model.norm_pix_loss))
    writer.flush()

  if int(run.placed.state['step']) == 0:
    log_reconstructions(0, run.placed.state)  # the untrained baseline
  return loop.train(run, train_step, writer, log_reconstructions)
