"""A tiny fine-tuning config for tests (img 32, patch 8, width 64, depth 2); data root by override."""

import ml_collections

from configs.finetune import finetune_config


def get_config() -> ml_collections.ConfigDict:
  config = finetune_config('eyes_mouth', 'tiny', img_size=32)
  config.model.update(patch_size=8, embed_dim=64, depth=2, num_heads=2)
  config.data.source = 'abaw'
  config.data.rand_augment = (2, 9.0, 0.5)
  config.batch_size = 8
  config.eval_batch_size = 16
  config.total_epochs, config.warmup_epochs, config.eval_epochs = None, None, None
  config.total_steps = 8
  config.eval_steps = 4
  config.base_lr = 1e-2
  config.log_steps = 1
  config.checkpoint_steps = 2
  config.async_checkpoints = False
  return config
