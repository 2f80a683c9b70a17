"""Training: state creation, the pure train step, and the resumable loop.

`train_and_evaluate(config, workdir)` is four calls, each usable alone:

  run = setup(config, workdir)       # data, model, losses, optimizer, mesh,
                                     # checkpoint manager, evaluators
  state, it, start = restore_or_init(run)   # latest checkpoint (checked
                                     # against this run), else config.init_from,
                                     # else scratch
  state = train_loop(run, state, it, start) # jitted steps, periodic actions
  results = finish(run, state)       # final evaluation, metrics.json

The loop runs `train_step` jitted over a device mesh (batch sharded on
"data", state replicated and donated). After every step it calls its
periodic actions (`Periodic`: logging, evaluators, any hooks a caller adds)
and asks the checkpoint manager whether to save (`should_save`: every
`config.checkpoint.every_steps`, or when orbax's preemption handling says
so); the last step is always saved.
"""

from __future__ import annotations

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
from vreid_jax.evaluators import embedder as embedder_lib
from vreid_jax.input_pipeline import pipeline
from vreid_jax.input_pipeline import preprocess as preprocess_lib

BATCH_KEYS = ("clips", "mask", "flow", "labels", "pids", "camids")


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
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
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

  @property
  def global_batch_size(self) -> int:
    return self.batches.spec.global_batch_size


def setup(config, workdir: str) -> Run:
  """Opens the data, builds the model, losses, optimizer and evaluators.

  Everything is checked here, before any step and before anything is
  written: the config's cross-field rules, that the model and the config
  agree on the inputs (flow), that every loss finds its inputs among the
  model's outputs, that every parameter group matches a parameter, and that
  each evaluator can score its queries.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  config_utils.check_config(config)
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
      predict_fn=functools.partial(models_lib.predict_fn, model))
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
    writer and config.json are opened and written only after the checks,
    so a refused workdir is left untouched.
  """
  restored = ckpt_lib.restore_latest(run.manager, run.abstract_state,
                                     run.meta, run.workdir)
  if restored is not None:
    state, iter_state, start_step, changes = restored
    _say("Resuming from step %d", start_step)
    for change in changes:
      _say("Resuming with a changed optimizer setting: %s", change)
  else:
    variables = initial_variables(run)
    state = jax.device_put(
        create_train_state(variables, run.tx, run.state_rng), run.sharding)
    iter_state, start_step = None, 0
  if jax.process_index() == 0:
    with open(os.path.join(run.workdir, "config.json"), "w") as f:
      f.write(run.config.to_json_best_effort(indent=2))
  run.writer = summary_lib.SummaryWriter(run.workdir,
                                         enabled=jax.process_index() == 0)
  return state, iter_state, start_step


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
               hooks: Sequence[Periodic] = ()) -> TrainState:
  """Trains from `start_step` to `run.total_steps`; returns the last state.

  Args:
    run: from `setup`.
    state: from `restore_or_init`.
    iter_state: the data iterator's saved position (None: from the start).
    start_step: the step `state` is at.
    hooks: more periodic actions, called after the built-in ones (logging,
      evaluators) and before the checkpoint decision of each step.
  """
  config = run.config
  step_fn = jit_train_step(run.mesh, run.sharding, model=run.model,
                           tx=run.tx, losses=run.losses,
                           schedule=run.schedule, input_spec=run.input_spec)
  it = pipeline.train_iterator(run.batches, run.total_steps,
                               num_workers=config.input.num_workers,
                               num_threads=config.input.num_threads)
  if iter_state is not None:
    it.set_state(iter_state)
  window = MetricWindow(run, start_step)
  actions = [Periodic(config.log_every_steps, window.log, at_last_step=True),
             Periodic(1, functools.partial(_evaluate_periodic, run, window)),
             *hooks]
  t_start = time.time()
  step = start_step
  while step < run.total_steps:
    batch = parallel.global_batch(next(it), run.mesh)
    state, metrics = step_fn(state, batch)
    step += 1
    window.push(step, metrics)
    last = step == run.total_steps
    for action in actions:
      action(step, state, last=last)
    if last or run.manager.should_save(step):
      window.flush()  # Never checkpoint a state whose loss is not finite.
      ckpt_lib.save(run.manager, step, state, it.get_state(), run.meta,
                    force=True)
  window.flush()
  run.manager.wait_until_finished()
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
  run.writer.scalars(step, run.evaluations.scalars(results))
  run.writer.close()
  if jax.process_index() == 0:
    with open(os.path.join(run.workdir, "metrics.json"), "w") as f:
      json.dump(metrics, f, indent=2)
    print(f"final: {run.evaluations.format(results)}", flush=True)
    print(f"metrics written to {os.path.join(run.workdir, 'metrics.json')}",
          flush=True)
  run.manager.close()
  return metrics


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains and evaluates a model; returns the final metrics."""
  run = setup(config, workdir)
  state, iter_state, start_step = restore_or_init(run)
  state = train_loop(run, state, iter_state, start_step)
  return finish(run, state)
