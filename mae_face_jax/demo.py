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
from mae_face_jax import train_finetune, train_fusion, train_pretrain


def run(config: Any, workdir: str) -> None:
  workdir = os.path.abspath(workdir)
  t0 = time.perf_counter()
  times = {}

  def stage(name: str, fn, stage_config: Any) -> Any:
    start = time.perf_counter()
    print(f'\n=== {name} ===', flush=True)
    out = fn(stage_config, os.path.join(workdir, name))
    times[name] = time.perf_counter() - start
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
  for key in ('finetune_face', 'finetune_region'):
    config[key].init.pretrain_workdir = os.path.join(workdir, 'pretrain')
    stage(key, train_finetune.train_and_evaluate, config[key])
  config.fusion.face_workdir = os.path.join(workdir, 'finetune_face')
  config.fusion.region_workdir = os.path.join(workdir, 'finetune_region')
  stage('fusion', train_fusion.train_and_evaluate, config.fusion)

  total = time.perf_counter() - t0
  print('\nstage times: ' + ', '.join(f'{k} {v:.0f} s' for k, v in times.items()) +
        f'; total {total:.0f} s')
  print(f'report: {os.path.join(workdir, "fusion", "report")}/results.md, plots and '
        'submission_expr.txt beside it')
