"""Optimisers as in MAE: AdamW with a weight-decay mask, scaled lr, warmup + half-cycle cosine.

The chain is AdamW spelled out (`scale_by_adam` → decoupled weight decay → lr), so a per-parameter
lr scale (layer-wise lr decay in fine-tuning) slots in before the lr multiplies both the Adam step
and the decay term, as PyTorch's param-group `lr_scale` does.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

# Parameters that never get weight decay besides 1-D ones (biases, norms): tokens and position
# tables (MAE's fine-tuning rule; its pretraining decays cls/mask tokens).
NO_DECAY_NAMES = ('cls_token', 'mask_token', 'pos_embed', 'decoder_pos_embed')


def _path_names(path: tuple) -> tuple[str, ...]:
  return tuple(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def weight_decay_mask(params: Any) -> Any:
  """True where AdamW applies weight decay: matrices and kernels, not biases/norms/tokens/pos."""
  def decays(path: tuple, x: Any) -> bool:
    return len(x.shape) > 1 and not set(_path_names(path)) & set(NO_DECAY_NAMES)
  return jax.tree_util.tree_map_with_path(decays, params)


def peak_lr(config: Any) -> float:
  """MAE's linear scaling rule: lr = base_lr × effective global batch / 256."""
  effective_batch = config.batch_size * config.get('grad_accum_steps', 1)
  return config.base_lr * effective_batch / 256


def lr_schedule(config: Any, total_steps: int, warmup_steps: int) -> optax.Schedule:
  """Linear warmup from 0, then half-cycle cosine down to `min_lr`, per optimizer update."""
  warmup = min(int(warmup_steps), total_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak_lr(config), warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=config.get('min_lr', 0.0))


def scale_by_tree(scales: Any) -> optax.GradientTransformation:
  """Multiplies each update by a per-parameter constant (e.g. layer-wise lr decay factors)."""
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * s, updates, scales), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(config: Any, params: Any, total_steps: int, warmup_steps: int = 0,
                   lr_scales: Any | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW (b1, b2, weight decay from `config.optim`) with optional global-norm clipping.

  `lr_scales`: optional tree like `params` of per-parameter lr multipliers (fine-tuning's layer decay).
  Returns the transformation and the schedule (for logging the lr).
  """
  opt = config.optim
  schedule = lr_schedule(config, total_steps, warmup_steps)
  chain = []
  if opt.get('grad_clip_norm', 0.0):
    chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  chain += [optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps),
            optax.add_decayed_weights(opt.weight_decay, mask=weight_decay_mask(params))]
  if lr_scales is not None:
    chain.append(scale_by_tree(lr_scales))
  chain.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*chain), schedule


def layer_id(names: tuple[str, ...], depth: int) -> int:
  """MAE's `get_layer_id_for_vit`: cls/pos/patch embedding → 0, block i → i + 1, the rest → depth + 1."""
  if names[0] in ('cls_token', 'pos_embed', 'patch_embed'):
    return 0
  if names[0] == 'blocks':
    return int(names[1]) + 1
  return depth + 1


def layer_decay_scales(params: Any, depth: int, decay: float) -> Any:
  """Per-parameter lr multipliers of layer-wise lr decay: decay^(depth + 1 - layer_id)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: decay ** (depth + 1 - layer_id(_path_names(path), depth)), params)
