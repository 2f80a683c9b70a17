"""Training: state creation, the pure train step, and the resumable loop.

`train_and_evaluate(config, workdir)` is four calls, each usable alone:

  run = setup(config, workdir)       # the whole config checked first; data,
                                     # model, losses, optimizer, mesh,
                                     # checkpoint manager, evaluators
  state, it, start = restore_or_init(run)   # latest checkpoint (checked
                                     # against this run), else config.init_from,
                                     # else scratch; writes this start's
                                     # provenance/start-NNNN.json
  state = train_loop(run, state, it, start) # jitted steps, periodic actions
  results = finish(run, state)       # final evaluation, metrics.json

The loop runs `train_step` jitted over a device mesh (batch sharded on
"data", state replicated and donated). After every step it calls its
periodic actions (`Periodic`: logging, evaluators, any hooks a caller adds)
and asks the checkpoint manager whether to save (`should_save`: every
`config.checkpoint.every_steps`); the last step is always saved.

Preemption (`vreid_jax.preemption`): after SIGTERM or SIGINT the step in
flight finishes, a checkpoint of it is written and waited for, and the loop
raises `Preempted` (the CLI exits 0); rerunning the command resumes there.
In multi-process runs all processes stop at the same step (JAX's
preemption sync point).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import logging
from flax import struct
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from vreid_jax import checkpoint as ckpt_lib
from vreid_jax import config_utils
from vreid_jax import evaluators as evaluators_lib
from vreid_jax import losses as losses_lib
from vreid_jax import models as models_lib
from vreid_jax import optim
from vreid_jax import parallel
from vreid_jax import summary_writer as summary_lib
from vreid_jax import workdir_lock
from vreid_jax.evaluators import embedder as embedder_lib
from vreid_jax.input_pipeline import pipeline
from vreid_jax.input_pipeline import preprocess as preprocess_lib

BATCH_KEYS = ("clips", "mask", "flow", "labels", "pids", "camids")


class Preempted(Exception):
  """The run stopped on SIGTERM/SIGINT after checkpointing `step`."""

  def __init__(self, step: int, signal_name: str, seconds: float | None):
    self.step = step
    self.signal_name = signal_name
    self.seconds = seconds
    super().__init__(f"preempted at step {step}, checkpoint saved")


class WorkdirError(OSError):
  """The workdir cannot hold this run (unwritable, too little space)."""


class NonFiniteLossError(FloatingPointError):
  """A loss term became NaN or infinite."""


@struct.dataclass
class TrainState:
  """Everything that changes during training (a pytree).

  Attributes:
    step: the number of steps taken.
    params: model parameters.
    batch_stats: BatchNorm running statistics.
    opt_state: optimizer state.
    rng: base PRNG key; step s uses fold_in(rng, s).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array

  def variables(self) -> dict[str, Any]:
    return {"params": self.params, "batch_stats": self.batch_stats}


def _init_fn(model: nn.Module):
  """rng, inputs -> the model's {"params", "batch_stats"} (pure)."""

  def init(rng, inputs):
    params_rng, dropout_rng = jax.random.split(rng)
    variables = model.init({"params": params_rng, "dropout": dropout_rng},
                           inputs, train=False)
    return {"params": variables["params"],
            "batch_stats": variables.get("batch_stats", {})}

  return init


# XLA options for the one-off initialisation: LLVM's optimisation of the
# random-number code (one threefry per parameter) dominated start-up on a
# CPU (GoogLeNet x2 + ST2N: 41 s at the default level, 7 s at 0), and the
# code runs once. Deterministic like any compile; the values may differ in
# the last bit from a default-level compile.
_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def init_variables(model: nn.Module, rng: jax.Array,
                   inputs: Mapping[str, Any]) -> dict[str, Any]:
  """Initialises the model on `inputs` (e.g. `preprocess.dummy_inputs`).

  Jitted (eager initialisation of even a small ResNet takes seconds of
  XLA's RNG code op by op on a CPU) and compiled with
  `_INIT_COMPILER_OPTIONS`. Under a trace (`jax.eval_shape`) it is the
  plain function.
  """
  init = _init_fn(model)
  inputs = dict(inputs)
  if any(isinstance(x, jax.core.Tracer)
         for x in jax.tree.leaves((rng, inputs))):
    return init(rng, inputs)
  compiled = jax.jit(init).lower(rng, inputs).compile(
      compiler_options=_INIT_COMPILER_OPTIONS)
  return compiled(rng, inputs)


def create_train_state(variables, tx: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32),
                    params=variables["params"],
                    batch_stats=variables["batch_stats"],
                    opt_state=tx.init(variables["params"]), rng=rng)


def global_norm(tree) -> jax.Array:
  """The L2 norm of every leaf of `tree` together, in float32.

  One reduction over the concatenated leaves, where `optax.tree.norm`
  reduces each leaf on its own: for GLTR's 291 gradient leaves that was one
  small kernel each (0.9 ms of a 25 ms step on an H100). Equal to it up to
  float32 summation order.
  """
  leaves = [jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)]
  if not leaves:
    return jnp.zeros((), jnp.float32)
  flat = jnp.concatenate(leaves)
  return jnp.sqrt(jnp.sum(flat * flat))


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *,
               model: nn.Module, tx: optax.GradientTransformation,
               losses: Sequence[losses_lib.Loss],
               schedule: Callable[[jax.Array], jax.Array],
               input_spec: preprocess_lib.InputSpec
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step; pure. Returns (new state, scalar metrics)."""
  inputs = preprocess_lib.preprocess(batch, input_spec)
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    (embedding, aux), updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, inputs,
        train=True, mutable=["batch_stats"], rngs={"dropout": rng})
    total, terms = losses_lib.total_loss(embedding, aux, batch, losses)
    return total, (terms, updates)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (terms, updates)), grads = grad_fn(state.params)
  param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, param_updates)
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=updates.get("batch_stats",
                                                    state.batch_stats),
                            opt_state=opt_state)
  metrics = {"loss": loss, "grad_norm": global_norm(grads),
             "lr": schedule(state.step)}
  metrics.update({f"loss/{k}": v for k, v in terms.items()})
  return new_state, metrics


def jit_train_step(mesh, state_sharding, **kwargs):
  """train_step jitted over the mesh, state donated."""
  batch_sharding = parallel.data_sharded(mesh)
  return jax.jit(functools.partial(train_step, **kwargs),
                 in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, parallel.replicated(mesh)),
                 donate_argnums=(0,))


def state_sharding_like(state, mesh):
  return jax.tree.map(lambda _: parallel.replicated(mesh), state)


def _say(message: str, *args) -> None:
  """Logs and prints on the first process (the CLI logs WARNING+ only)."""
  logging.info(message, *args)
  if jax.process_index() == 0:
    print(message % args if args else message, flush=True)


def _check_finite(step: int, metrics: Mapping[str, float]) -> None:
  if not all(np.isfinite(v) for v in metrics.values()):
    terms = ", ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items())
                      if k.startswith("loss") or not np.isfinite(v))
    raise NonFiniteLossError(
        f"non-finite loss at step {step}: {terms}. Lower the learning rate "
        "(config.schedule.base_lr), enable gradient clipping "
        "(config.optimizer.grad_clip_norm) or check the input data.")


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# ---------------------------------------------------------------------------
# Setup.


@dataclasses.dataclass
class Run:
  """Everything `setup` prepares for one training run."""
  config: Any
  workdir: str
  mesh: Any
  data: pipeline.ReidData
  batches: pipeline.TrainBatches
  total_steps: int
  num_classes: int
  model_module: Any
  model: nn.Module
  input_spec: preprocess_lib.InputSpec
  losses: tuple[losses_lib.Loss, ...]
  schedule: Callable[[Any], Any]
  tx: optax.GradientTransformation
  init_rng: jax.Array
  state_rng: jax.Array
  abstract_state: Any
  sharding: Any
  meta: dict[str, Any]
  manager: ocp.CheckpointManager
  evaluations: evaluators_lib.Evaluations
  writer: summary_lib.SummaryWriter | None = None
  data_faults: DataFaults | None = None
  lock: Any = None  # workdir_lock.WorkdirLock (released by `finish`).
  # This start's record, "start-0002" (<workdir>/provenance/start-0002.json;
  # None on the other processes), and the step it started from.
  provenance: str | None = None
  start_step: int | None = None

  @property
  def global_batch_size(self) -> int:
    return self.batches.spec.global_batch_size


def setup(config, workdir: str) -> Run:
  """Opens the data, builds the model, losses, optimizer and evaluators.

  Everything is checked here, before any step and before anything is
  written: first the whole config (`config_utils.check_config`: every
  enum-like field against what its consumer accepts, before the workdir,
  the dataset or any compile), then that the model and the config
  agree on the inputs (flow), that every loss finds its inputs among the
  model's outputs, that every parameter group matches a parameter, and that
  each evaluator can score its queries.
  """
  config_utils.check_config(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  check_workdir_writable(workdir)
  # One run per workdir (process 0 holds it; every process learns whether
  # it was refused). Taken before the checkpoint manager looks at (and
  # moves aside) temporary folders that a live run could be writing.
  lock = workdir_lock.acquire_for_run(workdir, log=_say)
  try:
    run = _setup(config, workdir)
  except BaseException:
    lock.release()
    raise
  run.lock = lock
  return run


def _setup(config, workdir: str) -> Run:
  """`setup` once the config is checked and the workdir writable and
  locked."""
  mesh = parallel.make_mesh()
  num_devices = mesh.devices.size
  _say("Devices: %d x %s, processes: %d", num_devices,
       jax.devices()[0].platform, jax.process_count())

  data = pipeline.open_dataset(config.dataset, config.data_dir)
  spec = pipeline.make_train_spec(data, config,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())
  if spec.global_batch_size % num_devices:
    raise ValueError(
        f"the global batch P*K = {spec.global_batch_size} "
        f"(config.input.num_ids_per_batch * num_per_id) is not divisible by "
        f"the {num_devices} devices")
  batches = pipeline.TrainBatches(spec)
  steps_per_epoch = batches.steps_per_epoch
  total_steps = config_utils.total_steps(config, steps_per_epoch)
  num_classes = len(np.unique(spec.pids))
  _say("Dataset %s in %s: %s; %d train ids, %d steps per epoch, %d steps",
       data.name, data.data_dir, ", ".join(f"{r} {len(s)}" for r, s in
                                           data.roles.items()),
       num_classes, steps_per_epoch, total_steps)

  model_module = models_lib.get_module(config.model_name)
  model = models_lib.build_model(config.model_name, num_classes,
                                 config.model)
  input_spec = preprocess_lib.InputSpec.from_config(config.input)
  preprocess_lib.check_model_inputs(models_lib.input_keys(model), input_spec,
                                    config.model_name)
  losses = losses_lib.resolve(config.losses.to_dict())
  schedule = optim.make_schedule(config.schedule, total_steps=total_steps,
                                 steps_per_epoch=steps_per_epoch)
  tx = optim.make_optimizer(config.optimizer, schedule)
  rng = jax.random.PRNGKey(config.seed)
  init_rng, state_rng = jax.random.split(rng)

  dummy = jax.eval_shape(lambda: preprocess_lib.dummy_inputs(input_spec))
  abstract_vars = jax.eval_shape(
      lambda r, x: init_variables(model, r, x), init_rng, dummy)
  # Every loss must find its inputs: the model's aux (in training mode, on
  # a 2-clip batch) or the batch.
  out = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                               rngs={"dropout": jax.random.key(0)})[0],
      abstract_vars, jax.eval_shape(
          lambda: preprocess_lib.dummy_inputs(input_spec, batch_size=2)))
  losses_lib.check_sources(losses, out[1].keys(), BATCH_KEYS)
  if config.optimizer.get("param_groups"):
    sizes = optim.group_sizes(config.optimizer, abstract_vars["params"])
    _say("Parameter groups: %s", ", ".join(
        f"{k} {v:,}" for k, v in sizes.items()))
  abstract_state = jax.eval_shape(
      lambda v, r: create_train_state(v, tx, r), abstract_vars, state_rng)
  meta = ckpt_lib.make_meta(config, num_classes=num_classes,
                            params=abstract_vars["params"],
                            opt_state=abstract_state.opt_state)
  check_free_space(workdir, abstract_state, config.checkpoint.keep)
  sharding = state_sharding_like(abstract_state, mesh)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, sharding)
  manager = ckpt_lib.make_manager(
      workdir, max_to_keep=config.checkpoint.keep,
      every_steps=config.checkpoint.every_steps)

  embedder = embedder_lib.Embedder(
      models_lib.embed_fn(model), input_spec, mesh,
      num_workers=config.input.num_workers,
      num_threads=config.input.num_threads,
      predict_fn=functools.partial(models_lib.predict_fn, model),
      on_bad_frame=config.input.on_bad_frame)
  evaluations = evaluators_lib.Evaluations(
      config.evals, evaluators_lib.Context(
          embedder=embedder, train_data=data, data_dir=config.data_dir),
      main=config.main_eval)
  for name, ev in evaluations.evaluators.items():
    ev_data = getattr(ev, "data", None)
    if ev_data is not None and ev_data is not data:
      _say("Evaluator %s on %s: %s", name, ev_data.name, ", ".join(
          f"{r} {len(s)}" for r, s in ev_data.roles.items() if r != "train"))
  return Run(config=config, workdir=workdir, mesh=mesh, data=data,
             batches=batches, total_steps=total_steps,
             num_classes=num_classes, model_module=model_module, model=model,
             input_spec=input_spec, losses=losses, schedule=schedule, tx=tx,
             init_rng=init_rng, state_rng=state_rng,
             abstract_state=abstract_state, sharding=sharding, meta=meta,
             manager=manager, evaluations=evaluations)


def workdir_is_a_file(workdir: str) -> str | None:
  """The message for a --workdir that is a file, else None."""
  path = os.path.expanduser(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    return (f"--workdir={workdir} is a file, not a folder: pass a folder (it "
            "is created if missing; rerunning the command resumes from it)")
  return None


def check_workdir_writable(workdir: str) -> None:
  """Creates the workdir and writes a probe file in it.

  Raises:
    WorkdirError: naming the workdir and the OS error (or that it is a
      file).
  """
  problem = workdir_is_a_file(workdir)
  if problem:
    raise WorkdirError(problem)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_probe.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(
        f"--workdir={workdir} is not writable ({e.strerror or e}): choose "
        "a directory this user can write to") from e


def check_free_space(workdir: str, abstract_state, keep: int) -> int:
  """Fails before training unless the workdir's disk holds two checkpoints
  more than it does now (orbax writes the new one before deleting the
  oldest of `keep`). Returns the bytes of one checkpoint.

  Raises:
    WorkdirError: naming the free and the needed space.
  """
  import shutil  # pylint: disable=g-import-not-at-top
  one = ckpt_lib.checkpoint_bytes(abstract_state)
  free = shutil.disk_usage(workdir).free
  need = 2 * one
  if free < need:
    raise WorkdirError(
        f"--workdir={workdir}: {free / 2**20:.0f} MiB free, but one "
        f"checkpoint of this run takes {one / 2**20:.0f} MiB and at least "
        f"two must fit ({need / 2**20:.0f} MiB; config.checkpoint.keep="
        f"{keep} keeps up to {(keep + 1) * one / 2**20:.0f} MiB): free space "
        "or choose a workdir on a larger disk")
  return one


def initial_variables(run: Run) -> dict[str, Any]:
  """Scratch init, then `config.init_from` (pretrained weights, checkpoint).

  `init_from.backbone_weights` goes through the model module's own
  `load(variables, path, config.model)` (the trainer knows no
  architecture); `init_from.checkpoint` copies every parameter of another
  run whose name and shape match (`checkpoint.load_partial`).
  """
  config = run.config
  variables = init_variables(
      run.model, run.init_rng, preprocess_lib.dummy_inputs(run.input_spec))
  init = config.init_from
  if init.backbone_weights:
    load = getattr(run.model_module, "load", None)
    if load is None:
      raise ValueError(
          f"config.init_from.backbone_weights: model {config.model_name!r} "
          "has no load() for pretrained weights")
    variables = load(variables, os.path.expanduser(init.backbone_weights),
                     config.model)
    _say("Initialised the backbone from %s", init.backbone_weights)
  if init.checkpoint:
    variables = ckpt_lib.load_partial(variables, init.checkpoint, log=_say)
  return variables


def restore_or_init(run: Run):
  """The latest checkpoint of the workdir (checked), else a fresh state.

  Returns:
    (state, data iterator state or None, start step). The TensorBoard
    writer, the start record (`record_start`) and config.json are opened
    and written only after the checks, so a refused workdir is left
    untouched.
  """
  restored = ckpt_lib.restore_latest(run.manager, run.abstract_state,
                                     run.meta, run.workdir)
  if restored is not None:
    state, iter_state, start_step, optimizer_changes = restored
    _say("Resuming from step %d", start_step)
  else:
    variables = initial_variables(run)
    state = jax.device_put(
        create_train_state(variables, run.tx, run.state_rng), run.sharding)
    iter_state, start_step, optimizer_changes = None, 0, []
  said = record_start(run, start_step, resumed=restored is not None)
  for change in optimizer_changes:
    # Against the checkpoint's own settings; said unless the line above
    # (against the previous start) named the setting already.
    if change.split(":", 1)[0] not in said:
      _say("Resuming with a changed optimizer setting: %s", change)
  if jax.process_index() == 0:
    with open(os.path.join(run.workdir, "config.json"), "w") as f:
      f.write(run.config.to_json_best_effort(indent=2))
  run.writer = summary_lib.SummaryWriter(run.workdir,
                                         enabled=jax.process_index() == 0)
  return state, iter_state, start_step


def record_start(run: Run, start_step: int, *, resumed: bool) -> set[str]:
  """Writes this start's record, `<workdir>/provenance/start-NNNN.json`.

  The record (`provenance.start_record`) holds the resolved config, the
  command line, the config file and variant, versions, git commit and
  devices, the step the run starts from and the settings that changed
  since the workdir's previous start (its last record, else config.json),
  which are also said: `resuming with changed settings: schedule.base_lr
  0.01 -> 0.02`. Only process 0 writes; sets `run.provenance` and
  `run.start_step`.

  Returns:
    The changed settings' dotted names (empty on other processes).
  """
  from vreid_jax import provenance  # pylint: disable=g-import-not-at-top
  run.start_step = start_step
  if jax.process_index() != 0:
    return set()
  config = json.loads(run.config.to_json_best_effort())
  previous, old = provenance.previous_config(run.workdir)
  changes = provenance.config_changes(old, config) if old is not None else []
  if changes:
    what = provenance.format_changes(changes)
    if resumed:
      _say("resuming with changed settings: %s", what)
    else:
      _say("starting from scratch with settings changed since the previous "
           "start (%s): %s", previous, what)
  run.provenance = provenance.write_start_record(
      run.workdir, provenance.start_record(
          config=config, start_step=start_step, resumed=resumed,
          total_steps=run.total_steps, previous=previous, changes=changes))
  return {c["key"] for c in changes}


# ---------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class Periodic:
  """A periodic action: `fn(step, state)` every `every_steps` steps.

  Attributes:
    every_steps: the period (0: never periodically).
    fn: called with the step just completed and the state after it.
    at_last_step: also call it after the last step of the run.
  """
  every_steps: int
  fn: Callable[[int, TrainState], None]
  at_last_step: bool = False

  def due(self, step: int, last: bool) -> bool:
    return bool((self.every_steps and step % self.every_steps == 0)
                or (last and self.at_last_step))

  def __call__(self, step: int, state: TrainState, *, last: bool) -> None:
    if self.due(step, last):
      self.fn(step, state)


class MetricWindow:
  """Step metrics fetched one step late (no device sync per step), averaged
  and written at log steps; the non-finite check happens at every fetch."""

  def __init__(self, run: Run, start_step: int):
    self.run = run
    self.pending = None
    self.window: list[dict[str, float]] = []
    self.t_window, self.clips_window = time.time(), 0
    self.last_logged = start_step

  def push(self, step: int, metrics) -> None:
    self.flush()
    self.pending = (step, metrics)
    self.clips_window += self.run.global_batch_size

  def flush(self) -> None:
    if self.pending is None:
      return
    s, m = self.pending
    self.pending = None
    host = {k: float(v) for k, v in jax.device_get(m).items()}
    _check_finite(s, host)
    self.window.append(host)

  def log(self, step: int, _=None) -> None:
    self.flush()
    if not self.window:
      return
    total = self.run.total_steps
    mean_metrics = {k: float(np.mean([w[k] for w in self.window]))
                    for k in self.window[-1]}
    self.window.clear()
    dt = time.time() - self.t_window
    rate = self.clips_window / max(dt, 1e-9)
    eta = (total - step) * dt / max(step - self.last_logged, 1)
    terms = " ".join(f"{k[5:]}={v:.4f}" for k, v in mean_metrics.items()
                     if k.startswith("loss/"))
    _say(f"step {step}/{total} ({100 * step / total:.0f}%) "
         f"loss={mean_metrics['loss']:.4f} [{terms}] "
         f"lr={mean_metrics['lr']:.3g} {rate:.1f} clips/s "
         f"ETA {_fmt_time(eta)}")
    self.run.writer.scalars(step, {**mean_metrics, "clips_per_sec": rate})
    self.t_window, self.clips_window = time.time(), 0
    self.last_logged = step


class DataFaults:
  """Frames replaced under `config.input.on_bad_frame="skip"`.

  The input pipeline names each replaced frame in its batch
  ("num_bad_frames", "bad_frames"); this counts them on the host, logs them
  at log steps and travels with the data iterator's state in checkpoints, so
  a resumed run reports the same totals as an uninterrupted one.
  """
  KEYS = ("num_bad_frames", "bad_frames")

  def __init__(self, saved: Mapping[str, Any] | None = None):
    saved = saved or {}
    self.total = int(saved.get("total", 0))
    self.names: set[str] = set(saved.get("names", []))
    self.window = 0

  def add(self, local: dict[str, Any]) -> None:
    """Pops the fault keys (`KEYS`) off a local batch (strings cannot be
    sharded)."""
    num = local.pop("num_bad_frames", None)
    names = local.pop("bad_frames", None)
    if num is None:
      return
    self.total += int(num)
    self.window += int(num)
    self.names.update(str(x) for x in np.asarray(names).ravel())

  def log(self, step: int, _=None) -> None:
    if self.window:
      _say("step %d: %d bad frame(s) replaced since the last log (%d in "
           "all), e.g. %s", step, self.window, self.total,
           ", ".join(sorted(self.names)[:5]))
    self.window = 0

  def state(self) -> dict[str, Any]:
    return {"total": self.total, "names": sorted(self.names)}


class DevicePrefetch:
  """Keeps `size` batches on the devices ahead of the step being run.

  Each batch is pulled from the (grain) iterator and sent to the mesh
  (`parallel.global_batch`, an asynchronous copy) while earlier steps run,
  so the host-to-device copy of step s+1 overlaps step s. Every item
  carries the iterator's state right after its own pull: the state a
  checkpoint at that step must save, so a resumed run continues with the
  next batch although later ones were already pulled (and are pulled again
  after a resume: the same batches, in the same order).

  Yields (host, global device batch, iterator state): `host` holds the
  batch's entries named in `host_keys` (popped before the copy: e.g. the
  names of replaced frames, strings that cannot be sharded).
  """

  def __init__(self, it, mesh, size: int, host_keys: Sequence[str] = ()):
    if size < 0:
      raise ValueError(f"config.input.device_prefetch={size}: must be >= 0 "
                       "(0 = no batch ahead)")
    self.it, self.mesh, self.size = it, mesh, size
    self.host_keys = tuple(host_keys)
    self.queue: collections.deque = collections.deque()
    self.exhausted = False

  def _pull(self) -> None:
    try:
      local = next(self.it)
    except StopIteration:
      self.exhausted = True
      return
    host = {k: local.pop(k) for k in self.host_keys if k in local}
    self.queue.append((host, parallel.global_batch(local, self.mesh),
                       self.it.get_state()))

  def __iter__(self):
    return self

  def __next__(self):
    while not self.exhausted and len(self.queue) <= self.size:
      self._pull()
    if not self.queue:
      raise StopIteration
    return self.queue.popleft()


# The data_iter checkpoint item: the grain iterator's state and the counts.
_ITER_KEYS = {"iterator", "data_faults"}


def _split_iter_state(saved) -> tuple[Any, dict[str, Any] | None]:
  if isinstance(saved, Mapping) and set(saved) == _ITER_KEYS:
    return saved["iterator"], saved["data_faults"]
  return saved, None  # A checkpoint from before the counts were kept.


def _evaluate_periodic(run: Run, window: MetricWindow, step: int,
                       state: TrainState) -> None:
  names = run.evaluations.due(step)
  if not names or step >= run.total_steps:
    return  # The final evaluation runs in `finish`.
  window.flush()
  results = run.evaluations.run(state.variables(), names)
  run.writer.scalars(step, run.evaluations.scalars(results))
  _say(f"eval at step {step}: {run.evaluations.format(results)}")


def train_loop(run: Run, state: TrainState, iter_state, start_step: int, *,
               hooks: Sequence[Periodic] = (),
               preemption: Any = None) -> TrainState:
  """Trains from `start_step` to `run.total_steps`; returns the last state.

  Args:
    run: from `setup`.
    state: from `restore_or_init`.
    iter_state: the data iterator's saved position (None: from the start).
    start_step: the step `state` is at.
    hooks: more periodic actions, called after the built-in ones (logging,
      evaluators) and before the checkpoint decision of each step.
    preemption: a `preemption.Preemption` asked after every step (None: not
      watched).

  Raises:
    Preempted: after checkpointing the step at which a preemption stopped
      the run.
    ckpt_lib.CheckpointSaveError: a checkpoint could not be written.
  """
  config = run.config
  step_fn = jit_train_step(run.mesh, run.sharding, model=run.model,
                           tx=run.tx, losses=run.losses,
                           schedule=run.schedule, input_spec=run.input_spec)
  it = pipeline.train_iterator(run.batches, run.total_steps,
                               num_workers=config.input.num_workers,
                               num_threads=config.input.num_threads)
  iter_state, faults_state = _split_iter_state(iter_state)
  if iter_state is not None:
    it.set_state(iter_state)
  run.data_faults = faults = DataFaults(faults_state)
  window = MetricWindow(run, start_step)
  actions = [Periodic(config.log_every_steps, window.log, at_last_step=True),
             Periodic(config.log_every_steps, faults.log, at_last_step=True),
             Periodic(1, functools.partial(_evaluate_periodic, run, window)),
             *hooks]
  t_start = time.time()
  step = start_step
  batches = DevicePrefetch(it, run.mesh,
                           config.input.get("device_prefetch", 2),
                           host_keys=DataFaults.KEYS)
  while step < run.total_steps:
    host, batch, batch_iter_state = next(batches)
    faults.add(host)
    state, metrics = step_fn(state, batch)
    step += 1
    window.push(step, metrics)
    last = step == run.total_steps
    for action in actions:
      action(step, state, last=last)
    preempted = (not last and preemption is not None
                 and preemption.reached(step))
    if last or preempted or run.manager.should_save(step):
      window.flush()  # Never checkpoint a state whose loss is not finite.
      ckpt_lib.save(run.manager, step, state,
                    {"iterator": batch_iter_state,
                     "data_faults": faults.state()}, run.meta, force=True)
    if preempted:
      ckpt_lib.wait(run.manager)
      seconds = (time.monotonic() - preemption.received_at
                 if preemption.received_at is not None else None)
      # Every process says it (each one was stopped).
      print(f"preempted at step {step}, checkpoint saved "
            f"({preemption.signal_name}; "
            + (f"{seconds:.1f} s" if seconds is not None else "?")
            + " after the signal). Rerun the same command to resume."
            + (f" [process {jax.process_index()}]"
               if jax.process_count() > 1 else ""), flush=True)
      raise Preempted(step, preemption.signal_name, seconds)
  window.flush()
  ckpt_lib.wait(run.manager)
  logging.info("This run trained %d steps in %s.", step - start_step,
               _fmt_time(time.time() - t_start))
  return state


def finish(run: Run, state: TrainState) -> dict[str, Any]:
  """Final evaluation by every evaluator; writes metrics.json."""
  step = int(jax.device_get(state.step))
  results = run.evaluations.run(state.variables(), final=True,
                                workdir=run.workdir)
  metrics = run.evaluations.merged(results)
  metrics["step"] = step
  # The checkpoint these metrics are of (the last step is always saved)
  # and the start record of the run that produced them.
  metrics["checkpoint_step"] = run.manager.latest_step()
  metrics["provenance"] = (f"provenance/{run.provenance}.json"
                           if run.provenance else None)
  metrics["data_faults"] = _data_faults_record(run)
  run.writer.scalars(step, run.evaluations.scalars(results))
  run.writer.close()
  if jax.process_index() == 0:
    with open(os.path.join(run.workdir, "metrics.json"), "w") as f:
      json.dump(metrics, f, indent=2)
    print(f"final: {run.evaluations.format(results)}", flush=True)
    print(f"metrics written to {os.path.join(run.workdir, 'metrics.json')}",
          flush=True)
  run.manager.close()
  if run.lock is not None:
    run.lock.release()
  return metrics


def _data_faults_record(run: Run) -> dict[str, Any]:
  """metrics.json's account of replaced frames (all processes summed)."""
  faults = run.data_faults or DataFaults()
  embedder = run.evaluations.context.embedder
  eval_bad = list(getattr(embedder, "bad_frames", []))
  total, num_eval = faults.total, len(eval_bad)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    sums = multihost_utils.process_allgather(
        np.asarray([total, num_eval], np.int64)).reshape(-1, 2).sum(0)
    total, num_eval = int(sums[0]), int(sums[1])
  return {"on_bad_frame": run.config.input.on_bad_frame,
          "train": {"num_bad_frames": total,
                    "bad_frames": sorted(faults.names)[:100]},
          "eval": {"num_bad_frames": num_eval,
                   "bad_frames": sorted(set(eval_bad))[:100]}}


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains and evaluates a model; returns the final metrics."""
  from vreid_jax import preemption as preemption_lib  # pylint: disable=g-import-not-at-top
  watch = preemption_lib.Preemption()
  run = None
  try:
    run = setup(config, workdir)
    state, iter_state, start_step = restore_or_init(run)
    try:
      state = train_loop(run, state, iter_state, start_step,
                         preemption=watch)
    except Preempted:
      run.writer.close()
      run.manager.close()
      raise
    # The last step is checkpointed: a signal during the final evaluation
    # may stop the process as usual (a rerun goes straight to evaluation).
    watch.close()
    return finish(run, state)
  finally:
    watch.close()
    if run is not None and run.lock is not None:
      run.lock.release()
