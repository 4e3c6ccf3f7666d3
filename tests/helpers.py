"""Small shared pieces of the tests: tiny model sizes and random parameters."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
TINY_MAE = dict(TINY_VIT, decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=4)


def randomize_params(model: nnx.Module, seed: int = 0, scale: float = 0.2) -> None:
  """Replaces every parameter by N(0, scale²) (LayerNorm scales by 1 + that), so comparisons
  exercise every weight rather than near-zero initial heads or unit norms."""
  state = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten_with_path(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  new = []
  for (path, x), k in zip(leaves, keys):
    r = scale * jax.random.normal(k, x.shape, x.dtype)
    new.append(1 + r if 'scale' in jax.tree_util.keystr(path) else r)
  nnx.update(model, jax.tree.unflatten(treedef, new))


def images(batch: int, size: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)


def to_nchw(x: np.ndarray):
  import torch
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def as_jnp(x) -> jax.Array:
  return jnp.asarray(np.asarray(x))
