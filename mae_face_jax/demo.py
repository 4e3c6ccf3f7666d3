"""The end-to-end chain behind `python main.py`: every stage on the embedded demo data.

Stages run in `workdir/<stage>`; a stage that finished is not redone (its workdir resumes at its
last step), so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import os
import time
from typing import Any

from absl import logging

from input_pipeline import demo_data
from mae_face_jax import checkpointing, report, train_finetune, train_fusion, train_pretrain


def run(config: Any, workdir: str) -> None:
  workdir = os.path.abspath(workdir)
  t0 = time.perf_counter()
  times = {}

  def stage(name: str, fn, stage_config: Any) -> Any:
    start = time.perf_counter()
    print(f'\n=== {name} ===', flush=True)
    out = fn(stage_config, os.path.join(workdir, name))
    times[name] = time.perf_counter() - start
    if checkpointing.preempted():
      print(f'=== {name} stopped by a preemption notice after {times[name]:.0f} s (checkpoint '
            'saved); rerun the same command to resume ===', flush=True)
      raise SystemExit(0)
    print(f'=== {name} done in {times[name]:.0f} s ===', flush=True)
    return out

  root = config.data.root or os.path.join(workdir, 'demo_data')
  start = time.perf_counter()
  demo_data.ensure_demo_data(root)
  times['data'] = time.perf_counter() - start
  logging.info('demo data in %s (%.0f s)', root, times['data'])
  for key in ('pretrain', 'finetune_face', 'finetune_region', 'fusion'):
    config[key].data.root = root

  stage('pretrain', train_pretrain.train_and_evaluate, config.pretrain)
  best_f1 = {}
  for key in ('finetune_face', 'finetune_region'):
    config[key].init.pretrain_workdir = os.path.join(workdir, 'pretrain')
    best_f1[key] = stage(key, train_finetune.train_and_evaluate, config[key])['macro_f1']
  config.fusion.face_workdir = os.path.join(workdir, 'finetune_face')
  config.fusion.region_workdir = os.path.join(workdir, 'finetune_region')
  stage('fusion', train_fusion.train_and_evaluate, config.fusion)
  if config.get('random_init_baseline'):
    # The same fine-tuning from random initialisation: what stage-1 pretraining is worth.
    results = {}
    for key in ('finetune_face', 'finetune_region'):
      scratch = config[key].copy_and_resolve_references()
      scratch.init.pretrain_workdir = ''
      results[key] = (best_f1[key],
                      stage(key + '_random_init', train_finetune.train_and_evaluate, scratch)['macro_f1'])
    write_pretraining_gain(workdir, config, results)

  total = time.perf_counter() - t0
  print('\nstage times: ' + ', '.join(f'{k} {v:.0f} s' for k, v in times.items()) +
        f'; total {total:.0f} s')
  print(f'report: {os.path.join(workdir, "fusion", "report")}/results.md, plots and '
        'submission_expr.txt beside it')
  if config.get('random_init_baseline'):
    print(f'pretrained vs random init: {os.path.join(workdir, "pretraining_gain.md")}')


def write_pretraining_gain(workdir: str, config: Any, results: dict[str, tuple[float, float]]) -> None:
  """A table of best validation macro F1, fine-tuned from the stage-1 encoder vs from random init."""
  lines = ['| view | from stage 1 (%d steps) | from random init | gain |' % config.pretrain.total_steps,
           '|---|---|---|---|']
  for key, (pretrained, scratch) in results.items():
    lines.append(f'| {config[key].view} | {100 * pretrained:.2f} | {100 * scratch:.2f} | '
                 f'{100 * (pretrained - scratch):+.2f} |')
  text = ('Best validation macro F1 (%) of the same fine-tuning budget, '
          f'{config.finetune_face.total_epochs:g} epochs a view:\n\n' + '\n'.join(lines) + '\n')
  report.atomic_write_text(os.path.join(workdir, 'pretraining_gain.md'), text)
  print('\n' + text)
