"""The pretraining recipe every configs/pretrain_*.py starts from (MAE's values)."""

import ml_collections

from configs.common import model_config


def pretrain_config(size: str, img_size: int = 224) -> ml_collections.ConfigDict:
  """Stage-1 MAE pretraining with the MAE recipe; the size files override what differs."""
  config = ml_collections.ConfigDict()
  config.program = 'pretrain'
  config.model = model_config(size, img_size=img_size)
  config.seed = 0

  # Data: per-host shards of `batch_size` (the GLOBAL batch, over all hosts and devices).
  config.data = ml_collections.ConfigDict(dict(
      source='abaw',  # abaw | folder | demo | synthetic (see mae_face_jax/pretrain_data.py)
      root='',        # dataset root; for 'demo' empty means <workdir>/demo_data
      scale=(0.2, 1.0),
      num_workers=0,  # grain worker processes per host (mp_prefetch)
      num_threads=2,
  ))

  # MAE recipe: effective batch 4096, base lr 1.5e-4 (lr = base_lr * batch / 256), 800 epochs,
  # 40 warmup, AdamW(0.9, 0.95), weight decay 0.05, half-cycle cosine.
  config.batch_size = 4096
  config.grad_accum_steps = 1   # micro-batches per optimizer update (effective batch = product)
  config.num_epochs = 800
  config.warmup_epochs = 40
  config.total_steps = -1       # > 0 overrides num_epochs (counts batches)
  config.warmup_steps = -1      # >= 0 overrides warmup_epochs
  config.base_lr = 1.5e-4
  config.min_lr = 0.0
  config.optim = ml_collections.ConfigDict(dict(
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05, grad_clip_norm=0.0))

  # Devices: data-parallel over everything by default; fsdp > 1 shards params/optimizer state.
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  config.distributed = ml_collections.ConfigDict(dict(
      enabled=False,  # also on when JAX_COORDINATOR_ADDRESS is set; TPU pods auto-detect the rest
      coordinator_address=ml_collections.config_dict.placeholder(str),
      num_processes=ml_collections.config_dict.placeholder(int),
      process_id=ml_collections.config_dict.placeholder(int),
      cpu_collectives='gloo',
  ))

  # Observation and checkpoints.
  config.log_every = 50
  config.eval_every = 1000
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3
  config.async_checkpoints = True
  return config
