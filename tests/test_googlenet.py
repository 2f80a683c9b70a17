"""GoogLeNet vs an independent NumPy forward pass with torchvision weights.

A random state dict with torchvision's GoogLeNet key names and layouts
(OIHW convs, BN running statistics, the fc and auxiliary heads that the
importer skips) is built in NumPy, imported with
`googlenet.load_torchvision`, and the Flax trunk in eval mode is compared
with a NumPy implementation of torchvision's forward pass (BasicConv2d =
conv, BN eps 1e-3, ReLU; ceil-mode max pools) through the stem and Incep-1
(two Inception blocks). No torch needed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vreid_jax.models import common
from vreid_jax.models import googlenet
from vreid_jax.models import weights as weights_lib

WIDTH = 8


@pytest.fixture(autouse=True)
def _full_precision():
  with jax.default_matmul_precision("highest"):
    yield


def _c(n, width):
  return max(1, int(round(n * width / 64)))


def random_torchvision_state_dict(width=WIDTH, seed=0, extras=True):
  """A torchvision-style GoogLeNet state dict with random values."""
  rng = np.random.default_rng(seed)
  sd = {}

  def basic(name, cout, cin, k):
    sd[f"{name}.conv.weight"] = rng.normal(
        0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k)).astype(np.float32)
    sd[f"{name}.bn.weight"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    sd[f"{name}.bn.bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
    sd[f"{name}.bn.running_mean"] = rng.normal(0, 0.1, cout).astype(
        np.float32)
    sd[f"{name}.bn.running_var"] = rng.uniform(0.5, 1.5, cout).astype(
        np.float32)
    sd[f"{name}.bn.num_batches_tracked"] = np.array(7)

  basic("conv1", _c(64, width), 3, 7)
  basic("conv2", _c(64, width), _c(64, width), 1)
  basic("conv3", _c(192, width), _c(64, width), 3)
  cin = _c(192, width)
  # torchvision's table: (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool).
  table = {
      "inception3a": (64, 96, 128, 16, 32, 32),
      "inception3b": (128, 128, 192, 32, 96, 64),
      "inception4a": (192, 96, 208, 16, 48, 64),
      "inception4b": (160, 112, 224, 24, 64, 64),
      "inception4c": (128, 128, 256, 24, 64, 64),
      "inception4d": (112, 144, 288, 32, 64, 64),
      "inception4e": (256, 160, 320, 32, 128, 128),
      "inception5a": (256, 160, 320, 32, 128, 128),
      "inception5b": (384, 192, 384, 48, 128, 128),
  }
  for block, ch in table.items():
    c = [_c(n, width) for n in ch]
    basic(f"{block}.branch1", c[0], cin, 1)
    basic(f"{block}.branch2.0", c[1], cin, 1)
    basic(f"{block}.branch2.1", c[2], c[1], 3)
    basic(f"{block}.branch3.0", c[3], cin, 1)
    basic(f"{block}.branch3.1", c[4], c[3], 3)
    basic(f"{block}.branch4.1", c[5], cin, 1)
    cin = c[0] + c[2] + c[4] + c[5]
  if extras:
    sd["fc.weight"] = rng.normal(size=(10, cin)).astype(np.float32)
    sd["fc.bias"] = np.zeros(10, np.float32)
    sd["aux1.conv.conv.weight"] = np.zeros((128, 512, 1, 1), np.float32)
    sd["aux2.fc1.weight"] = np.zeros((1024, 2048), np.float32)
  return sd


# ------------------------------------------------- NumPy torchvision forward


def np_conv(x, w, stride, pad):
  """NHWC x, OIHW w, symmetric zero padding, float64."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  n, h, wd, _ = x.shape
  o, _, kh, kw = w.shape
  ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
  out = np.zeros((n, ho, wo, o))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + stride * ho:stride, j:j + stride * wo:stride]
      out += patch @ w[:, :, i, j].T
  return out


def np_basic(x, sd, name, stride=1, pad=0):
  w = sd[f"{name}.conv.weight"].astype(np.float64)
  y = np_conv(x, w, stride, pad)
  bn = {f: sd[f"{name}.bn.{f}"].astype(np.float64)
        for f in ("weight", "bias", "running_mean", "running_var")}
  y = (y - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3)
  return np.maximum(y * bn["weight"] + bn["bias"], 0.0)


def np_maxpool_ceil(x, k, s, p=0):
  """torch MaxPool2d(k, s, p, ceil_mode=True): each window clipped to the
  input (padding never wins); a window starting in the right padding is
  dropped."""
  def out_size(n):
    o = -(-(n + 2 * p - k) // s) + 1
    return o - 1 if (o - 1) * s >= n + p else o
  n, h, w, c = x.shape
  ho, wo = out_size(h), out_size(w)
  out = np.empty((n, ho, wo, c))
  for i in range(ho):
    r0, r1 = max(i * s - p, 0), min(i * s - p + k, h)
    for j in range(wo):
      c0, c1 = max(j * s - p, 0), min(j * s - p + k, w)
      out[:, i, j] = x[:, r0:r1, c0:c1].max(axis=(1, 2))
  return out


def np_inception(x, sd, block):
  b1 = np_basic(x, sd, f"{block}.branch1")
  b2 = np_basic(np_basic(x, sd, f"{block}.branch2.0"), sd,
                f"{block}.branch2.1", pad=1)
  b3 = np_basic(np_basic(x, sd, f"{block}.branch3.0"), sd,
                f"{block}.branch3.1", pad=1)
  b4 = np_basic(np_maxpool_ceil(x, 3, 1, 1), sd, f"{block}.branch4.1")
  return np.concatenate([b1, b2, b3, b4], axis=-1)


def np_stem_and_incep1(x, sd):
  y = np_basic(x, sd, "conv1", stride=2, pad=3)
  y = np_maxpool_ceil(y, 3, 2)
  y = np_basic(y, sd, "conv2")
  stem = np_basic(y, sd, "conv3", pad=1)
  z = np_maxpool_ceil(stem, 3, 2)
  z = np_inception(z, sd, "inception3a")
  return stem, np_inception(z, sd, "inception3b")


# ------------------------------------------------------------------ tests


def test_imported_googlenet_matches_numpy_stem_and_inception_blocks(
    tmp_path):
  sd = random_torchvision_state_dict()
  x = np.random.default_rng(1).uniform(-1, 1, (2, 36, 28, 3)).astype(
      np.float32)
  model = googlenet.GoogLeNet(width=WIDTH)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x,
                                             train=False))
  variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  # Through a file, as a user would (torchvision keys in an .npz).
  path = tmp_path / "googlenet.npz"
  np.savez(path, **sd)
  variables = googlenet.load_torchvision(variables, str(path),
                                         stages=("stages",))
  # The stem and Incep-1 only (what the NumPy pass covers).
  stem_net = googlenet.Convs(width=WIDTH)
  incep1_net = googlenet.InceptionStages(width=WIDTH, stages=("incep1",))

  def part(v, name, keep=None):
    return {c: (v[c][name] if keep is None else {keep: v[c][name][keep]})
            for c in v}

  @jax.jit
  def forward(v, x):
    y = stem_net.apply(part(v, "convs"), x, train=False)
    return {"convs": y, **incep1_net.apply(part(v, "stages", "incep1"), y,
                                           train=False)}

  out = forward(variables, x)
  stem, incep1 = np_stem_and_incep1(x.astype(np.float64), sd)
  # 36 x 28 -> conv1 18 x 14 -> ceil pool 9 x 7; incep1: ceil pool 4 x 3.
  assert out["convs"].shape == stem.shape == (2, 9, 7, _c(192, WIDTH))
  assert out["incep1"].shape == incep1.shape == (2, 4, 3, 60)
  np.testing.assert_allclose(out["convs"], stem, rtol=1e-4,
                             atol=1e-4 * np.abs(stem).max())
  np.testing.assert_allclose(out["incep1"], incep1, rtol=1e-4,
                             atol=1e-4 * np.abs(incep1).max())


def test_paper_shapes_and_torchvision_parameter_count():
  model = googlenet.GoogLeNet()
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x,
                                               train=False), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), shapes,
                       x)
  assert {k: v.shape for k, v in out.items()} == {
      "convs": (2, 56, 56, 192), "incep1": (2, 28, 28, 480),
      "incep2": (2, 14, 14, 832), "incep3": (2, 7, 7, 1024)}
  # torchvision's googlenet has 6,624,904 parameters, 1,025,000 in the fc.
  assert common.count_params(shapes["params"]) == 6_624_904 - 1_025_000
  flat = weights_lib.flatten(shapes["params"])
  assert "stages/incep1/inception3a/branch2_1/conv/kernel" in flat
  assert "convs/conv1/bn/scale" in flat


def test_max_pool_ceil_matches_torch_semantics():
  x = np.random.default_rng(2).normal(size=(1, 14, 11, 2)).astype(np.float32)
  for k, s, p in ((3, 2, 0), (2, 2, 0), (3, 1, 1), (3, 2, 1)):
    got = googlenet.max_pool_ceil(jnp.asarray(x), k, s, p)
    np.testing.assert_array_equal(got, np_maxpool_ceil(x, k, s, p))


def test_import_errors_name_the_keys():
  sd = random_torchvision_state_dict(extras=False)
  del sd["inception4b.branch3.1.bn.running_var"]
  sd["inception9z.branch1.conv.weight"] = np.zeros((1, 1, 1, 1))
  with pytest.raises(weights_lib.WeightImportError) as e:
    googlenet.torchvision_to_flax(sd)
  assert "inception4b.branch3.1.bn.running_var" in str(e.value)
  assert "inception9z.branch1.conv.weight" in str(e.value)
  # A state dict of another width: every mismatched leaf is named.
  model = googlenet.GoogLeNet(width=16)
  variables = jax.tree.map(
      lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(
          lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                             train=False)))
  with pytest.raises(weights_lib.WeightImportError,
                     match="shape mismatch.*conv1/conv/kernel"):
    googlenet.load_torchvision(variables, random_torchvision_state_dict(),
                               stages=("stages",))
