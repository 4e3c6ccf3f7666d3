"""Stage 1 on GPUs and TPUs: `--config=configs/pretrain_accel.py:<size>` (default base).

bfloat16 compute with float32 master weights and optimizer state, and the backend's best attention
('auto': cuDNN's fused kernel on NVIDIA GPUs, our Pallas kernel on TPUs). Base, large and huge
shard parameters and optimizer state within groups of 16 devices (FSDP) that split the batch
between them (data); on fewer than 16 devices set `--config.mesh.fsdp=-1` (FSDP over all of them)
or `--config.mesh.fsdp=1` (data parallel).
"""

import ml_collections

from configs.pretrain import get_config as pretrain_get_config


def get_config(size: str = 'base') -> ml_collections.ConfigDict:
  config = pretrain_get_config(size)
  config.model.dtype = 'bfloat16'
  config.model.param_dtype = 'float32'
  config.model.attention_impl = 'auto'
  # FSDP within groups of 16 devices, data parallel across them: first or within a point of the
  # first in XLA's cost model on a v5p-64 (README, "Pod slices checked ahead of time"), and a mesh
  # that every slice there can lay out (full FSDP over 512 chips cannot shard 1280-wide ViT-H).
  if size in ('base', 'large', 'huge'):
    config.mesh.data, config.mesh.fsdp = -1, 16
  config.data.num_workers = 8
  config.data.num_threads = 16
  return config
