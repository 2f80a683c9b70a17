"""Optimizers and learning-rate schedules from the config.

  config.optimizer = dict(name="sgd", momentum=0.9, nesterov=False,
                          weight_decay=5e-4, grad_clip_norm=0.0,
                          grad_clip_value=0.0)
  config.schedule = dict(name="step", base_lr=0.01, warmup_epochs=0,
                         decay_epochs=(120,), decay_factor=0.1)

`optimizer.name` is an optax function (sgd, adam, adamw, ...) called with the
schedule as its learning rate and the remaining fields as keyword arguments.
For SGD and Adam, `weight_decay` is the PyTorch-style L2 term added to the
gradient (what the papers' PyTorch code used); for AdamW it is decoupled
(optax's own `weight_decay`). Schedules are functions of this module named
`<name>_schedule`. Durations are in epochs here and converted to steps with
the run's steps per epoch (`config_utils.to_steps`).

Parameter groups (`config.optimizer.param_groups`): named groups of
parameters selected by a regular expression over the '/'-joined parameter
path ("backbone/layer1_0/conv1/kernel", "head/classifier/kernel", ...),
each with a learning-rate multiplier and optionally its own weight decay:

  config.optimizer.param_groups = {
      "classifier": {"pattern": "head/classifier/.*", "lr_mult": 10.0},
      "stem": {"pattern": "backbone/(conv1|bn1)/.*", "lr_mult": 0.0},
  }

A group takes the parameters whose whole path its pattern matches; a
parameter matched by two groups is an error (config dicts do not keep an
order, so "first match wins" would depend on the group names); the rest form
the group "default" (multiplier 1). `lr_mult: 0` freezes a group
(its parameters never change: no update, no decay; BatchNorm running
statistics still follow the data in training mode). Gradient clipping
comes before the groups: `grad_clip_norm` (> 0) rescales all gradients to
that global norm at most; `grad_clip_value` (> 0, optional field) clips
every gradient element to [-v, v] (TRL's "clip all gradients in [-5, 5]",
`optax.clip`); with both, element-wise clipping comes first. A pattern
that matches nothing is an error. Without groups the optimizer is the plain
chain below.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

DEFAULT_GROUP = "default"


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


def _base(name: str, kwargs: dict[str, Any], weight_decay: float,
          learning_rate) -> list[optax.GradientTransformation]:
  fn = getattr(optax, name, None)
  if fn is None:
    raise ValueError(f"config.optimizer.name={name!r} is not an optax "
                     "optimizer (sgd, adam, adamw, ...)")
  kwargs = dict(kwargs)
  parts = []
  if name == "adamw":
    kwargs["weight_decay"] = weight_decay
  elif weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  parts.append(fn(learning_rate=learning_rate, **kwargs))
  return parts


def param_path(path) -> str:
  """The '/'-joined path of a parameter ("backbone/conv1/kernel")."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k)))
                  for k in path)


def _groups(cfg) -> list[tuple[str, dict[str, Any]]]:
  groups = []
  for name, group in dict(cfg.get("param_groups") or {}).items():
    group = dict(group)
    unknown = sorted(set(group) - {"pattern", "lr_mult", "weight_decay"})
    if unknown or "pattern" not in group:
      raise ValueError(
          f"config.optimizer.param_groups.{name}: needs 'pattern' (a regular"
          " expression over parameter paths) and may set 'lr_mult' and "
          f"'weight_decay'; got {sorted(group)}")
    if name == DEFAULT_GROUP:
      raise ValueError(f"config.optimizer.param_groups: the name "
                       f"{DEFAULT_GROUP!r} is reserved for unmatched "
                       "parameters")
    try:
      group["regex"] = re.compile(group["pattern"])
    except re.error as e:
      raise ValueError(f"config.optimizer.param_groups.{name}.pattern="
                       f"{group['pattern']!r}: {e}") from None
    groups.append((name, group))
  return groups


def param_labels(cfg, params) -> Any:
  """The group name of every parameter (a pytree like `params`).

  Raises:
    ValueError: a group's pattern matches no parameter.
  """
  groups = _groups(cfg)
  used = dict.fromkeys((n for n, _ in groups), 0)

  def label(path, _):
    p = param_path(path)
    hits = [name for name, group in groups if group["regex"].fullmatch(p)]
    if len(hits) > 1:
      raise ValueError(f"config.optimizer.param_groups: parameter {p} matches"
                       f" the groups {', '.join(hits)}; make their patterns "
                       "exclusive")
    for name in hits:
      used[name] += 1
    return hits[0] if hits else DEFAULT_GROUP

  labels = jax.tree_util.tree_map_with_path(label, params)
  unused = [n for n, c in used.items() if not c]
  if unused:
    raise ValueError(
        f"config.optimizer.param_groups: {', '.join(unused)} match(es) no "
        "parameter; paths look like "
        + ", ".join(sorted({param_path(p) for p, _ in
                            jax.tree_util.tree_flatten_with_path(params)[0]}
                           )[:3]))
  return labels


def group_sizes(cfg, params) -> dict[str, int]:
  """Number of parameter scalars per group (for the log)."""
  labels = param_labels(cfg, params)
  sizes: dict[str, int] = {}
  for lab, leaf in zip(jax.tree.leaves(labels), jax.tree.leaves(params)):
    sizes[lab] = sizes.get(lab, 0) + int(leaf.size)
  return sizes


def make_optimizer(cfg, schedule: optax.Schedule
                   ) -> optax.GradientTransformation:
  """Builds the optax chain: [clip] -> [L2 decay] -> optimizer.

  With `cfg.param_groups`, [clip] -> multi_transform over the groups, each
  [L2 decay] -> optimizer at lr = schedule * lr_mult (or frozen).
  """
  kwargs = dict(cfg)
  name = kwargs.pop("name")
  weight_decay = kwargs.pop("weight_decay", 0.0)
  clip = kwargs.pop("grad_clip_norm", 0.0)
  clip_value = kwargs.pop("grad_clip_value", 0.0)
  kwargs.pop("param_groups", None)
  groups = _groups(cfg)
  parts = []
  if clip_value:
    parts.append(optax.clip(float(clip_value)))
  if clip:
    parts.append(optax.clip_by_global_norm(clip))
  if not groups:
    parts += _base(name, kwargs, weight_decay, schedule)
    return optax.chain(*parts)

  def scaled(mult: float):
    return lambda step: schedule(step) * mult

  transforms = {DEFAULT_GROUP: optax.chain(
      *_base(name, kwargs, weight_decay, schedule))}
  for group_name, group in groups:
    mult = float(group.get("lr_mult", 1.0))
    if mult == 0.0:
      transforms[group_name] = optax.set_to_zero()
      continue
    transforms[group_name] = optax.chain(*_base(
        name, kwargs, float(group.get("weight_decay", weight_decay)),
        scaled(mult)))
  parts.append(optax.multi_transform(
      transforms, lambda params: param_labels(cfg, params)))
  return optax.chain(*parts)
