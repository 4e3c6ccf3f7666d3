"""A tiny fusion config for tests (the encoders of tests/finetune_test_config.py); the data root
and the two fine-tuning workdirs by override."""

import ml_collections

from configs.fusion import fusion_config
from tests import finetune_test_config


def get_config() -> ml_collections.ConfigDict:
  ft = finetune_test_config.get_config()
  config = fusion_config('eyes_mouth', 'tiny', 32)
  config.model = ft.model
  config.model.drop_path_rate = 0.0
  config.data = ft.data
  config.aux_blocks = 1
  config.fusion.num_heads = 2
  config.fusion.seeds = 2
  config.cache_features = True
  config.batch_size = 8
  config.eval_batch_size = 16
  config.total_epochs = None
  config.total_steps = 6
  config.log_steps = 1
  config.checkpoint_steps = 2
  config.async_checkpoints = False  # a step's checkpoint is on disk before the next step runs
  config.windows = (1, 3, 5)
  return config
