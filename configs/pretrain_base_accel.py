"""Stage 1 on GPU/TPU: ViT-base with bfloat16 compute (float32 master params and optimizer state)
and the backend's fused attention kernel where it has one (cuDNN on NVIDIA GPUs)."""

import ml_collections

from configs.pretrain_common import pretrain_config


def get_config() -> ml_collections.ConfigDict:
  config = pretrain_config('base', img_size=224)
  config.model.dtype = 'bfloat16'
  config.model.param_dtype = 'float32'
  # None = jax.nn.dot_product_attention picks (cuDNN flash attention on GPU when it applies, XLA
  # elsewhere); set 'cudnn' to insist on the fused kernel, 'xla' for the portable one.
  config.model.attention_impl = None
  config.data.num_workers = 8
  config.data.num_threads = 16
  return config
