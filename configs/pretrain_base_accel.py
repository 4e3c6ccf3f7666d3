"""Stage 1 on GPU/TPU: ViT-base with bfloat16 compute (float32 master params and optimizer state)
and the backend's fused attention kernel where it has one (cuDNN on NVIDIA GPUs)."""

import ml_collections

from configs.pretrain_common import pretrain_config


def get_config() -> ml_collections.ConfigDict:
  config = pretrain_config('base', img_size=224)
  config.model.dtype = 'bfloat16'
  config.model.param_dtype = 'float32'
  # 'auto': cuDNN flash attention on NVIDIA GPUs, XLA's attention on TPU (which fuses it itself);
  # jax.nn.dot_product_attention's own default (None) is always XLA in this JAX version.
  config.model.attention_impl = 'auto'

  config.data.num_workers = 8
  config.data.num_threads = 16
  return config
