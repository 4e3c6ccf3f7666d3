"""The whole system on the embedded demo data, sized for a 2-core CPU: `python main.py`.

Data generation → stage-1 MAE pretraining → fine-tuning of the face and eyes+mouth encoders from
the stage-1 encoder → attention-fusion heads (four key generators) → smoothing → report.
Each stage's config is a field here; each stage can also run alone with its own config file.
"""

import ml_collections

from configs.finetune import finetune_config
from configs.fusion import fusion_config
from configs.pretrain import pretrain_config

SIZE, IMG = 'tiny', 112
ENCODER = dict(depth=6)  # ViT-Ti width (192, 3 heads) at half depth: minutes on two CPU cores


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.program = 'demo'
  config.workdir = 'workdir/demo'  # used when --workdir is not given
  config.data = ml_collections.ConfigDict(dict(source='demo', root=''))
  # True: also fine-tune both views from random init on the same budget and write
  # pretraining_gain.md (what stage 1 is worth); stages already done are not redone.
  config.random_init_baseline = False

  pre = pretrain_config(SIZE, IMG)
  pre.model.update(ENCODER)
  pre.data.update(config.data)
  pre.batch_size = 64
  pre.total_epochs, pre.warmup_epochs = None, None
  pre.total_steps = 400
  pre.warmup_steps = 40
  pre.base_lr = 1.5e-4 * 8
  pre.log_steps = 50
  pre.eval_steps = 100
  pre.checkpoint_steps = 200
  config.pretrain = pre

  for name, view in (('finetune_face', 'face'), ('finetune_region', 'eyes_mouth')):
    ft = finetune_config(view, SIZE, IMG)
    ft.model.update(ENCODER)
    ft.data.update(config.data)
    ft.batch_size = 32                # more, smaller steps: the demo is step-bound, not data-bound
    ft.eval_batch_size = 128
    ft.total_epochs = 3.0
    ft.warmup_epochs = 0.5
    ft.base_lr = 6e-3
    ft.layer_decay = 0.85             # 6 blocks, not ViT-B's 12: lower blocks still need to move
    # Milder augmentation than ImageNet's: the demo's expression cues are a few pixels wide and
    # read against the aligned face's geometry, which large random zooms and the evaluation's
    # centre crop would blur.
    ft.data.scale = (0.85, 1.0)
    ft.data.crop_pct = 1.0
    ft.data.rand_augment = None
    ft.data.erase_prob = 0.0
    ft.class_weights = 'sqrt_inverse_frequency'
    ft.log_steps = 25
    ft.checkpoint_steps = 200
    config[name] = ft

  fu = fusion_config('eyes_mouth', SIZE, IMG)
  fu.model.update(ENCODER)
  fu.data.update(config.data)
  fu.aux_blocks = 2                 # lower-level auxiliary features
  fu.fusion.num_heads = 3
  fu.cache_features = True          # the demo's tokens fit in memory
  fu.class_weights = 'sqrt_inverse_frequency'  # as the face classifier each head starts from
  fu.batch_size = 128
  fu.eval_batch_size = 256
  fu.total_epochs = 2.0
  fu.log_steps = 50
  config.fusion = fu
  return config
