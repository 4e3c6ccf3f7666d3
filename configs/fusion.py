"""Stage 2, part 2: attention-fusion heads over two fine-tuned encoders, smoothing and the report:
`--config=configs/fusion.py[:<region view>]` (default eyes_mouth). Point `face_workdir` and
`region_workdir` at the two fine-tuning workdirs; `model` must match their encoders."""

import ml_collections

from configs.common import add_run_fields
from configs.finetune import finetune_config


def fusion_config(region_view: str = 'eyes_mouth', size: str = 'base', img_size: int = 224
                  ) -> ml_collections.ConfigDict:
  base = finetune_config(region_view, size, img_size)
  config = ml_collections.ConfigDict()
  config.program = 'fusion'
  config.model = base.model          # the fine-tuned encoders' architecture
  config.model.drop_path_rate = 0.0
  config.data = base.data
  config.face_workdir = ''           # fine-tuning workdir of the face view (its best/ checkpoint)
  config.region_workdir = ''         # fine-tuning workdir of the auxiliary view
  config.region_view = region_view   # eyes | mouth | eyes_mouth | eyes_nose_mouth
  config.aux_blocks = -1             # auxiliary tokens after this many blocks (-1: all, the last)

  # Our reading of the paper's fusion; each choice it leaves open is a value. The defaults are the
  # reading of best mean validation macro F1 on the demo (benchmarks/fusion_readings.py, README).
  config.fusion = ml_collections.ConfigDict(dict(
      methods=('mean', 'concat', 'updown_mean', 'updown_concat'),  # key generators
      seeds=3,                       # heads per key generator, each its own init and data order
      main_view='region',            # face | region: the view giving the queries
      values_from='both',            # main | fused | both: the attention's values (models/fusion.py)
      pool='main',                   # main | both: the classifier also sees the pooled aux tokens
      init='main_view',              # main_view | both_views | random (train_fusion.head_start)
      num_heads=8,
      local_window=3,                # local attention: k×k neighbourhood on the patch grid
      updown_ratio=4.0,              # bottleneck MLP width / model width
  ))
  # True: tokens of every frame computed once (deterministic view) and kept in memory;
  # False: computed on the fly from augmented frames (what Aff-Wild2-sized data needs).
  config.cache_features = False

  # All heads train together, one jitted step for every key generator.
  add_run_fields(config, betas=(0.9, 0.999))
  config.eval_batch_size = 256
  config.total_epochs = 2.0
  config.warmup_percent = 5.0
  config.checkpoint_steps = 1000
  config.base_lr = 1e-3
  config.min_lr = 1e-6
  config.label_smoothing = 0.1
  config.class_weights = 'inverse_frequency'

  config.windows = (1, 3, 5, 9, 15, 25, 45, 75)  # smoothing windows swept on validation (frames)
  config.num_timelines = 8
  return config


def get_config(region_view: str = 'eyes_mouth') -> ml_collections.ConfigDict:
  return fusion_config(region_view)
