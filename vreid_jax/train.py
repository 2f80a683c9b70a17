"""Training: state creation, the pure train step, and the resumable loop.

`train_and_evaluate(config, workdir)` is the whole run:
  1. open the dataset (its train / query / gallery roles);
  2. build the model `vreid_jax.models.<config.model_name>.Model`;
  3. restore the latest checkpoint of the workdir (params, batch stats,
     optimizer state, step, RNG and the data iterator's position) or else
     initialise (from `config.init_from`, else from scratch);
  4. run `train_step` jitted over a device mesh (batch sharded on "data",
     state replicated, donated), logging progress and TensorBoard summaries,
     evaluating every `config.eval.every_steps` and checkpointing every
     `config.checkpoint.every_steps`;
  5. evaluate and write `<workdir>/metrics.json`.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging
import flax
from flax import struct
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vreid_jax import checkpoint as ckpt_lib
from vreid_jax import config_utils
from vreid_jax import losses as losses_lib
from vreid_jax import optim
from vreid_jax import parallel
from vreid_jax import summary as summary_lib
from vreid_jax.evaluation import model_eval
from vreid_jax.input_pipeline import augment
from vreid_jax.input_pipeline import pipeline


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


def build_model(config, num_classes: int) -> nn.Module:
  """`vreid_jax.models.<config.model_name>.Model(num_classes, **config.model)`."""
  try:
    module = importlib.import_module(f"vreid_jax.models.{config.model_name}")
  except ModuleNotFoundError as e:
    raise ValueError(f"config.model_name={config.model_name!r}: no module "
                     f"vreid_jax.models.{config.model_name}") from e
  return module.Model(num_classes=num_classes, **config.model)


def init_variables(model: nn.Module, rng: jax.Array, clip_shape):
  """Initialises the model on a dummy clip batch of `clip_shape` (jitted)."""

  @jax.jit
  def init(rng):
    clips = jnp.zeros(clip_shape, jnp.float32)
    mask = jnp.ones(clip_shape[:2], bool)
    params_rng, dropout_rng = jax.random.split(rng)
    variables = model.init({"params": params_rng, "dropout": dropout_rng},
                           clips, mask, train=False)
    return {"params": variables["params"],
            "batch_stats": variables.get("batch_stats", {})}

  return init(rng)


def create_train_state(variables, tx: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32),
                    params=variables["params"],
                    batch_stats=variables["batch_stats"],
                    opt_state=tx.init(variables["params"]), rng=rng)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *,
               model: nn.Module, tx: optax.GradientTransformation,
               losses: Mapping[str, Mapping[str, Any]],
               schedule: Callable[[jax.Array], jax.Array],
               mean=augment.IMAGENET_MEAN, std=augment.IMAGENET_STD
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step; pure. Returns (new state, scalar metrics)."""
  clips = augment.normalize(batch["clips"], mean, std)
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    (embedding, aux), updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, clips,
        batch["mask"], train=True, mutable=["batch_stats"],
        rngs={"dropout": rng})
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
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads) if hasattr(optax, "tree") else optax.global_norm(grads),
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


def initial_variables(config, model, rng, clip_shape):
  """Scratch init, then `config.init_from` (stage-1 checkpoint, ImageNet)."""
  variables = init_variables(model, rng, clip_shape)
  init = config.init_from
  if init.backbone_weights:
    from vreid_jax.models import weights  # pylint: disable=g-import-not-at-top
    variables = weights.merge_backbone(
        variables, init.backbone_weights, arch=config.model.arch)
    _say("Initialised the backbone from %s", init.backbone_weights)
  if init.checkpoint:
    source = ckpt_lib.restore_params(init.checkpoint)
    merged = {}
    for col in ("params", "batch_stats"):
      merged[col], loaded, skipped = merge_matching(variables[col],
                                                    source.get(col, {}), col)
      _say("init_from.checkpoint: %s: loaded %d arrays, kept %d freshly "
           "initialised (%s)", col, len(loaded), len(skipped),
           ", ".join(skipped[:8]))
      if col == "params" and not loaded:
        raise ValueError(
            f"config.init_from.checkpoint={init.checkpoint}: no parameter "
            "matches this model (names or shapes differ)")
    variables = merged
  return variables


def _say(message: str, *args) -> None:
  """Logs and prints on the first process (the CLI logs WARNING+ only)."""
  logging.info(message, *args)
  if jax.process_index() == 0:
    print(message % args if args else message, flush=True)


def _check_finite(step: int, metrics: Mapping[str, float]) -> None:
  if not all(np.isfinite(v) for v in metrics.values()):
    terms = ", ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items())
                      if k.startswith("loss"))
    raise NonFiniteLossError(
        f"non-finite loss at step {step}: {terms}. Lower the learning rate "
        "(config.schedule.base_lr), enable gradient clipping "
        "(config.optimizer.grad_clip_norm) or check the input data.")


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains and evaluates a model; returns the final metrics."""
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

  model = build_model(config, num_classes)
  schedule = optim.make_schedule(config.schedule, total_steps=total_steps,
                                 steps_per_epoch=steps_per_epoch)
  tx = optim.make_optimizer(config.optimizer, schedule)
  rng = jax.random.PRNGKey(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  clip_shape = (1, config.input.clip_len, config.input.height,
                config.input.width, 3)

  # The checkpoint's metadata is checked before anything is written.
  abstract_vars = jax.eval_shape(
      lambda r: init_variables(model, r, clip_shape), init_rng)
  meta = ckpt_lib.make_meta(config.model_name, config.model.to_dict(),
                            abstract_vars["params"])
  manager = ckpt_lib.make_manager(workdir,
                                  max_to_keep=config.checkpoint.keep)
  abstract_state = jax.eval_shape(
      lambda v, r: create_train_state(v, tx, r), abstract_vars, state_rng)
  sharding = state_sharding_like(abstract_state, mesh)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, sharding)
  restored = ckpt_lib.restore_latest(manager, abstract_state, meta, workdir)
  if restored is not None:
    state, iter_state, start_step = restored
    _say("Resuming from step %d", start_step)
  else:
    variables = initial_variables(config, model, init_rng, clip_shape)
    state = jax.device_put(create_train_state(variables, tx, state_rng),
                           sharding)
    iter_state, start_step = None, 0

  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  writer = summary_lib.SummaryWriter(workdir,
                                     enabled=jax.process_index() == 0)
  step_fn = jit_train_step(
      mesh, sharding, model=model, tx=tx, losses=config.losses.to_dict(),
      schedule=schedule, mean=tuple(config.input.mean),
      std=tuple(config.input.std))
  eval_data = data
  if config.eval_dataset.name:
    eval_data = pipeline.open_dataset(config.eval_dataset, config.data_dir)
    _say("Cross-dataset evaluation on %s: %s", eval_data.name,
         ", ".join(f"{r} {len(s)}" for r, s in eval_data.roles.items()
                   if r != "train"))
  evaluator = model_eval.ModelEvaluator(config, eval_data, model, mesh)

  it = pipeline.train_iterator(batches, total_steps,
                               num_workers=config.input.num_workers,
                               num_threads=config.input.num_threads)
  if iter_state is not None:
    it.set_state(iter_state)

  log_every = config.log_every_steps
  ckpt_every = config.checkpoint.every_steps
  eval_every = config.eval.every_steps
  step = start_step
  pending = None  # (step, device metrics) fetched one step late.
  window: list[dict[str, float]] = []
  t_window, clips_window = time.time(), 0
  t_start = time.time()

  def flush_pending():
    nonlocal pending
    if pending is None:
      return
    s, m = pending
    pending = None
    host = {k: float(v) for k, v in jax.device_get(m).items()}
    _check_finite(s, host)
    window.append(host)

  while step < total_steps:
    local = next(it)
    batch = parallel.global_batch(local, mesh)
    state, metrics = step_fn(state, batch)
    flush_pending()
    pending = (step + 1, metrics)
    step += 1
    clips_window += spec.global_batch_size
    if step % log_every == 0 or step == total_steps:
      flush_pending()
      mean_metrics = {k: float(np.mean([w[k] for w in window]))
                      for k in window[-1]}
      window.clear()
      dt = time.time() - t_window
      rate = clips_window / max(dt, 1e-9)
      eta = (total_steps - step) * dt / max(
          log_every if step % log_every == 0 else 1, 1)
      terms = " ".join(f"{k[5:]}={v:.4f}" for k, v in mean_metrics.items()
                       if k.startswith("loss/"))
      line = (f"step {step}/{total_steps} ({100 * step / total_steps:.0f}%) "
              f"loss={mean_metrics['loss']:.4f} [{terms}] "
              f"lr={mean_metrics['lr']:.3g} {rate:.1f} clips/s "
              f"ETA {_fmt_time(eta)}")
      _say(line)
      writer.scalars(step, {**mean_metrics, "clips_per_sec": rate})
      t_window, clips_window = time.time(), 0
    if eval_every and step % eval_every == 0 and step < total_steps:
      flush_pending()
      results = evaluator.evaluate(state.variables())
      writer.scalars(step, model_eval.summary_scalars(results))
      print(f"eval at step {step}: "
            f"{model_eval.format_results(results)}", flush=True)
    if (ckpt_every and step % ckpt_every == 0) or step == total_steps:
      flush_pending()
      ckpt_lib.save(manager, step, state, it.get_state(), meta)
  flush_pending()
  manager.wait_until_finished()
  train_time = time.time() - t_start

  results = evaluator.evaluate(state.variables(), final=True,
                               workdir=workdir)
  results["step"] = int(step)
  logging.info("This run trained %d steps in %s.", step - start_step,
               _fmt_time(train_time))
  writer.scalars(step, model_eval.summary_scalars(results))
  writer.close()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
      json.dump(results, f, indent=2)
    print(f"final: {model_eval.format_results(results)}", flush=True)
    print(f"metrics written to {os.path.join(workdir, 'metrics.json')}",
          flush=True)
  manager.close()
  return results
