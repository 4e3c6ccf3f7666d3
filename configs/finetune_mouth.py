"""Stage 2: fine-tune the MAE-Face encoder (ViT-B/16) on the mouth view of Aff-Wild2."""

import ml_collections

from configs.finetune_common import finetune_config


def get_config() -> ml_collections.ConfigDict:
  return finetune_config('mouth')
