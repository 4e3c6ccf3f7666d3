"""Stage 1: MAE-Face pretraining, ViT-tiny on the demo face videos (CPU-sized)."""

import ml_collections

from configs.pretrain_common import pretrain_config


def get_config() -> ml_collections.ConfigDict:
  config = pretrain_config('tiny', img_size=112)
  config.data.source = 'demo'
  config.batch_size = 64
  config.total_steps = 500
  config.warmup_steps = 50
  config.base_lr = 1.5e-4 * 8  # small models and batches like a larger lr; ~1.9e-3 at batch 64
  config.log_every = 25
  config.eval_every = 100
  config.checkpoint_every = 250
  return config
