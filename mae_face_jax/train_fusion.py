"""Stage 2, part 2: attention-fusion heads over two frozen fine-tuned encoders, temporal smoothing,
and the evaluation report.

`train_and_evaluate(config, workdir)` reads top to bottom: data → the two fine-tuned encoders (best
checkpoints of their fine-tuning workdirs) → token features of every frame (cached in memory, or
computed on the fly from augmented batches) → one fusion head per key generator → validation
probabilities → smoothing windows swept on validation → report (tables, plots, test submission).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from mae_face_jax import (checkpointing, classification, labeled_data, metrics, observe, optim,
                          report, smoothing)
from mae_face_jax.images import normalize
from mae_face_jax.models.build import build_vit
from mae_face_jax.models.fusion import FusionHead, frozen_view_tokens
from input_pipeline import abaw, datasets

Features = dict[str, np.ndarray]  # face, region: (N, tokens, D); label, frame: (N,); video: names


def load_encoder(config: Any, finetune_workdir: str) -> nnx.Module:
  """A fine-tuned ViT from the best checkpoint of a fine-tuning workdir, in eval mode."""
  model = build_vit(config.model, nnx.Rngs(0))
  checkpointing.restore_params(os.path.join(finetune_workdir, 'best'), model)
  model.eval()
  return model


def make_encode(face_encoder: nnx.Module, region_encoder: nnx.Module, aux_blocks: int | None
                ) -> Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
  """Patch tokens of both views; the auxiliary view's from its first `aux_blocks` blocks."""
  @nnx.jit
  def encode(face_enc, region_enc, face, region):
    return (frozen_view_tokens(face_enc, normalize(face)),
            frozen_view_tokens(region_enc, normalize(region), aux_blocks))
  return lambda face, region: encode(face_encoder, region_encoder, face, region)


def paired_eval(config: Any, source: abaw.FrameSource) -> Iterator[dict[str, np.ndarray]]:
  d = config.data
  return iter(datasets.paired_dataset(
      source, batch_size=config.eval_batch_size, image_size=config.model.img_size,
      variant=config.region_view, train=False, region_fill=d.region_fill,
      region_margin=d.region_margin, crop_pct=d.crop_pct, num_threads=d.num_threads))


def extract_features(encode: Callable, config: Any, source: abaw.FrameSource) -> Features:
  """Tokens of every frame of `source` (deterministic resize/centre crop), in source order."""
  cols: dict[str, list[np.ndarray]] = {k: [] for k in ('face', 'region', 'label', 'video', 'frame')}
  for batch in paired_eval(config, source):
    keep = batch['mask'] > 0
    face, region = encode(jnp.asarray(batch['image']), jnp.asarray(batch['region_image']))
    cols['face'].append(np.asarray(face, np.float16)[keep])
    cols['region'].append(np.asarray(region, np.float16)[keep])
    for k in ('label', 'video', 'frame'):
      cols[k].append(batch[k][keep])
  out = {k: np.concatenate(v) for k, v in cols.items()}
  out['video'] = np.array([source.videos[i] for i in out['video']])
  return out


def cached_batches(features: Features, batch_size: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
  """Endless shuffled batches of cached tokens (epoch after epoch, reshuffled each time)."""
  rng = np.random.default_rng(seed)
  n = len(features['label'])
  while True:
    order = rng.permutation(n)
    for i in range(0, n - batch_size + 1, batch_size):
      idx = np.sort(order[i:i + batch_size])
      yield {'face': features['face'][idx], 'region': features['region'][idx],
             'label': features['label'][idx]}


def augmented_batches(encode: Callable, config: Any, source: abaw.FrameSource
                      ) -> Iterator[dict[str, np.ndarray]]:
  """Tokens computed on the fly from augmented paired views (same crop/flip on both)."""
  d = config.data
  it = iter(datasets.paired_dataset(
      source, batch_size=config.batch_size, image_size=config.model.img_size,
      variant=config.region_view, train=True, seed=config.seed, region_fill=d.region_fill,
      region_margin=d.region_margin, scale=tuple(d.scale), num_threads=d.num_threads))
  for batch in it:
    face, region = encode(jnp.asarray(batch['image']), jnp.asarray(batch['region_image']))
    yield {'face': face, 'region': region, 'label': batch['label']}


def start_from_main_view(head: FusionHead, main_encoder: nnx.Module) -> None:
  """Makes an untrained head compute exactly the main view's fine-tuned classifier: its pooling
  norm and linear head copied from the encoder, both attention blocks' output projections zeroed
  (their skip connections then pass the main tokens through). Training starts from the better of
  the two views' classifiers instead of from a random one."""
  if not main_encoder.global_pool or main_encoder.head is None:
    raise ValueError('start_from_main_view needs a global_pool encoder with a classification head')
  nnx.update(head.fc_norm, nnx.state(main_encoder.fc_norm, nnx.Param))
  nnx.update(head.head, nnx.state(main_encoder.head, nnx.Param))
  for attn in (head.self_attn, head.local_attn):
    attn.proj.kernel[...] = jnp.zeros_like(attn.proj.kernel[...])
    attn.proj.bias[...] = jnp.zeros_like(attn.proj.bias[...])


def train_head(config: Any, method: str, batches: Iterator[dict[str, Any]], class_weights: np.ndarray,
               num_steps: int, main_encoder: nnx.Module | None = None) -> FusionHead:
  """One fusion head trained with the fine-tuning losses (smoothed, class-weighted CE) and AdamW;
  it starts as `main_encoder`'s classifier when one is given (`start_from_main_view`)."""
  grid = (config.model.img_size // config.model.patch_size,) * 2
  head = FusionHead(dim=config.model.embed_dim, grid_size=grid, num_classes=config.model.num_classes,
                    key_generator=method, num_heads=config.fusion.num_heads,
                    local_window=config.fusion.local_window, updown_ratio=config.fusion.updown_ratio,
                    rngs=nnx.Rngs(config.seed))
  if main_encoder is not None:
    start_from_main_view(head, main_encoder)
  graphdef, params, rest = nnx.split(head, nnx.Param, ...)
  params = nnx.to_pure_dict(params)
  tx, schedule = optim.make_optimizer(config, params, num_steps,
                                      warmup_updates=int(config.warmup_fraction * num_steps))
  opt_state = tx.init(params)
  weights = jnp.asarray(class_weights)

  @jax.jit
  def step(params, opt_state, face, region, labels):
    targets = classification.soft_targets(labels, config.model.num_classes, config.label_smoothing)

    def loss_fn(p):
      logits = nnx.merge(graphdef, p, rest)(face, region)
      return classification.weighted_cross_entropy(logits, targets, weights)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  progress = observe.Progress(num_steps, config.batch_size)
  losses = []
  for i in range(num_steps):
    batch = next(batches)
    params, opt_state, loss = step(params, opt_state, jnp.asarray(batch['face'], jnp.float32),
                                   jnp.asarray(batch['region'], jnp.float32),
                                   jnp.asarray(batch['label']))
    losses.append(loss)
    if (i + 1) % config.log_every == 0 or i + 1 == num_steps:
      progress.update(i + 1, {'loss': float(np.mean(jax.device_get(losses))),
                              'lr': float(schedule(i))})
      losses = []
  return nnx.merge(graphdef, params, rest)


def predict_head(head: FusionHead, features: Features, batch_size: int) -> np.ndarray:
  apply = nnx.jit(lambda h, f, r: jax.nn.softmax(h(f, r)))
  out = [np.asarray(apply(head, jnp.asarray(features['face'][i:i + batch_size], jnp.float32),
                          jnp.asarray(features['region'][i:i + batch_size], jnp.float32)))
         for i in range(0, len(features['label']), batch_size)]
  return np.concatenate(out)


def single_view_probs(finetune_workdir: str, val: Features) -> np.ndarray:
  """The fine-tuning run's per-frame validation probabilities, aligned to `val`'s rows."""
  table = report.read_predictions(os.path.join(finetune_workdir, 'predictions_val.csv'))
  index = {(v, int(f)): i for i, (v, f) in enumerate(zip(table['video'], table['frame']))}
  try:
    rows = [index[(v, int(f))] for v, f in zip(val['video'], val['frame'])]
  except KeyError as e:
    raise ValueError(f'{finetune_workdir}/predictions_val.csv has no row for frame {e}') from e
  return table['probs'][rows]


def sweep_windows(probs: np.ndarray, val: Features, windows: list[int]) -> dict[int, float]:
  return {w: metrics.macro_f1(val['label'], smoothing.sliding_window_smooth(
      probs, val['video'], val['frame'], w).argmax(-1)) for w in windows}


def write_report(workdir: str, val: Features, probs: dict[str, np.ndarray],
                 windows: list[int], num_timelines: int
                 ) -> tuple[dict[str, Any], dict[str, dict[int, float]]]:
  """Results table (each method raw and smoothed with its best window) and plots, the confusion
  matrix and timelines of the best method; returns the results and the F1-vs-window curves."""
  os.makedirs(workdir, exist_ok=True)
  results, curves, best = {}, {}, (-1.0, '', 1)
  for name, p in probs.items():
    curves[name] = sweep_windows(p, val, windows)
    window = max(curves[name], key=curves[name].get)
    smoothed = smoothing.sliding_window_smooth(p, val['video'], val['frame'], window)
    results[name] = metrics.summary(val['label'], p)
    results[f'{name} + smoothing (w={window})'] = metrics.summary(val['label'], smoothed)
    if curves[name][window] > best[0]:
      best = (curves[name][window], name, window)
  results['chance (uniform random predictions)'] = metrics.uniform_chance(val['label'])
  report.write_results_table(workdir, results)
  _, name, window = best
  smoothed = smoothing.sliding_window_smooth(probs[name], val['video'], val['frame'], window)
  report.plot_confusion(os.path.join(workdir, 'confusion_matrix.png'), val['label'],
                        smoothed.argmax(-1), f'{name}, smoothed (w={window})')
  report.plot_per_class_f1(os.path.join(workdir, 'per_class_f1.png'), results)
  report.plot_f1_vs_window(os.path.join(workdir, 'f1_vs_window.png'), curves)
  os.makedirs(os.path.join(workdir, 'timelines'), exist_ok=True)
  for video in list(dict.fromkeys(val['video']))[:num_timelines]:
    rows = val['video'] == video
    report.plot_timeline(os.path.join(workdir, 'timelines', f'{video}.png'), video,
                         val['frame'][rows], val['label'][rows], probs[name][rows].argmax(-1),
                         smoothed[rows].argmax(-1))
  for method, p in probs.items():  # the raw probabilities behind every row of the table
    report.write_predictions(os.path.join(workdir, f'predictions_val_{method.replace(" ", "_")}.csv'),
                             val['video'], val['frame'], val['label'], p)
  logging.info('best: %s smoothed with window %d (macro F1 %.4f)', name, window, best[0])
  return results, curves


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Trains the fusion heads and writes the report into `workdir/report`; returns the results."""
  workdir = os.path.abspath(workdir)
  root = labeled_data.dataset_root(config.data, workdir)
  train_source = abaw.load_split(root, config.data.train_split)
  val_source = abaw.load_split(root, config.data.val_split)
  counts = labeled_data.class_counts(train_source, config.model.num_classes)
  weights = classification.class_weights(config.class_weights, counts)

  # Frozen encoders and their token features.
  face_encoder = load_encoder(config, config.face_workdir)
  region_encoder = load_encoder(config, config.region_workdir)
  aux_blocks = config.aux_blocks if config.aux_blocks > 0 else None
  encode = make_encode(face_encoder, region_encoder, aux_blocks)
  logging.info('extracting token features of %d validation frames', len(val_source))
  val = extract_features(encode, config, val_source)
  train = None
  if config.cache_features:
    logging.info('extracting token features of %d training frames', len(train_source))
    train = extract_features(encode, config, train_source)
  num_steps = config.total_steps if config.total_steps > 0 else int(
      config.num_epochs * len(train_source) // config.batch_size)

  # One head per key generator.
  probs = {'face only': single_view_probs(config.face_workdir, val),
           f'{config.region_view} only': single_view_probs(config.region_workdir, val)}
  heads = {}
  for method in config.fusion.methods:
    logging.info('training the fusion head with key generator %s for %d steps', method, num_steps)
    batches = (cached_batches(train, config.batch_size, config.seed) if train is not None
               else augmented_batches(encode, config, train_source))
    heads[method] = train_head(config, method, batches, weights, num_steps,
                               face_encoder if config.fusion.get('start_from_main_view') else None)
    checkpointing.save_params(os.path.join(workdir, 'heads', method), heads[method])
    probs[f'fusion {method}'] = predict_head(heads[method], val, config.eval_batch_size)
    logging.info('fusion %s: validation macro F1 %.4f', method,
                 metrics.macro_f1(val['label'], probs[f'fusion {method}'].argmax(-1)))

  # Smoothing sweep, report, and the test submission of the best fused method.
  report_dir = os.path.join(workdir, 'report')
  fused = [k for k in probs if k.startswith('fusion')]
  results, curves = write_report(report_dir, val, probs, list(config.windows),
                                 config.num_timelines)
  best_fused = max(fused, key=lambda k: max(curves[k].values()))
  fused_window = max(curves[best_fused], key=curves[best_fused].get)
  test_list = os.path.join(root, abaw.TEST_LIST)
  if os.path.exists(test_list):
    test_source = abaw.load_test_set(root)
    test = extract_features(encode, config, test_source)
    test_probs = smoothing.sliding_window_smooth(
        predict_head(heads[best_fused.removeprefix('fusion ')], test, config.eval_batch_size),
        test['video'], test['frame'], fused_window)
    report.write_submission(os.path.join(report_dir, 'submission_expr.txt'), test['video'],
                            test['frame'], test_probs.argmax(-1))
  print(open(os.path.join(report_dir, 'results.md')).read())
  print(f'report written to {report_dir}')
  return results
