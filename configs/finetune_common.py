"""The fine-tuning recipe every configs/finetune_<view>.py starts from (MAE's fine-tuning values,
ViT-B/16 at 224 px as MAE-Face; the demo overrides sizes and budgets)."""

import ml_collections

from configs.common import model_config
from configs.pretrain_common import pretrain_config


def finetune_config(view: str, size: str = 'base', img_size: int = 224) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.program = 'finetune'
  config.view = view  # face | eyes | mouth | eyes_mouth | eyes_nose_mouth
  config.seed = 0
  config.model = model_config(size, img_size=img_size)
  config.model.num_classes = 8
  config.model.global_pool = True   # mean of patch tokens + fc_norm, as MAE fine-tuning
  config.model.drop_path_rate = 0.1

  # Where the encoder comes from: one of these (the head is always new).
  config.init = ml_collections.ConfigDict(dict(
      pretrain_workdir='',   # a stage-1 workdir (its latest checkpoint)
      params_dir='',         # parameters written by `main.py --mode=import_torch`
      torch_checkpoint='',   # a PyTorch MAE / MAE-Face / timm checkpoint, imported directly
  ))

  config.data = ml_collections.ConfigDict(dict(
      source='abaw',          # abaw | demo
      root='',                # the Aff-Wild2 root (cropped_aligned/, EXPR_Classification_Challenge/)
      train_split='Train_Set',
      val_split='Validation_Set',
      region_fill=0,          # colour outside the kept regions
      region_margin=0.1,
      scale=(0.08, 1.0),      # RandomResizedCrop
      rand_augment=(2, 9.0, 0.5),  # RandAugment ops, magnitude 9, magnitude std 0.5
      erase_prob=0.25,
      class_balanced=False,   # sample classes equally instead of shuffling
      balance_power=1.0,
      crop_pct=0.875,         # evaluation: resize to size / crop_pct, centre crop
      num_workers=0,
      num_threads=2,
  ))

  # MAE fine-tuning: lr = base_lr * batch / 256, layer decay 0.65 (Base), AdamW(0.9, 0.999), wd 0.05,
  # warmup then cosine to min_lr, label smoothing 0.1. Mixup 0.8 / cutmix 1.0 are options here.
  config.batch_size = 256
  config.eval_batch_size = 256
  config.grad_accum_steps = 1
  config.num_epochs = 10.0
  config.warmup_epochs = 1.0
  config.total_steps = -1       # > 0 overrides num_epochs (counts batches)
  config.warmup_steps = -1      # >= 0 overrides warmup_epochs
  config.eval_every_steps = -1   # -1: every epoch
  config.base_lr = 5e-4
  config.min_lr = 1e-6
  config.layer_decay = 0.65
  config.optim = ml_collections.ConfigDict(dict(
      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05, grad_clip_norm=0.0))
  config.label_smoothing = 0.1
  config.mixup_alpha = 0.0
  config.cutmix_alpha = 0.0
  config.mix_prob = 1.0
  config.mix_switch_prob = 0.5
  # Aff-Wild2 is very imbalanced: none | inverse_frequency | sqrt_inverse_frequency | [8 numbers].
  config.class_weights = 'inverse_frequency'

  # Devices, hosts, logging and checkpoints as in pretraining.
  base = pretrain_config(size, img_size)
  config.mesh = base.mesh
  config.distributed = base.distributed
  config.log_every = 50
  config.checkpoint_every = 1000
  config.keep_checkpoints = 2
  config.async_checkpoints = True
  return config
