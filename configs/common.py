"""Values shared by the configs: model sizes. A config file is a plain `get_config()`."""

import ml_collections

from mae_face_jax.models.vit import VIT_SIZES

# MAE's decoder is 512 wide, 8 blocks, 16 heads for Base and larger; the tiny one is for CPU demos.
DECODER_SIZES = {'tiny': (128, 2, 4), 'small': (256, 4, 8)}


def model_config(size: str, img_size: int = 224) -> ml_collections.ConfigDict:
  """Fields of both the MAE and the ViT of a size; each model reads the fields it has."""
  embed_dim, depth, num_heads, patch_size = VIT_SIZES[size]
  dec_dim, dec_depth, dec_heads = DECODER_SIZES.get(size, (512, 8, 16))
  return ml_collections.ConfigDict(dict(
      size=size,
      img_size=img_size,
      patch_size=patch_size,
      in_chans=3,
      embed_dim=embed_dim,
      depth=depth,
      num_heads=num_heads,
      mlp_ratio=4.0,
      decoder_embed_dim=dec_dim,
      decoder_depth=dec_depth,
      decoder_num_heads=dec_heads,
      mask_ratio=0.75,
      norm_pix_loss=True,
      drop_path_rate=0.0,
      global_pool=True,
      num_classes=0,
      # None lets JAX choose; 'cudnn' is the fused kernel on NVIDIA GPUs, 'xla' the portable one.
      attention_impl=ml_collections.config_dict.placeholder(str),
      dtype='float32',        # compute dtype: 'bfloat16' on accelerators
      param_dtype='float32',  # master weights stay float32
  ))
