"""Orbax checkpoints under `<workdir>/checkpoints/<step>/`.

Each checkpoint holds three items:
  state:     the TrainState pytree (step, params, batch_stats, opt_state, rng);
  data_iter: the grain iterator state, so a resumed run sees the same batches;
  meta:      the model name, its config and every parameter's shape, checked
             before anything is restored or written, so a workdir of another
             model is never overwritten.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

ITEMS = ("state", "data_iter", "meta")


class CheckpointMismatchError(ValueError):
  """The workdir holds a checkpoint of a different model."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, *, max_to_keep: int = 3,
                 asynchronous: bool = True) -> ocp.CheckpointManager:
  # cleanup_tmp_directories: a run killed while saving leaves a temporary
  # directory; it is removed when the run resumes.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
      enable_async_checkpointing=asynchronous)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=ITEMS)


def param_shapes(params) -> dict[str, list[int]]:
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(path): list(np.shape(leaf))
          for path, leaf in flat}


def make_meta(model_name: str, model_config: Mapping[str, Any],
              params) -> dict[str, Any]:
  return {"model_name": model_name,
          "model": json.loads(json.dumps(dict(model_config), default=str)),
          "param_shapes": param_shapes(params)}


def check_meta(saved: Mapping[str, Any], current: Mapping[str, Any],
               workdir: str, step: int) -> None:
  """Raises CheckpointMismatchError naming what differs."""
  problems = []
  if saved.get("model_name") != current["model_name"]:
    problems.append(f"model_name {saved.get('model_name')!r} != "
                    f"{current['model_name']!r}")
  a, b = saved.get("param_shapes", {}), current["param_shapes"]
  missing = sorted(set(b) - set(a))
  extra = sorted(set(a) - set(b))
  reshaped = sorted(k for k in set(a) & set(b) if a[k] != b[k])
  for label, keys in (("parameters missing from the checkpoint", missing),
                      ("parameters only in the checkpoint", extra),
                      ("parameters of another shape", reshaped)):
    if keys:
      problems.append(f"{len(keys)} {label}, e.g. {', '.join(keys[:3])}")
  if problems:
    raise CheckpointMismatchError(
        f"--workdir={workdir} holds a checkpoint (step {step}) of a different "
        f"model: {'; '.join(problems)}. Nothing was overwritten. Use a new "
        "--workdir, or delete the old checkpoints to start over.")


def save(manager: ocp.CheckpointManager, step: int, state, data_iter_state,
         meta) -> None:
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data_iter=ocp.args.JsonSave(_jsonable(data_iter_state)),
      meta=ocp.args.JsonSave(meta)))


def restore_latest(manager: ocp.CheckpointManager, abstract_state, meta,
                   workdir: str):
  """Restores the latest checkpoint, after checking it is of this model.

  Returns:
    (state, data_iter_state, step), or None when there is no checkpoint.
  """
  step = manager.latest_step()
  if step is None:
    return None
  saved_meta = manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))["meta"]
  check_meta(saved_meta, meta, workdir, step)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data_iter=ocp.args.JsonRestore()))
  logging.info("Restored checkpoint of step %d from %s", step,
               checkpoint_dir(workdir))
  return restored["state"], restored["data_iter"], step


def peek_meta(workdir: str) -> tuple[int, dict] | None:
  """(step, meta) of the latest checkpoint of `workdir`, if any."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return None
  manager = make_manager(workdir, asynchronous=False)
  step = manager.latest_step()
  if step is None:
    return None
  meta = manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))["meta"]
  return step, meta


def restore_params(path: str, *, step: int | None = None) -> dict[str, Any]:
  """Reads params and batch_stats of another run's checkpoint (for init).

  Args:
    path: a workdir, its checkpoints/ dir, or one checkpoints/<step> dir.
    step: which step of a workdir; the latest by default.

  Returns:
    {"params": ..., "batch_stats": ...} as NumPy trees.
  """
  path = os.path.abspath(os.path.expanduser(path))
  state_dir = None
  if os.path.isdir(os.path.join(path, "state")):
    state_dir = os.path.join(path, "state")
  else:
    root = path if os.path.basename(path) == "checkpoints" else (
        checkpoint_dir(path))
    if not os.path.isdir(root):
      raise FileNotFoundError(
          f"config.init_from.checkpoint={path}: not a workdir, checkpoints/ "
          "dir or checkpoints/<step> dir")
    manager = ocp.CheckpointManager(
        root, item_names=ITEMS,
        options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(
          f"config.init_from.checkpoint={path}: no checkpoint in {root}")
    state_dir = os.path.join(root, str(step), "state")
  restored = ocp.StandardCheckpointer().restore(state_dir)
  return {"params": restored["params"],
          "batch_stats": restored.get("batch_stats", {})}


def _jsonable(x):
  return json.loads(json.dumps(x, default=_default))


def _default(o):
  if isinstance(o, bytes):
    return o.decode("latin-1")
  if isinstance(o, np.generic):
    return o.item()
  raise TypeError(f"cannot store {type(o)} in the data iterator state")
