"""Times one MAE pretraining step (forward, backward, AdamW update) in JAX and in PyTorch.

The JAX side is the pretraining program's own step (`loop.make_train_step` with
`train_pretrain.mae_loss_fn`: uint8 images cropped, flipped and normalised on the device,
per-example mask noise, MAE's AdamW with its weight-decay mask and lr schedule, donated state) on
one device. PyTorch runs the reference model of `benchmarks/torch_mae.py` eagerly with
`torch.optim.AdamW`, from the same weights, on the same images (normalised; its augmentation would
be its data loader's, so the JAX side also pays for the crop and flip that PyTorch leaves out).
Repetitions alternate JAX, PyTorch, JAX, ... so load from other processes hits both sides alike;
the medians and `ratio = JAX time / PyTorch time` are printed (below 1 means JAX is faster), with
images/s, the step's FLOPs as XLA counts them, a measured matmul peak and the MFU.

  python benchmarks/mae_step.py                       # ViT-B, batch 8 on CPU (64 on GPU)
  python benchmarks/mae_step.py --size tiny --steps 5
  python benchmarks/mae_step.py --dtype=bfloat16 --attention-impl=cudnn   # the accelerator preset

Like main.py, the script first tells glibc to keep freed memory (`mae_face_jax/host_memory.py`).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# PyTorch's OpenMP threads spin for a while after each parallel region, on the cores the next
# call needs: each timed call starts after this untimed pause, so neither side pays for the other.
SETTLE_SECONDS = 0.01


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--size', default='base', choices=['tiny', 'small', 'base', 'large', 'huge'])
  p.add_argument('--batch', type=int, default=None, help='default: 8 on CPU, 64 on GPU')
  p.add_argument('--img-size', type=int, default=224)
  p.add_argument('--steps', type=int, default=5, help='timed steps per side (median reported)')
  p.add_argument('--warmup', type=int, default=1, help='untimed steps per side after compiling')
  p.add_argument('--attention-impl', default=None, choices=[None, 'xla', 'cudnn'])
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'],
                 help='JAX compute dtype (params stay fp32); bfloat16 for the MFU figure on GPU/TPU')
  p.add_argument('--only', choices=['jax', 'torch'], default=None, help='time one side only')
  p.add_argument('--seed', type=int, default=0)
  return p.parse_args(argv)


def cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def pretrain_config(args, batch: int):
  """The pretraining recipe's config at this size, on one device."""
  from configs.pretrain import pretrain_config as recipe
  config = recipe(args.size, args.img_size)
  config.model.update(dtype=args.dtype, attention_impl=args.attention_impl)
  config.batch_size = batch
  config.total_epochs, config.warmup_epochs = None, None
  config.total_steps, config.warmup_steps = 1000, 0
  config.mesh.update(data=1, fsdp=1)
  return config


def jax_step_fn(config, torch_state, device):
  """The program's train step, its state started from the PyTorch model's weights; returns
  `run(images_uint8) -> loss` and `flops(images_uint8)`."""
  import jax
  from flax import nnx

  from mae_face_jax import loop, sharding
  from mae_face_jax import train_state as ts
  from mae_face_jax.models.build import build_model
  from mae_face_jax.torch_interop import import_state_dict
  from mae_face_jax.train_pretrain import mae_loss_fn

  model = build_model(config)
  import_state_dict(model, torch_state, source='torch reference')
  weights = ts.flatten(nnx.state(model, nnx.Param))
  mesh = sharding.make_mesh(config.mesh, [device])
  run = loop.setup(config, mesh, lambda: build_model(config), None, overrides=weights)
  step = loop.train_step_for(run, mae_loss_fn(config), {'image': 4})
  holder = {'state': run.placed.state}

  def once(images):
    holder['state'], metrics = step(holder['state'], run.placed.fixed, {'image': images})
    return metrics['loss']

  def flops(images) -> float:
    cost = step.lower(holder['state'], run.placed.fixed, {'image': images}).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get('flops', 0.0))
  images_sharding = sharding.batch_sharding(mesh, 4)
  return once, flops, lambda x: jax.device_put(x, images_sharding)


def torch_step_fn(model):
  import torch
  decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
  no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
  opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.05},
                           {'params': no_decay, 'weight_decay': 0.0}], lr=1.5e-4, betas=(0.9, 0.95))

  def run(imgs, noise):
    loss = model(imgs, noise)[0]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss
  return run


def best_seconds(fn, reps: int = 5) -> float:
  """The fastest of `reps` timed calls of `fn` (which waits for its result), after one untimed."""
  fn()
  best = float('inf')
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def matmul_peak_flops(dtype: str, device, n: int) -> float:
  """The machine's measured matmul rate (FLOP/s): the best of repeated n×n×n products."""
  import jax
  import jax.numpy as jnp
  a = jax.device_put(jnp.ones((n, n), dtype), device)
  mm = jax.jit(lambda x: x @ x)
  return 2 * n**3 / best_seconds(lambda: mm(a).block_until_ready())


def time_alternating(fns: dict, reps: int) -> dict[str, list[float]]:
  """Wall seconds of `reps` calls of each fn, alternating sides; a line per round."""
  wall = {name: [] for name in fns}
  for i in range(reps):
    for name, fn in fns.items():
      time.sleep(SETTLE_SECONDS)
      t0 = time.perf_counter()
      fn()
      wall[name].append(time.perf_counter() - t0)
    print(f'rep {i}: ' + ', '.join(f'{n} {t[-1]:.3f} s' for n, t in wall.items()), flush=True)
  return wall


def main(argv=None) -> None:
  args = parse_args(argv)
  from mae_face_jax import host_memory
  host_memory.keep_freed_memory()  # before JAX's and PyTorch's threads start

  import jax
  import numpy as np
  import torch

  from benchmarks.torch_mae import build_torch_mae, state_dict_numpy
  from mae_face_jax.images import IMAGENET_MEAN, IMAGENET_STD

  jdev = jax.devices()[0]
  on_gpu = jdev.platform == 'gpu'
  tdev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  batch = args.batch or (64 if on_gpu else 8)
  config = pretrain_config(args, batch)

  torch.manual_seed(args.seed)
  tmodel = build_torch_mae(args.size, args.img_size, mask_ratio=config.model.mask_ratio)
  tmodel = tmodel.to(tdev).train()
  rng = np.random.default_rng(args.seed)
  images = rng.integers(0, 256, (batch, args.img_size, args.img_size, 3), dtype=np.uint8)
  normalised = (images / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
  noise = rng.random((batch, (args.img_size // tmodel.patch_size)**2)).astype(np.float32)

  sides = {}
  if args.only != 'torch':
    run_jax, jax_flops, put = jax_step_fn(config, state_dict_numpy(tmodel), jdev)
    j_images = put(images)
    sides['jax'] = lambda: float(run_jax(j_images))  # float() waits for the result
  if args.only != 'jax':
    run_torch = torch_step_fn(tmodel)
    t_imgs = torch.from_numpy(normalised.transpose(0, 3, 1, 2).astype(np.float32)).to(tdev)
    t_noise = torch.from_numpy(noise).to(tdev)
    sides['torch'] = lambda: float(run_torch(t_imgs, t_noise).detach())  # waits for CUDA too

  print(f'MAE train step: size={args.size} img={args.img_size} batch={batch} '
        f'mask_ratio={config.model.mask_ratio} JAX compute {args.dtype} (PyTorch fp32), '
        'fwd+bwd+AdamW', flush=True)
  print(f'machine: {cpu_name()}, {os.cpu_count()} logical CPUs; python {platform.python_version()}')
  print(f'jax {jax.__version__} on {jdev.device_kind} ({jdev.platform}); torch {torch.__version__} '
        f'on {tdev} ({torch.cuda.get_device_name() if tdev.type == "cuda" else f"{torch.get_num_threads()} threads"})',
        flush=True)
  for name, fn in sides.items():
    t0 = time.perf_counter()
    loss = fn()
    print(f'{name}: first step {time.perf_counter() - t0:.2f} s'
          f'{" (incl. compile)" if name == "jax" else ""}, loss {loss:.6f}', flush=True)
    for _ in range(args.warmup):
      fn()
  times = time_alternating(sides, args.steps)
  med = {name: statistics.median(t) for name, t in times.items()}
  for name, t in times.items():
    print(f'{name:5s} median {med[name]:.3f} s/step (min {min(t):.3f}, max {max(t):.3f}, '
          f'{len(t)} steps), {batch / med[name]:.2f} images/s')
  if len(med) == 2:
    print(f'ratio = JAX time / PyTorch time = {med["jax"] / med["torch"]:.3f}')
    print(f'throughput ratio = JAX images/s / PyTorch images/s = {med["torch"] / med["jax"]:.3f}')
  if 'jax' in med:
    step_flops = jax_flops(j_images)
    peak = matmul_peak_flops(args.dtype, jdev, 8192 if on_gpu else 2048)
    achieved = step_flops / med['jax']
    print(f'JAX step: {step_flops / 1e9:.1f} GFLOP (XLA cost analysis), {achieved / 1e12:.3f} '
          f'TFLOP/s; measured {args.dtype} matmul peak {peak / 1e12:.3f} TFLOP/s; '
          f'model FLOPs utilisation (MFU) = {achieved / peak:.3f}')


if __name__ == '__main__':
  main()
