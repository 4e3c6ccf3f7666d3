"""Stage 2: fine-tuning the pretrained encoder on one view of the frame (face or a region image).

What is this program's own: the encoder's starting weights (stage 1, an imported PyTorch
MAE/MAE-Face, or a parameter checkpoint; the head is always new), layer-wise lr decay, the
classification loss (smoothed, optionally mixed targets, class-weighted cross entropy), and the
validation every `eval` steps that keeps the best parameters by ABAW macro F1. Steps, loop,
checkpoints and logging are `mae_face_jax.loop`'s.

Outputs in `workdir`: checkpoints/ (latest, resumable), best/ (parameters of the best evaluation),
best.json (its metrics), predictions_val.csv (its per-frame probabilities), tensorboard/.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from mae_face_jax import (augment, checkpointing, classification, inputs, loop, metrics, observe,
                          optim, report, sharding, torch_interop)
from mae_face_jax import images as images_lib
from mae_face_jax import train_state as ts
from mae_face_jax.images import normalize
from mae_face_jax.models.build import build_model
from input_pipeline import abaw


def pretrained_params(config: Any) -> tuple[dict[str, np.ndarray] | None, str]:
  """Flat named weights to start from (`config.init`), and where they came from; (None, '') for
  random initialisation. Stage-1 MAE names are the encoder's names (`blocks.3.mlp.fc1.kernel`)."""
  init = config.init
  if init.get('pretrain_workdir'):
    params, step = checkpointing.load_pretrained_params(init.pretrain_workdir)
    return ts.flatten(params), f'{init.pretrain_workdir} (stage 1, step {step})'
  if init.get('params_dir'):
    return ts.flatten(checkpointing.read_numpy(init.params_dir)), init.params_dir
  if init.get('torch_checkpoint'):
    model = build_model(config)
    torch_interop.import_torch_checkpoint(model, init.torch_checkpoint)
    return ts.flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))), init.torch_checkpoint
  return None, ''


def augmented_images(config: Any) -> Callable[[dict, jax.Array], jax.Array]:
  """(batch, example_keys) -> the batch's view at its stored size, through the fine-tuning recipe
  (RandomResizedCrop, flip, RandAugment, erasing) on the device, normalised."""
  d, ra = config.data, config.data.get('rand_augment', None)

  def augment_batch(batch, example_keys):
    return normalize(augment.finetune_views(
        example_keys, images_lib.single_view(batch, d), size=config.model.img_size,
        scale=tuple(d.scale), rand_augment=tuple(ra) if ra else None, erase_prob=d.erase_prob))
  return augment_batch


def classification_loss_fn(config: Any, class_weights: np.ndarray) -> loop.LossFn:
  """Augmented views, smoothed (optionally mixed) targets and class-weighted cross entropy, as a
  weighted sum."""
  weights = jnp.asarray(class_weights)
  augment_batch = augmented_images(config)

  def loss_fn(model, batch, example_keys):
    targets = classification.soft_targets(batch['label'], config.model.num_classes,
                                          config.label_smoothing)
    # The batch's mixing draw: from a key no example's augmentation uses.
    images, targets = classification.mixup_cutmix(
        jax.random.fold_in(example_keys[0], 1), augment_batch(batch, example_keys), targets,
        mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha,
        switch_prob=config.mix_switch_prob, prob=config.mix_prob)
    logits = model(images)
    weight = jnp.sum(targets * weights)
    loss = classification.weighted_cross_entropy(logits, targets, weights)
    return loss * weight, weight, {'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label'])}
  return loss_fn


def make_eval_step(graphdef: nnx.GraphDef, config: Any, mesh: Mesh) -> Callable:
  def eval_step(params, fixed, batch):
    images = images_lib.eval_input(images_lib.single_view(batch, config.data), config)
    logits = ts.merge_model(graphdef, params, fixed, None)(images)
    return jax.nn.softmax(logits.astype(jnp.float32))
  return jax.jit(eval_step, out_shardings=sharding.replicated(mesh))


def evaluate(eval_step: Callable, params: Any, fixed: nnx.State, config: Any,
             source: abaw.FrameSource, mesh: Mesh) -> dict[str, np.ndarray]:
  """Probabilities of every validation frame, with labels, video names and frame numbers (the same
  on every host)."""
  cols: dict[str, list[np.ndarray]] = {'probs': [], 'label': [], 'video': [], 'frame': []}
  for batch in inputs.eval_batches(config, source, config.view):
    views = {k: batch[k] for k in ('image', 'boxes') if k in batch}
    probs = eval_step(params, fixed, sharding.global_batch(views, mesh))
    rows = multihost_utils.process_allgather(
        {k: batch[k] for k in ('label', 'video', 'frame', 'mask')}, tiled=True)
    keep = rows['mask'] > 0
    cols['probs'].append(np.asarray(probs)[keep])
    for k in ('label', 'video', 'frame'):
      cols[k].append(rows[k][keep])
  out = {k: np.concatenate(v) for k, v in cols.items()}
  out['video'] = np.array([source.videos[i] for i in out['video']])
  return out


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Fine-tunes per `config` in `workdir` (resuming there); returns the best validation metrics."""
  workdir = os.path.abspath(workdir)
  mesh = loop.start(config)
  _, train_source, val_source, weights = inputs.labelled_splits(config, workdir)
  pretrained, source_name = pretrained_params(config)
  overrides = None
  if pretrained is None:
    logging.warning('config.init names no pretrained weights: training from random init')
  else:
    overrides = lambda params: ts.select_pretrained(params, pretrained, source_name)
  run = loop.setup(
      config, mesh, lambda: build_model(config), len(train_source), overrides=overrides,
      lr_scales=lambda p: optim.layer_decay_scales(p, config.model.depth, config.layer_decay))
  run = loop.resume(run, workdir, inputs.finetune_iterator(config, train_source))
  batch_ndims = {'image': 4, 'label': 1} | ({'boxes': 3} if config.view != 'face' else {})
  train_step = loop.train_step_for(run, classification_loss_fn(config, weights), batch_ndims)
  eval_step = make_eval_step(run.placed.graphdef, config, mesh)
  writer = observe.SummaryWriter(os.path.join(workdir, 'tensorboard'))
  best = checkpointing.load_best(workdir)

  def validate(step: int, state: ts.State) -> None:
    nonlocal best
    preds = evaluate(eval_step, state['params'], run.placed.fixed, config, val_source, mesh)
    result = metrics.summary(preds['label'], preds['probs'])
    writer.scalars(step, {'val/macro_f1': result['macro_f1'], 'val/accuracy': result['accuracy']}
                   | {f'val/f1_{c}': f for c, f in zip(metrics.EXPR_CLASSES, result['per_class_f1'])})
    writer.flush()
    logging.info('step %d: validation macro F1 %.4f, accuracy %.4f (best so far %.4f)', step,
                 result['macro_f1'], result['accuracy'], max(best['macro_f1'], result['macro_f1']))
    if result['macro_f1'] > best['macro_f1']:
      best = dict(result, step=step)
      checkpointing.save_best(workdir, state['params'], result, step)
      if observe.is_chief():
        report.write_predictions(os.path.join(workdir, 'predictions_val.csv'), preds['video'],
                                 preds['frame'], preds['label'], preds['probs'])

  loop.train(run, train_step, writer, validate)
  logging.info('best validation macro F1 %.4f at step %s', best['macro_f1'], best.get('step'))
  return best
