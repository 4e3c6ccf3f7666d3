"""Device-side normalisation of the pipeline's uint8 batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_face_jax import images


def test_normalize_is_imagenet_mean_std_and_inverts():
  x = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
  x[0, 0, 0] = (0, 128, 255)
  y = np.asarray(jax.jit(images.normalize)(jnp.asarray(x)))
  mean, std = np.array(images.IMAGENET_MEAN), np.array(images.IMAGENET_STD)
  assert y.dtype == np.float32
  np.testing.assert_allclose(y, (x / 255.0 - mean) / std, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(y[0, 0, 0], [(0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224,
                                          (1 - 0.406) / 0.225], rtol=1e-6)
  np.testing.assert_allclose(images.to_unit_rgb(y) * 255.0, x, atol=1e-3)
  assert images.normalize(jnp.asarray(x), jnp.bfloat16).dtype == jnp.bfloat16


def test_normalize_refuses_float_images():
  with pytest.raises(TypeError, match='expected uint8 RGB images.*float32'):
    images.normalize(jnp.zeros((1, 4, 4, 3), jnp.float32))
