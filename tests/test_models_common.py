"""Tests of vreid_jax.models.common."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vreid_jax.models import common


def test_resolve_dtype():
  assert common.resolve_dtype("float32") == jnp.float32
  assert common.resolve_dtype("bfloat16") == jnp.bfloat16
  assert common.resolve_dtype("bf16") == jnp.bfloat16
  assert common.resolve_dtype(jnp.bfloat16) == jnp.bfloat16
  assert common.resolve_dtype(np.float32) == jnp.float32
  assert common.resolve_dtype(None) == jnp.float32
  with pytest.raises(ValueError, match="Unknown dtype"):
    common.resolve_dtype("float7")


def test_fold_unfold_round_trip_and_order():
  x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
  folded = common.fold_time(jnp.asarray(x))
  assert folded.shape == (6, 4, 5)
  for b in range(2):
    for t in range(3):
      np.testing.assert_array_equal(folded[b * 3 + t], x[b, t])
  np.testing.assert_array_equal(common.unfold_time(folded, 2), x)
  with pytest.raises(ValueError, match="multiple of the batch size"):
    common.unfold_time(folded, 4)
  with pytest.raises(ValueError):
    common.fold_time(jnp.zeros((3,)))


def test_masked_mean_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 5, 4)).astype(np.float32)
  mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0]], bool)
  x_nan = x.copy()
  x_nan[~mask] = np.nan  # Padded values must never be read.
  got = common.masked_mean(jnp.asarray(x_nan), jnp.asarray(mask), axis=1)
  want = np.stack([x[b][mask[b]].mean(0) for b in range(3)])
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(common.masked_mean(jnp.asarray(x), None, axis=1),
                             x.mean(1), rtol=1e-6)
  # An all-padded row gives 0, not NaN.
  empty = common.masked_mean(jnp.asarray(x), jnp.zeros((3, 5), bool), axis=1)
  np.testing.assert_array_equal(empty, np.zeros((3, 4)))
  with pytest.raises(ValueError, match="prefix"):
    common.masked_mean(jnp.asarray(x), jnp.ones((5, 3), bool), axis=1)


def test_check_shape_and_frame_mask():
  common.check_shape(jnp.zeros((2, 3, 4)), (None, 3, 4), "x")
  with pytest.raises(ValueError, match=r"clips: expected shape \(\?, 3\)"):
    common.check_shape(jnp.zeros((2, 4)), (None, 3), "clips")
  with pytest.raises(ValueError, match="got"):
    common.check_shape(jnp.zeros((2, 3, 4)), (None, 3), "x")
  m = common.frame_mask(None, 2, 3)
  assert m.shape == (2, 3) and m.dtype == jnp.bool_ and bool(m.all())
  with pytest.raises(ValueError, match="mask"):
    common.frame_mask(jnp.ones((2, 4), bool), 2, 3)


def test_pack_frames_and_temporal_conv_input_any_mask():
  mask = np.array([[0, 1, 0, 1, 1], [1, 1, 1, 0, 0]], bool)
  x = np.arange(10, dtype=np.float32).reshape(2, 5, 1) + 1
  order, inverse = common.pack_frames(jnp.asarray(mask))
  np.testing.assert_array_equal(order[0, :3], [1, 3, 4])  # Real, in order.
  np.testing.assert_array_equal(order[1], [0, 1, 2, 3, 4])  # Identity.
  packed, inv = common.temporal_conv_input(jnp.asarray(x), jnp.asarray(mask))
  np.testing.assert_array_equal(packed[0, :, 0], [2, 4, 5, 0, 0])
  np.testing.assert_array_equal(packed[1, :, 0], [6, 7, 8, 0, 0])
  # Unpacking restores every real frame's position.
  back = common.gather_frames(packed, inv)
  np.testing.assert_array_equal(np.where(mask[..., None], back, -1),
                                np.where(mask[..., None], x, -1))
  np.testing.assert_array_equal(inv, inverse)


def test_read_inputs_checks_keys_and_shapes():
  clips = jnp.zeros((2, 3, 8, 4, 3))
  got = common.read_inputs({"clips": clips}, "m")
  assert got[1] is None and got[2] is None
  with pytest.raises(ValueError, match=r"m: inputs\['mask'\] \(B, T\)"):
    common.read_inputs({"clips": clips, "mask": jnp.ones((2, 4), bool)}, "m")
  with pytest.raises(ValueError, match=r"inputs\['flow'\]"):
    common.read_inputs({"clips": clips, "flow": jnp.zeros((2, 3, 8, 4, 3))},
                       "m", flow=True)
  with pytest.raises(ValueError, match="no 'clips'"):
    common.read_inputs({"mask": jnp.ones((2, 3), bool)}, "m")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_max_pool_equals_flax_values_and_gradient(dtype):
  """common.max_pool (gather-style gradient) equals nn.max_pool bit for bit,
  ties included (ReLU zeros, a block of equal values), odd and even sizes."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  pad = ((1, 1), (1, 1))
  for shape in [(2, 9, 8, 3), (1, 7, 7, 1), (2, 16, 10, 2)]:
    x = np.maximum(rng.normal(size=shape), 0)
    x[0, :3, :3] = 0.5
    x = jnp.asarray(x, dtype)
    ref = jax.jit(lambda v: nn.max_pool(v, (3, 3), strides=(2, 2),
                                        padding=pad))
    new = jax.jit(lambda v: common.max_pool(v, (3, 3), (2, 2), pad))
    y1, vjp1 = jax.vjp(ref, x)
    y2, vjp2 = jax.vjp(new, x)
    np.testing.assert_array_equal(np.asarray(y1, np.float32),
                                  np.asarray(y2, np.float32))
    g = jnp.asarray(rng.normal(size=y1.shape), dtype)
    np.testing.assert_array_equal(np.asarray(vjp1(g)[0], np.float32),
                                  np.asarray(vjp2(g)[0], np.float32))


def test_max_pool_gradient_goes_to_first_maximum():
  """NumPy reference: each window's gradient lands on its first maximum in
  row-major order (here every value ties at 0: the window's top-left real
  position, -inf padding never wins)."""
  import jax  # pylint: disable=g-import-not-at-top
  x = jnp.zeros((1, 4, 4, 1))
  _, vjp = jax.vjp(lambda v: common.max_pool(v, (3, 3), (2, 2),
                                             ((1, 1), (1, 1))), x)
  g = jnp.arange(1.0, 5.0).reshape(1, 2, 2, 1)
  want = np.zeros((4, 4))
  for i in range(2):
    for j in range(2):
      r, c = max(2 * i - 1, 0), max(2 * j - 1, 0)
      want[r, c] += float(g[0, i, j, 0])
  np.testing.assert_array_equal(vjp(g)[0][0, :, :, 0], want)


def _first_extremum_grad(x, axes, weights, arg):
  """NumPy: d sum(weights * extremum(x, axes)) / dx, all to the first
  extremum in row-major order over `axes`."""
  kept = [a for a in range(x.ndim) if a not in axes]
  flat = np.transpose(x, kept + list(axes)).reshape(
      [x.shape[a] for a in kept] + [-1])
  index = arg(flat, axis=-1)
  g = np.zeros_like(flat)
  np.put_along_axis(g, index[..., None], weights.reshape(index.shape)[..., None],
                    axis=-1)
  g = g.reshape([x.shape[a] for a in kept] + [x.shape[a] for a in axes])
  return np.transpose(g, np.argsort(kept + list(axes)))


@pytest.mark.parametrize("axes", [(1,), (1, 2), (3,), (0, 2)])
def test_reduce_max_min_values_and_gradient_to_the_first_extremum(axes):
  rng = np.random.default_rng(0)
  # Few distinct values: many ties, including tied maxima and minima.
  x = rng.integers(-2, 3, size=(3, 4, 5, 2)).astype(np.float32)
  for ours, ref, arg in ((common.reduce_max, np.max, np.argmax),
                         (common.reduce_min, np.min, np.argmin)):
    for keepdims in (False, True):
      out = ours(jnp.asarray(x), axes, keepdims=keepdims)
      np.testing.assert_array_equal(out, ref(x, axis=axes, keepdims=keepdims))
    weights = rng.normal(size=ref(x, axis=axes).shape).astype(np.float32)
    g = jax.grad(lambda v: jnp.sum(weights * ours(v, axes)))(jnp.asarray(x))  # pylint: disable=cell-var-from-loop
    np.testing.assert_array_equal(
        g, _first_extremum_grad(x, axes, weights, arg))
  assert common.reduce_max(jnp.asarray(x), -1).shape == x.shape[:3]


def test_reduce_max_gradient_needs_no_bitwise_agreement():
  """ReLU(BatchNorm(x)) pooled by a max, as STAR's channel gate: `jnp.max`'s
  gradient compares a second computation of the map with the max, and under
  the suite's XLA flags (tests/xla_env.py) that comparison fails on
  XLA:CPU and the gradient is NaN. `reduce_max`'s equals the gradient
  through a max taken at indices fixed beforehand."""
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 4, 4, 32))
  bn = nn.BatchNorm(use_running_average=False, momentum=0.9)
  variables = bn.init(jax.random.PRNGKey(1), x)

  def pooled(v, pool):
    y, _ = bn.apply(variables, v * 1.7 + 0.3, mutable=["batch_stats"])
    y = nn.relu(y)
    return jnp.sum(jnp.sin(pool(y)) * y.mean(axis=(1, 2)))

  g = jax.jit(jax.grad(
      lambda v: pooled(v, lambda y: common.reduce_max(y, (1, 2)))))(x)
  y, _ = bn.apply(variables, x * 1.7 + 0.3, mutable=["batch_stats"])
  flat = np.asarray(nn.relu(y)).reshape(16, 16, 32)
  index = jnp.asarray(np.argmax(flat, axis=1)[:, None, :])
  at_index = lambda y: jnp.take_along_axis(  # pylint: disable=g-long-lambda
      y.reshape(16, 16, 32), index, axis=1)[:, 0]
  g_ref = jax.jit(jax.grad(lambda v: pooled(v, at_index)))(x)
  assert np.isfinite(np.asarray(g)).all()
  np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)
