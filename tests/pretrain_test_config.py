"""A tiny pretraining config for tests (img 32, patch 8, width 64, depth 2): seconds on CPU."""

import ml_collections

from configs.pretrain import pretrain_config


def get_config() -> ml_collections.ConfigDict:
  config = pretrain_config('tiny', img_size=32)
  config.model.update(patch_size=8, embed_dim=64, depth=2, num_heads=2,
                      decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
  config.data.source = 'synthetic'
  config.batch_size = 8
  config.total_epochs, config.warmup_epochs = None, None
  config.total_steps = 3
  config.warmup_steps = 1
  config.base_lr = 1e-2  # big enough that 3 steps move the params visibly
  config.log_steps = 1
  config.eval_steps = None
  config.checkpoint_steps = None
  config.mesh.data = -1
  return config
