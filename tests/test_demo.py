"""The main job's chain end to end (`configs/demo.py:smoke`, a tiny version of it, run once by the
`smoke_demo` fixture through main.py): what the console shows, what the workdir's log keeps, and
that every stage ran."""

import os
import re

import orbax.checkpoint
import grain
import tensorflow_datasets

from configs import demo as demo_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# absl's line prefix: level letter, date, time, thread, file:line]
ABSL_LINE = re.compile(r'^([IWEF])\d{4} [\d:.]+ +\d+ ([\w.]+):\d+\] ')


def _library_files(*modules) -> set[str]:
  """Base names of the libraries' source files, less any our own repo also has."""
  names = set()
  for m in modules:
    for _, _, files in os.walk(os.path.dirname(m.__file__)):
      names |= {f for f in files if f.endswith('.py')}
  for package in ('mae_face_jax', 'input_pipeline', 'configs', 'tests', 'benchmarks'):
    for _, _, files in os.walk(os.path.join(ROOT, package)):
      names -= set(files)
  return names


def _info_lines(text: str, files: set[str]) -> list[str]:
  return [line for line in text.splitlines()
          if (m := ABSL_LINE.match(line)) and m[1] == 'I' and m[2] in files]


def test_main_job_console_has_stages_and_etas_but_no_library_info(smoke_demo):
  workdir, out = smoke_demo
  console = out.stdout + out.stderr
  assert out.returncode == 0, console[-3000:]
  library = _library_files(orbax.checkpoint, grain, tensorflow_datasets)
  assert 'checkpoint_manager.py' in library
  log = (workdir / 'log.txt').read_text()
  assert _info_lines(log, library), 'the workdir log should keep the libraries\' INFO lines'
  assert _info_lines(console, library) == []

  stages = demo_config.get_config('smoke').expected_seconds.keys()
  for i, name in enumerate(['data', 'pretrain', 'finetune_face', 'finetune_region', 'fusion'], 1):
    assert name in stages
    assert re.search(rf'=== \[{i}/5\] {name}: about [\d:]+; all stages about [\d:]+ left ===',
                     console), name
    assert f'=== {name} done in ' in console
  # Every training stage's progress line carries its ETA and the whole chain's.
  progress = [l for l in console.splitlines() if l.startswith('step ')]
  assert progress and all(re.search(r'\| ETA [\d:]+ \| stage \d/5 \w+, all stages ETA [\d:]+$', l)
                          for l in progress), progress
  assert (workdir / 'fusion' / 'report' / 'results.md').exists()
