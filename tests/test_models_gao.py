"""Gao & Nevatia's family vs independent NumPy implementations (spec Sec. 6).

Temporal attention (eq. 1-3), the PyTorch LSTM/GRU cells, masked max and
last pooling, the 3D ResNet's stem and first block (with a Hara-layout
Kinetics state dict imported), padding invariance of every variant in eval
and training, and the parameter counts of the paper's code.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vreid_jax import models
from vreid_jax.models import attention
from vreid_jax.models import common
from vreid_jax.models import gao
from vreid_jax.models import recurrent
from vreid_jax.models import resnet
from vreid_jax.models import resnet3d
from vreid_jax.models import temporal

EPS = 1e-5
TINY = dict(arch="resnet18", width=4)


@pytest.fixture(autouse=True)
def _full_precision():
  with jax.default_matmul_precision("highest"):
    yield


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


# ------------------------------------------------------ temporal attention


def np_attention(maps, mask, p, scorer, normalization, relu):
  """Eq. 1-3 for one clip at a time, loops over frames, float64."""
  out, weights = [], []
  for b in range(maps.shape[0]):
    real = np.flatnonzero(mask[b])
    m = maps[b, real].astype(np.float64)                  # (L, h, w, C)
    k = np.asarray(p["spatial_conv"]["kernel"], np.float64)  # (h, w, C, d)
    u = np.maximum(np.einsum("thwc,hwcd->td", m, k)
                   + p["spatial_conv"]["bias"], 0)          # (L, d)
    if scorer == "fc":
      s = u @ np.asarray(p["fc"]["kernel"])[:, 0] + p["fc"]["bias"][0]
    else:
      kt = np.asarray(p["temporal_conv"]["kernel"])[:, :, 0]   # (3, d)
      s = np.full(len(real), float(p["temporal_conv"]["bias"][0]))
      for t in range(len(real)):
        for i, off in enumerate((-1, 0, 1)):
          if 0 <= t + off < len(real):
            s[t] += u[t + off] @ kt[i]
    if relu:
      s = np.maximum(s, 0)
    if normalization == "softmax":
      a = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    else:
      a = sigmoid(s) / sigmoid(s).sum()
    f = m.mean(axis=(1, 2))                                 # (L, C)
    out.append((a[:, None] * f).sum(0))
    full = np.zeros(maps.shape[1])
    full[real] = a
    weights.append(full)
  return np.stack(out), np.stack(weights)


@pytest.mark.parametrize("scorer,normalization,relu", [
    ("temporal_conv", "softmax", True), ("temporal_conv", "sigmoid", False),
    ("fc", "softmax", False), ("fc", "sigmoid", True)])
def test_attention_matches_eq_1_to_3(scorer, normalization, relu):
  rng = np.random.default_rng(0)
  maps = rng.normal(size=(3, 5, 2, 3, 6)).astype(np.float32)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 0, 1, 1]], bool)
  module = attention.TemporalAttentionPool(
      features=4, scorer=scorer, normalization=normalization, relu=relu)
  variables = common.random_variables(module, maps, mask, seed=1)
  got, extra = jax.jit(module.apply)(variables, jnp.asarray(maps),
                                     jnp.asarray(mask))
  want, want_w = np_attention(maps, mask, variables["params"], scorer,
                              normalization, relu)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(extra["attention"], want_w, rtol=1e-4,
                             atol=1e-6)
  w = np.asarray(extra["attention"])
  assert (w >= 0).all() and not w[~mask].any()
  np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-5)


def test_attention_relu_freezes_uniform_weights():
  """All scores <= 0 with the code's ReLU: a_t = 1/T exactly."""
  maps = np.random.default_rng(1).normal(size=(2, 4, 2, 1, 3)).astype(
      np.float32)
  for normalization in ("softmax", "sigmoid"):
    module = attention.TemporalAttentionPool(
        features=2, scorer="fc", normalization=normalization, relu=True)
    variables = common.random_variables(module, maps)
    variables["params"]["fc"]["bias"] = jnp.full((1,), -100.0)
    _, extra = module.apply(variables, jnp.asarray(maps))
    np.testing.assert_array_equal(extra["attention"], 0.25)


def test_fc_attention_is_permutation_equivariant():
  rng = np.random.default_rng(2)
  maps = rng.normal(size=(1, 5, 2, 2, 3)).astype(np.float32)
  module = attention.TemporalAttentionPool(features=4, scorer="fc",
                                           relu=False)
  variables = common.random_variables(module, maps, seed=3)
  f, e = module.apply(variables, jnp.asarray(maps))
  perm = np.array([3, 0, 4, 2, 1])
  f_p, e_p = module.apply(variables, jnp.asarray(maps[:, perm]))
  np.testing.assert_allclose(f_p, f, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(e_p["attention"], e["attention"][:, perm],
                             rtol=1e-5, atol=1e-7)


# -------------------------------------------------------- pooling, RNN


def test_max_and_last_pool_read_only_real_frames():
  x = np.random.default_rng(3).normal(size=(3, 4, 2)).astype(np.float32)
  mask = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], bool)
  x_nan = np.where(mask[..., None], x, np.nan)
  mx, _ = temporal.MaxPool().apply({}, jnp.asarray(x_nan), jnp.asarray(mask))
  np.testing.assert_allclose(mx[0], x[0, :2].max(0))
  np.testing.assert_allclose(mx[1], x[1, 1:3].max(0))
  np.testing.assert_array_equal(mx[2], 0.0)
  last, _ = temporal.LastPool().apply({}, jnp.asarray(x_nan),
                                      jnp.asarray(mask))
  np.testing.assert_allclose(last[0], x[0, 1])
  np.testing.assert_allclose(last[1], x[1, 2])


def np_rnn(x, p, cell, reverse=False):
  """PyTorch's LSTM (i, f, g, o) / GRU (r, z, n) over one sequence."""
  w_ih, w_hh = np.asarray(p["w_ih"], np.float64), np.asarray(p["w_hh"],
                                                             np.float64)
  b_ih, b_hh = np.asarray(p["b_ih"]), np.asarray(p["b_hh"])
  hidden = w_hh.shape[0]
  h, c = np.zeros(hidden), np.zeros(hidden)
  outs = [None] * len(x)
  steps = range(len(x) - 1, -1, -1) if reverse else range(len(x))
  for t in steps:
    gx, gh = x[t] @ w_ih + b_ih, h @ w_hh + b_hh
    if cell == "lstm":
      i, f, g, o = np.split(gx + gh, 4)
      c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
      h = sigmoid(o) * np.tanh(c)
    else:
      xr, xz, xn = np.split(gx, 3)
      hr, hz, hn = np.split(gh, 3)
      r, z = sigmoid(xr + hr), sigmoid(xz + hz)
      h = (1 - z) * np.tanh(xn + r * hn) + z * h
    outs[t] = h
  return np.stack(outs)


@pytest.mark.parametrize("cell,reverse", [("lstm", False), ("gru", False),
                                          ("lstm", True)])
def test_recurrent_matches_pytorch_cells_and_skips_padding(cell, reverse):
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 5, 3)).astype(np.float32)
  module = recurrent.Recurrent(features=4, cell=cell, reverse=reverse)
  variables = jax.jit(module.init)(jax.random.key(0), jnp.asarray(x))
  p = variables["params"]
  gates = 4 if cell == "lstm" else 3
  assert p["w_ih"].shape == (3, gates * 4) and p["b_hh"].shape == (gates * 4,)
  bound = 1 / np.sqrt(4)       # PyTorch: U(+-1/sqrt(H)).
  assert all(np.abs(np.asarray(v)).max() <= bound for v in p.values())
  run = jax.jit(lambda x, m=None: module.apply(variables, x, m)[0])
  got = run(jnp.asarray(x))
  for b in range(2):
    np.testing.assert_allclose(got[b], np_rnn(x[b], p, cell, reverse),
                               rtol=1e-5, atol=1e-5)
  # Padded frames anywhere (first, middle, end) update no state.
  xp = 50 * rng.normal(size=(2, 8, 3)).astype(np.float32)
  mask = np.zeros((2, 8), bool)
  positions = [np.array([1, 2, 4, 6, 7]), np.array([0, 1, 2, 3, 4])]
  for b, pos in enumerate(positions):
    xp[b, pos] = x[b]
    mask[b, pos] = True
  got_p = run(jnp.asarray(xp), jnp.asarray(mask))
  for b, pos in enumerate(positions):
    np.testing.assert_allclose(got_p[b, pos], got[b], rtol=1e-5, atol=1e-5)


def test_bidirectional_concatenates_both_directions():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(1, 4, 3)).astype(np.float32)
  module = recurrent.Bidirectional(features=2)
  variables = jax.jit(module.init)(jax.random.key(0), jnp.asarray(x))
  out, _ = module.apply(variables, jnp.asarray(x))
  p = variables["params"]
  np.testing.assert_allclose(out[0, :, :2], np_rnn(x[0], p["forward"],
                                                   "lstm"), atol=1e-5)
  np.testing.assert_allclose(out[0, :, 2:], np_rnn(x[0], p["backward"],
                                                   "lstm", reverse=True),
                             atol=1e-5)
  # Time reversal swaps the directions.
  rev, _ = module.apply(
      {"params": {"forward": p["backward"], "backward": p["forward"]}},
      jnp.asarray(x[:, ::-1]))
  np.testing.assert_allclose(rev[0, ::-1, :2], out[0, :, 2:], atol=1e-5)


# ----------------------------------------------------------- the models

CLIPS = (2, 4, 64, 32, 3)


def _variants():
  return [("avg", {}), ("max", {}), ("attention", {}),
          ("attention", {"attention": "fc", "attention_norm": "sigmoid"}),
          ("rnn", {"rnn_hidden": 8}),
          ("rnn", {"rnn_hidden": 8, "rnn_cell": "gru",
                   "rnn_output": "final"}),
          ("c3d", {})]


@pytest.mark.parametrize("temporal_,kwargs", _variants())
def test_variants_ignore_padding_in_eval_and_training(temporal_, kwargs):
  model = gao.Model(num_classes=5, temporal=temporal_, **TINY, **(
      {} if temporal_ == "c3d" else {"attention_dim": 4}) | kwargs)
  rng = np.random.default_rng(6)
  clips = rng.normal(size=CLIPS).astype(np.float32)
  variables = common.random_variables(model, {"clips": clips}, train=False)

  @jax.jit
  def run(clips, mask):
    inputs = {"clips": clips, "mask": mask}
    eval_out = model.apply(variables, inputs, train=False)
    train_out, stats = model.apply(variables, inputs, train=True,
                                   mutable=["batch_stats"])
    return eval_out, train_out, stats

  ref = run(jnp.asarray(clips), jnp.ones(CLIPS[:2], bool))
  garbage = 30 * rng.normal(size=(2, 3) + CLIPS[2:]).astype(np.float32)
  mask = np.ones((2, 7), bool)
  mask[0, 4:] = False                       # Padding at the end ...
  mask[1, :3] = False                       # ... and first.
  padded = np.concatenate([clips, garbage], axis=1)
  padded[1] = np.concatenate([garbage[1], clips[1]])
  got = run(jnp.asarray(padded), jnp.asarray(mask))
  for (emb, aux), (emb_p, aux_p) in ((ref[0], got[0]), (ref[1], got[1])):
    np.testing.assert_allclose(emb_p, emb, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(aux_p["logits"], aux["logits"], rtol=2e-4,
                               atol=2e-4)
    if "attention" in aux:
      np.testing.assert_allclose(aux_p["attention"][0, :4],
                                 aux["attention"][0], atol=1e-5)
      np.testing.assert_allclose(aux_p["attention"][1, 3:],
                                 aux["attention"][1], atol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=2e-4,
                                 atol=2e-4), got[2], ref[2])


def test_repeated_frame_equals_the_image_model():
  """TP and TA on T copies of one frame = the T = 1 image model."""
  frame = np.random.default_rng(7).normal(size=(2, 1, 64, 32, 3)).astype(
      np.float32)
  for temporal_ in ("avg", "attention"):
    model = gao.Model(num_classes=3, temporal=temporal_, attention_dim=4,
                      **TINY)
    variables = common.random_variables(model, {"clips": frame},
                                        train=False)
    one = model.apply(variables, {"clips": frame}, train=False)[0]
    four = model.apply(variables, {"clips": np.repeat(frame, 4, axis=1)},
                       train=False)[0]
    np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-5)


def test_rnn_mean_of_one_step_is_h1_and_final_is_last_output():
  x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 1, 64, 32, 3)),
                  jnp.float32)
  model = gao.Model(num_classes=0, temporal="rnn", rnn_hidden=6, **TINY)
  variables = common.random_variables(model, {"clips": x}, train=False)
  _, aux = model.apply(variables, {"clips": x}, train=False)
  np.testing.assert_allclose(aux["features"], aux["rnn"][:, 0], atol=1e-6)
  x4 = jnp.concatenate([x] * 4, axis=1)
  final = gao.Model(num_classes=0, temporal="rnn", rnn_hidden=6,
                    rnn_output="final", **TINY)
  _, aux = final.apply(variables, {"clips": x4}, train=False)
  np.testing.assert_allclose(aux["features"], aux["rnn"][:, -1], atol=1e-6)


def test_paper_parameter_counts_and_head():
  """Spec Sec. 1: TP 24,788,657 with 625 classes; TA adds 14,681,089;
  the RNN 29,075,633 (its LSTM has PyTorch's two biases)."""
  inputs = {"clips": jax.ShapeDtypeStruct((1, 4, 224, 112, 3), jnp.float32)}
  counts = {}
  for temporal_ in ("avg", "attention", "rnn"):
    model = gao.Model(num_classes=625, temporal=temporal_)
    v = jax.eval_shape(lambda x, m=model: m.init(jax.random.key(0), x,
                                                 train=False), inputs)
    counts[temporal_] = common.count_params(v["params"])
    head = v["params"]["head"]
    assert set(head) == {"classifier"}                # No BN-neck.
    assert head["classifier"]["bias"].shape == (625,)
  assert counts["avg"] == 24_788_657
  assert counts["attention"] - counts["avg"] == 14_681_089
  assert counts["rnn"] == 29_075_633


def test_unknown_variant_is_a_clear_error():
  with pytest.raises(ValueError, match="temporal must be one of"):
    gao.Model(temporal="transformer")
  with pytest.raises(ValueError, match="rnn_output must be one of"):
    jax.eval_shape(lambda: gao.Model(temporal="rnn", rnn_output="last",
                                     **TINY).init(
                                         jax.random.key(0),
                                         {"clips": jnp.zeros(CLIPS)},
                                         train=False))


# ------------------------------------------------------------ 3D ResNet


def random_hara_state_dict(width, seed=0):
  """Hara's 3D ResNet-18 state dict layout: torchvision names, 5-d kernels."""
  rng = np.random.default_rng(seed)
  sd = {}

  def conv(name, cout, cin, kt, k):
    sd[name + ".weight"] = (rng.normal(size=(cout, cin, kt, k, k))
                            / np.sqrt(cin * kt * k * k)).astype(np.float32)

  def bn(name, c):
    for f in ("weight", "bias", "running_mean", "running_var"):
      sd[f"{name}.{f}"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[name + ".num_batches_tracked"] = np.array(1, np.int64)

  conv("conv1", width, 3, 7, 7)
  bn("bn1", width)
  cin = width
  for i in range(4):
    planes = width * 2**i
    for j in range(2):
      p = f"layer{i + 1}.{j}"
      conv(p + ".conv1", planes, cin if j == 0 else planes, 3, 3)
      bn(p + ".bn1", planes)
      conv(p + ".conv2", planes, planes, 3, 3)
      bn(p + ".bn2", planes)
      if i > 0 and j == 0:
        conv(p + ".downsample.0", planes, cin, 1, 1)
        bn(p + ".downsample.1", planes)
    cin = planes
  sd["fc.weight"] = rng.normal(size=(400, cin)).astype(np.float32)
  sd["fc.bias"] = np.zeros(400, np.float32)
  return sd


def np_conv3d(x, w, stride, pad):
  """x (T, H, W, I), torch weight (O, I, kt, kh, kw), zero padding."""
  o, _, kt, kh, kw = w.shape
  xp = np.pad(x, ((pad[0],) * 2, (pad[1],) * 2, (pad[2],) * 2, (0, 0)))
  t_out = (xp.shape[0] - kt) // stride[0] + 1
  h_out = (xp.shape[1] - kh) // stride[1] + 1
  w_out = (xp.shape[2] - kw) // stride[2] + 1
  y = np.zeros((t_out, h_out, w_out, o))
  for a in range(kt):
    for b in range(kh):
      for c in range(kw):
        patch = xp[a:a + stride[0] * t_out:stride[0],
                   b:b + stride[1] * h_out:stride[1],
                   c:c + stride[2] * w_out:stride[2]]
        y += patch @ w[:, :, a, b, c].T
  return y


def np_bn(x, sd, name):
  return ((x - sd[name + ".running_mean"])
          / np.sqrt(sd[name + ".running_var"] + EPS)
          * sd[name + ".weight"] + sd[name + ".bias"])


def np_maxpool3d(x):
  """3x3x3, stride 2, padding 1 (-inf)."""
  xp = np.pad(x, ((1, 1),) * 3 + ((0, 0),), constant_values=-np.inf)
  outs = [(n + 1) // 2 for n in x.shape[:3]]
  y = np.full(tuple(outs) + (x.shape[-1],), -np.inf)
  for a in range(3):
    for b in range(3):
      for c in range(3):
        y = np.maximum(y, xp[a:a + 2 * outs[0]:2, b:b + 2 * outs[1]:2,
                             c:c + 2 * outs[2]:2])
  return y


def test_3d_resnet_imports_hara_weights_and_matches_numpy(tmp_path):
  from test_models_weights import write_safetensors  # pylint: disable=g-import-not-at-top
  width = 4
  sd = random_hara_state_dict(width)
  path = tmp_path / "resnet-18-kinetics.safetensors"
  write_safetensors(path, sd)
  model = gao.Model(num_classes=0, temporal="c3d", arch="resnet18",
                    width=width)
  clips = np.random.default_rng(9).normal(size=(1, 4, 16, 16, 3)).astype(
      np.float32)
  variables = common.random_variables(model, {"clips": clips}, train=False)
  variables = gao.load(variables, str(path),
                       {"temporal": "c3d", "arch": "resnet18"})
  kernel = variables["params"]["backbone"]["layer2_0"]["conv2"]["kernel"]
  np.testing.assert_array_equal(
      kernel, sd["layer2.0.conv2.weight"].transpose(2, 3, 4, 1, 0))
  _, state = model.apply(variables, {"clips": clips}, train=False,
                         capture_intermediates=True, mutable=["intermediates"])
  inter = state["intermediates"]["backbone"]
  x = clips[0].astype(np.float64)
  stem = np_maxpool3d(np.maximum(np_bn(np_conv3d(
      x, sd["conv1.weight"], (1, 2, 2), (3, 3, 3)), sd, "bn1"), 0))
  y = np.maximum(np_bn(np_conv3d(stem, sd["layer1.0.conv1.weight"],
                                 (1, 1, 1), (1, 1, 1)), sd,
                       "layer1.0.bn1"), 0)
  y = np_bn(np_conv3d(y, sd["layer1.0.conv2.weight"], (1, 1, 1), (1, 1, 1)),
            sd, "layer1.0.bn2")
  block = np.maximum(stem + y, 0)
  got, _ = inter["layer1_0"]["__call__"][0]
  assert got.shape == (1, 2, 4, 4, width)         # T 4 -> 2, 16 -> 4.
  np.testing.assert_allclose(got[0], block, rtol=1e-4, atol=1e-4)
  # A 2D torchvision file is not a 3D checkpoint: the kernel rank is named.
  sd2 = dict(sd, **{"conv1.weight": sd["conv1.weight"][:, :, 0]})
  with pytest.raises(Exception, match="5-d conv weight"):
    resnet3d.load_torchvision(variables, sd2, arch="resnet18")


@pytest.mark.parametrize("t,expected_t", [(4, 1), (8, 1)])
def test_3d_resnet50_shapes(t, expected_t):
  """Spec Sec. 1.5: (B, T, 224, 112) -> layer4 (B, 1, 7, 4, 2048)."""
  model = resnet3d.ResNet3D(arch="resnet50")
  maps, tmask = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x, train=False)[0],
      jax.ShapeDtypeStruct((2, t, 224, 112, 3), jnp.float32))
  assert maps.shape == (2, expected_t, 7, 4, 2048)
  assert tmask.shape == (2, expected_t)


def test_summary_cli_reports_the_paper_counts(capsys):
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from vreid_jax import summary  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for row, params in (("tp_avg", 24_788_657), ("ta", 39_469_746)):
    summary.main([f"--config={root}/configs/gao_mars.py:{row}",
                  "--num_classes=625", "--json"])
    got = json.loads(capsys.readouterr().out)
    assert got["params"] == params
    assert got["embedding_dim"] == 2048
    # ResNet-50 at 224 x 112: ~4 GFLOPs per frame, 4 frames.
    assert 14e9 < got["flops_per_clip"] < 18e9
  assert models.input_keys(gao.Model(temporal="c3d")) == ("clips", "mask")
  assert resnet.num_features("resnet50") == resnet3d.num_features("resnet50")
