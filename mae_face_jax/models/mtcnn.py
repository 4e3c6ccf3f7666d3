"""MTCNN's three nets (Zhang et al. 2016) in Flax NNX: P-Net, R-Net, O-Net.

Weights come at run time from the `mtcnn` wheel (MIT): `mtcnn/assets/weights/{pnet,rnet,onet}.lz4`,
joblib + lz4 pickles of Keras weight lists (HWIO kernels, PReLU alphas shaped (1, 1, C)). Only those
files are read; the package itself is never imported (its inference needs TensorFlow).

The stored weights expect images in ordinary (row = y) order; only the dense layers keep the
original Caffe nets' transposed layout, so R- and O-Net flatten their last feature map as (W, H, C)
(the Keras port's `Permute((2, 1, 3))`). Inputs are NHWC RGB normalised as (x - 127.5) / 128.
"""

from __future__ import annotations

import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class PReLU(nnx.Module):
  """PReLU with one slope per channel (the last axis)."""

  def __init__(self, channels: int):
    self.alpha = nnx.Param(jnp.full((channels,), 0.25, jnp.float32))

  def __call__(self, x):
    return jnp.where(x >= 0, x, self.alpha[...] * x)


def max_pool_ceil(x, window: int, stride: int):
  """Max pooling whose last window may hang over the edge (Caffe's ceil mode; Keras' 'same')."""
  pads = []
  for n in x.shape[1:3]:
    out = -(-(n - window) // stride) + 1
    pads.append((0, max((out - 1) * stride + window - n, 0)))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                               (1, stride, stride, 1), [(0, 0), *pads, (0, 0)])


def _conv(cin, cout, k, rngs):
  return nnx.Conv(cin, cout, (k, k), padding='VALID', rngs=rngs)


class PNet(nnx.Module):
  """Fully convolutional proposal net: a 12x12 window, stride 2. Returns (box offsets (..., 4),
  face probability (...,)) per output cell."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1, self.prelu1 = _conv(3, 10, 3, rngs), PReLU(10)
    self.conv2, self.prelu2 = _conv(10, 16, 3, rngs), PReLU(16)
    self.conv3, self.prelu3 = _conv(16, 32, 3, rngs), PReLU(32)
    self.conv4_1 = _conv(32, 4, 1, rngs)  # box regression
    self.conv4_2 = _conv(32, 2, 1, rngs)  # face / not face

  def __call__(self, x):
    x = max_pool_ceil(self.prelu1(self.conv1(x)), 2, 2)
    x = self.prelu2(self.conv2(x))
    x = self.prelu3(self.conv3(x))
    return self.conv4_1(x), jax.nn.softmax(self.conv4_2(x))[..., 1]


def _flatten_transposed(x):
  return jnp.transpose(x, (0, 2, 1, 3)).reshape(x.shape[0], -1)


class RNet(nnx.Module):
  """Refinement net on 24x24 crops: (box offsets (N, 4), face probability (N,))."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1, self.prelu1 = _conv(3, 28, 3, rngs), PReLU(28)
    self.conv2, self.prelu2 = _conv(28, 48, 3, rngs), PReLU(48)
    self.conv3, self.prelu3 = _conv(48, 64, 2, rngs), PReLU(64)
    self.fc4, self.prelu4 = nnx.Linear(576, 128, rngs=rngs), PReLU(128)
    self.fc5_1 = nnx.Linear(128, 4, rngs=rngs)
    self.fc5_2 = nnx.Linear(128, 2, rngs=rngs)

  def __call__(self, x):
    x = max_pool_ceil(self.prelu1(self.conv1(x)), 3, 2)
    x = max_pool_ceil(self.prelu2(self.conv2(x)), 3, 2)
    x = self.prelu3(self.conv3(x))
    x = self.prelu4(self.fc4(_flatten_transposed(x)))
    return self.fc5_1(x), jax.nn.softmax(self.fc5_2(x))[..., 1]


class ONet(nnx.Module):
  """Output net on 48x48 crops: (box offsets (N, 4), landmarks (N, 10) as x1..x5, y1..y5 relative to
  the box, face probability (N,))."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1, self.prelu1 = _conv(3, 32, 3, rngs), PReLU(32)
    self.conv2, self.prelu2 = _conv(32, 64, 3, rngs), PReLU(64)
    self.conv3, self.prelu3 = _conv(64, 64, 3, rngs), PReLU(64)
    self.conv4, self.prelu4 = _conv(64, 128, 2, rngs), PReLU(128)
    self.fc5, self.prelu5 = nnx.Linear(1152, 256, rngs=rngs), PReLU(256)
    self.fc6_1 = nnx.Linear(256, 4, rngs=rngs)
    self.fc6_2 = nnx.Linear(256, 10, rngs=rngs)
    self.fc6_3 = nnx.Linear(256, 2, rngs=rngs)

  def __call__(self, x):
    x = max_pool_ceil(self.prelu1(self.conv1(x)), 3, 2)
    x = max_pool_ceil(self.prelu2(self.conv2(x)), 3, 2)
    x = max_pool_ceil(self.prelu3(self.conv3(x)), 2, 2)
    x = self.prelu4(self.conv4(x))
    x = self.prelu5(self.fc5(_flatten_transposed(x)))
    return self.fc6_1(x), self.fc6_2(x), jax.nn.softmax(self.fc6_3(x))[..., 1]


# Each net's layers in the order of its Keras weight list (kernel, bias; a PReLU's alpha).
_ORDER = {
    'pnet': ('conv1', 'prelu1', 'conv2', 'prelu2', 'conv3', 'prelu3', 'conv4_1', 'conv4_2'),
    'rnet': ('conv1', 'prelu1', 'conv2', 'prelu2', 'conv3', 'prelu3', 'fc4', 'prelu4', 'fc5_1',
             'fc5_2'),
    'onet': ('conv1', 'prelu1', 'conv2', 'prelu2', 'conv3', 'prelu3', 'conv4', 'prelu4', 'fc5',
             'prelu5', 'fc6_1', 'fc6_2', 'fc6_3'),
}


def weights_dir() -> str:
  """The installed `mtcnn` wheel's weights folder, found without importing the package."""
  spec = importlib.util.find_spec('mtcnn')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError('the `mtcnn` package (MIT, PyPI) is not installed: its weight files '
                            'are needed for face detection (pip install mtcnn==1.0.0)')
  return os.path.join(list(spec.submodule_search_locations)[0], 'assets', 'weights')


def read_weights(name: str) -> list[np.ndarray]:
  """One net's Keras weight list from the wheel (joblib + lz4; no TensorFlow)."""
  import joblib  # pylint: disable=import-outside-toplevel
  path = os.path.join(weights_dir(), f'{name}.lz4')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: MTCNN weight file missing from the installed mtcnn package')
  return [np.asarray(w, np.float32) for w in joblib.load(path)]


def load_weights(net: nnx.Module, name: str) -> nnx.Module:
  """Copies the wheel's `name` ('pnet', 'rnet', 'onet') weights into ``net``; returns it."""
  arrays = iter(read_weights(name))
  for layer_name in _ORDER[name]:
    layer = getattr(net, layer_name)
    if isinstance(layer, PReLU):
      params = [layer.alpha]
    else:
      params = [layer.kernel, layer.bias]
    for p in params:
      w, shape = next(arrays), tuple(p.get_value().shape)
      if w.size != math.prod(shape):
        raise ValueError(f'{name}.{layer_name}: stored shape {w.shape} != {shape}')
      p.set_value(jnp.asarray(w.reshape(shape)))
  if next(arrays, None) is not None:
    raise ValueError(f'{name}: the weight file holds more arrays than the net has parameters')
  return net


def pretrained() -> tuple[PNet, RNet, ONet]:
  """The three nets with the wheel's weights (built abstract: no random initialisation to run)."""
  return tuple(load_weights(nnx.eval_shape(lambda c=cls: c(nnx.Rngs(0))), name)
               for cls, name in ((PNet, 'pnet'), (RNet, 'rnet'), (ONet, 'onet')))
