"""TRL + ST²N against the spec's unit-testable properties (trl_st2n.md §5).

The sampler vs a NumPy bilinear sampler (identity exact, one-pixel shift,
border / zeros, the central half), its gradients vs finite differences;
ST²N the identity at init and temporally coupled where STN is not; the
BiLSTM's time-reversal symmetry and masks; TRL's residuals, α, T = 1 and
masked means; eq. 16; the whole model's shapes, OSD = ASD with both
Inception copies from one torchvision file, padding invariance in eval and
training, the loss wiring of the two stages; element-wise gradient
clipping; the paper model's parameter count.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vreid_jax import losses as losses_lib
from vreid_jax import optim
from vreid_jax.evaluators import stn_boxes
from vreid_jax.models import common
from vreid_jax.models import recurrent
from vreid_jax.models import spatial_transformer as st
from vreid_jax.models import trl
from vreid_jax.models import weights as weights_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(width=8, trl_hidden=6, loc_features=8, loc_hidden=4,
            loc_dropout=0.0)
CLIPS = (2, 3, 32, 32, 3)
# The whole model's programs compile with XLA's cheap settings (the same
# arithmetic; about half the compile time of this file on a 2-core CPU).
jit = functools.partial(jax.jit, compiler_options={
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True})


@pytest.fixture(autouse=True)
def _full_precision():
  with jax.default_matmul_precision("highest"):
    yield


# ---------------------------------------------------------------- sampler


def np_warp(y, theta, padding, coords="align_corners"):
  """Eq. 6 pixel by pixel: x_s = sˣ x + τˣ on the normalised grid."""
  n, h, w, c = y.shape
  out = np.zeros((n, h, w, c))
  for b in range(n):
    sx, sy, tx, ty = theta[b]
    for i in range(h):
      for j in range(w):
        if coords == "align_corners":
          px = (sx * (-1 + 2 * j / (w - 1)) + tx + 1) * (w - 1) / 2
          py = (sy * (-1 + 2 * i / (h - 1)) + ty + 1) * (h - 1) / 2
        else:
          px = (sx * (-1 + 2 * j / (w - 1)) + tx + 1) * w / 2
          py = (sy * (-1 + 2 * i / (h - 1)) + ty + 1) * h / 2
        if padding == "border":
          px, py = min(max(px, 0), w - 1), min(max(py, 0), h - 1)
        x0, y0 = int(np.floor(px)), int(np.floor(py))
        for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
          for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
              out[b, i, j] += wy * wx * y[b, yy, xx]
  return out


def _maps(seed=0, shape=(2, 6, 7, 3)):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_sampler_identity_shift_and_central_half():
  y = _maps()
  n, h, w, _ = y.shape
  identity = np.tile(np.float32(st.IDENTITY), (n, 1))
  for padding in st.PADDINGS:
    np.testing.assert_array_equal(
        st.affine_warp(y, identity, padding=padding), y)
  # One column to the right: x_s = x + 2/(W-1); the last column reads the
  # border (repeated) or zeros.
  shift = np.tile(np.float32([1, 1, 2 / (w - 1), 0]), (n, 1))
  out = np.asarray(st.affine_warp(y, shift, padding="border"))
  np.testing.assert_allclose(out[:, :, :-1], y[:, :, 1:], atol=1e-5)
  np.testing.assert_allclose(out[:, :, -1], y[:, :, -1], atol=1e-5)
  out = np.asarray(st.affine_warp(y, shift, padding="zeros"))
  np.testing.assert_allclose(out[:, :, -1], 0.0, atol=1e-5)
  # One row down.
  down = np.tile(np.float32([1, 1, 0, 2 / (h - 1)]), (n, 1))
  np.testing.assert_allclose(st.affine_warp(y, down)[:, :-1], y[:, 1:],
                             atol=1e-5)
  # The central half, and arbitrary boxes, against the NumPy sampler.
  half = np.tile(np.float32([0.5, 0.5, 0, 0]), (n, 1))
  np.testing.assert_allclose(st.affine_warp(y, half),
                             np_warp(y, half, "border"), atol=1e-5)
  theta = np.float32([[0.7, 1.3, 0.4, -0.35], [1.6, 0.45, -0.8, 0.9]])
  for padding in st.PADDINGS:
    np.testing.assert_allclose(st.affine_warp(y, theta, padding=padding),
                               np_warp(y, theta, padding), atol=1e-5)
  np.testing.assert_allclose(
      st.affine_warp(y, theta, coords="tf_legacy"),
      np_warp(y, theta, "border", coords="tf_legacy"), atol=1e-5)
  # TF's legacy mapping stretches: its identity is not exact.
  assert not np.allclose(st.affine_warp(y, identity, coords="tf_legacy"), y)


def test_sampler_gradients_match_finite_differences():
  y = _maps(1, (1, 5, 6, 2)).astype(np.float64)
  theta = np.array([[0.83, 0.71, 0.13, -0.07]])
  # Away from integer coordinates, where the bilinear map is smooth.
  xs, ys = st.source_coordinates(jnp.asarray(theta, jnp.float32), 5, 6)
  frac = np.concatenate([np.ravel(xs) % 1, np.ravel(ys) % 1])
  assert np.min(np.minimum(frac, 1 - frac)) > 0.02
  weights = np.random.default_rng(3).normal(size=(1, 5, 6, 2))

  @jax.jit
  def loss(y, theta):
    return jnp.sum(weights * st.affine_warp(y, theta, padding="zeros"))

  g_y, g_theta = jax.jit(jax.grad(loss, argnums=(0, 1)))(
      jnp.asarray(y, jnp.float32), jnp.asarray(theta, jnp.float32))
  f = lambda y, t: float(loss(jnp.asarray(y, jnp.float32),
                              jnp.asarray(t, jnp.float32)))
  eps = 1e-3
  for k in range(4):
    d = np.zeros_like(theta)
    d[0, k] = eps
    fd = (f(y, theta + d) - f(y, theta - d)) / (2 * eps)
    np.testing.assert_allclose(g_theta[0, k], fd, rtol=2e-2, atol=2e-3)
  v = np.random.default_rng(4).normal(size=y.shape)
  fd = (f(y + eps * v, theta) - f(y - eps * v, theta)) / (2 * eps)
  np.testing.assert_allclose(np.sum(np.asarray(g_y) * v), fd, rtol=2e-2,
                             atol=2e-3)


# ------------------------------------------------------------ ST²N and STN


@pytest.fixture(scope="module")
def transformers():
  """(module, variables from its own init) for ST²N and STN."""
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2, 4, 3, 3, 6)).astype(np.float32)
  y = rng.normal(size=(2, 4, 5, 5, 2)).astype(np.float32)
  out = {}
  for temporal in (True, False):
    module = st.SpatialTemporalTransformer(features=4, hidden=3,
                                           temporal=temporal)
    variables = jax.jit(functools.partial(module.init, train=False))(
        jax.random.key(0), x, y)
    out[temporal] = (module, variables)
  return x, y, out


def test_transformer_is_the_identity_at_init(transformers):
  x, y, modules = transformers
  for module, variables in modules.values():
    assert not np.any(variables["params"]["fc"]["kernel"])
    warped, theta = jax.jit(functools.partial(module.apply, train=False))(
        variables, x, y)
    np.testing.assert_array_equal(theta, np.broadcast_to(st.IDENTITY,
                                                         (2, 4, 4)))
    np.testing.assert_array_equal(warped, y)
  lstm = modules[True][1]["params"]["bilstm"]["forward"]
  w_hh = np.asarray(lstm["w_hh"])          # (H, 4H), orthogonal rows.
  np.testing.assert_allclose(w_hh @ w_hh.T, np.eye(3), atol=1e-5)
  assert not np.any(lstm["b_hh"])
  np.testing.assert_array_equal(lstm["b_ih"], [0, 0, 0, 1, 1, 1] + [0] * 6)
  assert "bilstm" not in modules[False][1]["params"]


def test_st2n_reads_the_whole_clip_and_stn_one_frame(transformers):
  x, y, modules = transformers
  changed = {}
  for temporal, (module, variables) in modules.items():
    params = jax.tree.map(np.array, variables["params"])
    params["fc"]["kernel"] = np.random.default_rng(6).normal(
        0, 0.5, params["fc"]["kernel"].shape).astype(np.float32)
    v = {**variables, "params": params}
    apply = jax.jit(functools.partial(module.apply, train=False))
    _, theta = apply(v, x, y)
    x2 = x.copy()
    x2[:, 1] += 3.0                                   # Perturb frame 1.
    _, theta2 = apply(v, x2, y)
    changed[temporal] = np.abs(np.asarray(theta2 - theta)).max(
        axis=(0, 2)) > 1e-6
  assert changed[True].all()                          # Every frame's θ.
  np.testing.assert_array_equal(changed[False], [False, True, False, False])


# ------------------------------------------------------------------ BiLSTM


def np_lstm(x, p):
  w_ih, w_hh = np.asarray(p["w_ih"], np.float64), np.asarray(p["w_hh"],
                                                             np.float64)
  b = np.asarray(p["b_ih"], np.float64) + np.asarray(p["b_hh"], np.float64)
  h = c = np.zeros(w_hh.shape[0])
  out = []
  for x_t in x:
    i, f, g, o = np.split(x_t @ w_ih + h @ w_hh + b, 4)
    sig = lambda v: 1 / (1 + np.exp(-v))
    c = sig(f) * c + sig(i) * np.tanh(g)
    h = sig(o) * np.tanh(c)
    out.append(h)
  return np.stack(out)


def test_bilstm_time_reversal_and_masks():
  rng = np.random.default_rng(7)
  x = rng.normal(size=(2, 5, 3)).astype(np.float32)
  layer = recurrent.Bidirectional(features=4)
  variables = common.random_variables(layer, x)
  params = variables["params"]
  swapped = {"params": {"forward": params["backward"],
                        "backward": params["forward"]}}
  run = jax.jit(lambda v, x, m: layer.apply(v, x, m)[0])
  ones = np.ones((2, 5), bool)
  out = np.asarray(run(variables, x, ones))

  def swap_halves(a):
    return np.concatenate([a[..., 4:], a[..., :4]], axis=-1)

  # BiLSTM_{A,B}(rev x) = rev(swap(BiLSTM_{B,A}(x))); equal parameters:
  # BiLSTM(rev x) = rev(swap(BiLSTM(x))).
  rev = np.asarray(run(variables, x[:, ::-1], ones))
  np.testing.assert_allclose(rev, swap_halves(
      np.asarray(run(swapped, x, ones)))[:, ::-1], atol=1e-5)
  same = {"params": {"forward": params["forward"],
                     "backward": params["forward"]}}
  np.testing.assert_allclose(
      run(same, x[:, ::-1], ones),
      swap_halves(np.asarray(run(same, x, ones)))[:, ::-1], atol=1e-5)
  # Each direction is the NumPy LSTM over the real frames only: padded
  # frames (start, middle, end) update neither state, the backward
  # direction starts at the last real frame.
  xp = 40 * rng.normal(size=(2, 8, 3)).astype(np.float32)
  mask = np.zeros((2, 8), bool)
  positions = [np.array([1, 2, 4, 6, 7]), np.array([0, 1, 2, 3, 4])]
  for b, pos in enumerate(positions):
    xp[b, pos], mask[b, pos] = x[b], True
  got = np.asarray(run(variables, xp, mask))
  for b, pos in enumerate(positions):
    np.testing.assert_allclose(got[b, pos], out[b], atol=1e-5)
    np.testing.assert_allclose(out[b, :, :4], np_lstm(x[b], params[
        "forward"]), atol=1e-5)
    np.testing.assert_allclose(out[b, :, 4:], np_lstm(x[b, ::-1], params[
        "backward"])[::-1], atol=1e-5)


# --------------------------------------------------------------------- TRL


@pytest.fixture(scope="module")
def trl_run():
  """TemporalResidual(α) with random weights, jitted (α -> (module, vars,
  run))."""
  f = np.zeros((2, 6, 5), np.float32)
  out = {}
  for alpha in (0.0, 0.5, 1.0):
    module = trl.TemporalResidual(hidden=3, alpha=alpha)
    variables = common.random_variables(module, f, seed=8)
    run = jax.jit(lambda v, f, m, module=module: module.apply(v, f, m))
    out[alpha] = (module, variables, run)
  return out


def test_trl_residuals_alpha_and_masked_means(trl_run):
  rng = np.random.default_rng(9)
  f = rng.normal(size=(2, 6, 5)).astype(np.float32)
  mask = np.ones((2, 6), bool)
  mask[0, 4:] = False
  mask[1, [0, 3]] = False
  _, v_half, run = trl_run[0.5]
  g, aux = run(v_half, f, mask)
  # Σ_t r_t = 0 over real frames, r = ḡ¹ - g_t¹ there and 0 elsewhere.
  np.testing.assert_allclose(np.sum(aux["residual"], axis=1), 0.0,
                             atol=1e-6)
  np.testing.assert_allclose(
      np.asarray(aux["residual"])[mask],
      (np.asarray(aux["generic"])[:, None] - np.asarray(aux["lstm1"]))[mask],
      atol=1e-6)
  assert not np.any(np.asarray(aux["residual"])[~mask])
  np.testing.assert_allclose(g, 0.5 * aux["generic"] + 0.5 * aux["specific"],
                             atol=1e-6)
  # The same tracklets unpadded give the same features (masked means).
  for b in range(2):
    g_b, aux_b = run(v_half, f[b:b + 1, mask[b]], None)
    np.testing.assert_allclose(g_b[0], g[b], atol=1e-5)
    np.testing.assert_allclose(aux_b["generic"][0], aux["generic"][b],
                               atol=1e-5)
  # α = 1: ḡ¹ (no BiLSTM2); α = 0: ḡ².
  _, v_one, run_one = trl_run[1.0]
  assert "bilstm2" not in v_one["params"]
  g1, aux1 = run_one(v_one, f, mask)
  np.testing.assert_array_equal(g1, aux1["generic"])
  _, v_zero, run_zero = trl_run[0.0]
  g0, aux0 = run_zero(v_zero, f, mask)
  np.testing.assert_array_equal(g0, aux0["specific"])


def test_trl_with_one_frame_has_no_residual(trl_run):
  _, variables, run = trl_run[0.0]
  rng = np.random.default_rng(10)
  outs = [run(variables, rng.normal(size=(1, 1, 5)).astype(np.float32), None)
          for _ in range(2)]
  for _, aux in outs:
    assert not np.any(aux["residual"])
  # ḡ² is then a constant of the parameters, whatever the input.
  np.testing.assert_allclose(outs[0][0], outs[1][0], atol=1e-7)
  assert not np.allclose(outs[0][1]["generic"], outs[1][1]["generic"])


def test_eq16_descriptor():
  rng = np.random.default_rng(11)
  g_o, g_a = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))
  g = np.asarray(trl.fuse(g_o, g_a, 0.5))
  np.testing.assert_allclose(np.linalg.norm(g[:, :8], axis=1), 0.5,
                             rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(g[:, 8:], axis=1), 0.5,
                             rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(g, axis=1), np.sqrt(0.5),
                             rtol=1e-6)
  np.testing.assert_allclose(trl.fuse(3.7 * g_o, g_a, 0.5), g, rtol=1e-6)
  g = np.asarray(trl.fuse(g_o, g_a, 0.3))
  np.testing.assert_allclose(np.linalg.norm(g[:, 8:], axis=1), 0.7,
                             rtol=1e-6)


# ---------------------------------------------------------- the whole model


@pytest.fixture(scope="module")
def full_model():
  """The full model (stage-1 heads too), random variables with an
  off-identity θ, and one jitted eval + train forward."""
  model = trl.Model(num_classes=5, variant="full", frame_classifiers=True,
                    **TINY)
  clips = np.random.default_rng(12).uniform(-1, 1, CLIPS).astype(np.float32)
  variables = common.random_variables(model, {"clips": clips}, train=False)
  fc = variables["params"]["st2n"]["fc"]
  fc["kernel"] = 0.3 * fc["kernel"]
  fc["bias"] = jnp.asarray(st.IDENTITY) + fc["bias"]

  @jit
  def run(variables, clips, mask):
    inputs = {"clips": clips, "mask": mask}
    eval_out = model.apply(variables, inputs, train=False)
    train_out, stats = model.apply(variables, inputs, train=True,
                                   mutable=["batch_stats"])
    return eval_out, train_out, stats

  # The tests' precision (module fixtures are set up outside
  # `_full_precision`; the precision is part of the compiled signature).
  with jax.default_matmul_precision("highest"):
    ref = run(variables, clips, np.ones(CLIPS[:2], bool))
  return model, variables, clips, run, ref


def test_full_model_outputs(full_model):
  _, _, _, _, ((emb, aux), _, _) = full_model
  assert emb.shape == (2, 2 * 12)              # 2 x 2H, H = 6.
  assert aux["frame_features"].shape == (2, 3, 128)
  assert aux["stn_theta"].shape == (2, 3, 4)
  assert aux["logits"].shape == aux["logits_align"].shape == (2, 5)
  assert aux["frame_logits"].shape == aux["frame_logits_align"].shape == (
      2, 3, 5)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), np.sqrt(0.5),
                             rtol=1e-5)


def test_one_torchvision_file_makes_both_streams_equal(full_model):
  """Both Inception copies from one GoogLeNet file and the identity θ:
  ASD = OSD exactly (spec §4.13)."""
  from test_googlenet import random_torchvision_state_dict  # pylint: disable=g-import-not-at-top
  _, variables, clips, run, _ = full_model
  loaded = trl.load(variables, random_torchvision_state_dict(width=8), {})
  params = jax.tree.map(np.array, loaded["params"])
  params["st2n"]["fc"]["kernel"][:] = 0.0
  params["st2n"]["fc"]["bias"][:] = st.IDENTITY
  params = jax.tree.map(jnp.asarray, params)    # The compiled signature.
  (_, aux), _, _ = run({**loaded, "params": params}, clips,
                       np.ones(CLIPS[:2], bool))
  np.testing.assert_array_equal(aux["stn_theta"],
                                np.broadcast_to(st.IDENTITY, (2, 3, 4)))
  np.testing.assert_array_equal(aux["frame_features_align"],
                                aux["frame_features"])
  flat = weights_lib.flatten(params)
  np.testing.assert_array_equal(
      flat["main/incep3/inception5b/branch1/conv/kernel"],
      flat["align/incep3/inception5b/branch1/conv/kernel"])


def test_padded_frames_change_nothing_in_eval_and_training(full_model):
  _, variables, clips, run, ref = full_model
  rng = np.random.default_rng(13)
  garbage = 30 * rng.normal(size=(2, 2) + CLIPS[2:]).astype(np.float32)
  padded = np.concatenate([clips, garbage], axis=1)        # End ...
  padded[1] = np.concatenate([garbage[1, :1], clips[1, :2], garbage[1, 1:],
                              clips[1, 2:]])               # ... and inside.
  mask = np.ones((2, 5), bool)
  mask[0, 3:] = False
  mask[1, [0, 3]] = False
  got = run(variables, padded, mask)

  def close(actual, desired):
    # Masked BatchNorm statistics sum in another order; a padded frame
    # leaking in would move these by O(1) (the garbage is 30x the clips).
    desired = np.asarray(desired)
    np.testing.assert_allclose(actual, desired, rtol=1e-3,
                               atol=2e-4 * max(1.0, np.abs(desired).max()))

  for (emb, aux), (emb_p, aux_p) in ((ref[0], got[0]), (ref[1], got[1])):
    close(emb_p, emb)
    for key in ("logits", "logits_align", "features_main", "features_align"):
      close(aux_p[key], aux[key])
    for b in range(2):
      for key in ("stn_theta", "frame_features_align", "frame_logits"):
        close(aux_p[key][b, mask[b]], aux[key][b])
  jax.tree.map(close, got[2], ref[2])


def test_stage_losses_reach_the_right_parameters(full_model):
  """Stage 1's loss (frame CE on OSD and ASD) does not depend on TRL or the
  clip classifiers (so their gradients are 0) and depends on everything
  else; stage 2's loss depends on every parameter but the frame
  classifiers. Each module (two levels deep) is moved by noise in turn,
  through the fixture's compiled forward; that gradients flow through θ
  is `test_st2n_gradients_reach_the_localisation_network`."""
  _, variables, clips, run, _ = full_model
  mask = np.ones(CLIPS[:2], bool)
  labels = jnp.asarray([1, 3])
  ce = losses_lib.softmax_cross_entropy

  def losses(params):
    (_, aux), _, _ = run({**variables, "params": params}, clips, mask)
    return (float(ce(aux["frame_logits"], labels)
                  + ce(aux["frame_logits_align"], labels)),
            float(ce(aux["logits"], labels) + ce(aux["logits_align"],
                                                  labels)))

  flat = weights_lib.flatten(variables["params"])
  base = losses(variables["params"])
  groups = sorted({"/".join(k.split("/")[:2]) for k in flat})
  assert len(groups) > 20
  rng = np.random.default_rng(14)
  for group in groups:
    moved = {k: v + 0.5 * rng.normal(size=v.shape).astype(np.float32)
             if f"{k}/".startswith(f"{group}/") else v
             for k, v in flat.items()}
    stage1, stage2 = losses(jax.tree.map(jnp.asarray,
                                         weights_lib.unflatten(moved)))
    assert (stage1 != base[0]) != group.startswith(("trl_", "classifier_")), (
        group)
    assert (stage2 != base[1]) != group.startswith("frame_classifier_"), (
        group)


def test_st2n_gradients_reach_the_localisation_network(transformers):
  """A loss on the warped maps has a gradient on every ST²N parameter and
  on the localisation input (the main stream's Incep-2: no stop-gradient),
  through θ and the sampler."""
  x, y, modules = transformers
  module, variables = modules[True]
  params = jax.tree.map(np.array, variables["params"])
  params["fc"]["kernel"] = np.random.default_rng(15).normal(
      0, 0.3, params["fc"]["kernel"].shape).astype(np.float32)
  weights = np.random.default_rng(16).normal(size=y.shape)

  def loss(params, x):
    warped, _ = module.apply({**variables, "params": params}, x, y,
                             train=False)
    return jnp.sum(weights * warped)

  g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
  for path, g in weights_lib.flatten(g_params).items():
    assert np.any(np.asarray(g)), path
  assert np.all(np.any(np.asarray(g_x) != 0, axis=(2, 3, 4)))


# ------------------------------------------------------ recipe and counts


def test_gradients_are_clipped_element_wise():
  from vreid_jax import config_utils  # pylint: disable=g-import-not-at-top
  config = config_utils.load_config(
      os.path.join(ROOT, "configs", "trl_mars.py:runlocal"))
  assert config.optimizer.grad_clip_value == 5.0
  cfg = config.optimizer.to_dict() | {"name": "sgd"}
  for k in ("b1", "b2", "eps"):
    cfg.pop(k)
  tx = optim.make_optimizer(cfg, optax.constant_schedule(1.0))
  grads = {"a": jnp.asarray([-40.0, -2.0, 0.5, 7.0]),
           "b": {"c": jnp.full((2, 2), 1e3)}}
  params = jax.tree.map(jnp.zeros_like, grads)
  updates, _ = tx.update(grads, tx.init(params), params)
  clipped = jax.tree.map(lambda u: -u, updates)
  assert max(float(jnp.abs(u).max()) for u in jax.tree.leaves(clipped)) <= 5
  np.testing.assert_array_equal(clipped["a"], [-5.0, -2.0, 0.5, 5.0])


def test_rows_and_the_paper_model_size():
  x = jax.ShapeDtypeStruct((2, 10, 224, 224, 3), jnp.float32)

  def count(module, *args):
    shapes = jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a,
                                                   train=False), *args)
    return common.count_params(shapes["params"])

  f = jax.ShapeDtypeStruct((2, 10, 1024), jnp.float32)
  # BiLSTM 1024 -> 2 x 512, PyTorch-style cells with two bias vectors.
  assert count(trl.TemporalResidual(alpha=1.0), f) == 6_299_648
  assert count(trl.TemporalResidual(alpha=1.0, bidirectional=False),
               f) == 3_149_824
  assert count(trl.TemporalResidual(alpha=0.5), f) == 12_599_296
  maps = (jax.ShapeDtypeStruct((2, 10, 14, 14, 832), jnp.float32),
          jax.ShapeDtypeStruct((2, 10, 56, 56, 192), jnp.float32))
  assert count(st.SpatialTemporalTransformer(), *maps) == 2_269_188
  assert count(st.SpatialTemporalTransformer(temporal=False),
               *maps) == 2_269_188 - 1_576_960
  # Spec §5 shapes for (2, 10, 224, 224, 3).
  model = trl.Model(625, variant="full")
  shapes = jax.eval_shape(lambda x: model.init(
      jax.random.key(0), {"clips": x}, train=False), x)
  sizes = {k: common.count_params(v) for k, v in shapes["params"].items()}
  assert sizes == {"convs": 124_736, "main": 5_475_168, "align": 5_475_168,
                   "st2n": 2_269_188, "trl_main": 12_599_296,
                   "trl_align": 12_599_296, "classifier_main": 640_625,
                   "classifier_align": 640_625}
  (emb, aux), inter = jax.eval_shape(lambda v, x: model.apply(
      v, {"clips": x}, train=False, capture_intermediates=True,
      mutable=["intermediates"]), shapes, x)
  inter = inter["intermediates"]
  assert inter["convs"]["__call__"][0].shape == (20, 56, 56, 192)
  assert inter["main"]["__call__"][0]["incep2"].shape == (20, 14, 14, 832)
  assert inter["st2n"]["bilstm"]["__call__"][0][0].shape == (2, 10, 512)
  assert inter["st2n"]["__call__"][0][0].shape == (2, 10, 56, 56, 192)
  assert inter["trl_main"]["bilstm1"]["__call__"][0][0].shape == (2, 10,
                                                                   1024)
  assert aux["stn_theta"].shape == (2, 10, 4)
  assert aux["frame_features_align"].shape == (2, 10, 1024)
  assert aux["features_main"].shape == aux["features_align"].shape == (2,
                                                                       1024)
  assert emb.shape == (2, 2048)
  with pytest.raises(ValueError, match="variant must be one of"):
    trl.Model(variant="trl_st3n")
  assert trl.Model(variant="full", alpha=0.2).alpha == 0.2


def test_stn_box_geometry_and_statistics():
  boxes = stn_boxes.box_corners(np.array([[1, 1, 0, 0], [0.5, 0.25, 0.5,
                                                         -0.5]]), 100, 40)
  np.testing.assert_allclose(boxes, [[0, 0, 40, 100], [20, 12.5, 40, 37.5]])
  stats = stn_boxes.theta_statistics([
      np.array([[1, 1, 0, 0], [0.8, 1, 0.2, 0]]), np.array([[0.6, 1, 0, 0]])])
  assert stats["num_frames"] == 3
  np.testing.assert_allclose(stats["scale_x"], 0.8)
  np.testing.assert_allclose(stats["temporal_change"], 0.1)


class _Round:
  """A stand-in EvalRound returning hand-made clip aux."""

  def __init__(self, clips):
    self.clips = clips

  def clip_aux(self, data, role, plan):
    del data, plan
    return self.clips[role]


def test_stn_boxes_evaluator_reads_theta_of_every_test_clip():
  context = type("Ctx", (), {})()
  context.evaluators = {"reid": type("Src", (), {"data": None,
                                                 "plan": None})()}
  context.embedder = type("Emb", (), {"spec": None})()
  cfg = type("Cfg", (), dict(every_steps=0, source="reid", num_tracklets=1,
                             max_frames=4))()
  ev = stn_boxes.Evaluator("stn_boxes", cfg, context=context)
  theta = np.array([[1, 1, 0, 0], [0.8, 1, 0.2, 0]])
  round_ = _Round({"query": [[(np.arange(2), {"stn_theta": theta})]],
                   "gallery": [[(np.arange(1),
                                 {"stn_theta": np.array([[0.6, 1, 0, 0]])})]]})
  got = ev.run(round_)       # Not final: no pictures.
  assert got["num_frames"] == 3
  np.testing.assert_allclose(got["scale_x"], 0.8)
  no_theta = _Round({"query": [[(np.arange(2), {})]], "gallery": [[]]})
  assert "no spatial transformer" in ev.run(no_theta)["skipped"]
