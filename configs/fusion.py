"""Stage 2, part 2: attention-fusion heads over the face and eyes+mouth encoders (ViT-B/16), smoothing
and the evaluation report. Point `face_workdir`/`region_workdir` at the two fine-tuning workdirs."""

import ml_collections

from configs.finetune_common import finetune_config


def fusion_config(size: str = 'base', img_size: int = 224) -> ml_collections.ConfigDict:
  base = finetune_config('face', size, img_size)
  config = ml_collections.ConfigDict()
  config.program = 'fusion'
  config.seed = 0
  config.model = base.model          # the fine-tuned encoders' architecture
  config.model.drop_path_rate = 0.0
  config.data = base.data
  config.face_workdir = ''           # fine-tuning workdir of the face view (its best/ checkpoint)
  config.region_workdir = ''         # fine-tuning workdir of the auxiliary view
  config.region_view = 'eyes_mouth'  # eyes | mouth | eyes_mouth | eyes_nose_mouth
  config.aux_blocks = -1             # auxiliary tokens after this many blocks (-1: all, the last)

  config.fusion = ml_collections.ConfigDict(dict(
      methods=('mean', 'concat', 'updown_mean', 'updown_concat'),  # key generators, one head each
      num_heads=8,
      local_window=3,                # local attention: k×k neighbourhood on the patch grid
      updown_ratio=4.0,              # bottleneck MLP width / model width
      start_from_main_view=True,     # the untrained head equals the face encoder's classifier
  ))
  # True: tokens of every frame computed once (deterministic view) and kept in memory;
  # False: computed on the fly from augmented frames (what Aff-Wild2-sized data needs).
  config.cache_features = False

  config.batch_size = 256
  config.eval_batch_size = 256
  config.num_epochs = 2.0
  config.total_steps = -1
  config.warmup_fraction = 0.05
  config.base_lr = 1e-3
  config.min_lr = 1e-6
  config.grad_accum_steps = 1
  config.optim = ml_collections.ConfigDict(dict(
      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05, grad_clip_norm=0.0))
  config.label_smoothing = 0.1
  config.class_weights = 'inverse_frequency'

  config.windows = (1, 3, 5, 9, 15, 25, 45, 75)  # smoothing windows swept on validation (frames)
  config.num_timelines = 8
  config.log_every = 50
  return config


def get_config() -> ml_collections.ConfigDict:
  return fusion_config()
