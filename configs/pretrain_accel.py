"""Stage 1 on GPUs and TPUs: `--config=configs/pretrain_accel.py:<size>` (default base).

bfloat16 compute with float32 master weights and optimizer state, and the backend's best attention
('auto': cuDNN's fused kernel on NVIDIA GPUs, our Pallas kernel on TPUs). Large shards parameters
and optimizer state within 4 groups of devices that split the batch (data 4 x FSDP; on fewer than
4 devices set `--config.mesh.data=1`), huge over all devices (full FSDP).
"""

import ml_collections

from configs.pretrain import get_config as pretrain_get_config


def get_config(size: str = 'base') -> ml_collections.ConfigDict:
  config = pretrain_get_config(size)
  config.model.dtype = 'bfloat16'
  config.model.param_dtype = 'float32'
  config.model.attention_impl = 'auto'
  # The meshes XLA's cost model puts first on a v5p-64 (README, "Pod slices checked ahead of
  # time"): ViT-L data 4 x fsdp 16, all-gathers over 16 chips, ahead of 1 x 64 and 16 x 4; ViT-H
  # every device one FSDP group, just ahead of 4 x 16.
  if size == 'large':
    config.mesh.data, config.mesh.fsdp = 4, -1
  elif size == 'huge':
    config.mesh.data, config.mesh.fsdp = 1, -1
  config.data.num_workers = 8
  config.data.num_threads = 16
  return config
