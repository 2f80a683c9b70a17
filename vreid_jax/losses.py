"""Losses, configured as named instances.

  config.losses = {
      "softmax_cross_entropy": {"weight": 1.0, "label_smoothing": 0.1},
      "batch_hard_triplet": {"weight": 1.0, "margin": 0.3},
      # The same loss type on another head: a second instance.
      "ce_appearance": {"type": "softmax_cross_entropy", "weight": 1.0,
                        "inputs": {"logits": "logits_a"}},
  }

An instance's `type` names a loss of the `LOSSES` table and defaults to the
instance name; `weight` scales it in the total (0 switches it off); the other
fields are the loss function's keyword arguments. `inputs` maps each of the
function's tensor arguments to where it comes from: a key of the model's aux
dict, "embedding" for the model's embedding, or a key of the batch
("labels", "pids", "camids"); the table gives the defaults. The log and the
summaries report every instance by its name.

Adding a loss: write `fn(<tensor arguments>, *, <options>) -> scalar` here
and add it to `LOSSES` with its default inputs.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from vreid_jax.models import common


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, *,
                          label_smoothing: float = 0.0) -> jax.Array:
  """Identity classification loss with label smoothing.

  With smoothing eps and C classes the target is (1 - eps) one_hot + eps / C
  (Szegedy et al., 2016), as in the BoT ReID baseline.

  Args:
    logits: (B, C) or (B, ..., C), e.g. per-frame logits (B, T, C) of a
      frame-level classifier: each gets its sample's label.
    labels: (B,) int.
    label_smoothing: eps.

  Returns:
    The mean cross-entropy over every row of logits.
  """
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  labels = jnp.broadcast_to(
      labels.reshape(labels.shape + (1,) * (logits.ndim - 1 - labels.ndim)),
      logits.shape[:-1])
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets).mean()


def pairwise_distances(x: jax.Array, squared: bool = False) -> jax.Array:
  """Euclidean distances between the rows of x, numerically safe at 0."""
  x = x.astype(jnp.float32)
  sq = jnp.sum(x * x, axis=-1)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
  if squared:
    return d2
  # sqrt has an infinite gradient at 0: take it on a safe value.
  safe = jnp.where(d2 > 1e-12, d2, 1.0)
  return jnp.where(d2 > 1e-12, jnp.sqrt(safe), 0.0)


def batch_hard_triplet(features: jax.Array, labels: jax.Array, *,
                       margin: float = 0.3,
                       soft_margin: bool = False) -> jax.Array:
  """Batch-hard triplet loss (Hermans, Beyer & Leibe, 2017).

  For each anchor a in the batch: the hardest positive (largest distance to
  a sample of the same identity, a itself excluded) and the hardest negative
  (smallest distance to another identity):

    L = mean_a [ m + max_p D(a, p) - min_n D(a, n) ]_+
  or, with soft_margin, mean_a softplus(max_p D(a,p) - min_n D(a,n)).

  Args:
    features: (B, D) features (by default aux["features"], the pre-BN-neck
      feature: the BoT choice).
    labels: (B,) identities.
    margin: m.
    soft_margin: use the soft-margin formulation.
  """
  dist = pairwise_distances(features)
  same = labels[:, None] == labels[None, :]
  eye = jnp.eye(len(labels), dtype=bool)
  # reduce_max/min: a gradient that never compares two computations of
  # `dist` (jnp.max's can be NaN when XLA computes it twice).
  pos = common.reduce_max(jnp.where(same & ~eye, dist, -jnp.inf), 1)
  neg = common.reduce_min(jnp.where(same, jnp.inf, dist), 1)
  valid = jnp.isfinite(pos) & jnp.isfinite(neg)
  gap = jnp.where(valid, pos - neg, 0.0)
  per_anchor = jax.nn.softplus(gap) if soft_margin else jax.nn.relu(
      gap + margin)
  per_anchor = jnp.where(valid, per_anchor, 0.0)
  return per_anchor.sum() / jnp.maximum(valid.sum(), 1)


def stripe_bounds(height: int, stripes: int) -> list[tuple[int, int]]:
  """Rows [start, end) of each of `stripes` horizontal stripes of a map,
  PyTorch's adaptive-pooling bins (stripes overlap when height < stripes)."""
  return [(z * height // stripes, -((-(z + 1) * height) // stripes))
          for z in range(stripes)]


def pyramid_ranking(maps: jax.Array, mask: jax.Array, labels: jax.Array, *,
                    margin: float = 0.4, levels: int = 3) -> jax.Array:
  """STAR's pyramid ranking regulariser R_pr (Wu et al., BMVC 2019, eq. 9-10).

  The frame maps f (B, T, h, w, C) are cut into G horizontal stripes for
  each level G in {2^0, ..., 2^(levels-1)} (1, 2, 4 for Z = 3). Stripe z of
  frame i is average-pooled to f_{i,z} (C); the clip's stripe descriptor is
  the temporal average plus the temporal maximum over its real frames,
  d_z = avg_i f_{i,z} + max_i f_{i,z}; each stripe then gets a batch-hard
  hinge with margin a1 on Euclidean distances (its own hardest positive
  and negative, the rule of the triplet loss), R_G is the mean over its G
  stripes and

    R_pr = 1 / (B Z) sum_anchors sum_levels R_G                     (eq. 9)

  Eq. 10 writes the pooled sums with an extra 1/L; the spec reads it as the
  plain avg + max above (spec 4.6). No parameters. Anchors without a
  positive or a negative in the batch are left out of the mean (as in
  `batch_hard_triplet`).

  Args:
    maps: (B, T, h, w, C) frame maps (STAR: the maps after the last LSTA
      block, aux["frame_maps"]).
    mask: (B, T) real frames (bool or 0/1 float, aux["frame_mask"]); padded
      frames are never read.
    labels: (B,) identities.
    margin: a1 (0.4).
    levels: Z, the pyramid's levels (3).
  """
  if maps.ndim != 5:
    raise ValueError(f"pyramid_ranking: maps must be (B, T, h, w, C), got "
                     f"{maps.shape}")
  if levels < 1:
    raise ValueError(f"pyramid_ranking: levels must be >= 1, got {levels}")
  maps = maps.astype(jnp.float32)
  real = mask.astype(bool)
  m = real[:, :, None, None]
  count = jnp.maximum(real.sum(axis=1), 1)[:, None, None].astype(jnp.float32)
  total = jnp.zeros((), jnp.float32)
  for level in range(levels):
    g = 2 ** level
    rows = maps.mean(axis=3)                                 # (B, T, h, C)
    stripes = jnp.stack([rows[:, :, a:e].mean(axis=2)
                         for a, e in stripe_bounds(maps.shape[2], g)],
                        axis=2)                              # (B, T, G, C)
    avg = jnp.where(m, stripes, 0.0).sum(axis=1) / count
    mx = common.reduce_max(jnp.where(m, stripes, -jnp.inf), 1)
    mx = jnp.where(jnp.isfinite(mx), mx, 0.0)
    desc = avg + mx                                          # (B, G, C)
    total = total + sum(batch_hard_triplet(desc[:, z], labels, margin=margin)
                        for z in range(g)) / g
  return total / levels


@dataclasses.dataclass(frozen=True)
class LossType:
  """A loss function and where its tensor arguments come from by default."""
  fn: Callable[..., jax.Array]
  inputs: Mapping[str, str]


LOSSES: dict[str, LossType] = {
    "softmax_cross_entropy": LossType(
        softmax_cross_entropy, {"logits": "logits", "labels": "labels"}),
    "batch_hard_triplet": LossType(
        batch_hard_triplet, {"features": "features", "labels": "labels"}),
    "pyramid_ranking": LossType(
        pyramid_ranking, {"maps": "frame_maps", "mask": "frame_mask",
                          "labels": "labels"}),
}


@dataclasses.dataclass(frozen=True)
class Loss:
  """One configured loss instance (hashable: it is part of the jitted step).

  Attributes:
    name: the instance name (config key), used in logs and summaries.
    type: the LOSSES key.
    weight: its weight in the total.
    inputs: (argument, source) pairs.
    kwargs: (option, value) pairs.
  """
  name: str
  type: str
  weight: float
  inputs: tuple[tuple[str, str], ...]
  kwargs: tuple[tuple[str, Any], ...]

  def sources(self) -> tuple[str, ...]:
    return tuple(src for _, src in self.inputs)


def _hashable(v):
  if isinstance(v, list):
    return tuple(_hashable(x) for x in v)
  return v


def resolve(losses: Mapping[str, Mapping[str, Any]]) -> tuple[Loss, ...]:
  """Checks `config.losses` and returns its instances (weight 0 dropped).

  Raises:
    ValueError: naming the instance and field of an unknown type, option
      or input argument, or when no loss is left.
  """
  out = []
  for name, cfg in losses.items():
    cfg = dict(cfg)
    type_ = cfg.pop("type", None) or name
    weight = float(cfg.pop("weight", 1.0))
    inputs = dict(cfg.pop("inputs", None) or {})
    if type_ not in LOSSES:
      raise ValueError(
          f"config.losses.{name}: unknown loss type {type_!r}; known: "
          f"{sorted(LOSSES)} (set config.losses.{name}.type)")
    spec = LOSSES[type_]
    options = {p.name for p in inspect.signature(spec.fn).parameters.values()
               if p.kind == inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(cfg) - options)
    if unknown:
      raise ValueError(f"config.losses.{name}: {type_} has no option(s) "
                       f"{unknown}; its options: {sorted(options)}")
    bad = sorted(set(inputs) - set(spec.inputs))
    if bad:
      raise ValueError(f"config.losses.{name}.inputs: {type_} has no input(s)"
                       f" {bad}; its inputs: {sorted(spec.inputs)}")
    if not weight:
      continue
    merged = {**spec.inputs, **inputs}
    out.append(Loss(name=name, type=type_, weight=weight,
                    inputs=tuple(sorted(merged.items())),
                    kwargs=tuple(sorted((k, _hashable(v))
                                        for k, v in cfg.items()))))
  if not out:
    raise ValueError("config.losses: no loss with a non-zero weight")
  return tuple(out)


def _source(loss: Loss, arg: str, src: str, embedding, aux, batch):
  if src == "embedding":
    return embedding
  if src in aux:
    return aux[src]
  if src in batch:
    return batch[src]
  raise ValueError(
      f"config.losses.{loss.name}.inputs.{arg}={src!r}: not an aux key of the "
      f"model ({sorted(aux)}), 'embedding', nor a batch key ({sorted(batch)})")


def check_sources(losses: Sequence[Loss], aux_keys, batch_keys) -> None:
  """Fails before training when a loss reads something nobody provides."""
  aux = dict.fromkeys(aux_keys)
  batch = dict.fromkeys(batch_keys)
  for loss in losses:
    for arg, src in loss.inputs:
      _source(loss, arg, src, None, aux, batch)


def total_loss(embedding, aux, batch, losses: Sequence[Loss]
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of the loss instances; returns (total, {name: value})."""
  terms = {}
  total = jnp.zeros((), jnp.float32)
  for loss in losses:
    args = {arg: _source(loss, arg, src, embedding, aux, batch)
            for arg, src in loss.inputs}
    value = LOSSES[loss.type].fn(**args, **dict(loss.kwargs))
    terms[loss.name] = value
    total = total + loss.weight * value
  return total, terms
