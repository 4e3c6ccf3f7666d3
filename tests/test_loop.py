"""The shared training core: durations, and gradient accumulation equal to the big batch in the
pretraining and fine-tuning programs (fusion's: tests/test_train_fusion.py)."""

import os

import jax
import ml_collections
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from input_pipeline import abaw, demo_data
from mae_face_jax import checkpointing, loop, train_finetune, train_pretrain
from mae_face_jax.train_state import flatten
from tests import finetune_test_config, pretrain_test_config


def _durations_config(**fields):
  config = ml_collections.ConfigDict({'batch_size': 10, 'grad_accum_steps': 2})
  from configs.common import DURATIONS
  for name in DURATIONS:
    for unit in loop.UNITS:
      config[f'{name}_{unit}'] = None
  config.update(fields)
  return config


def test_durations_in_steps_epochs_and_percent():
  d = loop.durations(_durations_config(total_epochs=3.0, warmup_percent=10.0, log_steps=5,
                                       eval_epochs=1.0), examples_per_epoch=1000)
  # A step is batch_size × grad_accum_steps = 20 examples: 50 steps an epoch.
  assert (d.total, d.warmup, d.log, d.eval, d.checkpoint) == (150, 15, 5, 50, None)
  assert d.due(d.eval, 100) and not d.due(d.eval, 101) and d.due(None, 150)
  assert loop.durations(_durations_config(total_steps=7, warmup_steps=100), None).warmup == 7
  assert loop.durations(_durations_config(total_steps=7, log_epochs=0.001), 1000).log == 1


def test_durations_refuse_two_spellings_and_no_length():
  with pytest.raises(ValueError, match=r'total_steps=5, total_epochs=2.0: set one of them'):
    loop.durations(_durations_config(total_steps=5, total_epochs=2.0), 1000)
  with pytest.raises(ValueError, match='no length'):
    loop.durations(_durations_config(), 1000)
  with pytest.raises(ValueError, match='total_epochs=1.0: this data source has no epoch length'):
    loop.durations(_durations_config(total_epochs=1.0), None)


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
  return demo_data.ensure_demo_data(str(tmp_path_factory.mktemp('demo')), num_videos=6,
                                    frames=(16, 24), size=48)


def _lrs(workdir):
  acc = EventAccumulator(os.path.join(workdir, 'tensorboard'))
  acc.Reload()
  return [(e.step, e.value) for e in acc.Scalars('train/lr')]


def assert_accumulation_equals_the_big_batch(tmp_path, make_config, train, frames):
  """k=2 micro-batches of 8 and one batch of 16, epochs for 4 updates: the same number of updates,
  the same lr at every update, the same parameters (fp32)."""
  runs = {}
  for name, batch, accum in (('micro', 8, 2), ('big', 16, 1)):
    config = make_config()
    config.batch_size, config.grad_accum_steps = batch, accum
    config.total_steps, config.warmup_steps = None, None
    config.total_epochs, config.warmup_percent = 4.5 * 16 / frames, 50.0
    runs[name] = str(tmp_path / name)
    train(config, runs[name])
  (pm, step_m), (pb, step_b) = (checkpointing.load_pretrained_params(d) for d in runs.values())
  assert step_m == step_b == 4
  lr_m, lr_b = _lrs(runs['micro']), _lrs(runs['big'])
  assert [s for s, _ in lr_m] == [1, 2, 3, 4]
  np.testing.assert_allclose([v for _, v in lr_m], [v for _, v in lr_b], rtol=1e-6)
  assert len({v for _, v in lr_m}) > 2  # warmup and decay: the comparison is not of constants
  fm, fb = flatten(pm), flatten(pb)
  assert fm.keys() == fb.keys()
  for k in fm:
    np.testing.assert_allclose(fm[k], fb[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_pretraining_accumulation_equals_the_big_batch(tmp_path, demo_root):
  def make_config():
    config = pretrain_test_config.get_config()
    config.data.source, config.data.root = 'demo', demo_root
    return config
  assert_accumulation_equals_the_big_batch(tmp_path, make_config, train_pretrain.train_and_evaluate,
                                           len(abaw.load_frames(demo_root)))


def test_finetuning_accumulation_equals_the_big_batch(tmp_path, demo_root):
  # Class-weighted loss (micro-batches have other class mixes than the big batch), RandAugment on;
  # drop path off and no mixup, whose draws are per batch rather than per example.
  def make_config():
    config = finetune_test_config.get_config()
    config.data.root = demo_root
    config.model.drop_path_rate = 0.0
    config.eval_steps = None
    return config
  assert_accumulation_equals_the_big_batch(tmp_path, make_config, train_finetune.train_and_evaluate,
                                           len(abaw.load_split(demo_root, 'Train_Set')))
