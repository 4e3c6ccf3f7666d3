"""Classification losses of the fine-tuning recipe: smoothed soft targets, class-weighted cross
entropy, mixup/cutmix on a batch, class weights from label frequencies."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def soft_targets(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  """One-hot targets with label smoothing: 1 - s + s/C on the label, s/C elsewhere (as timm)."""
  return jax.nn.one_hot(labels, num_classes) * (1 - smoothing) + smoothing / num_classes


def weighted_cross_entropy(logits: jax.Array, targets: jax.Array, class_weights: jax.Array
                           ) -> jax.Array:
  """Σ_i Σ_c -w_c t_ic log p_ic / Σ_i Σ_c w_c t_ic: with hard targets this is PyTorch's
  `CrossEntropyLoss(weight=w)` (a weighted mean); with weights all 1 the plain mean."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  weighted = targets * class_weights
  return -jnp.sum(weighted * logp) / jnp.sum(weighted)


def class_weights(spec: str | Sequence[float], counts: np.ndarray) -> np.ndarray:
  """'none' → ones; 'inverse_frequency' → N / (C · n_c), classes without examples get 0;
  'sqrt_inverse_frequency' → its square root; a list → itself."""
  counts = np.asarray(counts, np.float64)
  if not isinstance(spec, str):
    weights = np.asarray(spec, np.float64)
    if weights.shape != counts.shape:
      raise ValueError(f'class_weights has {weights.size} values for {counts.size} classes')
    return weights.astype(np.float32)
  if spec == 'none':
    return np.ones_like(counts, np.float32)
  inv = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
  if spec == 'inverse_frequency':
    return inv.astype(np.float32)
  if spec == 'sqrt_inverse_frequency':
    return np.sqrt(inv).astype(np.float32)
  raise ValueError(f'class_weights={spec!r}: expected none, inverse_frequency, '
                   'sqrt_inverse_frequency or a list of numbers')


def cutmix_box(key: jax.Array, height: int, width: int, lam: jax.Array) -> jax.Array:
  """(H, W) booleans of a random box of area ≈ (1 - lam)·H·W, clipped at the borders (timm's)."""
  ratio = jnp.sqrt(1 - lam)
  ky, kx = jax.random.split(key)
  cy = jax.random.randint(ky, (), 0, height)
  cx = jax.random.randint(kx, (), 0, width)
  hh, hw = (ratio * height).astype(jnp.int32) // 2, (ratio * width).astype(jnp.int32) // 2
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  return ((rows >= cy - hh) & (rows < cy + hh) & (cols >= cx - hw) & (cols < cx + hw))


def mixup_cutmix(key: jax.Array, images: jax.Array, targets: jax.Array, *, mixup_alpha: float,
                 cutmix_alpha: float, switch_prob: float = 0.5, prob: float = 1.0
                 ) -> tuple[jax.Array, jax.Array]:
  """timm's batch-mode Mixup: with probability `prob`, mix each example with the batch reversed,
  by mixup (blend, lam ~ Beta(α, α)) or cutmix (paste a box; lam = kept area), chosen with
  `switch_prob` when both are on. Targets are mixed by the same lam."""
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images, targets
  k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(key, 5)
  use_cutmix = (cutmix_alpha > 0) & ((mixup_alpha <= 0) | jax.random.bernoulli(k_switch, switch_prob))
  lam_mix = jax.random.beta(k_mix, max(mixup_alpha, 1e-3), max(mixup_alpha, 1e-3))
  lam_cut = jax.random.beta(k_cut, max(cutmix_alpha, 1e-3), max(cutmix_alpha, 1e-3))
  _, h, w, _ = images.shape
  box = cutmix_box(k_box, h, w, lam_cut)
  flipped = images[::-1]
  cut_images = jnp.where(box[None, :, :, None], flipped, images)
  cut_lam = 1 - box.sum() / (h * w)
  mixed = jnp.where(use_cutmix, cut_images, lam_mix * images + (1 - lam_mix) * flipped)
  lam = jnp.where(use_cutmix, cut_lam, lam_mix)
  apply = jax.random.bernoulli(k_apply, prob)
  lam = jnp.where(apply, lam, 1.0)
  mixed = jnp.where(apply, mixed, images)
  return mixed, lam * targets + (1 - lam) * targets[::-1]
