"""Optimizers and learning-rate schedules from the config.

  config.optimizer = dict(name="sgd", momentum=0.9, nesterov=False,
                          weight_decay=5e-4, grad_clip_norm=0.0)
  config.schedule = dict(name="step", base_lr=0.01, warmup_epochs=0,
                         decay_epochs=(120,), decay_factor=0.1)

`optimizer.name` is an optax function (sgd, adam, adamw, ...) called with the
schedule as its learning rate and the remaining fields as keyword arguments.
For SGD and Adam, `weight_decay` is the PyTorch-style L2 term added to the
gradient (what the papers' PyTorch code used); for AdamW it is decoupled
(optax's own `weight_decay`). Schedules are functions of this module named
`<name>_schedule`. Durations are in epochs here and converted to steps with
the run's steps per epoch (`config_utils.to_steps`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import jax.numpy as jnp
import optax


def step_schedule(*, base_lr: float, total_steps: int, steps_per_epoch: int,
                  warmup_epochs: float = 0.0,
                  decay_epochs: Sequence[float] = (),
                  decay_factor: float = 0.1) -> optax.Schedule:
  """Linear warmup from base_lr / 10, then x decay_factor at each boundary."""
  del total_steps
  warmup = int(round(warmup_epochs * steps_per_epoch))
  bounds = jnp.asarray(sorted(int(round(e * steps_per_epoch))
                              for e in decay_epochs), jnp.int32)

  def schedule(step):
    step = jnp.asarray(step)
    lr = base_lr * decay_factor ** jnp.sum(step >= bounds)
    if warmup:
      frac = jnp.minimum(step / warmup, 1.0)
      lr = jnp.where(step < warmup, base_lr * (0.1 + 0.9 * frac), lr)
    return lr

  return schedule


def cosine_schedule(*, base_lr: float, total_steps: int,
                    steps_per_epoch: int, warmup_epochs: float = 0.0,
                    end_factor: float = 0.0) -> optax.Schedule:
  """Linear warmup from 0, then cosine decay to base_lr * end_factor."""
  warmup = int(round(warmup_epochs * steps_per_epoch))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup else base_lr, peak_value=base_lr,
      warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
      end_value=base_lr * end_factor)


def constant_schedule(*, base_lr: float, total_steps: int,
                      steps_per_epoch: int) -> optax.Schedule:
  del total_steps, steps_per_epoch
  return optax.constant_schedule(base_lr)


def make_schedule(cfg, *, total_steps: int,
                  steps_per_epoch: int) -> optax.Schedule:
  kwargs = dict(cfg)
  name = kwargs.pop("name")
  fn = getattr(sys.modules[__name__], f"{name}_schedule", None)
  if fn is None:
    raise ValueError(f"config.schedule.name={name!r}: no {name}_schedule in "
                     f"{__name__} (step, cosine, constant)")
  return fn(total_steps=total_steps, steps_per_epoch=steps_per_epoch,
            **kwargs)


def make_optimizer(cfg, schedule: optax.Schedule
                   ) -> optax.GradientTransformation:
  """Builds the optax chain: [clip] -> [L2 decay] -> optimizer."""
  kwargs = dict(cfg)
  name = kwargs.pop("name")
  weight_decay = kwargs.pop("weight_decay", 0.0)
  clip = kwargs.pop("grad_clip_norm", 0.0)
  fn = getattr(optax, name, None)
  if fn is None:
    raise ValueError(f"config.optimizer.name={name!r} is not an optax "
                     "optimizer (sgd, adam, adamw, ...)")
  parts = []
  if clip:
    parts.append(optax.clip_by_global_norm(clip))
  if name == "adamw":
    kwargs["weight_decay"] = weight_decay
  elif weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  parts.append(fn(learning_rate=schedule, **kwargs))
  return optax.chain(*parts)
