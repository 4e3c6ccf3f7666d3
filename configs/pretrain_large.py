"""Stage 1: MAE-Face pretraining, ViT-large (MAE recipe; set --config.data.root). Params and
optimizer state are sharded 4-way (FSDP) so ViT-L fits comfortably next to its activations."""

import ml_collections

from configs.pretrain_common import pretrain_config


def get_config() -> ml_collections.ConfigDict:
  config = pretrain_config('large', img_size=224)
  config.mesh.fsdp = 4
  return config
