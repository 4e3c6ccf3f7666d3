"""Times one MAE training step (forward, backward, AdamW update) in JAX and in PyTorch.

Both sides run the same model (ViT-B/16 encoder, 512/8/16 decoder by default), batch, image size,
mask ratio and fp32 numerics, with the same weights and noise; PyTorch runs the reference model of
`benchmarks/torch_mae.py`. JAX's step is one jitted function with donated parameters and optimizer
state; PyTorch runs eagerly with `torch.optim.AdamW`. Repetitions alternate JAX, PyTorch, JAX, ...
so that load from other processes hits both sides alike; the medians and
`ratio = JAX time / PyTorch time` are printed (below 1 means JAX is faster).

  python benchmarks/mae_step.py                       # ViT-B, batch 8 on CPU (64 on GPU)
  python benchmarks/mae_step.py --size tiny --steps 5
  python benchmarks/mae_step.py --xla-flags='--xla_cpu_experimental_ynn_fusion_type='  # Eigen dots
  python benchmarks/mae_step.py --fast-math           # opt-in, changes numerics; said in the output
  python benchmarks/mae_step.py --breakdown           # + forward, backward, optimizer times per side
  python benchmarks/mae_step.py --gemms               # + the step's matmuls alone, both sides (CPU)
  python benchmarks/mae_step.py --attention           # + one attention layer alone, both sides (CPU)
  python benchmarks/mae_step.py --system-malloc       # without host_memory.keep_freed_memory()

Like main.py, the script first tells glibc to keep freed memory (`mae_face_jax/host_memory.py`):
XLA frees and re-maps each step's temporaries otherwise, page-faulting them in every step; both
sides run in this one process, so both share the setting, and each side's page faults per step are
printed. XLA flags must be set before JAX starts, so this script parses its arguments and sets `XLA_FLAGS`
before importing JAX. On a CPU that other processes share, PyTorch's OpenMP threads lose far more
time than XLA's thread pool when a core is taken (its process CPU time, printed, doubles), so the
ratio then says more about the load than about the frameworks; the load average is printed, and
`nice -n -15 python benchmarks/mae_step.py` (as root) gives the benchmark the cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


# PyTorch's OpenMP threads spin for a while after each parallel region, on the cores the next
# call needs, which slows a JAX call timed right after a PyTorch one (--settle-ms 0 shows it). Each
# timed call starts after this untimed pause, so neither side pays for the other's idle threads.
SETTLE_SECONDS = 0.01  # --settle-ms


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--size', default='base', choices=['tiny', 'small', 'base', 'large', 'huge'])
  p.add_argument('--batch', type=int, default=None, help='default: 8 on CPU, 64 on GPU')
  p.add_argument('--img-size', type=int, default=224)
  p.add_argument('--mask-ratio', type=float, default=0.75)
  p.add_argument('--steps', type=int, default=5, help='timed steps per side (median reported)')
  p.add_argument('--warmup', type=int, default=1, help='untimed steps per side after compiling')
  p.add_argument('--fast-math', action='store_true',
                 help='add --xla_cpu_enable_fast_math=true (changes numerics; not the headline)')
  p.add_argument('--xla-flags', default='',
                 help="extra XLA flags appended to XLA_FLAGS; write --xla-flags='--flag=value'")
  p.add_argument('--attention-impl', default=None, choices=[None, 'xla', 'cudnn'])
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'],
                 help='JAX compute dtype (params stay fp32); bfloat16 for the MFU figure on GPU/TPU')
  p.add_argument('--only', choices=['jax', 'torch'], default=None, help='time one side only')
  p.add_argument('--torch-threads', type=int, default=None, help='torch.set_num_threads')
  p.add_argument('--breakdown', action='store_true',
                 help='also time forward and forward+backward alone on both sides (where the time goes)')
  p.add_argument('--gemms', action='store_true',
                 help="also time every linear-layer matrix product of the step alone on both sides, "
                      'and what they sum to against the target (CPU only)')
  p.add_argument('--attention', action='store_true',
                 help='also time one attention layer (qkv, attention, projection) forward+backward '
                      "alone: our Attention vs timm's, at the encoder's and decoder's shapes (CPU only)")
  p.add_argument('--system-malloc', action='store_true',
                 help="leave glibc's malloc as it is; by default both sides run with "
                      'host_memory.keep_freed_memory(), as main.py does')
  p.add_argument('--settle-ms', type=float, default=SETTLE_SECONDS * 1e3,
                 help="untimed pause before each timed call, so PyTorch's spinning OpenMP threads "
                      'have let go of the cores (0: none)')
  p.add_argument('--seed', type=int, default=0)
  return p.parse_args(argv)


def set_xla_flags(args: argparse.Namespace) -> None:
  extra = args.xla_flags.split()
  if args.fast_math:
    extra.append('--xla_cpu_enable_fast_math=true')
  if extra:
    os.environ['XLA_FLAGS'] = ' '.join([os.environ.get('XLA_FLAGS', '')] + extra).strip()


def cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def jax_step_fn(size, img_size, mask_ratio, attention_impl, torch_state, seed, dtype='float32'):
  """Builds the JAX model (weights from the torch model) and a jitted, state-donating train step."""
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  from configs.common import model_config
  from mae_face_jax.models.build import build_mae
  from mae_face_jax.torch_interop import import_state_dict

  cfg = model_config(size, img_size)
  cfg.mask_ratio = mask_ratio
  cfg.attention_impl = attention_impl
  cfg.dtype = dtype
  model = build_mae(cfg, nnx.Rngs(seed))
  if torch_state is not None:
    import_state_dict(model, torch_state, source='torch reference')
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  # MAE's AdamW: betas (0.9, 0.95), weight decay on matrices only (not biases, norms).
  tx = optax.adamw(1.5e-4, b1=0.9, b2=0.95, weight_decay=0.05,
                   mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
  opt_state = tx.init(params)

  def loss_fn(params, rest, imgs, noise):
    return nnx.merge(graphdef, params, rest)(imgs, noise).loss

  def _step(params, opt_state, rest, imgs, noise):
    loss, grads = jax.value_and_grad(loss_fn)(params, rest, imgs, noise)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(_step, donate_argnums=(0, 1))
  state = {'params': params, 'opt': opt_state}

  def run(imgs, noise):
    state['params'], state['opt'], loss = step(state['params'], state['opt'], rest, imgs, noise)
    return loss

  def flops(imgs, noise) -> float:
    """FLOPs of one step as XLA counts them for the compiled program."""
    cost = step.lower(state['params'], state['opt'], rest, imgs, noise).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get('flops', 0.0))

  run.flops = flops
  # The step's phases on the current parameters (nothing donated): for --breakdown.
  loss_jit = jax.jit(loss_fn)
  grad_jit = jax.jit(jax.value_and_grad(loss_fn))
  run.phases = {
      'forward': lambda imgs, noise: loss_jit(state['params'], rest, imgs, noise),
      'forward+backward': lambda imgs, noise: grad_jit(state['params'], rest, imgs, noise)[0],
  }
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


def torch_matmul_peak_flops(device, n: int) -> float:
  """PyTorch's best rate on the same fp32 n×n×n product (on CPU its MKL kernels run closest to
  the hardware's peak, so the larger of the two peaks is the better bound)."""
  import torch
  a = torch.ones((n, n), device=device)
  return 2 * n**3 / best_seconds(lambda: (a @ a)[0, 0].item())  # .item() waits for CUDA too


def torch_step_fn(model, device):
  import torch
  decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
  no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
  opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.05},
                           {'params': no_decay, 'weight_decay': 0.0}], lr=1.5e-4, betas=(0.9, 0.95))

  def forward_backward(imgs, noise):
    loss = model(imgs, noise)[0]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    return loss

  def run(imgs, noise):
    loss = forward_backward(imgs, noise)
    opt.step()
    return loss

  # Forward as in training (autograd records it), then dropped: what the step's forward costs.
  run.phases = {'forward': lambda imgs, noise: model(imgs, noise)[0],
                'forward+backward': forward_backward}
  return run


def time_alternating(fns: dict, reps: int, report=None) -> tuple[dict, dict, dict]:
  """Wall seconds, process CPU seconds and minor page faults of `reps` calls of each fn,
  alternating sides so background load hits them alike; `report(i, wall)` after each round."""
  wall = {name: [] for name in fns}
  cpu = {name: [] for name in fns}
  faults = {name: [] for name in fns}
  for i in range(reps):
    for name, fn in fns.items():
      time.sleep(SETTLE_SECONDS)
      f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      c0, t0 = time.process_time(), time.perf_counter()
      fn()
      wall[name].append(time.perf_counter() - t0)
      cpu[name].append(time.process_time() - c0)
      faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    if report:
      report(i, wall)
  return wall, cpu, faults


def step_products(cfg, img_size: int, mask_ratio: float, batch: int
                  ) -> list[tuple[str, int, int, int, int, bool]]:
  """Every matrix product of one MAE step's linear layers as (name, m, k, n, layers, input_grad):
  an (m×k)·(k×n) forward product per layer, its kernel gradient, and its input gradient where one
  flows (not into the images). Attention's own batched products are left out (--attention)."""
  tokens = (img_size // cfg.patch_size)**2
  enc, dec = batch * (1 + int(tokens * (1 - mask_ratio))), batch * (1 + tokens)
  d, dd, pixels = cfg.embed_dim, cfg.decoder_embed_dim, cfg.patch_size**2 * cfg.in_chans
  h, dh = int(d * cfg.mlp_ratio), int(dd * cfg.mlp_ratio)
  return [('patch_embed', batch * tokens, pixels, d, 1, False),
          ('encoder qkv', enc, d, 3 * d, cfg.depth, True),
          ('encoder proj', enc, d, d, cfg.depth, True),
          ('encoder fc1', enc, d, h, cfg.depth, True),
          ('encoder fc2', enc, h, d, cfg.depth, True),
          ('decoder_embed', enc, d, dd, 1, True),
          ('decoder qkv', dec, dd, 3 * dd, cfg.decoder_depth, True),
          ('decoder proj', dec, dd, dd, cfg.decoder_depth, True),
          ('decoder fc1', dec, dd, dh, cfg.decoder_depth, True),
          ('decoder fc2', dec, dh, dd, cfg.decoder_depth, True),
          ('decoder_pred', dec, dd, pixels, 1, True)]


def products_flops(products: list[tuple[str, int, int, int, int, bool]]) -> float:
  """FLOPs of `step_products` in one step: forward and kernel gradient, plus the input gradient
  where one flows."""
  return float(sum(layers * 2 * m * k * n * (3 if input_grad else 2)
                   for _, m, k, n, layers, input_grad in products))


def time_gemms(size: str, img_size: int, mask_ratio: float, batch: int, reps: int
               ) -> tuple[dict, float]:
  """Times each of the step's linear-layer products alone in JAX (jitted) and PyTorch, in the
  forms the step runs them: forward (x·W), input gradient (dy·Wᵀ) and kernel gradient (xᵀ·dy),
  sides alternating; prints TFLOP/s per layer. Returns the seconds all of them take in one step on
  each side (median times × layers) and their FLOPs."""
  import jax
  import numpy as np
  import torch

  from configs.common import model_config
  rng = np.random.default_rng(0)
  products = step_products(model_config(size, img_size), img_size, mask_ratio, batch)
  total = {'jax': 0.0, 'torch': 0.0}
  print('the step\'s linear-layer matrix products alone (TFLOP/s, median of reps; JAX / PyTorch):')
  for name, m, k, n, layers, input_grad in products:
    x, dy = rng.standard_normal((m, k), np.float32), rng.standard_normal((m, n), np.float32)
    w = rng.standard_normal((k, n), np.float32)
    forms = {'x·W': (lambda a, b: a @ b, (x, w)), 'xᵀ·dy': (lambda a, b: a.T @ b, (x, dy))}
    if input_grad:
      forms['dy·Wᵀ'] = (lambda a, b: a @ b.T, (dy, w))
    row = []
    for form, (fn, args) in forms.items():
      j_fn, j_args = jax.jit(fn), [jax.numpy.asarray(a) for a in args]
      t_args = [torch.from_numpy(a) for a in args]
      times, _, _ = time_alternating({'jax': lambda: j_fn(*j_args).block_until_ready(),
                                      'torch': lambda: fn(*t_args)}, reps + 1)
      med = {side: statistics.median(t[1:]) for side, t in times.items()}  # first: compile
      for side in total:
        total[side] += layers * med[side]
      row.append(f'{form} {2 * m * k * n / med["jax"] / 1e12:.3f} / '
                 f'{2 * m * k * n / med["torch"] / 1e12:.3f}')
    print(f'  {name} ({m}×{k} · {k}×{n}, {layers}×): ' + ', '.join(row))
  flops = products_flops(products)
  print(f'  all of them, one step ({flops / 1e9:.1f} GFLOP): JAX {total["jax"]:.3f} s, '
        f'PyTorch {total["torch"]:.3f} s (JAX / PyTorch {total["jax"] / total["torch"]:.2f})')
  return total, flops


def print_attention(size: str, img_size: int, mask_ratio: float, batch: int, reps: int) -> None:
  """One attention layer (qkv, attention, projection), forward+backward of a sum of squares, alone:
  our `Attention` (jitted) against timm's, at the encoder's and the decoder's token counts; then the
  attention without the two products (jax.nn.dot_product_attention vs PyTorch's fused kernel)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from flax import nnx
  from timm.models.vision_transformer import Attention as TimmAttention

  from configs.common import model_config
  from mae_face_jax.models.vit import Attention
  cfg = model_config(size, img_size)
  tokens = (img_size // cfg.patch_size)**2
  keep = int(tokens * (1 - mask_ratio))
  rng = np.random.default_rng(0)
  print('one attention layer alone, forward+backward (ms, median of reps; JAX / PyTorch):')
  for where, n, d, heads, depth in (
      ('encoder', 1 + keep, cfg.embed_dim, cfg.num_heads, cfg.depth),
      ('decoder', 1 + tokens, cfg.decoder_embed_dim, cfg.decoder_num_heads, cfg.decoder_depth)):
    x = rng.standard_normal((batch, n, d)).astype(np.float32)
    ours = Attention(d, heads, attention_impl=None, dtype=jnp.float32, param_dtype=jnp.float32,
                     rngs=nnx.Rngs(0))
    grad = nnx.jit(nnx.grad(lambda m, x: (m(x)**2).sum()))
    theirs, jx, tx = TimmAttention(d, heads, qkv_bias=True), jnp.asarray(x), torch.from_numpy(x)

    def torch_fwd_bwd(theirs=theirs, tx=tx):
      theirs.zero_grad(set_to_none=True)
      (theirs(tx)**2).sum().backward()
    times, _, _ = time_alternating({'jax': lambda: jax.block_until_ready(grad(ours, jx)),
                                    'torch': torch_fwd_bwd}, reps + 1)
    ms = {name: statistics.median(t[1:]) * 1e3 for name, t in times.items()}  # first: compile
    # The attention itself, without the layer's two products: jax.nn.dot_product_attention
    # against PyTorch's fused scaled_dot_product_attention, same q = k = v.
    qkv = rng.standard_normal((batch, n, heads, d // heads)).astype(np.float32)
    core = jax.jit(jax.grad(lambda q: (jax.nn.dot_product_attention(q, q, q)**2).sum()))
    jq, tq = jnp.asarray(qkv), torch.from_numpy(qkv).transpose(1, 2).contiguous().requires_grad_()

    def torch_core(tq=tq):
      tq.grad = None
      (torch.nn.functional.scaled_dot_product_attention(tq, tq, tq)**2).sum().backward()
    times, _, _ = time_alternating({'jax': lambda: jax.block_until_ready(core(jq)),
                                    'torch': torch_core}, reps + 1)
    core_ms = {name: statistics.median(t[1:]) * 1e3 for name, t in times.items()}
    print(f'  {where} ({batch}×{n} tokens, width {d}, {heads} heads; {depth} such layers a step): '
          f'{ms["jax"]:.1f} / {ms["torch"]:.1f}; the attention alone (no qkv/proj products) '
          f'{core_ms["jax"]:.1f} / {core_ms["torch"]:.1f}')


def print_breakdown(phases: dict, step_median: dict, reps: int) -> None:
  """Medians of forward and forward+backward alone (sides alternating, as the step), and what the
  optimizer update adds (step - forward+backward); one row per phase, JAX / PyTorch ratio last."""
  rows = {}
  for phase, fns in phases.items():
    for fn in fns.values():
      fn()  # compile / warm up
    times, _, _ = time_alternating(fns, reps)
    rows[phase] = {name: statistics.median(t) for name, t in times.items()}
  rows['backward (difference)'] = {n: rows['forward+backward'][n] - rows['forward'][n]
                                   for n in rows['forward']}
  rows['optimizer update (difference)'] = {n: step_median[n] - rows['forward+backward'][n]
                                           for n in rows['forward']}
  rows['whole step'] = dict(step_median)
  print('breakdown (median s):')
  for phase, t in rows.items():
    ratio = f'  ratio {t["jax"] / t["torch"]:.2f}' if len(t) == 2 else ''
    print(f'  {phase:32s}' + ''.join(f'  {n} {v:.3f}' for n, v in t.items()) + ratio)


def main(argv=None) -> None:
  global SETTLE_SECONDS
  args = parse_args(argv)
  SETTLE_SECONDS = args.settle_ms / 1e3
  set_xla_flags(args)
  from mae_face_jax import host_memory
  kept = not args.system_malloc and host_memory.keep_freed_memory()  # before JAX/torch threads

  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from benchmarks.torch_mae import build_torch_mae, state_dict_numpy

  jdev = jax.devices()[0]
  on_gpu = jdev.platform == 'gpu'
  tdev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  batch = args.batch or (64 if on_gpu else 8)
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)

  torch.manual_seed(args.seed)
  tmodel = build_torch_mae(args.size, args.img_size, mask_ratio=args.mask_ratio).to(tdev).train()
  rng = np.random.default_rng(args.seed)
  imgs = rng.standard_normal((batch, 3, args.img_size, args.img_size)).astype(np.float32)
  num_patches = (args.img_size // tmodel.patch_size)**2
  noise = rng.random((batch, num_patches)).astype(np.float32)

  sides = {}
  if args.only != 'torch':
    run_jax = jax_step_fn(args.size, args.img_size, args.mask_ratio, args.attention_impl,
                          state_dict_numpy(tmodel), args.seed, args.dtype)
    j_imgs = jax.device_put(jnp.asarray(imgs.transpose(0, 2, 3, 1)), jdev)  # NHWC
    j_noise = jax.device_put(jnp.asarray(noise), jdev)
    sides['jax'] = lambda: float(run_jax(j_imgs, j_noise))  # float() waits for the result
  if args.only != 'jax':
    run_torch = torch_step_fn(tmodel, tdev)
    t_imgs, t_noise = torch.from_numpy(imgs).to(tdev), torch.from_numpy(noise).to(tdev)

    def torch_once():
      loss = float(run_torch(t_imgs, t_noise).detach())  # .item() synchronises CUDA too
      return loss
    sides['torch'] = torch_once
  phases = {}  # phase -> side -> a callable that waits for its result
  if args.breakdown:
    for phase in ('forward', 'forward+backward'):
      phases[phase] = {}
      if 'jax' in sides:
        phases[phase]['jax'] = (lambda f=run_jax.phases[phase]: float(f(j_imgs, j_noise)))
      if 'torch' in sides:
        phases[phase]['torch'] = (lambda f=run_torch.phases[phase]: float(f(t_imgs, t_noise).detach()))

  print(f'MAE train step: size={args.size} img={args.img_size} batch={batch} '
        f'mask_ratio={args.mask_ratio} JAX compute {args.dtype} (PyTorch fp32), fwd+bwd+AdamW',
        flush=True)
  print(f'machine: {cpu_name()}, {os.cpu_count()} logical CPUs; python {platform.python_version()}')
  print(f'jax {jax.__version__} on {jdev.device_kind} ({jdev.platform}); '
        f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')
  where = (torch.cuda.get_device_name() if tdev.type == 'cuda'
           else f'{torch.get_num_threads()} threads')
  print(f'torch {torch.__version__} on {tdev} ({where})')
  print(f'fast math: {"ON (numerics differ from fp32 reference)" if args.fast_math else "off"}; '
        f'malloc: {"keeps freed memory (host_memory)" if kept else "system default"}; '
        f'untimed pause before each timed call: {SETTLE_SECONDS * 1e3:g} ms', flush=True)

  first_loss = {}
  for name, fn in sides.items():
    t0 = time.perf_counter()
    first_loss[name] = fn()
    what = 'first step (incl. compile)' if name == 'jax' else 'first step'
    print(f'{name}: {what} {time.perf_counter() - t0:.2f} s, '
          f'loss {first_loss[name]:.6f}', flush=True)
    for _ in range(args.warmup):
      fn()
  load0 = os.getloadavg()[0]
  times, cpu, faults = time_alternating(sides, args.steps, report=lambda i, wall: print(
      f'rep {i}: ' + ', '.join(f'{n} {t[-1]:.3f} s' for n, t in wall.items()), flush=True))
  print(f'load average (1 min) {load0:.2f} before, {os.getloadavg()[0]:.2f} after the timed steps '
        f'(other processes share the {os.cpu_count()} CPUs when it exceeds that)')

  med = {name: statistics.median(t) for name, t in times.items()}
  for name, t in times.items():
    print(f'{name:5s} median {med[name]:.3f} s/step (min {min(t):.3f}, max {max(t):.3f}, '
          f'{len(t)} steps; process CPU time median {statistics.median(cpu[name]):.2f} s/step, '
          f'minor page faults median {statistics.median(faults[name]):.0f}/step)')
  for name in med:
    print(f'{name:5s} {batch / med[name]:.2f} images/s')
  if len(med) == 2:
    print(f'ratio = JAX time / PyTorch time = {med["jax"] / med["torch"]:.3f}')
    print(f'throughput ratio = JAX images/s / PyTorch images/s = {med["torch"] / med["jax"]:.3f}')
  if phases:
    print_breakdown(phases, med, args.steps)
  gemms = None
  if args.gemms and not on_gpu:
    gemms = time_gemms(args.size, args.img_size, args.mask_ratio, batch, max(args.steps, 5))
  if args.attention and not on_gpu:
    print_attention(args.size, args.img_size, args.mask_ratio, batch, max(args.steps, 5))
  if 'jax' in med:
    step_flops = run_jax.flops(j_imgs, j_noise)
    n = 8192 if on_gpu else 2048
    peak = matmul_peak_flops(args.dtype, jdev, n)
    achieved = step_flops / med['jax']
    print(f'JAX step: {step_flops / 1e9:.1f} GFLOP (XLA cost analysis), {achieved / 1e12:.3f} TFLOP/s; '
          f'measured {args.dtype} matmul peak {peak / 1e12:.3f} TFLOP/s; '
          f'model FLOPs utilisation (MFU) = {achieved / peak:.3f}')
    if 'torch' in med and args.dtype == 'float32':
      # What the targets ask, in FLOP/s: a JAX step 0.8x PyTorch's time (1.25x its images/s) must
      # run the same FLOPs at PyTorch's rate / 0.8. Above the best product rate either framework
      # reaches on this machine, no fp32 step can meet it here.
      best = max(peak, torch_matmul_peak_flops(tdev, n))
      torch_rate = step_flops / med['torch']
      print(f'PyTorch step: the same {step_flops / 1e9:.1f} GFLOP at {torch_rate / 1e12:.3f} TFLOP/s = '
            f'{torch_rate / best:.2f} of the best fp32 {n}^3 matmul rate measured here '
            f'({best / 1e12:.3f} TFLOP/s, the larger of JAX\'s and PyTorch\'s)')
      print(f'ratio 0.8 (throughput 1.25x) needs the JAX step at {torch_rate / 0.8 / 1e12:.3f} TFLOP/s '
            f'= {torch_rate / 0.8 / best:.2f} of that rate'
            + (': above the measured peak' if torch_rate / 0.8 > best else ''))
    if 'torch' in med and gemms:
      # The products are nearly all of the step's FLOPs and nothing else in a step can make them
      # faster: if they alone, at XLA's own measured rates, outlast 0.8x PyTorch's whole step, no
      # JAX step built on them can meet the target here.
      (product_s, product_flops), allowed = gemms, 0.8 * med['torch']
      print(f'ratio 0.8 allows the whole JAX step {allowed:.3f} s; its linear-layer products alone '
            f'({product_flops / step_flops:.0%} of the step\'s FLOPs) take JAX {product_s["jax"]:.3f} s '
            f'at the rates above (PyTorch {product_s["torch"]:.3f} s)'
            + (': over the allowance before anything else runs' if product_s['jax'] > allowed
               else ''))

if __name__ == '__main__':
  main()
