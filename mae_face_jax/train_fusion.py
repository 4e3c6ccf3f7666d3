"""Stage 2, part 2: attention-fusion heads over two frozen fine-tuned encoders, temporal smoothing,
and the evaluation report.

What is this program's own: the model (`models.fusion.FusionModel`: both encoders from the best
checkpoints of their fine-tuning workdirs, frozen, and one head per key generator, all trained
together by one jitted step), the token features (computed once and kept in memory on every host
with `cache_features`, or from augmented paired views in the step), and the outputs: validation
probabilities of every head, smoothing windows swept on validation, the report (tables, plots,
per-frame predictions) and the test submission, written by process 0 only. Steps, loop,
checkpoints (the heads' parameters, optimizer state, step, RNG and data position) and logging
are `mae_face_jax.loop`'s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from mae_face_jax import (augment, checkpointing, classification, inputs, loop, observe, report,
                          sharding, smoothing)
from mae_face_jax import images as images_lib
from mae_face_jax import train_state as ts
from mae_face_jax.images import normalize
from mae_face_jax.models.build import build_model
from mae_face_jax.models.fusion import FusionModel, head_name, head_seed
from input_pipeline import abaw

Features = dict[str, np.ndarray]  # main, aux: (N, tokens, D) float16; label, frame: (N,); video


INITS = ('main_view', 'both_views', 'random')


def head_start(init: str, heads: dict, main: dict, aux: dict) -> dict[str, np.ndarray]:
  """Flat values starting every head (`heads`: its parameters' shapes) from the fine-tuned
  classifiers (`main`, `aux`: the main and auxiliary view encoders' parameters); both attention
  output projections zeroed, so the skip connections pass the main tokens through.
  'main_view': the head computes the main view's classifier; 'both_views' (pool 'both'): the mean
  of both views' classifiers' logits (late fusion); 'random': nothing replaced."""
  if init not in INITS:
    raise ValueError(f'fusion init {init!r} is not one of {INITS}')
  if init == 'random':
    return {}
  main_flat, aux_flat = ts.flatten(main), ts.flatten(aux)
  flat = {}
  for name, value in ts.flatten(heads).items():
    part = name.split('.', 1)[1]
    if part.startswith(('self_attn.proj.', 'local_attn.proj.')):
      flat[f'heads.{name}'] = np.zeros(value.shape, np.float32)
    elif part.startswith('fc_norm.'):
      flat[f'heads.{name}'] = main_flat[part]
    elif part.startswith('aux_fc_norm.') and init == 'both_views':
      flat[f'heads.{name}'] = aux_flat[part.removeprefix('aux_')]
    elif part.startswith('head.'):
      m, a = main_flat[part], aux_flat[part]
      both = init == 'both_views'
      if value.shape == m.shape:  # the bias, or the kernel with pool 'main'
        if both and part == 'head.kernel':
          raise ValueError('fusion init both_views needs fusion.pool="both" (a head that sees '
                           'both views)')
        flat[f'heads.{name}'] = (m + a) / 2 if both else m
      else:  # the kernel with pool 'both': rows of the fused half, then of the auxiliary half
        flat[f'heads.{name}'] = (np.concatenate([m, a]) / 2 if both
                                 else np.concatenate([m, np.zeros_like(a)]))
  return flat


def encoder_overrides(config: Any, abstract: dict) -> dict[str, np.ndarray]:
  """The frozen encoders' weights (best/ of each fine-tuning workdir, refused if of another
  config) and the heads' start (`fusion.init`); `abstract`: every parameter's shape."""
  flat, loaded = {}, {}
  for prefix, workdir in (('face_encoder', config.face_workdir),
                          ('region_encoder', config.region_workdir)):
    path = os.path.join(workdir, 'best')
    loaded[prefix] = checkpointing.read_numpy(path)
    checkpointing.check_compatible(loaded[prefix], abstract[prefix], path)
    flat |= {f'{prefix}.{k}': v for k, v in ts.flatten(loaded[prefix]).items()}
  main, aux = ('face_encoder', 'region_encoder')[::1 if config.fusion.main_view == 'face' else -1]
  if config.fusion.init == 'both_views' and config.aux_blocks > 0:
    raise ValueError(f'fusion init both_views starts from the auxiliary classifier, which reads the '
                     f'last block: aux_blocks={config.aux_blocks} must be -1')
  return flat | head_start(config.fusion.init, abstract['heads'], loaded[main], loaded[aux])


def make_tokens(graphdef: nnx.GraphDef, config: Any, mesh: jax.sharding.Mesh) -> Callable:
  def tokens(params, fixed, batch):
    model = ts.merge_model(graphdef, params, fixed, None)
    face, region = images_lib.face_and_region(batch, config.data)
    main, aux = model.tokens(images_lib.eval_input(face, config),
                             images_lib.eval_input(region, config))
    return main.astype(jnp.float16), aux.astype(jnp.float16)
  out = sharding.batch_sharding(mesh, 3)
  return jax.jit(tokens, out_shardings=(out, out))


def extract_features(tokens: Callable, state: ts.State, fixed: nnx.State, config: Any,
                     source: abaw.FrameSource, mesh: jax.sharding.Mesh) -> Features:
  """Tokens of every frame of `source` (deterministic resize/centre crop), in source order (video,
  frame), gathered onto every host."""
  cols: dict[str, list[np.ndarray]] = {k: [] for k in ('main', 'aux', 'label', 'video', 'frame')}
  for batch in inputs.eval_batches(config, source, config.region_view, paired=True):
    views = sharding.global_batch(
        {k: batch[k] for k in ('image', 'boxes', 'region_image') if k in batch}, mesh)
    main, aux = tokens(state['params'], fixed, views)
    rows = multihost_utils.process_allgather(
        {k: batch[k] for k in ('label', 'video', 'frame', 'mask')}, tiled=True)
    keep = rows['mask'] > 0
    cols['main'].append(multihost_utils.process_allgather(main, tiled=True)[keep])
    cols['aux'].append(multihost_utils.process_allgather(aux, tiled=True)[keep])
    for k in ('label', 'video', 'frame'):
      cols[k].append(rows[k][keep])
  out = {k: np.concatenate(v) for k, v in cols.items()}
  order = np.lexsort((out['frame'], out['video']))
  out = {k: v[order] for k, v in out.items()}
  out['video'] = np.array([source.videos[i] for i in out['video']])
  return out


class FeatureBatches:
  """Endless shuffled batches of cached tokens, reshuffled each epoch; an epoch ends where the
  next step's `accum` batches would not fit, so k micro-batches see what one k-fold batch sees.
  Each of the `seeds` head seeds draws its own order: arrays are (batch, seeds, ...). Every host
  holds all rows and takes its slice of each global batch, so the batches do not depend on the
  number of hosts; checkpointable (`get_state`/`set_state`, as Grain's iterators)."""

  def __init__(self, features: Features, global_batch: int, seed: int, accum: int = 1,
               seeds: int = 1):
    self.features, self.global_batch, self.seed, self.accum = features, global_batch, seed, accum
    self.seeds = seeds
    self.local = inputs.local_batch_size(global_batch)
    self.epoch, self.batch = 0, 0

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    n = len(self.features['label'])
    if self.batch % self.accum == 0 and (self.batch + self.accum) * self.global_batch > n:
      self.epoch, self.batch = self.epoch + 1, 0
    start = self.batch * self.global_batch + jax.process_index() * self.local
    rows = np.stack([np.sort(np.random.default_rng([self.seed, s, self.epoch]).permutation(n)
                             [start:start + self.local]) for s in range(self.seeds)], axis=1)
    self.batch += 1
    return {k: self.features[k][rows] for k in ('main', 'aux', 'label')}

  def get_state(self) -> bytes:
    return json.dumps({'epoch': self.epoch, 'batch': self.batch}).encode()

  def set_state(self, state: bytes) -> None:
    state = json.loads(state)
    self.epoch, self.batch = state['epoch'], state['batch']

  def start_prefetch(self) -> None:  # Grain's checkpoint handler calls it after set_state
    pass


def fusion_loss_fn(config: Any, class_weights: np.ndarray) -> loop.LossFn:
  """The fine-tuning loss (smoothed, class-weighted cross entropy) of every head, summed: each
  head's gradient is its own. Tokens come cached in the batch, (batch, seeds, ...) with each seed's
  own rows, or from the images (one batch for every seed). The weight of a batch is the mean of
  its seeds' class weights: with one seed, micro-batches sum exactly to the big batch."""
  weights = jnp.asarray(class_weights)
  seeds = config.fusion.seeds

  d = config.data

  def loss_fn(model, batch, example_keys):
    if 'main' in batch:
      main, aux = batch['main'].astype(jnp.float32), batch['aux'].astype(jnp.float32)
      labels = batch['label']
    else:  # both views cropped and flipped alike, so they stay pixel-aligned
      face, region = augment.paired_views(example_keys, *images_lib.face_and_region(batch, d),
                                          size=config.model.img_size, scale=tuple(d.scale))
      main, aux = model.tokens(normalize(face), normalize(region))
      labels = jnp.repeat(batch['label'][:, None], seeds, axis=1)
    targets = classification.soft_targets(labels, config.model.num_classes, config.label_smoothing)
    weight = jnp.sum(targets * weights) / seeds
    losses = {name: classification.weighted_cross_entropy(
        logits, targets[:, head_seed(name)], weights) for name, logits in model(main, aux).items()}
    return sum(losses.values()) * weight, weight, {f'loss_{m}': v for m, v in losses.items()}
  return loss_fn


def predict(graphdef: nnx.GraphDef, state: ts.State, fixed: nnx.State, features: Features,
            batch_size: int, mesh: jax.sharding.Mesh) -> dict[str, np.ndarray]:
  """Every head's probabilities for every row of `features` (held by every host)."""
  apply = jax.jit(lambda p, f, main, aux: jax.tree.map(
      jax.nn.softmax, ts.merge_model(graphdef, p, f, None)(main.astype(jnp.float32),
                                                          aux.astype(jnp.float32))),
      out_shardings=sharding.replicated(mesh))
  n, local = len(features['label']), inputs.local_batch_size(batch_size)
  out: dict[str, list[np.ndarray]] = {}
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size)[jax.process_index() * local:][:local]
    rows = np.minimum(rows, n - 1)  # the last batch repeats the last row; dropped below
    batch = sharding.global_batch({k: features[k][rows] for k in ('main', 'aux')}, mesh)
    for m, p in apply(state['params'], fixed, batch['main'], batch['aux']).items():
      out.setdefault(m, []).append(np.asarray(p)[:n - start])
  return {m: np.concatenate(v) for m, v in out.items()}


def single_view_probs(finetune_workdir: str, val: Features) -> np.ndarray:
  """The fine-tuning run's per-frame validation probabilities, aligned to `val`'s rows."""
  table = report.read_predictions(os.path.join(finetune_workdir, 'predictions_val.csv'))
  index = {(v, int(f)): i for i, (v, f) in enumerate(zip(table['video'], table['frame']))}
  try:
    rows = [index[(v, int(f))] for v, f in zip(val['video'], val['frame'])]
  except KeyError as e:
    raise ValueError(f'{finetune_workdir}/predictions_val.csv has no row for frame {e}') from e
  return table['probs'][rows]


def train_and_evaluate(config: Any, workdir: str,
                       feature_cache: dict[tuple, Features] | None = None) -> dict[str, Any]:
  """Trains the fusion heads in `workdir` (resuming there); process 0 writes the report into
  `workdir/report` and returns the results table (other processes return {}). `feature_cache`
  keeps token features between calls over the same encoders (a sweep over head readings)."""
  workdir = os.path.abspath(workdir)
  mesh = loop.start(config)
  root, train_source, val_source, weights = inputs.labelled_splits(config, workdir)
  run = loop.setup(config, mesh, lambda: build_model(config), len(train_source),
                   overrides=lambda params: encoder_overrides(config, params),
                   trained=FusionModel.TRAINED)
  graphdef, fixed = run.placed.graphdef, run.placed.fixed
  tokens = make_tokens(graphdef, config, mesh)
  cache = {} if feature_cache is None else feature_cache

  def features(source: abaw.FrameSource) -> Features:
    key = (config.face_workdir, config.region_workdir, config.fusion.main_view, config.aux_blocks,
           tuple(source.videos), len(source))
    if key not in cache:
      cache[key] = extract_features(tokens, run.placed.state, fixed, config, source, mesh)
    return cache[key]
  logging.info('token features of %d validation frames', len(val_source))
  val = features(val_source)
  if config.cache_features:
    logging.info('token features of %d training frames, kept in memory', len(train_source))
    data_iter = FeatureBatches(features(train_source), config.batch_size, config.seed,
                               config.grad_accum_steps, config.fusion.seeds)
    batch_ndims = {'main': 4, 'aux': 4, 'label': 2}
  else:
    data_iter = inputs.paired_iterator(config, train_source)
    batch_ndims = {'image': 4, 'boxes': 3, 'label': 1, 'video': 1, 'frame': 1}  # ids unused
  run = loop.resume(run, workdir, data_iter)
  train_step = loop.train_step_for(run, fusion_loss_fn(config, weights), batch_ndims)
  state = loop.train(run, train_step, observe.SummaryWriter(os.path.join(workdir, 'tensorboard')))

  views = {'face only': single_view_probs(config.face_workdir, val),
           f'{config.region_view} only': single_view_probs(config.region_workdir, val)}
  # Late fusion, the baseline any fusion must beat: the mean of the two classifiers' probabilities.
  views['late fusion (mean of both views)'] = sum(views.values()) / 2
  fused = predict(graphdef, state, fixed, val, config.eval_batch_size, mesh)
  seeded = {f'fusion {m}': [fused[head_name(m, s)] for s in range(config.fusion.seeds)]
            for m in config.fusion.methods}
  test_list = os.path.join(root, abaw.TEST_LIST)
  test = test_probs = None
  if os.path.exists(test_list):
    test = features(abaw.load_test_set(root))
    test_probs = predict(graphdef, state, fixed, test, config.eval_batch_size, mesh)
  if not observe.is_chief():
    return {}

  report_dir = os.path.join(workdir, 'report')
  results, best = report.write_report(report_dir, val, views, list(config.windows),
                                      config.num_timelines, seeded)
  # The submission: the fused method of the best mean smoothed F1, its best seed on validation,
  # smoothed with the method's window.
  method = max(config.fusion.methods, key=lambda m: best[f'fusion {m}']['smoothed_f1'])
  chosen = best[f'fusion {method}']
  chosen = {'method': method, 'head': head_name(method, chosen['seed']), **chosen}
  report.atomic_write_text(os.path.join(report_dir, 'best.json'), json.dumps(chosen, indent=1))
  if test is not None:
    smoothed = smoothing.sliding_window_smooth(test_probs[chosen['head']], test['video'],
                                               test['frame'], chosen['window'])
    report.write_submission(os.path.join(report_dir, 'submission_expr.txt'), test['video'],
                            test['frame'], smoothed.argmax(-1))
  print(open(os.path.join(report_dir, 'results.md')).read())
  print(f'report written to {report_dir}')
  return results
