"""The whole system on the embedded demo data, sized for a 2-core CPU: `python main.py`.

Data generation → stage-1 MAE pretraining → fine-tuning of the face and eyes+mouth encoders from
the stage-1 encoder → attention-fusion heads (four key generators) → smoothing → report.
Each stage's config is a field here; each stage can also run alone with its own config file.
`--config=configs/demo.py:smoke` is the same chain on a few tiny videos with a tiny model (seconds a
stage: checks that every stage runs, learns nothing).
"""

import ml_collections
from ml_collections import config_dict

from configs.finetune import finetune_config
from configs.fusion import fusion_config
from configs.pretrain import pretrain_config

# 96 px faces (6×6 patches of 16) and a ViT 128 wide (2 heads of 64), 4 blocks deep: each stage
# about a minute on two CPU cores. Measured against 112 px and ViT-Ti's 192 width at 6 blocks, it
# reaches a higher validation macro F1 in the same 3 fine-tuning epochs at a third of the compute.
SIZE, IMG = 'tiny', 96
ENCODER = dict(embed_dim=128, num_heads=2, depth=4)


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg not in ('', 'smoke'):
    raise ValueError(f'configs/demo.py: variant {arg!r} is not one of "" (the demo), "smoke"')
  config = ml_collections.ConfigDict()
  config.program = 'demo'
  config.workdir = 'workdir/demo'  # used when --workdir is not given
  config.data = ml_collections.ConfigDict(dict(source='demo', root=''))
  # Compiled steps kept in one place for the whole chain (None: <workdir>/jax_cache; '': off).
  config.compilation_cache_dir = config_dict.placeholder(str)
  config.demo_data = ml_collections.ConfigDict(dict(num_videos=60, frames=(120, 220), size=IMG))
  # Each stage's wall time on the 2-core AMD EPYC machine README names; the progress lines'
  # whole-chain ETA scales them by how fast the stages done so far ran here.
  config.expected_seconds = ml_collections.ConfigDict(dict(
      data=7, pretrain=57, finetune_face=63, finetune_region=60, fusion=60))
  # True: also fine-tune both views from random init on the same budget and write
  # pretraining_gain.md (what stage 1 is worth); stages already done are not redone.
  config.random_init_baseline = False

  pre = pretrain_config(SIZE, IMG)
  pre.model.update(ENCODER)
  pre.data.update(config.data)
  pre.batch_size = 64
  pre.total_epochs, pre.warmup_epochs = None, None
  pre.total_steps = 300
  pre.warmup_steps = 30
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
  # The encoders' tokens are read as their fine-tuning evaluated them (its crop_pct): at another
  # zoom the eyes+mouth encoder loses a third of its macro F1.
  fu.data.update(config.finetune_region.data)
  fu.fusion.num_heads = 2
  fu.fusion.seeds = 2               # two heads per key generator: the report shows their spread
  fu.cache_features = True          # the demo's tokens fit in memory
  fu.class_weights = 'sqrt_inverse_frequency'  # as the classifier each head starts from
  fu.batch_size = 128
  fu.eval_batch_size = 256
  fu.total_epochs = 1.0             # the heads start from the eyes+mouth classifier
  fu.log_steps = 25
  config.fusion = fu
  if arg == 'smoke':
    shrink_to_smoke(config)
  return config


def shrink_to_smoke(config: ml_collections.ConfigDict) -> None:
  """A few 32-px videos, a one-block 64-wide ViT and a handful of steps per stage."""
  config.demo_data.update(num_videos=8, frames=(24, 32), size=32)
  config.expected_seconds.update(data=1, pretrain=10, finetune_face=10, finetune_region=10,
                                 fusion=15)
  for key in ('pretrain', 'finetune_face', 'finetune_region', 'fusion'):
    stage = config[key]
    stage.model.update(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2)
    stage.batch_size, stage.log_steps, stage.checkpoint_steps = 8, 2, 4
    for name in ('total', 'warmup', 'eval'):
      stage[f'{name}_epochs'] = stage[f'{name}_steps'] = None
    stage.total_steps = 4
  config.pretrain.model.update(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
  config.pretrain.eval_steps = 4
  config.fusion.aux_blocks = 1
  config.fusion.fusion.num_heads = 2
  config.fusion.windows = (1, 3)
  for key in ('finetune_face', 'finetune_region', 'fusion'):
    config[key].eval_batch_size = 16
