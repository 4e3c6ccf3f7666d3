"""The one entry point: `python main.py --config=configs/<name>.py --workdir=DIR [--mode=...]`.

Modes:
  train         run the program the config names (`config.program`); the default
  import_torch  PyTorch/timm/MAE checkpoint (--torch_checkpoint) → Orbax parameters in DIR/params
  export_torch  Orbax parameters in DIR/params, or a training workdir DIR's (its best evaluation's
                or last checkpoint's, with its own config) → timm-style state dict at
                --torch_checkpoint
  align         faces of --input (video, image, folder) → --output/cropped_aligned + landmarks.csv
  predict       expressions of --input's faces with --model → --output/predictions.csv, timelines
  evaluate      --model on the ABAW validation split of --config's data → --output/report
  aot           compile the pretraining step for a TPU --topology (e.g. v5p:4x4x4) on this machine,
                print its memory, XLA's cost-model estimates and collectives (needs libtpu); with
                --workdir, also the estimate as JSON and the compiled HLO there
With no --config, runs the whole system on the embedded demo data (configs/demo.py).
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

DEMO_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs', 'demo.py')

_CONFIG = config_flags.DEFINE_config_file('config', DEMO_CONFIG, 'Config file (a get_config() module).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, summaries and reports go.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'import_torch', 'export_torch', 'aot', 'align',
                                            'predict', 'evaluate'], 'What to do.')
_TORCH_CKPT = flags.DEFINE_string('torch_checkpoint', None,
                                  'PyTorch checkpoint (.pth/.safetensors) to import or export to.')
# align / predict / evaluate
_INPUT = flags.DEFINE_string('input', None, 'A video, an image, or a folder of them.')
_OUTPUT = flags.DEFINE_string('output', None, 'Where align, predict and evaluate write.')
_MODEL = flags.DEFINE_string('model', None, 'A fusion or fine-tuning workdir, a params folder of an '
                             'imported ViT, or a timm .pth/.safetensors fine-tuned ViT.')
_LARGEST_FACE = flags.DEFINE_bool('largest_face', False, 'Only the largest face of each frame.')
_ANNOTATED = flags.DEFINE_bool('annotated_video', False, 'predict: also an MP4 with boxes, labels.')
_MIN_FACE = flags.DEFINE_float('min_face_size', 20, 'Smallest face to detect, in pixels.')
_TOPOLOGY = flags.DEFINE_string('topology', None, 'TPU topology for --mode=aot, e.g. v5p:8x8x8.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _MODE.value in ('align', 'predict', 'evaluate'):
    from mae_face_jax import predict
    return predict.run_mode(_MODE.value, _CONFIG.value, input_path=_INPUT.value,
                            output=_OUTPUT.value, model=_MODEL.value,
                            largest_face=_LARGEST_FACE.value, annotated_video=_ANNOTATED.value,
                            min_face_size=_MIN_FACE.value)
  config = _CONFIG.value
  if _MODE.value == 'aot':
    if not _TOPOLOGY.value:
      raise app.UsageError('--mode=aot needs --topology, e.g. v5p:4x4x4')
    from mae_face_jax import aot
    aot.run(config, _TOPOLOGY.value, _WORKDIR.value)
    return
  workdir = _WORKDIR.value or config.get('workdir', None)
  if not workdir:
    raise app.UsageError('--workdir is required for this config')
  os.makedirs(workdir, exist_ok=True)
  from mae_face_jax import observe
  observe.route_logs(os.path.join(workdir, 'log.txt'))
  # Compiled steps persist in the workdir: a resumed run, and stages of one chain that compile the
  # same step (the two fine-tunings), load them instead of compiling again.
  cache = config.get('compilation_cache_dir')
  cache = os.path.join(workdir, 'jax_cache') if cache is None else cache
  if cache:
    import jax
    jax.config.update('jax_compilation_cache_dir', cache)

  if _MODE.value in ('import_torch', 'export_torch'):
    from mae_face_jax import checkpointing, classifiers, torch_interop
    from mae_face_jax import train_state as ts
    from mae_face_jax.models.build import build_model
    if _MODE.value == 'export_torch' and os.path.exists(os.path.join(workdir, 'config.json')):
      config = classifiers.read_config(workdir)  # a training workdir: export the model it trained
    if not _TORCH_CKPT.value:
      raise app.UsageError(f'--mode={_MODE.value} needs --torch_checkpoint=PATH')
    if config.program not in ('pretrain', 'finetune'):
      raise app.UsageError(f'--mode={_MODE.value} needs a pretrain or finetune config, not '
                           f'program={config.program!r}')
    model = build_model(config)
    params_dir = os.path.join(workdir, 'params')
    if _MODE.value == 'import_torch':
      report = torch_interop.import_torch_checkpoint(model, _TORCH_CKPT.value)
      checkpointing.save_params(params_dir, model)
      print(f'imported {len(report.loaded)} tensors from {_TORCH_CKPT.value} into {params_dir}; '
            f'missing {report.missing or "none"}; unexpected {report.unexpected or "none"}; '
            f're-initialised {report.reinitialised or "none"}')
    else:
      source = params_dir
      if os.path.isdir(params_dir):
        checkpointing.restore_params(params_dir, model)
      elif os.path.isdir(best := os.path.join(workdir, 'best')):  # a fine-tuning run's best
        classifiers.set_params(model, ts.flatten(checkpointing.read_numpy(best)), best)
        source = best
      else:  # a training run's last checkpoint
        params, step = checkpointing.load_pretrained_params(workdir)
        source = f'{workdir}/checkpoints/{step}'
        classifiers.set_params(model, ts.flatten(params), source)
      torch_interop.save_torch_checkpoint(torch_interop.export_state_dict(model), _TORCH_CKPT.value)
      print(f'exported {source} to {_TORCH_CKPT.value}')
    return

  if config.program == 'pretrain':
    from mae_face_jax import train_pretrain
    train_pretrain.train_and_evaluate(config, workdir)
  elif config.program == 'finetune':
    from mae_face_jax import train_finetune
    train_finetune.train_and_evaluate(config, workdir)
  elif config.program == 'fusion':
    from mae_face_jax import train_fusion
    train_fusion.train_and_evaluate(config, workdir)
  elif config.program == 'demo':
    from mae_face_jax import demo
    demo.run(config, workdir)
  else:
    raise app.UsageError(f'config.program={config.program!r} is not one of pretrain, finetune, fusion, demo')


if __name__ == '__main__':
  from mae_face_jax import host_memory
  host_memory.keep_freed_memory()  # before JAX starts its threads
  logging.set_verbosity(logging.INFO)
  app.run(main)
