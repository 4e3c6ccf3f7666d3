"""Stage 1 on GPUs and TPUs: `--config=configs/pretrain_accel.py:<size>` (default base).

bfloat16 compute with float32 master weights and optimizer state, and the backend's best attention
('auto': cuDNN's fused kernel on NVIDIA GPUs, einsums with bf16-sized scores on TPUs); large and
huge shard parameters and optimizer state over all devices (full FSDP).
"""

import ml_collections

from configs.pretrain import get_config as pretrain_get_config


def get_config(size: str = 'base') -> ml_collections.ConfigDict:
  config = pretrain_get_config(size)
  config.model.dtype = 'bfloat16'
  config.model.param_dtype = 'float32'
  config.model.attention_impl = 'auto'
  if size in ('large', 'huge'):
    # Parameters and Adam moments sharded over every device (full FSDP): XLA's cost model puts
    # ViT-L ahead of fsdp=4 on a v5p-64 (README, "Pod slices checked ahead of time").
    config.mesh.data, config.mesh.fsdp = 1, -1
  config.data.num_workers = 8
  config.data.num_threads = 16
  return config
