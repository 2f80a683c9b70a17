"""STAR against the spec's unit-testable properties (star.md Sec. 5).

Each layer against an independent NumPy implementation of its equation:
the LSTA channel gate (eq. 4) and CBAM's, the dilated spatial gate (eq. 5),
the ConvLSTM (one step, and a masked run), GSTA (eq. 6-8), the pyramid
ranking regulariser (eq. 9-10). The trunk without gates is exactly the
two-stem `resnet.ResNet` (eq. 2); the whole model at tiny widths: padded
frames inert in eval and training, no flow parameters without flow, the
ImageNet import, the evaluator's numbers.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vreid_jax import losses as losses_lib
from vreid_jax.evaluators import star_attention
from vreid_jax.models import attention
from vreid_jax.models import common
from vreid_jax.models import recurrent
from vreid_jax.models import resnet
from vreid_jax.models import star

# Programs compile with XLA's cheap settings (same arithmetic).
jit = functools.partial(jax.jit, compiler_options={
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True})
TINY = dict(arch="resnet18", width=4, reduction=4, gsta_hidden=5,
            attention_hidden=3)


@pytest.fixture(autouse=True)
def _full_precision():
  with jax.default_matmul_precision("highest"):
    yield


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_conv(x, kernel, bias=None, dilation=1):
  """'same' 2D convolution (N, H, W, I) * (k, k, I, O), dilated, in NumPy."""
  n, h, w, _ = x.shape
  k = kernel.shape[0]
  p = dilation * (k - 1) // 2
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  out = np.zeros((n, h, w, kernel.shape[-1]))
  for a in range(k):
    for b in range(k):
      patch = xp[:, a * dilation:a * dilation + h, b * dilation:b * dilation + w]
      out += patch @ kernel[a, b]
  return out if bias is None else out + bias


# ------------------------------------------------------------------ gates


def np_channel_gate(x, p, form):
  w3, b3 = p["fc1"]["kernel"], p["fc1"]["bias"]
  w4, b4 = p["fc2"]["kernel"], p["fc2"]["bias"]
  avg, mx = x.mean(axis=(1, 2)), x.max(axis=(1, 2))
  relu = lambda v: np.maximum(v, 0)
  if form == "lsta":      # eq. 4: W4 once on the summed paths.
    logits = (relu(avg @ w3 + b3) + relu(mx @ w3 + b3)) @ w4 + b4
  else:                   # CBAM: the MLP on each path.
    logits = (relu(avg @ w3 + b3) @ w4 + b4) + (relu(mx @ w3 + b3) @ w4 + b4)
  return x * sigmoid(logits)[:, None, None, :]


def _tree(v):
  return jax.tree_util.tree_map(np.asarray, v)


def test_channel_gate_eq4_and_cbam():
  x = np.random.default_rng(0).normal(size=(2, 3, 2, 8))
  gate = attention.ChannelGate(reduction=4, form="lsta")
  v = common.random_variables(gate, jnp.asarray(x), seed=1)
  p = _tree(v["params"])
  y, w = gate.apply(v, jnp.asarray(x))
  np.testing.assert_allclose(y, np_channel_gate(x, p, "lsta"), atol=1e-5)
  assert w.shape == (2, 8)
  # CBAM with b4 / 2 is STAR's gate with b4 (spec 5.4).
  half = jax.tree_util.tree_map(lambda a: a, p)
  half["fc2"]["bias"] = p["fc2"]["bias"] / 2
  y_cbam, _ = attention.ChannelGate(reduction=4, form="cbam").apply(
      {"params": half}, jnp.asarray(x))
  np.testing.assert_allclose(y_cbam, y, atol=1e-5)
  np.testing.assert_allclose(
      attention.ChannelGate(reduction=4, form="cbam").apply(
          v, jnp.asarray(x))[0], np_channel_gate(x, p, "cbam"), atol=1e-5)
  # W4 = 0, b4 = 0: a factor of exactly 0.5.
  p["fc2"] = {k: np.zeros_like(a) for k, a in p["fc2"].items()}
  np.testing.assert_allclose(gate.apply({"params": p}, jnp.asarray(x))[0],
                             0.5 * x, atol=1e-6)


def test_spatial_gate_eq5_dilations_and_cbam():
  x = np.random.default_rng(2).normal(size=(2, 7, 5, 6))
  gate = attention.SpatialGate(form="lsta")
  v = common.random_variables(gate, jnp.asarray(x), seed=3)
  p = _tree(v["params"])
  y, w = gate.apply(v, jnp.asarray(x))
  ms = np.stack([x.mean(-1), x.max(-1)], axis=-1)               # M_s.
  cat = np.concatenate([
      np.maximum(np_conv(ms, p[f"dilated_{i}"]["kernel"],
                         p[f"dilated_{i}"]["bias"], dilation=d), 0)
      for i, d in enumerate((1, 2, 3))], axis=-1)
  want_w = sigmoid(np_conv(cat, p["bottleneck"]["kernel"],
                           p["bottleneck"]["bias"]))[..., 0]
  np.testing.assert_allclose(w, want_w, atol=1e-5)
  np.testing.assert_allclose(y, x * want_w[..., None], atol=1e-5)
  assert w.shape == x.shape[:3]
  # A dilation-d branch on an impulse touches only offsets in {0, +-d}^2.
  branch = p["dilated_2"]["kernel"]
  impulse = np.zeros((1, 9, 9, 2))
  impulse[0, 4, 4, 0] = 1.0
  touched = np.abs(np_conv(impulse, branch, dilation=3))[0, ..., 0] > 0
  conv = jax.lax.conv_general_dilated(
      jnp.asarray(impulse), jnp.asarray(branch), (1, 1), ((3, 3), (3, 3)),
      rhs_dilation=(3, 3), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert np.array_equal(np.abs(np.asarray(conv))[0, ..., 0] > 0, touched)
  rows, cols = np.nonzero(touched)
  assert set(rows - 4) <= {-3, 0, 3} and set(cols - 4) <= {-3, 0, 3}
  # CBAM's: [max, mean] -> 7x7 conv (no bias) -> BN (running stats).
  cbam = attention.SpatialGate(form="cbam", kernel_size=7)
  vc = common.random_variables(cbam, jnp.asarray(x), seed=4)
  pc, bs = _tree(vc["params"]), _tree(vc["batch_stats"])
  z = np_conv(np.stack([x.max(-1), x.mean(-1)], -1), pc["conv"]["kernel"])
  z = ((z - bs["bn"]["mean"]) / np.sqrt(bs["bn"]["var"] + 1e-5)
       * pc["bn"]["scale"] + pc["bn"]["bias"])
  np.testing.assert_allclose(cbam.apply(vc, jnp.asarray(x))[1],
                             sigmoid(z[..., 0]), atol=1e-5)


# --------------------------------------------------------------- ConvLSTM


def np_convlstm(x, mask, p, forget_bias=1.0):
  """Shi et al.'s ConvLSTM without peepholes, frame by frame, masked."""
  b, t, h, w, _ = x.shape
  hid = p["conv_h"]["kernel"].shape[-1] // 4
  c = np.zeros((b, h, w, hid))
  hs = np.zeros((b, h, w, hid))
  out = []
  for i in range(t):
    gates = (np_conv(x[:, i], p["conv_x"]["kernel"], p["conv_x"]["bias"])
             + np_conv(hs, p["conv_h"]["kernel"], p["conv_h"]["bias"]))
    gi, gg, gf, go = np.split(gates, 4, axis=-1)
    c_new = sigmoid(gf + forget_bias) * c + sigmoid(gi) * np.tanh(gg)
    h_new = sigmoid(go) * np.tanh(c_new)
    keep = mask[:, i, None, None, None]
    c, hs = np.where(keep, c_new, c), np.where(keep, h_new, hs)
    out.append(hs)
  return np.stack(out, axis=1)


def test_convlstm_one_step_is_a_gated_conv_and_masks_freeze_the_state():
  rng = np.random.default_rng(5)
  layer = recurrent.ConvLSTM(features=3, kernel_size=3)
  x = rng.normal(size=(2, 4, 4, 3, 2))
  v = common.random_variables(layer, jnp.asarray(x), seed=6)
  p = _tree(v["params"])
  # L = 1, zero carry: h = sigmoid(o) tanh(sigmoid(i) tanh(g)).
  h1, _ = layer.apply(v, jnp.asarray(x[:, :1]))
  gates = np_conv(x[:, 0], p["conv_x"]["kernel"], p["conv_x"]["bias"]
                  ) + p["conv_h"]["bias"]
  gi, gg, _, go = np.split(gates, 4, axis=-1)
  np.testing.assert_allclose(
      h1[:, 0], sigmoid(go) * np.tanh(sigmoid(gi) * np.tanh(gg)), atol=1e-5)
  # The whole masked run; padded frames (middle, end) keep the state.
  mask = np.array([[True, False, True, True], [True, True, True, False]])
  hs, _ = layer.apply(v, jnp.asarray(x), jnp.asarray(mask))
  np.testing.assert_allclose(hs, np_convlstm(x, mask, p), atol=1e-5)
  junk = x.copy()
  junk[~mask] = 1e3
  hs_junk, _ = layer.apply(v, jnp.asarray(junk), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(hs_junk)[mask], np.asarray(hs)[mask],
                             atol=1e-6)
  # Temporal order matters.
  rev, _ = layer.apply(v, jnp.asarray(x[:, ::-1]))
  assert not np.allclose(rev[:, -1], layer.apply(v, jnp.asarray(x))[0][:, -1])


# ------------------------------------------------------------------- GSTA


def test_gsta_eq6_to_8_and_its_limits():
  rng = np.random.default_rng(7)
  maps = rng.normal(size=(2, 3, 2, 2, 4))
  mask = np.array([[True, True, True], [True, True, False]])
  gsta = star.GSTA(hidden=3, kernel_size=3, attention_hidden=5)
  v = common.random_variables(gsta, jnp.asarray(maps), jnp.asarray(mask),
                              seed=8)
  p = _tree(v["params"])
  out, aux = gsta.apply(v, jnp.asarray(maps), jnp.asarray(mask))
  h = np_convlstm(maps, mask, p["convlstm"]).mean(axis=(2, 3))     # eq. 6.
  s = (np.maximum(h @ p["w7"]["kernel"] + p["w7"]["bias"], 0)
       @ p["w8"]["kernel"] + p["w8"]["bias"])[..., 0]
  s = np.where(mask, s, -np.inf)
  k = np.exp(s - s.max(1, keepdims=True))
  k /= k.sum(1, keepdims=True)                                     # eq. 7.
  mean = np.stack([maps[i][mask[i]].mean(axis=(0, 1, 2)) for i in range(2)])
  want = (np.einsum("bt,btc->bc", k, h) @ p["w9"]["kernel"] + p["w9"]["bias"]
          + mean)                                                  # eq. 8.
  np.testing.assert_allclose(aux["frame_weights"], k, atol=1e-5)
  np.testing.assert_allclose(out, want, atol=1e-5)
  # W8 = 0, b8 = 0: K uniform over real frames; W9 = 0: V = the mean.
  p["w8"] = {n: np.zeros_like(a) for n, a in p["w8"].items()}
  p["w9"] = {n: np.zeros_like(a) for n, a in p["w9"].items()}
  out0, aux0 = gsta.apply({"params": p}, jnp.asarray(maps), jnp.asarray(mask))
  np.testing.assert_allclose(aux0["frame_weights"],
                             mask / mask.sum(1, keepdims=True), atol=1e-6)
  np.testing.assert_allclose(out0, mean, atol=1e-5)
  # zero_init_w9 starts there.
  vz = jax.jit(functools.partial(
      star.GSTA(hidden=3, attention_hidden=5, zero_init_w9=True).init,
      jax.random.key(0)))(jnp.asarray(maps), jnp.asarray(mask))
  assert not np.any(np.asarray(vz["params"]["w9"]["kernel"]))


# ----------------------------------------------------------------- R_pr


def np_pyramid(maps, mask, labels, margin, levels):
  """Eq. 9-10 literally: per level and stripe, avg_t + max_t of the
  stripe's average-pooled frames, batch-hard hinge per anchor."""
  b, _, h, _, _ = maps.shape
  total = 0.0
  for level in range(levels):
    g = 2 ** level
    per_level = np.zeros(b)
    for z in range(g):
      lo, hi = int(np.floor(z * h / g)), int(np.ceil((z + 1) * h / g))
      d = []
      for i in range(b):
        frames = maps[i][mask[i]][:, lo:hi].mean(axis=(1, 2))
        d.append(frames.mean(axis=0) + frames.max(axis=0))
      d = np.asarray(d)
      dist = np.sqrt(((d[:, None] - d[None]) ** 2).sum(-1))
      for a in range(b):
        pos = max(dist[a, j] for j in range(b)
                  if labels[j] == labels[a] and j != a)
        neg = min(dist[a, j] for j in range(b) if labels[j] != labels[a])
        per_level[a] += max(0.0, margin + pos - neg) / g
    total += per_level.sum()
  return total / (b * levels)


def test_pyramid_ranking_against_numpy_on_a_hand_made_batch():
  rng = np.random.default_rng(9)
  maps = rng.normal(size=(6, 3, 4, 2, 5)).astype(np.float32)
  mask = np.ones((6, 3), bool)
  mask[1, 2] = mask[4, 1] = False
  labels = np.array([0, 0, 1, 1, 2, 2])
  got = losses_lib.pyramid_ranking(jnp.asarray(maps), jnp.asarray(mask),
                                   jnp.asarray(labels), margin=0.4, levels=3)
  want = np_pyramid(maps, mask, labels, 0.4, 3)
  assert want > 0
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Padded frames are never read; frame order inside a clip is irrelevant.
  junk = maps.copy()
  junk[~mask] = 1e4
  np.testing.assert_allclose(losses_lib.pyramid_ranking(
      jnp.asarray(junk), jnp.asarray(mask), jnp.asarray(labels)), got,
                             rtol=1e-5)
  perm = maps[:, [2, 0, 1]]
  np.testing.assert_allclose(losses_lib.pyramid_ranking(
      jnp.asarray(perm), jnp.asarray(mask[:, [2, 0, 1]]),
      jnp.asarray(labels)), got, rtol=1e-5)
  # Z = 1 is the batch-hard triplet on avg_t + max_t of GAP(f).
  gap = np.where(mask[..., None], maps.mean(axis=(2, 3)), np.nan)
  desc = np.nanmean(gap, 1) + np.nanmax(gap, 1)
  np.testing.assert_allclose(
      losses_lib.pyramid_ranking(jnp.asarray(maps), jnp.asarray(mask),
                                 jnp.asarray(labels), levels=1),
      losses_lib.batch_hard_triplet(jnp.asarray(desc), jnp.asarray(labels),
                                    margin=0.4), rtol=1e-5)
  # Identities far apart: zero. More stripes than rows (adaptive bins).
  far = maps * 0.01 + labels[:, None, None, None, None] * 100.0
  assert float(losses_lib.pyramid_ranking(
      jnp.asarray(far), jnp.asarray(mask), jnp.asarray(labels))) == 0.0
  thin = maps[:, :, :1]
  np.testing.assert_allclose(losses_lib.pyramid_ranking(
      jnp.asarray(thin), jnp.asarray(mask), jnp.asarray(labels)),
                             np_pyramid(thin, mask, labels, 0.4, 3), rtol=1e-5)
  # A named loss of the table, reading the model's aux.
  (loss,) = losses_lib.resolve({"pyramid_ranking": {"weight": 0.1}})
  assert dict(loss.inputs) == {"maps": "frame_maps", "mask": "frame_mask",
                               "labels": "labels"}


# ------------------------------------------------------------ whole model

CLIPS = (2, 4, 64, 32)


def _inputs(seed=0, flow=True):
  rng = np.random.default_rng(seed)
  out = {"clips": jnp.asarray(rng.normal(size=CLIPS + (3,)), jnp.float32),
         "mask": jnp.asarray([[True, True, True, False],
                              [True, False, True, True]])}
  if flow:
    out["flow"] = jnp.asarray(rng.normal(size=CLIPS + (2,)), jnp.float32)
  return out


def test_trunk_without_gates_is_the_two_stem_resnet():
  x = _inputs()
  frames = common.fold_time(x["clips"])
  flow = common.fold_time(x["flow"])
  ref = resnet.ResNet(arch="resnet18", width=4, flow_stem=True)
  v = common.random_variables(ref, frames, train=False, flow=flow)
  trunk = star.Trunk(arch="resnet18", width=4, attention="none")
  want = jit(lambda v: ref.apply(v, frames, train=False, flow=flow))(v)
  got, gates = jit(lambda v: trunk.apply(v, frames, train=False,
                                         flow=flow))(v)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert not gates


def test_cbam_bottleneck_gates_the_residual_branch():
  """Channel MLP output 0 and spatial BN output 0: the gate is 0.5 x 0.5 on
  the residual branch, i.e. torchvision's Bottleneck with bn3 x 0.25."""
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, 4, 16)),
                  jnp.float32)
  conv = functools.partial(nn.Conv, use_bias=False)
  norm = functools.partial(common.BatchNorm, use_running_average=True)
  gate = functools.partial(attention.ChannelSpatialGate, form="cbam",
                           reduction=4, kernel_size=7)
  block = star.GatedBottleneck(planes=4, strides=2, conv=conv, norm=norm,
                               gate=gate)
  v = common.random_variables(block, x, train=False)
  p = jax.tree_util.tree_map(np.asarray, v["params"])
  bs = jax.tree_util.tree_map(np.asarray, v["batch_stats"])
  p["cbam"]["channel"]["fc2"] = {
      k: np.zeros_like(a) for k, a in p["cbam"]["channel"]["fc2"].items()}
  p["cbam"]["spatial"]["bn"] = {
      k: np.zeros_like(a) for k, a in p["cbam"]["spatial"]["bn"].items()}
  got, gates = block.apply({"params": p, "batch_stats": bs}, x, train=False)
  np.testing.assert_allclose(gates["spatial"], 0.5)
  ref_p = {k: a for k, a in p.items() if k != "cbam"}
  ref_p["bn3"] = {k: a * 0.25 for k, a in p["bn3"].items()}
  ref = resnet.Bottleneck(planes=4, strides=2, conv=conv, norm=norm)
  want = ref.apply({"params": ref_p, "batch_stats": bs}, x)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_model_padded_frames_are_inert_and_no_flow_has_no_flow_params():
  x = _inputs()
  model = star.Model(num_classes=3, **TINY)
  assert model.input_keys() == ("clips", "mask", "flow")
  v = common.random_variables(model, x, train=False)
  assert {"lsta1", "lsta4", "flow_conv1", "flow_bn1"} <= set(
      v["params"]["backbone"])

  def run(v, inputs):
    (emb, aux), _ = model.apply(v, inputs, train=True,
                                mutable=["batch_stats"])
    emb_eval, aux_eval = model.apply(v, inputs, train=False)
    return emb, aux["logits"], emb_eval, aux_eval

  run = jit(run)
  emb, logits, emb_eval, aux = run(v, x)
  assert emb.shape == (2, 32) and logits.shape == (2, 3)
  assert aux["spatial_attention"].shape == (2, 4, 2, 1)
  assert aux["frame_maps"].shape == (2, 4, 2, 1, 32)
  k = np.asarray(aux["frame_weights"])
  np.testing.assert_allclose(k.sum(1), 1.0, rtol=1e-5)
  assert np.all(k[~np.asarray(x["mask"])] == 0)
  junk = dict(x)
  pad = ~np.asarray(x["mask"])[..., None, None, None]
  junk["clips"] = jnp.where(pad, 50.0, x["clips"])
  junk["flow"] = jnp.where(pad, -50.0, x["flow"])
  for a, b in zip(run(v, junk)[:3], (emb, logits, emb_eval)):
    np.testing.assert_allclose(a, b, atol=1e-4)
  # RGB only: no flow parameters, no flow input.
  rgb = star.Model(num_classes=3, use_flow=False, **TINY)
  assert rgb.input_keys() == ("clips", "mask")
  shapes = jax.eval_shape(lambda: rgb.init(
      jax.random.key(0), {k: x[k] for k in ("clips", "mask")}, train=False))
  assert not any("flow" in k for k in shapes["params"]["backbone"])


def test_load_imagenet_keeps_gates_and_inits_the_flow_stem():
  model = star.Model(num_classes=3, **TINY)
  x = _inputs()
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  v = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, 7.0, s.dtype), v)
  shapes = resnet.backbone_shapes("resnet18", 4)
  rng = np.random.default_rng(0)
  state = {}
  for key in resnet.torchvision_keys("resnet18"):
    collection, path = resnet._flax_location(key)  # pylint: disable=protected-access
    shape = shapes[collection]["/".join(path)]
    if path[-1] == "kernel":
      shape = (shape[3], shape[2], shape[0], shape[1])
    state[key] = rng.normal(size=shape).astype(np.float32)
  out = star.load(v, state, {"arch": "resnet18"})
  bb = out["params"]["backbone"]
  np.testing.assert_allclose(bb["conv1"]["kernel"],
                             state["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_allclose(
      bb["flow_conv1"]["kernel"],
      np.repeat(np.asarray(bb["conv1"]["kernel"]).mean(2, keepdims=True), 2,
                axis=2), rtol=1e-6)
  np.testing.assert_allclose(bb["flow_bn1"]["scale"], state["bn1.weight"])
  assert np.all(np.asarray(bb["lsta2"]["channel"]["fc1"]["kernel"]) == 7.0)
  del state["layer1.0.conv1.weight"]
  with pytest.raises(ValueError, match="layer1.0.conv1.weight"):
    star.load(v, state, {"arch": "resnet18"})


def test_attention_statistics():
  spatial = [np.ones((2, 2, 2)), np.array([[[4.0, 0.0], [0.0, 0.0]]])]
  temporal = [np.array([0.5, 0.5]), np.array([1.0, 0.0, 0.0])]
  out = star_attention.attention_statistics(spatial, temporal)
  assert out["spatial_peak"] == pytest.approx((1 + 1 + 4) / 3)
  assert out["temporal_peak"] == pytest.approx((1.0 + 3.0) / 2)
  assert out["temporal_entropy"] == pytest.approx(0.5)
  assert out["num_frames"] == 3 and out["num_clips"] == 2
