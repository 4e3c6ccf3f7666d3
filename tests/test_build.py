"""The one model builder: each program's model from its config, and a field no model takes refused."""

import pytest
from flax import nnx

from configs import finetune, fusion, pretrain
from mae_face_jax.models.build import build_model
from mae_face_jax.models.fusion import FusionModel
from mae_face_jax.models.mae import MaskedAutoencoder
from mae_face_jax.models.vit import VisionTransformer


def test_each_program_gets_its_model():
  shapes = lambda c: nnx.eval_shape(lambda: build_model(c))
  assert isinstance(shapes(pretrain.get_config('tiny')), MaskedAutoencoder)
  vit = shapes(finetune.get_config('eyes_mouth'))
  assert isinstance(vit, VisionTransformer) and vit.head.out_features == 8
  fused = shapes(fusion.fusion_config('eyes_mouth', 'tiny', 112))
  assert isinstance(fused, FusionModel)
  seeds = fusion.fusion_config('eyes_mouth').fusion.seeds
  assert set(fused.heads) == {f'{m}_s{s}' for m in ('mean', 'concat', 'updown_mean',
                                                    'updown_concat') for s in range(seeds)}


def test_a_model_field_the_model_does_not_take_is_an_error_naming_it():
  config = finetune.get_config('face')
  config.model.mask_ratio = 0.75  # an MAE field: the ViT classifier has no use for it
  with pytest.raises(ValueError, match='config.model.mask_ratio is not an argument of '
                                       'VisionTransformer'):
    build_model(config)
  config = pretrain.get_config('tiny')
  config.model.num_clases = 8  # a typo
  with pytest.raises(ValueError, match='config.model.num_clases'):
    build_model(config)
