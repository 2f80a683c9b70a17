"""GLTR layers vs independent NumPy implementations of eq. 5-7, and the model.

The NumPy references are written in the paper's notation (features as D x T
matrices, explicit loops over frames) and read the Flax parameters by name.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vreid_jax.models import baseline
from vreid_jax.models import common
from vreid_jax.models import gltr
from vreid_jax.models import temporal

EPS = 1e-5


@pytest.fixture(autouse=True)
def _full_precision():
  """float32 matmuls/convs on every backend (GPUs default to TF32)."""
  with jax.default_matmul_precision("highest"):
    yield


def np_dilated_conv(x, kernel, dilation):
  """Eq. 5, 'same' zero padding: y_t = sum_i W[i] f_{t + r (i - (w-1)/2)}.

  x: (T, d) one tracklet; kernel: (w, d_in, d_out) Flax layout.
  """
  t_len = x.shape[0]
  w = kernel.shape[0]
  half = (w - 1) // 2
  y = np.zeros((t_len, kernel.shape[-1]))
  for t in range(t_len):
    for i in range(w):
      s = t + (i - half) * dilation
      if 0 <= s < t_len:
        y[t] += x[s] @ kernel[i]
  return y


def np_dtp(x, params, branches, identity):
  """Eq. 6: concat of the branches. branches: [(name, dilation)]."""
  out = []
  for b in range(x.shape[0]):
    parts = [x[b]] if identity else []
    parts += [np_dilated_conv(x[b], np.asarray(params[name]["kernel"]), r)
              for name, r in branches]
    out.append(np.concatenate(parts, axis=-1))
  return np.stack(out)


def np_tsa(x, variables, normalization="softmax"):
  """Eq. 7 in the paper's D x T notation, eval-mode BN, one tracklet a time.

  Returns (F'' (B, T, D), M (B, T, T) with M[s, t]).
  """
  p, s = variables["params"], variables["batch_stats"]

  def conv_bn_relu(f, conv, bn):  # f: D x T
    y = np.asarray(p[conv]["kernel"]).T @ f                  # inner x T
    mean = np.asarray(s[bn]["mean"])[:, None]
    var = np.asarray(s[bn]["var"])[:, None]
    y = ((y - mean) / np.sqrt(var + EPS) * np.asarray(p[bn]["scale"])[:, None]
         + np.asarray(p[bn]["bias"])[:, None])
    return np.maximum(y, 0)

  outs, maps = [], []
  for b in range(x.shape[0]):
    f = x[b].T.astype(np.float64)                             # D x T
    mat_b = conv_bn_relu(f, "conv_b", "bn_b")
    mat_c = conv_bn_relu(f, "conv_c", "bn_c")
    m = mat_c.T @ mat_b                                       # T x T
    if normalization == "softmax":
      e = np.exp(m - m.max(axis=0, keepdims=True))
      m = e / e.sum(axis=0, keepdims=True)                    # Columns sum 1.
    f_bar = (np.asarray(p["conv_f"]["kernel"]).T @ f
             + np.asarray(p["conv_f"]["bias"])[:, None])      # inner x T
    f2 = (np.asarray(p["conv_w"]["kernel"]).T @ (f_bar @ m)
          + np.asarray(p["conv_w"]["bias"])[:, None] + f)     # D x T
    outs.append(f2.T)
    maps.append(m)
  return np.stack(outs), np.stack(maps)


def np_tpp(x, lengths, bins):
  out = []
  for b, length in enumerate(lengths):
    parts = []
    for n in bins:
      for k in range(n):
        start = (k * length) // n
        end = -(-((k + 1) * length) // n)
        parts.append(x[b, start:end].mean(axis=0))
    out.append(np.concatenate(parts))
  return np.stack(out)


def padded(x, total, seed=1):
  """x (B, T, ...) padded to `total` frames with garbage, and its mask."""
  b, t = x.shape[:2]
  garbage = 100 * np.random.default_rng(seed).normal(
      size=(b, total - t) + x.shape[2:])
  mask = np.zeros((b, total), bool)
  mask[:, :t] = True
  return np.concatenate([x, garbage.astype(x.dtype)], axis=1), mask


# ------------------------------------------------------------------- DTP


# (name, dilation, kernel width) of each branch.
@pytest.mark.parametrize("kwargs,branches,identity", [
    ({}, [("branch_r1", 1, 3), ("branch_r2", 2, 3), ("branch_r4", 4, 3)],
     False),
    # Same receptive fields without dilation: widths 2r + 1 = 3, 5, 9.
    ({"dilated": False},
     [("branch_k3", 1, 3), ("branch_k5", 1, 5), ("branch_k9", 1, 9)], False),
    ({"rates": (1, 2, 3), "identity_branch": True},
     [("branch_r1", 1, 3), ("branch_r2", 2, 3), ("branch_r3", 3, 3)], True),
])
def test_dtp_matches_eq_5_6(kwargs, branches, identity):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 7, 4)).astype(np.float32)
  module = gltr.DTP(**kwargs)
  variables = common.random_variables(module, x)
  params = variables["params"]
  assert set(params) == {name for name, _, _ in branches}
  for name, _, width in branches:
    assert params[name]["kernel"].shape == (width, 4, 4)
    assert "bias" not in params[name]
  branches = [(name, r) for name, r, _ in branches]
  apply = jax.jit(lambda v, x, m=None: module.apply(v, x, m)[0])
  got = apply(variables, jnp.asarray(x))
  want = np_dtp(x, params, branches, identity)
  assert got.shape == (2, 7, 4 * (len(branches) + identity))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  if identity:
    np.testing.assert_array_equal(got[..., :4], x)

  # Padded frames (garbage, mask False) leave the real frames unchanged.
  xp, mask = padded(x, 11)
  got_p = apply(variables, jnp.asarray(xp), jnp.asarray(mask))
  np.testing.assert_allclose(got_p[:, :7], got, rtol=1e-5, atol=1e-5)

  # Wherever the mask puts the padding (first, in the middle): each real
  # frame's output is that of the unpadded tracklet.
  rng = np.random.default_rng(5)
  positions = [np.sort(rng.choice(11, 7, replace=False)) for _ in range(2)]
  xs = 100 * rng.normal(size=(2, 11, 4)).astype(np.float32)
  mask = np.zeros((2, 11), bool)
  for b, pos in enumerate(positions):
    xs[b, pos] = x[b]
    mask[b, pos] = True
  got_s = apply(variables, jnp.asarray(xs), jnp.asarray(mask))
  for b, pos in enumerate(positions):
    np.testing.assert_allclose(got_s[b, pos], got[b], rtol=1e-5, atol=1e-5)


def test_dtp_default_rates_are_powers_of_two():
  assert gltr.default_rates(3) == (1, 2, 4)
  assert gltr.default_rates(4) == (1, 2, 4, 8)


# ------------------------------------------------------------------- TSA


def test_tsa_starts_as_identity():
  x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
  module = gltr.TSA()
  init = jax.jit(functools.partial(module.init_with_output, train=False))
  (out, extra), variables = init(jax.random.key(0), jnp.asarray(x))
  attn = extra["attention"]
  p = variables["params"]
  assert set(p) == {"conv_b", "bn_b", "conv_c", "bn_c", "conv_f", "conv_w"}
  assert p["conv_b"]["kernel"].shape == (8, 4)  # N d / alpha, alpha = 2.
  assert p["conv_w"]["kernel"].shape == (4, 8)
  assert not np.any(p["conv_w"]["kernel"]) and not np.any(p["conv_w"]["bias"])
  np.testing.assert_array_equal(out, x)  # W = 0: F'' = F'.
  np.testing.assert_allclose(attn.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("normalization", ["softmax", "none"])
def test_tsa_matches_eq_7(normalization):
  x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
  module = gltr.TSA(normalization=normalization)
  # Random everything, including W != 0 and the BN running statistics.
  variables = common.random_variables(module, x, train=False, seed=3)
  apply = jax.jit(lambda v, x, m=None: (lambda o: (o[0], o[1]["attention"]))(
      module.apply(v, x, m, train=False)))
  out, attn = apply(variables, jnp.asarray(x))
  want_out, want_attn = np_tsa(x, variables, normalization)
  assert attn.shape == (2, 5, 5) and attn.dtype == jnp.float32
  np.testing.assert_allclose(attn, want_attn, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out, want_out, rtol=1e-4, atol=1e-4)
  assert np.abs(out - x).max() > 1e-2  # Non-zero W does change F'.

  # Masked: padded frames are invisible to the real ones.
  xp, mask = padded(x, 8)
  out_p, attn_p = apply(variables, jnp.asarray(xp), jnp.asarray(mask))
  np.testing.assert_allclose(out_p[:, :5], out, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(attn_p[:, :5, :5], attn, rtol=1e-4, atol=1e-5)
  assert not np.any(attn_p[:, 5:, :]) and not np.any(attn_p[:, :, 5:])


def test_tsa_training_batch_stats_ignore_padding():
  x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
  module = gltr.TSA()
  variables = common.random_variables(module, x, train=False, seed=3)
  apply = jax.jit(functools.partial(module.apply, train=True,
                                    mutable=["batch_stats"]))
  (out, _), stats = apply(variables, jnp.asarray(x))
  xp, mask = padded(x, 7)
  (out_p, _), stats_p = apply(variables, jnp.asarray(xp), jnp.asarray(mask))
  np.testing.assert_allclose(out_p[:, :5], out, rtol=1e-4, atol=1e-4)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4,
                                 atol=1e-5), stats_p, stats)


# ------------------------------------------------------------------- TPP


def test_temporal_pyramid_pool():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 9, 3)).astype(np.float32)
  lengths = [9, 6, 3, 1]
  mask = np.arange(9)[None, :] < np.array(lengths)[:, None]
  x_nan = np.where(mask[..., None], x, np.nan)  # Padding is never read.
  tpp = jax.jit(temporal.temporal_pyramid_pool, static_argnums=2)
  got = tpp(jnp.asarray(x_nan), jnp.asarray(mask), (1, 2, 4))
  assert got.shape == (4, 3 * 7)
  np.testing.assert_allclose(got, np_tpp(x, lengths, (1, 2, 4)), rtol=1e-5,
                             atol=1e-6)


# ----------------------------------------------------------------- model

TINY = dict(arch="resnet18", width=4, frame_dim=8)
CLIPS = {"clips": jax.ShapeDtypeStruct((2, 4, 32, 16, 3), jnp.float32)}


@pytest.mark.parametrize("temporal,dim,aux_keys,modules", [
    ("gltr", 24, {"dtp", "tsa", "attention", "frame_weights"}, {"dtp", "tsa"}),
    ("dtp", 24, {"dtp"}, {"dtp"}),
    ("tsa", 8, {"tsa", "attention", "frame_weights"}, {"tsa"}),
    ("avg", 8, set(), set()),
    ("pyramid_nodilation", 24, {"pyramid"}, {"pyramid"}),
    ("tpp", 56, set(), set()),
])
def test_variants_shapes_and_aux(temporal, dim, aux_keys, modules):
  model = gltr.Model(num_classes=5, temporal=temporal, **TINY)
  (emb, aux), variables = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x, train=False),
      CLIPS)
  assert emb.shape == (2, dim) and emb.dtype == jnp.float32
  assert set(aux) == {"features", "logits", "frame_features"} | aux_keys
  assert aux["features"].shape == (2, dim)
  assert aux["logits"].shape == (2, 5)
  assert aux["frame_features"].shape == (2, 4, 8)
  for key in aux_keys - {"attention", "frame_weights"}:
    assert aux[key].shape == (2, 4, dim)
  if "attention" in aux_keys:
    assert aux["attention"].shape == (2, 4, 4)
    assert aux["frame_weights"].shape == (2, 4)
  assert all(v.dtype == jnp.float32 for v in aux.values())
  assert set(variables["params"]) == {"backbone", "reduction", "head"} | modules
  if temporal == "gltr":
    assert set(variables["params"]["dtp"]) == {"branch_r1", "branch_r2",
                                               "branch_r4"}
    assert variables["params"]["tsa"]["conv_b"]["kernel"].shape == (24, 12)


def test_public_code_variant_and_no_classifier():
  model = gltr.Model(num_classes=0, rates=(1, 2, 3), identity_branch=True,
                     neck_feat="before", **TINY)
  (emb, aux), variables = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x, train=False),
      CLIPS)
  assert emb.shape == (2, 32) and "logits" not in aux
  assert "classifier" not in variables["params"]["head"]
  assert set(variables["params"]["dtp"]) == {"branch_r1", "branch_r2",
                                             "branch_r3"}


def test_bad_temporal_is_a_clear_error():
  model = gltr.Model(temporal="lstm", **TINY)
  with pytest.raises(ValueError, match="unknown temporal='lstm'"):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                   CLIPS)


def test_stage_one_frame_model_matches_stage_two_subtrees():
  frame_model = baseline.Model(num_classes=5, arch="resnet18", width=4,
                               frame_dim=8, reduction_relu=True)
  single = {"clips": jax.ShapeDtypeStruct((2, 1, 32, 16, 3), jnp.float32)}
  stage1 = jax.eval_shape(
      lambda x: frame_model.init(jax.random.key(0), x, train=False), single)
  stage2 = jax.eval_shape(
      lambda x: gltr.Model(num_classes=5, **TINY).init(
          jax.random.key(0), x, train=False), CLIPS)
  for collection in ("params", "batch_stats"):
    for name in ("backbone", "reduction"):
      assert (jax.tree.map(lambda s: (s.shape, s.dtype),
                           stage1[collection][name])
              == jax.tree.map(lambda s: (s.shape, s.dtype),
                              stage2[collection][name])), (collection, name)


def test_padding_does_not_change_the_embedding():
  """A 4-frame tracklet padded to 7 frames: same outputs, eval and train."""
  model = gltr.Model(num_classes=5, **TINY)
  rng = np.random.default_rng(0)
  clips = rng.normal(size=(2, 4, 32, 16, 3)).astype(np.float32)
  variables = common.random_variables(model, {"clips": clips}, train=False)

  @jax.jit
  def run(clips, mask):
    inputs = {"clips": clips, "mask": mask}
    eval_out = model.apply(variables, inputs, train=False)
    train_out, stats = model.apply(variables, inputs, train=True,
                                   mutable=["batch_stats"])
    return eval_out, train_out, stats

  ref = run(jnp.asarray(clips), None)
  clips_p, mask = padded(clips, 7)
  got = run(jnp.asarray(clips_p), jnp.asarray(mask))
  for (emb, aux), (emb_p, aux_p) in ((ref[0], got[0]), (ref[1], got[1])):
    np.testing.assert_allclose(emb_p, emb, rtol=1e-4, atol=1e-4)
    for key in ("features", "logits"):
      np.testing.assert_allclose(aux_p[key], aux[key], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(aux_p["attention"][:, :4, :4],
                               aux["attention"], rtol=1e-4, atol=1e-5)
  # Training BatchNorm statistics are computed over real frames only.
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4,
                                 atol=1e-5), got[2], ref[2])


def test_bfloat16_compute_returns_float32():
  model = gltr.Model(num_classes=5, dtype="bfloat16", **TINY)
  clips = np.random.default_rng(0).normal(size=(2, 4, 32, 16, 3))
  mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
  variables = common.random_variables(
      model, {"clips": clips.astype(np.float32)}, train=False)
  emb, aux = jax.jit(functools.partial(model.apply, train=False))(
      variables, {"clips": jnp.asarray(clips, jnp.float32),
                  "mask": jnp.asarray(mask)})
  assert emb.dtype == jnp.float32 and emb.shape == (2, 24)
  for key, value in aux.items():
    assert value.dtype == jnp.float32, key
    assert np.all(np.isfinite(value)), key
