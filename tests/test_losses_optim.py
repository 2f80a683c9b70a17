"""Losses against independent NumPy implementations; optimizer config."""

import jax
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
  got = losses.batch_hard_triplet(jnp.asarray(x), jnp.asarray(labels),
                                  margin=0.3)
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
  got = losses.batch_hard_triplet(jnp.asarray(x), jnp.asarray(labels),
                                  soft_margin=True)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_triplet_gradient_finite_with_duplicates():
  import jax  # pylint: disable=g-import-not-at-top
  x = jnp.ones((4, 3))
  g = jax.grad(lambda f: losses.batch_hard_triplet(
      f, jnp.array([0, 0, 1, 1])))(x)
  assert np.isfinite(np.asarray(g)).all()


def test_label_smoothed_ce_matches_numpy():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(4, 5)).astype(np.float32)
  labels = np.array([0, 3, 4, 1])
  eps = 0.1
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  target = np.full((4, 5), eps / 5) + (1 - eps) * np.eye(5)[labels]
  want = -(target * logp).sum(-1).mean()
  got = losses.softmax_cross_entropy(jnp.asarray(logits),
                                     jnp.asarray(labels),
                                     label_smoothing=eps)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # Per-frame logits (B, T, C): each frame gets its clip's label.
  frames = np.stack([logits, logits[::-1]], axis=1)           # (4, 2, 5)
  got = losses.softmax_cross_entropy(jnp.asarray(frames), jnp.asarray(labels))
  logp2 = logp[::-1]
  want = -(np.eye(5)[labels] * (logp + logp2)).sum(-1).mean() / 2
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_total_loss_weights_and_unknown_names():
  aux = {"logits": jnp.zeros((2, 3)), "features": jnp.eye(2)}
  batch = {"labels": jnp.array([0, 1])}
  total, terms = losses.total_loss(None, aux, batch, losses.resolve({
      "softmax_cross_entropy": {"weight": 2.0},
      "batch_hard_triplet": {"weight": 0.0}}))
  np.testing.assert_allclose(float(total), 2 * np.log(3), rtol=1e-6)
  assert set(terms) == {"softmax_cross_entropy"}  # Weight 0: not computed.
  with pytest.raises(ValueError, match="config.losses.nope: unknown loss "
                     "type 'nope'"):
    losses.resolve({"nope": {"weight": 1.0}})
  with pytest.raises(ValueError, match="config.losses.ce: .* no option"):
    losses.resolve({"ce": {"type": "softmax_cross_entropy",
                           "margin": 0.3}})
  with pytest.raises(ValueError, match=r"config.losses.ce.inputs: .* no "
                     r"input\(s\) \['feature'\]"):
    losses.resolve({"ce": {"type": "softmax_cross_entropy",
                           "inputs": {"feature": "x"}}})
  with pytest.raises(ValueError, match="no loss with a non-zero weight"):
    losses.resolve({"softmax_cross_entropy": {"weight": 0.0}})


def test_two_instances_of_one_loss_type_on_two_heads():
  rng = np.random.default_rng(3)
  logits_a = rng.normal(size=(4, 5)).astype(np.float32)
  logits_b = rng.normal(size=(4, 5)).astype(np.float32)
  labels = jnp.array([0, 1, 2, 3])
  instances = losses.resolve({
      "ce_a": {"type": "softmax_cross_entropy", "weight": 1.0,
               "inputs": {"logits": "logits_a"}},
      "ce_b": {"type": "softmax_cross_entropy", "weight": 0.5,
               "label_smoothing": 0.1, "inputs": {"logits": "logits_b"}},
      "triplet_on_embedding": {"type": "batch_hard_triplet",
                               "inputs": {"features": "embedding"}}})
  aux = {"logits_a": jnp.asarray(logits_a), "logits_b": jnp.asarray(logits_b)}
  emb = jnp.asarray(rng.normal(size=(4, 3)).astype(np.float32))
  total, terms = losses.total_loss(emb, aux, {"labels": labels}, instances)
  a = losses.softmax_cross_entropy(aux["logits_a"], labels)
  b = losses.softmax_cross_entropy(aux["logits_b"], labels,
                                   label_smoothing=0.1)
  t = losses.batch_hard_triplet(emb, labels)
  np.testing.assert_allclose(terms["ce_a"], a)
  np.testing.assert_allclose(terms["ce_b"], b)
  np.testing.assert_allclose(terms["triplet_on_embedding"], t)
  np.testing.assert_allclose(total, a + 0.5 * b + t, rtol=1e-6)
  # A source nobody provides is named before training.
  with pytest.raises(ValueError, match=r"ce_b.inputs.logits='logits_b'"):
    losses.check_sources(instances, ["logits_a", "features"], ["labels"])


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


def _params():
  return {"backbone": {"conv1": {"kernel": jnp.ones((2, 2))},
                       "bn1": {"scale": jnp.ones(2)}},
          "head": {"classifier": {"kernel": jnp.ones((2, 3))}}}


def test_param_groups_multiply_and_freeze():
  cfg = ml_collections.ConfigDict(dict(
      name="sgd", weight_decay=0.0, grad_clip_norm=0.0,
      param_groups={"classifier": {"pattern": "head/classifier/.*",
                                   "lr_mult": 10.0},
                    "stem": {"pattern": "backbone/(conv1|bn1)/.*",
                             "lr_mult": 0.0}}))
  params = _params()
  assert optim.group_sizes(cfg, params) == {"stem": 6, "classifier": 6}
  tx = optim.make_optimizer(cfg, optax.constant_schedule(0.1))
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["head"]["classifier"]["kernel"], -1.0)
  assert not np.any(updates["backbone"]["conv1"]["kernel"])
  assert not np.any(updates["backbone"]["bn1"]["scale"])
  # The default group keeps the base rate.
  cfg.param_groups = {"stem": {"pattern": "backbone/.*", "lr_mult": 0.5}}
  tx = optim.make_optimizer(cfg, optax.constant_schedule(0.1))
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["head"]["classifier"]["kernel"], -0.1)
  np.testing.assert_allclose(updates["backbone"]["conv1"]["kernel"], -0.05)


def test_param_groups_errors_name_the_group():
  params = _params()
  cfg = ml_collections.ConfigDict(dict(
      name="sgd", param_groups={"typo": {"pattern": "heads/.*"}}))
  with pytest.raises(ValueError, match="typo match.* no parameter"):
    optim.group_sizes(cfg, params)
  cfg.param_groups = {"a": {"pattern": "head/.*"},
                      "b": {"pattern": ".*/kernel"}}
  with pytest.raises(ValueError, match="head/classifier/kernel matches the "
                     "groups a, b"):
    optim.group_sizes(cfg, params)
  cfg.param_groups = {"a": {"pattern": "head/.*", "lr": 2.0}}
  with pytest.raises(ValueError, match="param_groups.a: needs 'pattern'"):
    optim.make_optimizer(cfg, optax.constant_schedule(0.1))


def test_unknown_optimizer_and_schedule():
  with pytest.raises(ValueError, match="config.optimizer.name"):
    optim.make_optimizer(ml_collections.ConfigDict(dict(name="nadamw2")),
                         optax.constant_schedule(0.1))
  with pytest.raises(ValueError, match="config.schedule.name"):
    optim.make_schedule(ml_collections.ConfigDict(dict(name="poly",
                                                       base_lr=1.0)),
                        total_steps=1, steps_per_epoch=1)
