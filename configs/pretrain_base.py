"""Stage 1: MAE-Face pretraining, ViT-base (MAE recipe; set --config.data.root)."""

import ml_collections

from configs.pretrain_common import pretrain_config


def get_config() -> ml_collections.ConfigDict:
  return pretrain_config('base', img_size=224)
