"""Stage 2: fine-tuning the pretrained encoder on one view of the frame (face or a region image).

`train_and_evaluate(config, workdir)` reads top to bottom: mesh → data → model initialised from the
stage-1 checkpoint (or an imported PyTorch MAE/MAE-Face, or a parameter checkpoint) with a new head
→ AdamW with layer-wise lr decay → resume → loop (step, log, evaluate each epoch, keep the best by
ABAW macro F1, checkpoint, preemption) → the best checkpoint's per-frame predictions.

Outputs in `workdir`: checkpoints/ (latest, resumable), best/ (parameters of the best epoch),
best.json (its metrics), predictions_val.csv (its per-frame probabilities), tensorboard/.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from mae_face_jax import (checkpointing, classification, labeled_data, metrics, observe, optim,
                          report, sharding, torch_interop)
from mae_face_jax import train_state as ts
from mae_face_jax.images import normalize
from mae_face_jax.models.build import build_vit
from input_pipeline import abaw


def pretrained_params(config: Any) -> tuple[dict[str, np.ndarray] | None, str]:
  """Flat named weights to start from (`config.init`), and where they came from; (None, '') for
  random initialisation. Stage-1 MAE names are the encoder's names (`blocks.3.mlp.fc1.kernel`)."""
  init = config.init
  if init.get('pretrain_workdir'):
    from mae_face_jax.train_pretrain import load_pretrained_params
    params, step = load_pretrained_params(init.pretrain_workdir)
    return ts.flatten(params), f'{init.pretrain_workdir} (stage 1, step {step})'
  if init.get('params_dir'):
    with ocp.StandardCheckpointer() as ckptr:
      return ts.flatten(ckptr.restore(os.path.abspath(init.params_dir))), init.params_dir
  if init.get('torch_checkpoint'):
    model = build_vit(config.model, nnx.Rngs(config.seed))
    torch_interop.import_torch_checkpoint(model, init.torch_checkpoint)
    return ts.flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))), init.torch_checkpoint
  return None, ''


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, config: Any,
                    class_weights: np.ndarray, state_shardings: Any, fixed_shardings: Any,
                    mesh: Mesh) -> Callable:
  """Smoothed (optionally mixed) targets, class-weighted cross entropy, one AdamW update."""
  num_classes = config.model.num_classes
  weights = jnp.asarray(class_weights)
  batch_shardings = {'image': sharding.batch_sharding(mesh, 4),
                     'label': sharding.batch_sharding(mesh, 1)}

  def train_step(state, fixed, batch):
    mix_key, drop_key = ts.step_key(state, num=2)
    targets = classification.soft_targets(batch['label'], num_classes, config.label_smoothing)
    images, targets = classification.mixup_cutmix(
        mix_key, normalize(batch['image']), targets, mixup_alpha=config.mixup_alpha,
        cutmix_alpha=config.cutmix_alpha, switch_prob=config.mix_switch_prob, prob=config.mix_prob)

    def loss_fn(model):
      logits = model(images)
      return classification.weighted_cross_entropy(logits, targets, weights), logits

    model = ts.merge_model(graphdef, state['params'], fixed, drop_key)
    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    grads = nnx.to_pure_dict(grads)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    new_state = {'step': state['step'] + 1, 'params': optax.apply_updates(state['params'], updates),
                 'opt_state': opt_state, 'rng': state['rng']}
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
    return new_state, {'loss': loss, 'accuracy': accuracy, 'grad_norm': optax.tree.norm(grads)}

  return jax.jit(train_step, donate_argnums=(0,),
                 in_shardings=(state_shardings, fixed_shardings, batch_shardings),
                 out_shardings=(state_shardings, sharding.replicated(mesh)))


def make_eval_step(graphdef: nnx.GraphDef, mesh: Mesh) -> Callable:
  def eval_step(params, fixed, images):
    logits = ts.merge_model(graphdef, params, fixed, None)(normalize(images))
    return jax.nn.softmax(logits.astype(jnp.float32))
  return jax.jit(eval_step, out_shardings=sharding.replicated(mesh))


def evaluate(eval_step: Callable, params: Any, fixed: nnx.State, config: Any,
             source: abaw.FrameSource, view: str, mesh: Mesh) -> dict[str, np.ndarray]:
  """Probabilities of every validation frame, with labels, video names and frame numbers."""
  cols: dict[str, list[np.ndarray]] = {'probs': [], 'label': [], 'video': [], 'frame': []}
  for batch in labeled_data.eval_batches(config, source, view):
    probs = eval_step(params, fixed, sharding.global_batch({'image': batch['image']}, mesh)['image'])
    rows = multihost_utils.process_allgather(
        {k: batch[k] for k in ('label', 'video', 'frame', 'mask')}, tiled=True)
    keep = rows['mask'] > 0
    cols['probs'].append(np.asarray(probs)[keep])
    for k in ('label', 'video', 'frame'):
      cols[k].append(rows[k][keep])
  out = {k: np.concatenate(v) for k, v in cols.items()}
  out['video'] = np.array([source.videos[i] for i in out['video']])
  return out


def save_best(workdir: str, params: Any, result: Mapping[str, Any], step: int) -> None:
  """Parameters of the best epoch under best/ (atomic, replacing the previous best) + best.json."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(workdir, 'best'), params, force=True)
  if observe.is_chief():
    report.atomic_write_text(os.path.join(workdir, 'best.json'),
                             json.dumps(dict(result, step=step), indent=1))


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Fine-tunes per `config` in `workdir` (resuming there); returns the best validation metrics."""
  sharding.initialize_distributed(config.get('distributed'))
  workdir = os.path.abspath(workdir)
  mesh = sharding.make_mesh(config.mesh)
  view = config.view

  # Data: the annotated splits; class weights from the training labels.
  root = labeled_data.dataset_root(config.data, workdir)
  train_source = abaw.load_split(root, config.data.train_split)
  val_source = abaw.load_split(root, config.data.val_split)
  counts = labeled_data.class_counts(train_source, config.model.num_classes)
  weights = classification.class_weights(config.class_weights, counts)
  logging.info('%s view: %d train frames (per class %s), %d validation frames; class weights %s',
               view, len(train_source), counts.tolist(), len(val_source), np.round(weights, 2).tolist())
  data_iter = labeled_data.train_iterator(config, train_source, view)
  steps_per_epoch = max(len(train_source) // config.batch_size, 1)
  num_steps = config.total_steps if config.get('total_steps', -1) > 0 else (
      int(config.num_epochs * steps_per_epoch))
  eval_every = int(config.get('eval_every_steps', -1))
  eval_every = eval_every if eval_every > 0 else steps_per_epoch
  warmup = (config.warmup_steps if config.warmup_steps >= 0
            else int(config.warmup_epochs * steps_per_epoch))

  # Model (pretrained encoder, new head) and AdamW with layer-wise lr decay.
  build = lambda: build_vit(config.model, nnx.Rngs(config.seed))
  _, abstract_params, _ = ts.abstract_model(build)
  abstract_params = nnx.to_pure_dict(abstract_params)
  scales = optim.layer_decay_scales(abstract_params, config.model.depth, config.layer_decay)
  tx, schedule = optim.make_optimizer(config, abstract_params, num_steps, lr_scales=scales,
                                      warmup_updates=warmup)
  pretrained, source_name = pretrained_params(config)
  if pretrained is None:
    logging.warning('config.init names no pretrained weights: training from random init')
  graphdef, state, state_shardings, fixed, fixed_shardings = ts.create_train_state(
      build, config.seed, mesh, tx, pretrained, source_name)

  ckpt, state = checkpointing.open_and_resume(config, workdir, state, state_shardings, data_iter)
  step = int(state['step'])
  best_path = os.path.join(workdir, 'best.json')
  best = json.load(open(best_path)) if os.path.exists(best_path) else {'macro_f1': -1.0}

  train_step = make_train_step(graphdef, tx, config, weights, state_shardings, fixed_shardings, mesh)
  eval_step = make_eval_step(graphdef, mesh)
  writer = observe.SummaryWriter(os.path.join(workdir, 'tensorboard'))
  progress = observe.Progress(num_steps, config.batch_size, first_step=step)
  preemption = checkpointing.Preemption()
  pending: list[dict[str, jax.Array]] = []

  while step < num_steps:
    batch = next(data_iter)
    state, m = train_step(state, fixed, sharding.global_batch(batch, mesh))
    pending.append(m)
    step += 1

    if step % config.log_every == 0 or step == num_steps:
      host = jax.device_get(pending)
      pending = []
      scalars = {k: float(np.mean([x[k] for x in host])) for k in host[0]}
      scalars['lr'] = float(schedule(step - 1))
      writer.scalars(step, {f'train/{k}': v for k, v in (scalars | progress.update(step, scalars)).items()})

    if step % eval_every == 0 or step == num_steps:
      preds = evaluate(eval_step, state['params'], fixed, config, val_source, view, mesh)
      result = metrics.summary(preds['label'], preds['probs'])
      writer.scalars(step, {'val/macro_f1': result['macro_f1'], 'val/accuracy': result['accuracy']}
                     | {f'val/f1_{c}': f for c, f in zip(metrics.EXPR_CLASSES, result['per_class_f1'])})
      writer.flush()
      logging.info('step %d: validation macro F1 %.4f, accuracy %.4f (best so far %.4f)', step,
                   result['macro_f1'], result['accuracy'], max(best['macro_f1'], result['macro_f1']))
      if result['macro_f1'] > best['macro_f1']:
        best = dict(result, step=step)
        save_best(workdir, state['params'], result, step)
        if observe.is_chief():
          report.write_predictions(os.path.join(workdir, 'predictions_val.csv'), preds['video'],
                                   preds['frame'], preds['label'], preds['probs'])

    if preemption.reached(step):
      logging.warning('preemption notice: saving step %d and stopping', step)
      ckpt.save(step, state, data_iter, force=True)
      break
    if step % config.checkpoint_every == 0 or step == num_steps:
      ckpt.save(step, state, data_iter, force=True)

  ckpt.close()
  writer.close()
  preemption.close()
  logging.info('done at step %d of %d; best validation macro F1 %.4f at step %s', step, num_steps,
               best['macro_f1'], best.get('step'))
  return best
