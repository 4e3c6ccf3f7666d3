"""Readings of the paper's fusion head measured on the demo, over seeds, beside both single views.

Claim: the default reading (`configs/fusion.py`, as the demo sets it) is the one of best mean
validation macro F1 over seeds among the readings below, and its best key generator beats the
better single view by more than the seeds' standard deviation, raw and smoothed.

Each reading is the demo's fusion stage with a few config values changed (which view is main,
where the attention's values come from, which block the auxiliary tokens come from, whether the
pooled output also sees the auxiliary view, how the heads start, their budget), run on the frozen
encoders of a finished main job (`python main.py --workdir=DIR` first) into
`DIR/fusion_readings/<reading>`, `--seeds` heads of each key generator in `--methods` (a
finished reading is read back, not rerun). Prints and writes `DIR/fusion_readings/readings.md`: per reading, each
key generator's mean ± standard deviation over seeds, raw and smoothed (window chosen on
validation), and the rows of the two single views and of late fusion.

    python benchmarks/fusion_readings.py --workdir=workdir/demo [--seeds 3] [--only a,b]
        [--methods concat]
"""

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import demo  # pylint: disable=g-import-not-at-top
from mae_face_jax import observe, report  # pylint: disable=g-import-not-at-top

_WORKDIR = flags.DEFINE_string('workdir', 'workdir/demo', 'a finished main job\'s workdir')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'heads per key generator, each its own init and order')
_ONLY = flags.DEFINE_list('only', [], 'run only these readings (names below)')
_METHODS = flags.DEFINE_list('methods', ['concat'], 'key generators of each reading (the paper\'s '
                             'strongest by default; the main job runs all four)')

# name → (what it reads, config overrides). Fields not named keep the demo's fusion config.
READINGS = {
    'keys_only_block2': ('face main; values from the face; aux tokens after block 2; starts as '
                         'the face classifier',
                         dict(aux_blocks=2, main_view='face', values_from='main', pool='main',
                              init='main_view')),
    'keys_only': ('as above, aux tokens from the last block',
                  dict(aux_blocks=-1, main_view='face', values_from='main', pool='main',
                       init='main_view')),
    'both_values': ('face main; keys and values over both views\' tokens',
                    dict(aux_blocks=-1, main_view='face', values_from='both', pool='main',
                         init='main_view')),
    'region_main': ('eyes+mouth main, face auxiliary; values from the main view',
                    dict(aux_blocks=-1, main_view='region', values_from='main', pool='main',
                         init='main_view')),
    'pool_both': ('face main; values from the face; the head also sees the pooled aux tokens, '
                  'starting as the mean of both classifiers',
                  dict(aux_blocks=-1, main_view='face', values_from='main', pool='both',
                       init='both_views')),
    'both_values_pool_both': ('face main; keys and values over both views; pooled aux tokens; '
                              'starts as the mean of both classifiers',
                              dict(aux_blocks=-1, main_view='face', values_from='both', pool='both',
                                   init='both_views')),
    'region_main_both_values': ('eyes+mouth main, face auxiliary; keys and values over both '
                                'views\' tokens',
                                dict(aux_blocks=-1, main_view='region', values_from='both',
                                     pool='main', init='main_view')),
    'region_main_both_pool_both': ('eyes+mouth main; keys and values over both views; pooled '
                                   'aux tokens; starts as the mean of both classifiers',
                                   dict(aux_blocks=-1, main_view='region', values_from='both',
                                        pool='both', init='both_views')),
    'both_values_pool_both_random': ('as above, heads from random initialisation',
                                     dict(aux_blocks=-1, main_view='face', values_from='both',
                                          pool='both', init='random')),
    'both_values_pool_both_1ep': ('both_values_pool_both, half the training budget (1 epoch)',
                                  dict(aux_blocks=-1, main_view='face', values_from='both',
                                       pool='both', init='both_views', total_epochs=1.0)),
}


def reading_config(workdir: str, overrides: dict, seeds: int, methods: list[str]):
  config = demo.get_config().fusion
  config.data.root = os.path.join(workdir, 'demo_data')
  config.face_workdir = os.path.join(workdir, 'finetune_face')
  config.region_workdir = os.path.join(workdir, 'finetune_region')
  config.fusion.seeds = seeds
  config.fusion.methods = tuple(methods)
  for key, value in overrides.items():
    if key in config.fusion:
      config.fusion[key] = value
    else:
      config[key] = value
  return config


def fmt(row: dict) -> str:
  std = row.get('macro_f1_std')
  return f'{100 * row["macro_f1"]:.2f}' + ('' if std is None else f' ± {100 * std:.2f}')


def main(argv):
  del argv
  from mae_face_jax import train_fusion  # after flags: JAX starts here
  workdir = os.path.abspath(_WORKDIR.value)
  for stage in ('finetune_face', 'finetune_region'):
    if not os.path.exists(os.path.join(workdir, stage, 'best')):
      raise app.UsageError(f'{workdir}/{stage}/best is missing: run python main.py '
                           f'--workdir={_WORKDIR.value} first')
  out_dir = os.path.join(workdir, 'fusion_readings')
  names = _ONLY.value or list(READINGS)
  unknown = sorted(set(names) - set(READINGS))
  if unknown:
    raise app.UsageError(f'--only: unknown readings {unknown}; known: {list(READINGS)}')
  tables, cache = {}, {}  # token features shared by the readings that read the same tokens
  for name in names:
    run_dir = os.path.join(out_dir, name)
    results_path = os.path.join(run_dir, 'report', 'results.json')
    if not os.path.exists(results_path):
      print(f'=== reading {name}: {READINGS[name][0]} ===', flush=True)
      config = reading_config(workdir, READINGS[name][1], _SEEDS.value, _METHODS.value)
      train_fusion.train_and_evaluate(config, run_dir, cache)
    tables[name] = json.load(open(results_path))
  if not observe.is_chief():
    return

  lines = ['| reading | row | raw macro F1 | smoothed macro F1 |', '|---|---|---|---|']
  first = tables[names[0]]
  smoothed_of = lambda table, row: next(v for k, v in table.items()
                                        if k.startswith(f'{row} + smoothing'))
  for row in first:  # the single views and late fusion: the same in every reading
    if not row.startswith(('fusion', 'chance')) and '+ smoothing' not in row:
      lines.append(f'| (views) | {row} | {fmt(first[row])} | {fmt(smoothed_of(first, row))} |')
  for name in names:
    table = tables[name]
    for row in table:
      if row.startswith('fusion') and '+ smoothing' not in row:
        lines.append(f'| {name} | {row} | {fmt(table[row])} | {fmt(smoothed_of(table, row))} |')
  text = ('Validation macro F1 (%) on the demo, mean ± standard deviation over '
          f'{_SEEDS.value} seeds (`python benchmarks/fusion_readings.py`).\n\n' +
          '\n'.join(f'- `{n}`: {READINGS[n][0]}' for n in names) + '\n\n' + '\n'.join(lines) + '\n')
  os.makedirs(out_dir, exist_ok=True)
  report.atomic_write_text(os.path.join(out_dir, 'readings.md'), text)
  print(text)


if __name__ == '__main__':
  app.run(main)
