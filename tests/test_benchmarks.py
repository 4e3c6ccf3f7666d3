"""The MAE step benchmark's list of matrix products matches the model it times."""

import jax.numpy as jnp
import numpy as np

from benchmarks.mae_step import jax_step_fn, products_flops, step_products
from configs.common import model_config


def test_step_products_are_most_of_the_step_flops():
  # The benchmark's bound rests on these products being (nearly) the whole step: counted with
  # their gradients, they must be most, and no more than all, of the FLOPs XLA counts for it.
  size, img_size, batch = 'tiny', 224, 8
  run = jax_step_fn(size, img_size, 0.75, None, None, 0)
  imgs = jnp.zeros((batch, img_size, img_size, 3), jnp.float32)
  noise = jnp.asarray(np.random.default_rng(0).random((batch, (img_size // 16)**2), np.float32))
  step_flops = run.flops(imgs, noise)
  product_flops = products_flops(step_products(model_config(size, img_size), img_size, 0.75, batch))
  assert 0.8 * step_flops < product_flops < step_flops, (product_flops, step_flops)
