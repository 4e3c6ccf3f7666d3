"""Orbax checkpoints: model parameters alone (`save_params`/`restore_params`: the PyTorch interop,
fusion's encoders), whole training runs (`TrainCheckpointer`: train state + data position,
resumable; `Preemption`: SIGTERM handling), and what later stages read from a run's workdir
(`load_pretrained_params`: stage 1's weights; `save_best`/`load_best`: fine-tuning's best epoch).

Orbax writes into a temporary directory and renames it when complete, so a write that is killed
leaves no half checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import grain
import jax
from absl import logging
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from mae_face_jax import observe, report
from mae_face_jax.models.vit import PosEmbed
from mae_face_jax.train_state import flatten

# What a model's checkpoint holds: trained parameters and fixed position tables.
MODEL_VARIABLES = nnx.Any(nnx.Param, PosEmbed)


def check_compatible(restored: Any, expected: Any, source: str) -> None:
  """Raises naming the first parameter whose presence or shape differs (checkpoint of another config)."""
  got, want = flatten(restored), flatten(expected)
  for key in want:
    if key not in got:
      raise ValueError(f'{source}: checkpoint has no parameter {key} (saved from another config?)')
    if tuple(got[key].shape) != tuple(want[key].shape):
      raise ValueError(f'{source}: parameter {key} has shape {tuple(got[key].shape)} in the '
                       f'checkpoint but {tuple(want[key].shape)} in the model config')
  extra = sorted(set(got) - set(want))
  if extra:
    raise ValueError(f'{source}: checkpoint has parameters the model lacks, first {extra[0]}')


def save_params(path: str, model: nnx.Module) -> None:
  """Writes the model's parameters as an Orbax checkpoint at `path` (replacing one there)."""
  state = nnx.to_pure_dict(nnx.state(model, MODEL_VARIABLES))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(path), state, force=True)


def restore_params(path: str, model: nnx.Module) -> None:
  """Loads a `save_params` checkpoint into `model`, refusing one of another shape."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path}: no parameter checkpoint there')
  state = nnx.state(model, MODEL_VARIABLES)
  target = nnx.to_pure_dict(state)
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(path).item_metadata
    check_compatible(meta, target, path)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), target)
    restored = ckptr.restore(path, abstract)
  nnx.replace_by_pure_dict(state, restored)
  nnx.update(model, state)


def read_numpy(path: str) -> dict:
  """Any Orbax pytree checkpoint (a `save_params` or best/ directory, a training step's state) as
  nested dicts of host numpy arrays, on every process alike."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path}: no checkpoint there')
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(path).item_metadata
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta.tree)
    return ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


# ---------------------------------------------------------------------------------------------
# Training checkpoints: the whole train state + each host's data-iterator position, resumable.
# ---------------------------------------------------------------------------------------------


class _IteratorSnapshot:
  """The iterator's position taken *now*: an async save must not see batches read after it."""

  def __init__(self, iterator: Any):
    state = iterator.get_state()
    self._state = (json.dumps(state, indent=1).encode() if isinstance(state, dict) else state)

  def get_state(self) -> bytes:
    return self._state


class TrainCheckpointer:
  """Orbax CheckpointManager over `directory`: items 'state' (a pytree of arrays: params,
  optimizer state, step, rng) and 'data' (one Grain iterator state file per process).

  Saves are asynchronous (arrays are copied to host before `save` returns, so the caller may
  donate them) and collective: every process calls `save`/`restore`. Each save goes to a temporary
  directory renamed when complete, so a killed write never hides the previous checkpoint.
  """

  def __init__(self, directory: str, *, keep: int | None = None, use_async: bool = True,
               read_only: bool = False):
    """`read_only`: for readers (stage 2, tests) next to a run that may be writing: it neither
    creates the directory nor removes the temporary directory of a save in progress."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only,
        read_only=read_only, enable_async_checkpointing=use_async,
        cleanup_tmp_directories=not read_only)  # a writer drops leftovers of a killed write
    self.directory = os.path.abspath(directory)
    self._mngr = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def save(self, step: int, state: Any, data_iter: Any) -> None:
    """Starts writing `step` (the caller decides when: every save is taken)."""
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_iter))), force=True)

  def restore(self, step: int, abstract_state: Any, data_iter: Any) -> Any:
    """State at `step`, placed as `abstract_state` says (ShapeDtypeStructs with shardings); the
    iterator is moved to where it was. Refuses a checkpoint of another model config by name."""
    meta = self._mngr.item_metadata(step)['state']
    where = f'{self.directory}/{step}'
    check_compatible(meta['params'], abstract_state['params'], where)
    restored = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iter)))
    return restored['state']

  def restore_params(self, step: int) -> dict:
    """Only the parameters of `step`, as host numpy arrays (stage 2 reads the encoder from them)."""
    return read_numpy(os.path.join(self.directory, str(step), 'state'))['params']

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()


_PREEMPTED = False  # a notice reached a training loop of this process (outlives its Preemption)


def preempted() -> bool:
  """Whether a program of this process stopped on a preemption notice: a chain of programs (the
  demo) must then stop too instead of starting its next stage."""
  return _PREEMPTED


class Preemption:
  """Has a preemption notice (SIGTERM) arrived? Checked once per step by every process.

  One process: our own SIGTERM handler sets a flag, and the program saves at the step it is on.
  Several: JAX's distributed runtime catches SIGTERM on any host and all hosts agree on the step
  to save at (`reached_preemption_sync_point`), so the checkpoint stays collective.
  """

  def __init__(self):
    self._flag = False
    self._previous = None
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._flag = True

  def reached(self, step: int) -> bool:
    global _PREEMPTED
    if jax.process_count() > 1:
      hit = multihost_utils.reached_preemption_sync_point(step)
    else:
      hit = self._flag
    _PREEMPTED = _PREEMPTED or hit
    return hit

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def open_and_resume(config: Any, workdir: str, state: Any, state_shardings: Any, data_iter: Any
                    ) -> tuple[TrainCheckpointer, Any]:
  """The program's checkpoint manager (`workdir/checkpoints`, retention from the config) and the
  state to start from: the latest checkpoint's if there is one (placed as `state_shardings` say,
  the data iterator moved to its position), else `state` itself."""
  ckpt = TrainCheckpointer(os.path.join(workdir, 'checkpoints'), keep=config.keep_checkpoints,
                           use_async=config.get('async_checkpoints', True))
  if (latest := ckpt.latest_step()) is not None:
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            state, state_shardings)
    state = ckpt.restore(latest, abstract, data_iter)
    logging.info('resumed from %s/%d', ckpt.directory, latest)
  return ckpt, state


def load_pretrained_params(workdir: str, step: int | None = None) -> tuple[dict, int]:
  """The parameters of a training workdir's latest (or given) checkpoint as host numpy arrays
  (stage 2 imports stage 1's MAE from them). Returns (params, step)."""
  ckpt = TrainCheckpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  steps = ckpt.all_steps()
  step = (steps[-1] if steps else None) if step is None else step
  if step not in steps:
    ckpt.close()
    raise FileNotFoundError(f'{workdir}/checkpoints: no checkpoint of step {step} (has {steps})')
  params = ckpt.restore_params(step)
  ckpt.close()
  return params, step


def save_best(workdir: str, params: Any, result: dict[str, Any], step: int) -> None:
  """Parameters of the best evaluation under best/ (atomic, replacing the previous best) and its
  metrics in best.json. Collective: every process calls it."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(workdir, 'best'), params, force=True)
  if observe.is_chief():
    report.atomic_write_text(os.path.join(workdir, 'best.json'),
                             json.dumps(dict(result, step=step), indent=1))


def load_best(workdir: str) -> dict[str, Any]:
  """best.json of a fine-tuning workdir ({'macro_f1': -1} before the first evaluation)."""
  path = os.path.join(workdir, 'best.json')
  if not os.path.exists(path):
    return {'macro_f1': -1.0}
  with open(path) as f:
    return json.load(f)
