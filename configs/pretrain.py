"""Stage 1: MAE-Face pretraining with MAE's recipe: `--config=configs/pretrain.py:<size>`.

Sizes: tiny (ViT-Ti at 112 px on the embedded demo faces: a CPU run), small, base (the default;
set --config.data.root), large (FSDP over 4 devices), huge. Accelerator presets (bfloat16, fused
attention) are `configs/pretrain_accel.py:<size>`.
"""

import ml_collections

from configs.common import add_run_fields, mae_config


def pretrain_config(size: str = 'base', img_size: int = 224) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.program = 'pretrain'
  config.model = mae_config(size, img_size)
  config.data = ml_collections.ConfigDict(dict(
      source='abaw',  # abaw | folder | demo | synthetic (see mae_face_jax/inputs.py)
      root='',        # dataset root; for 'demo' empty means <workdir>/demo_data
      scale=(0.2, 1.0),
      num_workers=0,  # grain worker processes per host (mp_prefetch)
      num_threads=2,
  ))
  # MAE: effective batch 4096, base lr 1.5e-4, 800 epochs with 40 of warmup, AdamW(0.9, 0.95),
  # weight decay 0.05, half-cycle cosine.
  add_run_fields(config, betas=(0.9, 0.95))
  config.batch_size = 4096
  config.total_epochs = 800.0
  config.warmup_epochs = 40.0
  config.base_lr = 1.5e-4
  config.eval_steps = 1000        # the loss and reconstructions of 8 fixed images
  config.checkpoint_steps = 1000
  config.keep_checkpoints = 3
  return config


def get_config(size: str = 'base') -> ml_collections.ConfigDict:
  if size == 'tiny':
    config = pretrain_config('tiny', img_size=112)
    config.data.source = 'demo'
    config.batch_size = 64
    config.total_epochs = None
    config.warmup_epochs = None
    config.total_steps = 500
    config.warmup_steps = 50
    config.base_lr = 1.5e-4 * 8  # small models and batches like a larger lr
    config.log_steps = 25
    config.eval_steps = 100
    config.checkpoint_steps = 250
    return config
  config = pretrain_config(size)
  if size in ('large', 'huge'):
    config.mesh.fsdp = 4  # parameters and Adam moments sharded 4 ways beside the activations
  return config
