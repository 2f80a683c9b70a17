"""Tests of vreid_jax.models.common."""

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
