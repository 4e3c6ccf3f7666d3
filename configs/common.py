"""Pieces every config shares: model fields, the run's devices, durations, optimizer and checkpoints.

A config file is a plain `get_config(arg)`; these helpers only fill in fields.

Durations (`mae_face_jax.loop.steps` turns them into step counts; a step is one optimizer update of
`batch_size × grad_accum_steps` examples): `total`, `warmup`, `log`, `eval` and `checkpoint`, each
given as exactly one of `<name>_steps`, `<name>_epochs` or `<name>_percent` (of the total); unset
fields are None. `log`, `eval` and `checkpoint` are cadences ("every N"); unset means only at the
end. On the command line, clear the spelling you replace:
`--config.total_epochs=None --config.total_steps=500`.
"""

import ml_collections
from ml_collections import config_dict

from mae_face_jax.models.vit import VIT_SIZES

# MAE's decoder is 512 wide, 8 blocks, 16 heads for Base and larger; smaller ones for CPU demos.
DECODER_SIZES = {'tiny': (128, 2, 4), 'small': (256, 4, 8)}
DURATIONS = ('total', 'warmup', 'log', 'eval', 'checkpoint')

# Logical axis → mesh axis. FSDP shards each matrix along its width; tiny tensors (biases, norm
# scales, cls/mask tokens) carry no logical axes and stay replicated.
FSDP_RULES = (
    ('embed', 'fsdp'),          # encoder width
    ('decoder_embed', 'fsdp'),  # decoder width
    ('heads', None),            # the other dimension of a matrix stays whole
    ('mlp', None),
    ('classes', None),
)


def _encoder_fields(size: str, img_size: int) -> dict:
  embed_dim, depth, num_heads, patch_size = VIT_SIZES[size]
  return dict(
      img_size=img_size, patch_size=patch_size, in_chans=3, embed_dim=embed_dim, depth=depth,
      num_heads=num_heads, mlp_ratio=4.0, drop_path_rate=0.0,
      # None lets JAX choose; 'cudnn': the fused kernel on NVIDIA GPUs; 'einsum': two einsums with
      # bf16-sized scores; 'pallas': our TPU kernel (interpreted elsewhere); 'auto': cudnn on
      # GPUs, pallas on TPUs, None on CPUs.
      attention_impl=config_dict.placeholder(str),
      remat='none',           # per block: 'none', 'dots' (keep linear outputs) or 'full'
      token_matmul='auto',    # linear layers over (B*N, D) 'flat' or (B, N, D) 'batched'; 'auto':
                              # batched on TPUs, flat elsewhere
      dtype='float32',        # compute dtype: 'bfloat16' on accelerators
      param_dtype='float32',  # master weights stay float32
  )


def vit_config(size: str, img_size: int = 224) -> ml_collections.ConfigDict:
  """The fields `VisionTransformer` takes (every one of them: a field it lacks is an error)."""
  return ml_collections.ConfigDict(_encoder_fields(size, img_size) | dict(
      num_classes=0,
      global_pool=True,  # mean of patch tokens + fc_norm, as MAE fine-tuning
  ))


def mae_config(size: str, img_size: int = 224) -> ml_collections.ConfigDict:
  """The fields `MaskedAutoencoder` takes."""
  dec_dim, dec_depth, dec_heads = DECODER_SIZES.get(size, (512, 8, 16))
  return ml_collections.ConfigDict(_encoder_fields(size, img_size) | dict(
      decoder_embed_dim=dec_dim, decoder_depth=dec_depth, decoder_num_heads=dec_heads,
      mask_ratio=0.75, norm_pix_loss=True,
  ))


def add_run_fields(config: ml_collections.ConfigDict, *, betas: tuple[float, float]) -> None:
  """Seed, devices and hosts, durations, AdamW, logging and checkpoints: what every program reads."""
  config.seed = 0
  # Devices: data parallel over everything by default; fsdp > 1 shards params and optimizer state.
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, rules=FSDP_RULES))
  config.distributed = ml_collections.ConfigDict(dict(
      enabled=False,  # also on when JAX_COORDINATOR_ADDRESS is set; TPU pods auto-detect the rest
      coordinator_address=config_dict.placeholder(str),
      num_processes=config_dict.placeholder(int),
      process_id=config_dict.placeholder(int),
      cpu_collectives='gloo',
  ))
  config.batch_size = 256       # the GLOBAL batch, over all hosts and devices
  config.grad_accum_steps = 1   # micro-batches per optimizer update (effective batch = product)
  for name in DURATIONS:
    config[f'{name}_steps'] = config_dict.placeholder(int)
    config[f'{name}_epochs'] = config_dict.placeholder(float)
    config[f'{name}_percent'] = config_dict.placeholder(float)
  config.log_steps = 50
  config.base_lr = 1e-3         # lr = base_lr × batch_size × grad_accum_steps / 256
  config.min_lr = 0.0
  config.optim = ml_collections.ConfigDict(dict(
      b1=betas[0], b2=betas[1], eps=1e-8, weight_decay=0.05, grad_clip_norm=0.0))
  config.keep_checkpoints = 2
  config.async_checkpoints = True
  config.compilation_cache_dir = config_dict.placeholder(str)  # None: <workdir>/jax_cache; '': off
