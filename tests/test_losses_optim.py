"""Losses against independent NumPy implementations; optimizer config."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vreid_jax import losses
from vreid_jax import optim


def _np_batch_hard(x, labels, margin):
  n = len(x)
  d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
  out = []
  for a in range(n):
    pos = [d[a, p] for p in range(n) if p != a and labels[p] == labels[a]]
    neg = [d[a, q] for q in range(n) if labels[q] != labels[a]]
    out.append(max(0.0, margin + max(pos) - min(neg)))
  return np.mean(out)


def test_batch_hard_triplet_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(12, 5)).astype(np.float32)
  labels = np.repeat(np.arange(4), 3)
  got = losses.batch_hard_triplet(None, {"features": jnp.asarray(x)},
                                  {"labels": jnp.asarray(labels)}, margin=0.3)
  np.testing.assert_allclose(float(got), _np_batch_hard(x, labels, 0.3),
                             rtol=1e-5)


def test_soft_margin_triplet():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(6, 3)).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 2, 2])
  d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
  want = np.mean([np.log1p(np.exp(
      max(d[a, p] for p in range(6) if p != a and labels[p] == labels[a])
      - min(d[a, q] for q in range(6) if labels[q] != labels[a])))
                  for a in range(6)])
  got = losses.batch_hard_triplet(None, {"features": jnp.asarray(x)},
                                  {"labels": jnp.asarray(labels)},
                                  soft_margin=True)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_triplet_gradient_finite_with_duplicates():
  import jax  # pylint: disable=g-import-not-at-top
  x = jnp.ones((4, 3))
  g = jax.grad(lambda f: losses.batch_hard_triplet(
      None, {"features": f}, {"labels": jnp.array([0, 0, 1, 1])}))(x)
  assert np.isfinite(np.asarray(g)).all()


def test_label_smoothed_ce_matches_numpy():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(4, 5)).astype(np.float32)
  labels = np.array([0, 3, 4, 1])
  eps = 0.1
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  target = np.full((4, 5), eps / 5) + (1 - eps) * np.eye(5)[labels]
  want = -(target * logp).sum(-1).mean()
  got = losses.softmax_cross_entropy(None, {"logits": jnp.asarray(logits)},
                                     {"labels": jnp.asarray(labels)},
                                     label_smoothing=eps)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_total_loss_weights_and_unknown_name():
  aux = {"logits": jnp.zeros((2, 3)), "features": jnp.eye(2)}
  batch = {"labels": jnp.array([0, 1])}
  total, terms = losses.total_loss(None, aux, batch, {
      "softmax_cross_entropy": {"weight": 2.0}})
  np.testing.assert_allclose(float(total), 2 * np.log(3), rtol=1e-6)
  assert set(terms) == {"softmax_cross_entropy"}
  with pytest.raises(ValueError, match="config.losses.nope"):
    losses.total_loss(None, aux, batch, {"nope": {"weight": 1.0}})


def test_step_schedule_with_warmup():
  cfg = ml_collections.ConfigDict(dict(name="step", base_lr=0.1,
                                       warmup_epochs=1.0, decay_epochs=(2.0,),
                                       decay_factor=0.1))
  sched = optim.make_schedule(cfg, total_steps=40, steps_per_epoch=10)
  np.testing.assert_allclose(float(sched(0)), 0.01, rtol=1e-6)
  np.testing.assert_allclose(float(sched(15)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(sched(25)), 0.01, rtol=1e-6)


def test_cosine_schedule_ends_low():
  cfg = ml_collections.ConfigDict(dict(name="cosine", base_lr=1.0,
                                       warmup_epochs=0.0))
  sched = optim.make_schedule(cfg, total_steps=100, steps_per_epoch=10)
  assert float(sched(0)) == pytest.approx(1.0)
  assert float(sched(100)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizers_build_and_step(name):
  cfg = ml_collections.ConfigDict(dict(name=name, weight_decay=1e-2,
                                       grad_clip_norm=1.0))
  if name == "sgd":
    cfg.momentum = 0.9
  tx = optim.make_optimizer(cfg, optax.constant_schedule(0.1))
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.full(3, 100.0)}, tx.init(params), params)
  assert np.isfinite(np.asarray(updates["w"])).all()


def test_unknown_optimizer_and_schedule():
  with pytest.raises(ValueError, match="config.optimizer.name"):
    optim.make_optimizer(ml_collections.ConfigDict(dict(name="nadamw2")),
                         optax.constant_schedule(0.1))
  with pytest.raises(ValueError, match="config.schedule.name"):
    optim.make_schedule(ml_collections.ConfigDict(dict(name="poly",
                                                       base_lr=1.0)),
                        total_steps=1, steps_per_epoch=1)
