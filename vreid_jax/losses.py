"""Losses. A config names them by function name with their weights:

  config.losses = {
      "softmax_cross_entropy": {"weight": 1.0, "label_smoothing": 0.1},
      "batch_hard_triplet": {"weight": 1.0, "margin": 0.3},
  }

Each loss here has the signature `fn(embedding, aux, batch, **kwargs) ->
scalar` and takes what it needs from the model's `(embedding, aux)` output and
the batch, so a new model-specific loss is a new function in this module, not
an edit of the trainer.
"""

from __future__ import annotations

from collections.abc import Mapping
import sys
from typing import Any

import jax
import jax.numpy as jnp
import optax


def softmax_cross_entropy(embedding, aux, batch, *,
                          label_smoothing: float = 0.0) -> jax.Array:
  """Identity classification loss on aux["logits"], with label smoothing.

  With smoothing eps and C classes the target is (1 - eps) one_hot + eps / C
  (Szegedy et al., 2016), as in the BoT ReID baseline.
  """
  del embedding
  logits = aux["logits"].astype(jnp.float32)
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(batch["labels"], num_classes)
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


def batch_hard_triplet(embedding, aux, batch, *, margin: float = 0.3,
                       soft_margin: bool = False,
                       feature: str = "features") -> jax.Array:
  """Batch-hard triplet loss (Hermans, Beyer & Leibe, 2017).

  For each anchor a in the batch: the hardest positive (largest distance to
  a sample of the same identity, a itself excluded) and the hardest negative
  (smallest distance to another identity):

    L = mean_a [ m + max_p D(a, p) - min_n D(a, n) ]_+
  or, with soft_margin, mean_a softplus(max_p D(a,p) - min_n D(a,n)).

  Args:
    embedding: unused unless feature == "embedding".
    aux: the model's aux dict; aux[feature] is used.
    batch: needs "labels".
    margin: m.
    soft_margin: use the soft-margin formulation.
    feature: "features" (pre-BN-neck, the BoT choice) or "embedding".
  """
  x = embedding if feature == "embedding" else aux[feature]
  labels = batch["labels"]
  dist = pairwise_distances(x)
  same = labels[:, None] == labels[None, :]
  eye = jnp.eye(len(labels), dtype=bool)
  pos = jnp.max(jnp.where(same & ~eye, dist, -jnp.inf), axis=1)
  neg = jnp.min(jnp.where(same, jnp.inf, dist), axis=1)
  valid = jnp.isfinite(pos) & jnp.isfinite(neg)
  gap = jnp.where(valid, pos - neg, 0.0)
  per_anchor = jax.nn.softplus(gap) if soft_margin else jax.nn.relu(
      gap + margin)
  per_anchor = jnp.where(valid, per_anchor, 0.0)
  return per_anchor.sum() / jnp.maximum(valid.sum(), 1)


def total_loss(embedding, aux, batch,
               losses: Mapping[str, Mapping[str, Any]]
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of the configured losses; returns (total, {name: value})."""
  module = sys.modules[__name__]
  terms = {}
  total = jnp.zeros((), jnp.float32)
  for name, kwargs in losses.items():
    kwargs = dict(kwargs)
    weight = kwargs.pop("weight", 1.0)
    if not weight:
      continue
    fn = getattr(module, name, None)
    if fn is None or name.startswith("_") or name in ("total_loss",
                                                      "pairwise_distances"):
      raise ValueError(f"config.losses.{name}: no loss of that name in "
                       f"{__name__}")
    value = fn(embedding, aux, batch, **kwargs)
    terms[name] = value
    total = total + weight * value
  return total, terms
