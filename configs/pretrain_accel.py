"""Stage 1 on GPUs and TPUs: `--config=configs/pretrain_accel.py:<size>` (default base).

bfloat16 compute with float32 master weights and optimizer state, and the backend's best attention
('auto': cuDNN's fused kernel on NVIDIA GPUs, our Pallas kernel on TPUs). Large and huge shard
parameters and optimizer state over groups of a quarter of the devices (FSDP) and split the batch
over 4 such groups (data); on fewer than 4 devices set `--config.mesh.data=1`.
"""

import ml_collections

from configs.pretrain import get_config as pretrain_get_config


def get_config(size: str = 'base') -> ml_collections.ConfigDict:
  config = pretrain_get_config(size)
  config.model.dtype = 'bfloat16'
  config.model.param_dtype = 'float32'
  config.model.attention_impl = 'auto'
  if size in ('large', 'huge'):
    # XLA's cost model puts data 4 x fsdp 16 ahead of full FSDP (1 x 64) and of 16 x 4 for ViT-L
    # on a v5p-64: all-gathers over 16 chips instead of 64, with the state still a sixteenth a chip
    # (README, "Pod slices checked ahead of time").
    config.mesh.data, config.mesh.fsdp = 4, -1
  config.data.num_workers = 8
  config.data.num_threads = 16
  return config
