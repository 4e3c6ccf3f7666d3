"""Stage 2: fine-tune the MAE-Face encoder on one view: `--config=configs/finetune.py:<view>[,<size>]`.

Views: face (default), eyes, mouth, eyes_mouth, eyes_nose_mouth; size default base (ViT-B/16 at
224 px, as MAE-Face). MAE's fine-tuning recipe; point `init` at the stage-1 weights.
"""

import ml_collections

from configs.common import add_run_fields, vit_config

VIEWS = ('face', 'eyes', 'mouth', 'eyes_mouth', 'eyes_nose_mouth')


def finetune_config(view: str = 'face', size: str = 'base', img_size: int = 224
                    ) -> ml_collections.ConfigDict:
  if view not in VIEWS:
    raise ValueError(f'configs/finetune.py: view {view!r} is not one of {VIEWS}')
  config = ml_collections.ConfigDict()
  config.program = 'finetune'
  config.view = view
  config.model = vit_config(size, img_size)
  config.model.num_classes = 8
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

  # MAE fine-tuning: base lr 5e-4, layer decay 0.65 (Base), AdamW(0.9, 0.999), weight decay 0.05,
  # warmup then cosine to min_lr, label smoothing 0.1; mixup 0.8 / cutmix 1.0 are options here.
  add_run_fields(config, betas=(0.9, 0.999))
  config.eval_batch_size = 256
  config.total_epochs = 10.0
  config.warmup_epochs = 1.0
  config.eval_epochs = 1.0
  config.checkpoint_steps = 1000
  config.base_lr = 5e-4
  config.min_lr = 1e-6
  config.layer_decay = 0.65
  config.label_smoothing = 0.1
  config.mixup_alpha = 0.0
  config.cutmix_alpha = 0.0
  config.mix_prob = 1.0
  config.mix_switch_prob = 0.5
  # Aff-Wild2 is very imbalanced: none | inverse_frequency | sqrt_inverse_frequency | [8 numbers].
  config.class_weights = 'inverse_frequency'
  return config


def get_config(arg: str = 'face') -> ml_collections.ConfigDict:
  view, _, size = arg.partition(',')
  return finetune_config(view, size or 'base')
