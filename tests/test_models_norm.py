"""Tests of vreid_jax.models.norm (BatchNorm with the hand-written backward).

Checked against flax.linen.BatchNorm (variables, forward, running
statistics, gradients) and against a NumPy implementation of the backward
equations in the module docstring.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vreid_jax.models import norm

INITS = {"scale_init": nn.initializers.normal(1.0),
         "bias_init": nn.initializers.normal(1.0)}


def _pair(dtype, **kw):
  kw = dict(INITS, momentum=0.9, epsilon=1e-5, dtype=dtype, **kw)
  return nn.BatchNorm(**kw), norm.BatchNorm(**kw)


def _loss_and_grads(module, variables, x, mask, w):
  def loss(params, x):
    y, upd = module.apply({"params": params,
                           "batch_stats": variables["batch_stats"]},
                          x, use_running_average=False, mask=mask,
                          mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y.astype(jnp.float32)) * w), (y, upd)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
      variables["params"], x)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_flax_batchnorm(dtype, masked):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(6, 5, 4, 7)) * 2 + 1, dtype)
  w = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  mask = (jnp.asarray([1, 1, 0, 1, 0, 1], bool)[:, None, None, None]
          if masked else None)
  ref, new = _pair(dtype)
  v_ref = ref.init(jax.random.key(0), x, use_running_average=False,
                   mask=mask)
  v_new = new.init(jax.random.key(0), x, use_running_average=False,
                   mask=mask)
  # Same variables (names, shapes, values): checkpoints interchange.
  assert (jax.tree.structure(v_ref) == jax.tree.structure(v_new))
  for a, b in zip(jax.tree.leaves(v_ref), jax.tree.leaves(v_new)):
    np.testing.assert_array_equal(a, b)
  (l1, (y1, s1)), g1 = _loss_and_grads(ref, v_ref, x, mask, w)
  (l2, (y2, s2)), g2 = _loss_and_grads(new, v_new, x, mask, w)
  assert y1.dtype == y2.dtype == dtype
  np.testing.assert_array_equal(np.asarray(y1, np.float32),
                                np.asarray(y2, np.float32))
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
    np.testing.assert_array_equal(a, b)  # Running statistics.
  # Parameter gradients are float32: rounding only. The input gradient is
  # in the input's dtype (1 bfloat16 ulp is 2^-8 relative).
  rtol = 1e-5 if dtype == jnp.float32 else 1e-2
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * np.abs(a).max())
  # Eval mode: running averages, identical.
  e1 = ref.apply(v_ref, x, use_running_average=True)
  e2 = new.apply(v_new, x, use_running_average=True)
  np.testing.assert_array_equal(np.asarray(e1, np.float32),
                                np.asarray(e2, np.float32))


def _numpy_backward(x, m, s, gy, eps):
  """The module docstring's equations, in float64 NumPy."""
  x, gy = x.astype(np.float64), gy.astype(np.float64)
  axes = tuple(range(x.ndim - 1))
  mb = np.broadcast_to(m, x.shape).astype(np.float64)
  n = mb.sum(axes)
  mu = (x * mb).sum(axes) / n
  var = (x * x * mb).sum(axes) / n - mu**2
  r = 1 / np.sqrt(var + eps)
  xhat = (x - mu) * r
  db = gy.sum(axes)
  ds = (gy * xhat).sum(axes)
  g_mu = -s * r * db
  g_var = -0.5 * s * r * r * ds
  dx = s * r * gy + mb / n * (g_mu + 2 * xhat / r * g_var)
  return dx, ds, db


def test_backward_matches_numpy_equations():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(5, 3, 2, 4)).astype(np.float32) * 3 - 1
  m = np.array([1, 0, 1, 1, 0], bool)[:, None, None, None]
  s = rng.normal(size=(4,)).astype(np.float32)
  b = rng.normal(size=(4,)).astype(np.float32)
  gy = rng.normal(size=x.shape).astype(np.float32)
  _, vjp = jax.vjp(
      lambda x, s, b: norm.batch_norm_train(x, jnp.asarray(m), s, b, 1e-5,
                                            jnp.float32)[0], x, s, b)
  dx, ds, db = vjp(jnp.asarray(gy))
  want_dx, want_ds, want_db = _numpy_backward(x, m, s, gy, 1e-5)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ds, want_ds, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(db, want_db, rtol=1e-4, atol=1e-5)
  # Padded rows get only the direct term s r dy (they are outside the
  # statistics), real rows the full one.
  r = 1 / np.sqrt(x[m[:, 0, 0, 0]].reshape(-1, 4).var(0) + 1e-5)
  np.testing.assert_allclose(dx[1], s * r * gy[1], rtol=1e-4, atol=1e-5)


def test_statistics_cotangents_and_clamp():
  """Gradients through the returned batch mean/var equal autodiff's, and a
  constant channel (variance clamped at 0) matches flax's formula."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(4, 3, 5)).astype(np.float32)
  x[..., 2] = 0.5  # Constant channel: E[x^2] - E[x]^2 rounds to <= 0.
  s = rng.normal(size=(5,)).astype(np.float32)
  b = rng.normal(size=(5,)).astype(np.float32)
  wy, wm, wv = (rng.normal(size=x.shape), rng.normal(size=5),
                rng.normal(size=5))

  def reference(x, s, b):
    axes = (0, 1)
    mu = x.mean(axes)
    var = jnp.maximum(0.0, (x * x).mean(axes) - mu * mu)
    y = (x - mu) * (jax.lax.rsqrt(var + 1e-3) * s) + b
    return y, mu, var

  def objective(fn):
    def f(x, s, b):
      y, mu, var = fn(x, s, b)
      return jnp.sum(y * wy) + jnp.sum(mu * wm) + jnp.sum(var * wv)
    return jax.grad(f, argnums=(0, 1, 2))

  got = objective(lambda x, s, b: norm.batch_norm_train(
      x, None, s, b, 1e-3, jnp.float32))(x, s, b)
  want = objective(reference)(x, s, b)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-4)


def test_fused_blocks_equal_flax_blocks():
  """ResNet's stem and a Bottleneck with a downsample shortcut, built with
  the fused BatchNorm (BN + add + ReLU as one op) and with flax's: the same
  variables, the same training-mode forward bit for bit, the same running
  statistics, gradients equal to rounding (padded frames in the batch)."""
  import functools  # pylint: disable=g-import-not-at-top
  from vreid_jax.models import common, resnet  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 16, 8, 3)),
                  jnp.float32)
  mask = jnp.asarray([True, True, False, True])[:, None, None, None]

  class Net(nn.Module):
    impl: str

    @nn.compact
    def __call__(self, x, train):
      norm = functools.partial(common.batch_norm(self.impl),
                               use_running_average=not train)
      conv = functools.partial(nn.Conv, use_bias=False)
      y = resnet.stem_block(x, "", conv=conv, norm=norm, width=8,
                            dtype=jnp.float32, bn_mask=mask, train=train)
      return resnet.Bottleneck(planes=4, strides=2, conv=conv, norm=norm,
                               name="block")(y, mask=mask)

  nets = [Net("flax"), Net("fused")]
  v = nets[0].init(jax.random.key(0), x, False)
  v2 = nets[1].init(jax.random.key(0), x, False)
  assert jax.tree.structure(v) == jax.tree.structure(v2)
  for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(v2)):
    np.testing.assert_array_equal(a, b)

  def run(net):
    def f(params):
      y, upd = net.apply({"params": params, "batch_stats": v["batch_stats"]},
                         x, True, mutable=["batch_stats"])
      return jnp.sum(jnp.sin(y)), (y, upd)
    return jax.jit(jax.value_and_grad(f, has_aux=True))(v["params"])

  (_, (y1, s1)), g1 = run(nets[0])
  (_, (y2, s2)), g2 = run(nets[1])
  np.testing.assert_array_equal(y1, y2)
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())
