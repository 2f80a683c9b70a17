"""Orbax checkpoints under `<workdir>/checkpoints/<step>/`.

Each checkpoint holds three items:
  state:     the TrainState pytree (step, params, batch_stats, opt_state, rng);
  data_iter: the grain iterator state, so a resumed run sees the same batches;
  meta:      what made the checkpoint: the model (name, config, number of
             classes, every parameter's shape), the input it was trained on
             (frame size, clip length, normalisation, flow), the optimizer
             and a signature of its state, and the whole config. A resume
             compares it with the current run before anything is restored or
             written, and names every difference; `restore_for_inference`
             rebuilds the model from it alone.

Saving is asked of the manager every step (`should_save`: every
`config.checkpoint.every_steps`); the last step is always saved, and so is
the step at which a preemption stops the run (`vreid_jax.preemption`).

Faults (`restore_latest`, `make_manager`): a checkpoint that cannot be read
(a truncated or missing array file, a missing item, unreadable metadata) is
named, moved aside to `<workdir>/checkpoints_bad/` (never deleted) and the
next newest is tried; the temporary folder of a save that was interrupted
(`<step>.orbax-checkpoint-tmp-*`) is moved there too, with a log line,
instead of orbax's silent deletion. A save that fails raises
`CheckpointSaveError`; the previous checkpoints are left as they were.

Partial initialisation (`load_partial`): copy every parameter of another
run's checkpoint whose name and shape match (GLTR's stage 1 -> stage 2).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

ITEMS = ("state", "data_iter", "meta")

# The input settings a model's function depends on; a resume must match them.
INPUT_KEYS = ("height", "width", "clip_len", "mean", "std", "with_flow",
              "flow_scale")


class CheckpointMismatchError(ValueError):
  """The workdir holds a checkpoint of a different model or optimizer."""


class CheckpointSaveError(OSError):
  """Writing a checkpoint failed (the message names the step and why)."""


TMP_MARKER = ".orbax-checkpoint-tmp"
BAD_DIR = "checkpoints_bad"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def quarantine(path: str, workdir: str, reason: str, *, log=None) -> str:
  """Moves a bad checkpoint folder to `<workdir>/checkpoints_bad/` (never
  deletes it); returns where it went. Only process 0 moves."""
  log = log or _warn
  dest_root = os.path.join(os.path.abspath(workdir), BAD_DIR)
  name = os.path.basename(os.path.normpath(path))
  dest = os.path.join(dest_root,
                      f"{name}.{time.strftime('%Y%m%d-%H%M%S')}")
  if jax.process_index() == 0:
    os.makedirs(dest_root, exist_ok=True)
    i = 1
    while os.path.exists(dest):
      dest = f"{dest}.{i}"
      i += 1
    os.replace(path, dest)
  log(f"{reason}; moved it aside to {dest}")
  return dest


def quarantine_interrupted_saves(workdir: str, *, log=None) -> list[str]:
  """Moves temporary folders of interrupted saves to checkpoints_bad/."""
  root = checkpoint_dir(workdir)
  if not os.path.isdir(root):
    return []
  moved = []
  for name in sorted(os.listdir(root)):
    if TMP_MARKER in name:
      moved.append(quarantine(
          os.path.join(root, name), workdir,
          f"{os.path.join(root, name)} is the temporary folder of a save "
          "that did not finish (the run was killed while writing)",
          log=log))
  return moved


def make_manager(workdir: str, *, max_to_keep: int = 3,
                 every_steps: int = 0,
                 asynchronous: bool = True) -> ocp.CheckpointManager:
  """The workdir's CheckpointManager.

  Args:
    workdir: the run's directory.
    max_to_keep: checkpoints kept (older ones are deleted).
    every_steps: save interval for `should_save` (0: only forced saves).
    asynchronous: write in the background (`wait_until_finished` syncs).
  """
  # A run killed while saving leaves a temporary directory: moved aside
  # (named in the log), not deleted as orbax's cleanup_tmp_directories would.
  quarantine_interrupted_saves(workdir)
  # should_save: every `every_steps` (none when <= 0); not orbax's default
  # initial save at the first step. Preemption is the train loop's
  # (`vreid_jax.preemption`: the multi-host sync point is asked once per
  # step, there).
  policies = []
  if every_steps > 0:
    policies.append(ocp.checkpoint_managers.FixedIntervalPolicy(
        int(every_steps)))
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=False,
      save_decision_policy=ocp.checkpoint_managers.AnySavePolicy(policies),
      enable_async_checkpointing=asynchronous)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=ITEMS)


def param_shapes(params) -> dict[str, list[int]]:
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(path): list(np.shape(leaf))
          for path, leaf in flat}


def _jsonable(x):
  return json.loads(json.dumps(x, default=_default))


def tree_signature(tree) -> str:
  """A short hash of a pytree's structure and leaf shapes/dtypes."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  text = str(treedef) + "".join(
      f"{np.shape(x)}{getattr(x, 'dtype', '')}" for x in leaves)
  return hashlib.sha1(text.encode()).hexdigest()[:16]


def make_meta(config, *, num_classes: int, params,
              opt_state) -> dict[str, Any]:
  """The checkpoint's meta item for this run."""
  cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return _jsonable({
      "model_name": cfg["model_name"],
      "model": dict(cfg["model"]),
      "num_classes": int(num_classes),
      "input": {k: cfg["input"].get(k) for k in INPUT_KEYS},
      "optimizer": dict(cfg["optimizer"]),
      "opt_state_signature": tree_signature(opt_state),
      "param_shapes": param_shapes(params),
      "config": cfg,
  })


def _differences(prefix: str, saved: Mapping[str, Any],
                 current: Mapping[str, Any]) -> list[str]:
  out = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key, "<unset>"), current.get(key, "<unset>")
    if a != b:
      out.append(f"{prefix}{key}: checkpoint {a!r}, config {b!r}")
  return out


# Model settings that change how a model runs, not what it computes: a run
# may resume with rematerialisation switched on or off, or with the other
# BatchNorm implementation (same variables and forward). (The compute dtype
# changes the numbers, so it stays part of the model.)
RUNTIME_MODEL_KEYS = ("remat", "norm_impl")


def check_meta(saved: Mapping[str, Any], current: Mapping[str, Any],
               workdir: str, step: int) -> list[str]:
  """Raises CheckpointMismatchError naming what differs.

  Compares the model name, the model config (except `RUNTIME_MODEL_KEYS`:
  rematerialisation, BatchNorm implementation), the number of classes, the
  input settings the model depends on and every parameter's shape (sections
  absent from an older checkpoint's meta are skipped), then the optimizer:
  a different optimizer-state layout is refused with its settings named.

  Returns:
    The optimizer settings that differ while the state layout still fits
    (the caller logs them; the run resumes).
  """
  problems = []
  if saved.get("model_name") != current["model_name"]:
    problems.append(f"model_name: checkpoint {saved.get('model_name')!r}, "
                    f"config {current['model_name']!r}")
  if "model" in saved:
    problems += _differences(
        "model.", {k: v for k, v in saved["model"].items()
                   if k not in RUNTIME_MODEL_KEYS},
        {k: v for k, v in current["model"].items()
         if k not in RUNTIME_MODEL_KEYS})
  if "num_classes" in saved and saved["num_classes"] != current[
      "num_classes"]:
    problems.append(f"number of training identities: checkpoint "
                    f"{saved['num_classes']}, dataset {current['num_classes']}")
  if "input" in saved:
    problems += _differences("input.", saved["input"], current["input"])
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
        "--workdir, or delete the old checkpoints to start over (or start "
        "from its weights with --config.init_from.checkpoint).")
  optimizer_changes = _differences("optimizer.", saved.get("optimizer", {}),
                                   current["optimizer"]) if (
                                       "optimizer" in saved) else []
  if ("opt_state_signature" in saved and saved["opt_state_signature"]
      != current["opt_state_signature"]):
    what = "; ".join(optimizer_changes) or (
        "the optimizer state layout (parameter groups, or another optax "
        "version)")
    raise CheckpointMismatchError(
        f"--workdir={workdir} holds a checkpoint (step {step}) made with "
        f"another optimizer: {what}. Its optimizer state cannot continue "
        "under this config. Nothing was overwritten. Resume with the "
        "checkpoint's optimizer settings, or start a new --workdir from its "
        f"weights with --config.init_from.checkpoint={workdir}.")
  return optimizer_changes


# The step whose asynchronous save is in flight, per manager: its error
# surfaces only at the next save or wait.
_PENDING: dict[int, int] = {}


def _save_error(manager, step: int, e: BaseException) -> CheckpointSaveError:
  failed = _PENDING.pop(id(manager), step)
  good = [s for s in manager.all_steps() if s != failed]
  seen = f" (seen when saving step {step})" if failed != step else ""
  return CheckpointSaveError(
      f"saving the checkpoint of step {failed} in {manager.directory} failed"
      f"{seen}: {type(e).__name__}: {e}. "
      + (f"The previous checkpoint (step {max(good)}) is intact: "
         if good else "No earlier checkpoint exists: ")
      + "free disk space or fix the permissions, then rerun the same command"
      " to resume from it.")


def save(manager: ocp.CheckpointManager, step: int, state, data_iter_state,
         meta, *, force: bool = False) -> bool:
  """Saves a checkpoint of `step`; returns whether one was started.

  Raises:
    CheckpointSaveError: the save (or the previous asynchronous one, whose
      error surfaces here) failed.
  """
  try:
    started = manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=ocp.args.JsonSave(_jsonable(data_iter_state)),
        meta=ocp.args.JsonSave(meta)), force=force)
  except Exception as e:  # pylint: disable=broad-except
    raise _save_error(manager, step, e) from e
  if started:
    _PENDING[id(manager)] = step
  return started


def wait(manager: ocp.CheckpointManager) -> None:
  """Waits for the asynchronous save; CheckpointSaveError if it failed."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    raise _save_error(manager, _PENDING.get(id(manager), -1), e) from e
  _PENDING.pop(id(manager), None)


def checkpoint_bytes(abstract_state) -> int:
  """Bytes of a state's arrays (what one checkpoint needs on disk)."""
  return int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(abstract_state)))


def _restore_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  return manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))["meta"]


def restore_latest(manager: ocp.CheckpointManager, abstract_state, meta,
                   workdir: str):
  """Restores the latest checkpoint, after checking it is of this model.

  Returns:
    (state, data_iter_state, step, optimizer_changes), or None when there is
    no checkpoint.
  """
  while True:
    step = manager.latest_step()
    if step is None:
      return None
    try:
      saved_meta = _restore_meta(manager, step)
    except Exception as e:  # pylint: disable=broad-except
      _drop_bad(manager, step, workdir, "metadata", e)
      continue
    changes = check_meta(saved_meta, meta, workdir, step)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data_iter=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      _drop_bad(manager, step, workdir, "state", e)
      continue
    logging.info("Restored checkpoint of step %d from %s", step,
                 checkpoint_dir(workdir))
    return restored["state"], restored["data_iter"], step, changes


def _drop_bad(manager: ocp.CheckpointManager, step: int, workdir: str,
              what: str, e: BaseException) -> None:
  """Quarantines an unreadable checkpoint and refreshes the manager."""
  first = (str(e).strip().splitlines() or [""])[0][:300]
  quarantine(os.path.join(checkpoint_dir(workdir), str(step)), workdir,
             f"the checkpoint of step {step} in {checkpoint_dir(workdir)} "
             f"is unreadable ({what}: {type(e).__name__}: {first}); falling "
             "back to the newest readable one", log=_warn)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"vreid_quarantine_{step}")
  manager.reload()


def _warn(message: str) -> None:
  logging.warning("%s", message)
  print(f"warning: {message}", flush=True)


def _read_only_manager(root: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      root, item_names=ITEMS,
      options=ocp.CheckpointManagerOptions(read_only=True, create=False))


def peek_meta(workdir: str) -> tuple[int, dict] | None:
  """(step, meta) of the latest checkpoint of `workdir`, if any."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return None
  manager = _read_only_manager(checkpoint_dir(workdir))
  step = manager.latest_step()
  if step is None:
    return None
  return step, _restore_meta(manager, step)


def step_dir(path: str, step: int | None = None,
             what: str = "--workdir") -> str:
  """The checkpoints/<step> directory named by a workdir, checkpoints/ dir
  or checkpoints/<step> dir (latest step unless `step`)."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(os.path.join(path, "state")):
    return path
  root = path if os.path.basename(path) == "checkpoints" else (
      checkpoint_dir(path))
  if not os.path.isdir(root):
    raise FileNotFoundError(
        f"{what}={path}: not a workdir, checkpoints/ dir or checkpoints/<step>"
        " dir")
  manager = _read_only_manager(root)
  step = manager.latest_step() if step is None else step
  if step is None or not os.path.isdir(os.path.join(root, str(step))):
    raise FileNotFoundError(
        f"{what}={path}: no checkpoint"
        + (f" of step {step}" if step is not None else "") + f" in {root}")
  return os.path.join(root, str(step))


def restore_params(path: str, *, step: int | None = None,
                   what: str = "config.init_from.checkpoint"
                   ) -> dict[str, Any]:
  """Reads params and batch_stats of a checkpoint (any device layout).

  Args:
    path: a workdir, its checkpoints/ dir, or one checkpoints/<step> dir.
    step: which step of a workdir; the latest by default.
    what: the flag or field that named `path`, for messages.

  Returns:
    {"params": ..., "batch_stats": ...}.
  """
  state_dir = os.path.join(step_dir(path, step, what), "state")
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.metadata(state_dir).item_metadata
  tree = getattr(tree, "tree", tree)
  # Shapes without shardings: restored on the default device, whatever
  # mesh wrote them.
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        tree)
  restored = checkpointer.restore(state_dir, target)
  return {"params": restored["params"],
          "batch_stats": restored.get("batch_stats", {})}


def merge_matching(target, source, prefix: str = "") -> tuple[Any, list[str],
                                                               list[str]]:
  """Copies leaves of `source` into `target` where path and shape match.

  Returns (merged tree, loaded paths, skipped paths of target).
  """
  loaded, skipped = [], []

  def visit(t, s, path):
    if isinstance(t, Mapping):
      out = {}
      for k, v in t.items():
        sub = f"{path}/{k}"
        if isinstance(s, Mapping) and k in s:
          out[k] = visit(v, s[k], sub)
        else:
          skipped.append(sub)
          out[k] = v
      return out
    if s is not None and np.shape(s) == np.shape(t):
      loaded.append(path)
      return jnp.asarray(s, dtype=jnp.asarray(t).dtype)
    skipped.append(path)
    return t

  merged = visit(flax.core.unfreeze(target), flax.core.unfreeze(source),
                 prefix)
  return merged, loaded, skipped


def load_partial(variables, path: str, *, log=logging.info):
  """`variables` with every leaf of checkpoint `path` that fits copied in.

  Used for `config.init_from.checkpoint` (e.g. GLTR's stage-1 frame model
  initialising stage 2's backbone and reduction). Logs what was loaded and
  what kept its fresh initialisation.

  Raises:
    ValueError: no parameter of the checkpoint fits the model.
  """
  source = restore_params(path)
  merged = {}
  for col in ("params", "batch_stats"):
    merged[col], loaded, skipped = merge_matching(
        variables.get(col, {}), source.get(col, {}), col)
    log("init_from.checkpoint: %s: loaded %d arrays, kept %d freshly "
        "initialised (%s)", col, len(loaded), len(skipped),
        ", ".join(skipped[:8]))
    if col == "params" and not loaded:
      raise ValueError(
          f"config.init_from.checkpoint={path}: no parameter matches this "
          "model (names or shapes differ)")
  return merged


def restore_for_inference(workdir: str, *, step: int | None = None):
  """A trained model from its workdir alone: (model, variables, config).

  The model is rebuilt from the checkpoint's meta (model name, config and
  number of classes), the variables are its params and batch_stats, and
  `config` is the run's config as it was when the checkpoint was written.
  Nothing of the training loop is needed: embed with
  `vreid_jax.models.embed_fn(model)` and
  `vreid_jax.input_pipeline.preprocess`.

  Raises:
    FileNotFoundError: no checkpoint (of that step).
    ValueError: a checkpoint written before metas carried the config.
  """
  from vreid_jax import models  # pylint: disable=g-import-not-at-top
  path = step_dir(workdir, step, "--workdir")
  step = int(os.path.basename(path))
  manager = _read_only_manager(os.path.dirname(path))
  meta = _restore_meta(manager, step)
  if "config" not in meta or "num_classes" not in meta:
    raise ValueError(
        f"{path}: the checkpoint's meta has no config (written by an "
        "older vreid_jax); rebuild the model yourself and use "
        "checkpoint.restore_params")
  config = ml_collections.ConfigDict(meta["config"])
  model = models.build_model(meta["model_name"], meta["num_classes"],
                             meta["model"])
  return model, restore_params(path), config


def _default(o):
  if isinstance(o, bytes):
    return o.decode("latin-1")
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, tuple):
    return list(o)
  raise TypeError(f"cannot store {type(o)} in a checkpoint's JSON")
