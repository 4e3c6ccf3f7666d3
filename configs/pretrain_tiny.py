"""Stage 1: MAE-Face pretraining, ViT-tiny."""

import ml_collections

from configs.common import model_config


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.program = 'pretrain'
  config.model = model_config('tiny', img_size=112)
  return config
