"""The end-to-end chain behind `python main.py`: every stage on the embedded demo data.

Stages run in `workdir/<stage>`; a stage that finished is not redone (its workdir resumes at its
last step), so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import os
import time
from typing import Any

from input_pipeline import demo_data
from mae_face_jax import checkpointing, observe, report, train_finetune, train_fusion, train_pretrain


STAGES = ('data', 'pretrain', 'finetune_face', 'finetune_region', 'fusion')


def run(config: Any, workdir: str) -> None:
  workdir = os.path.abspath(workdir)
  t0 = time.perf_counter()
  times: dict[str, float] = {}
  stages = STAGES + (('finetune_face_random_init', 'finetune_region_random_init')
                     if config.get('random_init_baseline') else ())
  expected = {k: float(config.expected_seconds.get(k.replace('_random_init', ''), 0.0))
              for k in stages}

  def stage(name: str, fn, *args) -> Any:
    # The machine's speed against the one `expected_seconds` was measured on, from the stages done.
    # (A stage that was already done and only resumed says nothing about the machine.)
    done = [k for k in times if expected[k] > 0 and times[k] > 0.2 * expected[k]]
    speed = sum(times[k] for k in done) / sum(expected[k] for k in done) if done else 1.0
    index = stages.index(name) + 1
    after = speed * sum(expected[k] for k in stages[index:])
    observe.set_chain_stage(name, index, len(stages), after)
    print(f'\n=== [{index}/{len(stages)}] {name}: about {observe.format_seconds(speed * expected[name])}'
          f'; all stages about {observe.format_seconds(speed * expected[name] + after)} left ===',
          flush=True)
    start = time.perf_counter()
    out = fn(*args)
    times[name] = time.perf_counter() - start
    if checkpointing.preempted():
      print(f'=== {name} stopped by a preemption notice after {times[name]:.0f} s (checkpoint '
            'saved); rerun the same command to resume ===', flush=True)
      raise SystemExit(0)
    print(f'=== {name} done in {times[name]:.0f} s ===', flush=True)
    return out

  root = config.data.root or os.path.join(workdir, 'demo_data')
  stage('data', demo_data.ensure_demo_data, root, config.demo_data.num_videos,
        tuple(config.demo_data.frames), config.demo_data.size)
  for key in ('pretrain', 'finetune_face', 'finetune_region', 'fusion'):
    config[key].data.root = root

  stage('pretrain', train_pretrain.train_and_evaluate, config.pretrain, os.path.join(workdir, 'pretrain'))
  best_f1 = {}
  for key in ('finetune_face', 'finetune_region'):
    config[key].init.pretrain_workdir = os.path.join(workdir, 'pretrain')
    best_f1[key] = stage(key, train_finetune.train_and_evaluate, config[key],
                         os.path.join(workdir, key))['macro_f1']
  config.fusion.face_workdir = os.path.join(workdir, 'finetune_face')
  config.fusion.region_workdir = os.path.join(workdir, 'finetune_region')
  stage('fusion', train_fusion.train_and_evaluate, config.fusion, os.path.join(workdir, 'fusion'))
  if config.get('random_init_baseline'):
    # The same fine-tuning from random initialisation: what stage-1 pretraining is worth.
    results = {}
    for key in ('finetune_face', 'finetune_region'):
      scratch = config[key].copy_and_resolve_references()
      scratch.init.pretrain_workdir = ''
      name = key + '_random_init'
      results[key] = (best_f1[key], stage(name, train_finetune.train_and_evaluate, scratch,
                                          os.path.join(workdir, name))['macro_f1'])
    write_pretraining_gain(workdir, config, results)
  observe.clear_chain()

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
