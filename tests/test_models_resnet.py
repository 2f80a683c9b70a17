"""ResNet vs an independent NumPy forward pass with torchvision weights.

A random state dict with torchvision's key names and layouts (OIHW convs,
BN weight/bias/running_mean/running_var, fc, num_batches_tracked) is built in
NumPy, imported with `resnet.load_torchvision`, and the Flax model in eval mode
is compared with a NumPy implementation of torchvision's forward pass that
reads the state dict directly.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vreid_jax.models import baseline
from vreid_jax.models import common
from vreid_jax.models import resnet

EPS = 1e-5


@pytest.fixture(autouse=True)
def _full_precision():
  """float32 matmuls/convs on every backend (GPUs default to TF32)."""
  with jax.default_matmul_precision("highest"):
    yield
STAGES = {"resnet18": ((2, 2, 2, 2), "basic"),
          "resnet50": ((3, 4, 6, 3), "bottleneck")}


def random_torchvision_state_dict(arch, width, seed=0, num_classes=10):
  """A torchvision-style ResNet state dict with random values, in NumPy."""
  rng = np.random.default_rng(seed)
  sd = {}

  def conv(name, cout, cin, k):
    sd[f"{name}.weight"] = (rng.normal(size=(cout, cin, k, k))
                            * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)

  def bn(name, c):
    sd[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[f"{name}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
    sd[f"{name}.running_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
    sd[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

  sizes, kind = STAGES[arch]
  expansion = 4 if kind == "bottleneck" else 1
  conv("conv1", width, 3, 7)
  bn("bn1", width)
  cin = width
  for i, n in enumerate(sizes):
    planes = width * 2**i
    for j in range(n):
      p = f"layer{i + 1}.{j}"
      if kind == "basic":
        conv(f"{p}.conv1", planes, cin, 3)
        bn(f"{p}.bn1", planes)
        conv(f"{p}.conv2", planes, planes, 3)
        bn(f"{p}.bn2", planes)
      else:
        conv(f"{p}.conv1", planes, cin, 1)
        bn(f"{p}.bn1", planes)
        conv(f"{p}.conv2", planes, planes, 3)
        bn(f"{p}.bn2", planes)
        conv(f"{p}.conv3", planes * 4, planes, 1)
        bn(f"{p}.bn3", planes * 4)
      if j == 0 and (i > 0 or cin != planes * expansion):
        conv(f"{p}.downsample.0", planes * expansion, cin, 1)
        bn(f"{p}.downsample.1", planes * expansion)
      cin = planes * expansion
  sd["fc.weight"] = rng.normal(size=(num_classes, cin)).astype(np.float32)
  sd["fc.bias"] = np.zeros(num_classes, np.float32)
  return sd


# ------------------------------------------------- NumPy reference (NHWC)


def np_conv(x, w, stride, pad):
  """PyTorch Conv2d (no bias): x (N, H, W, C), w (O, I, kh, kw)."""
  n, h, wd, _ = x.shape
  o, _, kh, kw = w.shape
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho = (h + 2 * pad - kh) // stride + 1
  wo = (wd + 2 * pad - kw) // stride + 1
  out = np.zeros((n, ho, wo, o))
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, i:i + stride * ho:stride, j:j + stride * wo:stride, :]
      out += patch @ w[:, :, i, j].T
  return out


def np_bn(x, sd, name):
  """Eval-mode BatchNorm2d with running statistics."""
  return ((x - sd[f"{name}.running_mean"])
          / np.sqrt(sd[f"{name}.running_var"] + EPS)
          * sd[f"{name}.weight"] + sd[f"{name}.bias"])


def np_maxpool_3x3_s2_p1(x):
  n, h, w, c = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  ho, wo = (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1
  out = np.full((n, ho, wo, c), -np.inf)
  for i in range(3):
    for j in range(3):
      out = np.maximum(out, xp[:, i:i + 2 * ho:2, j:j + 2 * wo:2, :])
  return out


def relu(x):
  return np.maximum(x, 0)


def np_block(x, sd, p, kind, stride):
  if kind == "basic":
    y = relu(np_bn(np_conv(x, sd[f"{p}.conv1.weight"], stride, 1), sd,
                   f"{p}.bn1"))
    y = np_bn(np_conv(y, sd[f"{p}.conv2.weight"], 1, 1), sd, f"{p}.bn2")
  else:
    y = relu(np_bn(np_conv(x, sd[f"{p}.conv1.weight"], 1, 0), sd, f"{p}.bn1"))
    y = relu(np_bn(np_conv(y, sd[f"{p}.conv2.weight"], stride, 1), sd,
                   f"{p}.bn2"))
    y = np_bn(np_conv(y, sd[f"{p}.conv3.weight"], 1, 0), sd, f"{p}.bn3")
  if f"{p}.downsample.0.weight" in sd:
    x = np_bn(np_conv(x, sd[f"{p}.downsample.0.weight"], stride, 0), sd,
              f"{p}.downsample.1")
  return relu(x + y)


def np_resnet(x, sd, arch, last_stride):
  """Returns (stem output before ReLU, layer1.0 output, pooled feature)."""
  sizes, kind = STAGES[arch]
  stem_bn = np_bn(np_conv(x, sd["conv1.weight"], 2, 3), sd, "bn1")
  x = np_maxpool_3x3_s2_p1(relu(stem_bn))
  layer1_0 = None
  for i, n in enumerate(sizes):
    for j in range(n):
      stride = 1 if i == 0 else (last_stride if i == 3 else 2)
      stride = stride if j == 0 else 1
      x = np_block(x, sd, f"layer{i + 1}.{j}", kind, stride)
      if (i, j) == (0, 0):
        layer1_0 = x
  return stem_bn, layer1_0, x.mean(axis=(1, 2))


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("arch,last_stride", [("resnet18", 2),
                                              ("resnet50", 1)])
def test_imported_resnet_matches_numpy_forward(arch, last_stride):
  width = 4
  sd = random_torchvision_state_dict(arch, width)
  x = np.random.default_rng(1).normal(size=(2, 64, 32, 3)).astype(np.float32)

  # The frame model with T=1: backbone + global average pooling.
  model = baseline.Model(num_classes=0, arch=arch, width=width,
                         last_stride=last_stride, frame_dim=0)
  clips = {"clips": jnp.asarray(x)[:, None]}
  # Shapes only (no XLA RNG): every backbone leaf is replaced anyway.
  variables = common.random_variables(model, clips, train=False)
  variables = resnet.load_torchvision(variables, sd, arch=arch)
  apply = jax.jit(functools.partial(model.apply, train=False,
                                    capture_intermediates=True,
                                    mutable=["intermediates"]))
  (_, aux), state = apply(variables, clips)
  inter = state["intermediates"]["backbone"]

  want_bn1, want_layer1_0, want_pooled = np_resnet(
      x.astype(np.float64), sd, arch, last_stride)
  np.testing.assert_allclose(inter["bn1"]["__call__"][0], want_bn1,
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(inter["layer1_0"]["__call__"][0], want_layer1_0,
                             rtol=1e-4, atol=1e-4)
  scale = np.abs(want_pooled).max()
  np.testing.assert_allclose(aux["frame_features"][:, 0], want_pooled,
                             rtol=1e-4, atol=1e-4 * scale)


def test_resnet_shapes_names_and_options():
  x = jnp.zeros((1, 64, 32, 3))
  for arch, expansion, last_stride, hw in (
      ("resnet18", 1, 2, (2, 1)), ("resnet34", 1, 1, (4, 2)),
      ("resnet101", 4, 2, (2, 1)), ("resnet50", 4, 1, (4, 2))):
    model = resnet.ResNet(arch=arch, width=4, last_stride=last_stride)
    out, variables = jax.eval_shape(
        lambda m=model: m.init_with_output(jax.random.key(0), x, train=False))
    assert out.shape == (1,) + hw + (4 * 8 * expansion,), (arch, out.shape)
    assert resnet.num_features(arch, 4) == out.shape[-1]
  # torchvision names, e.g. resnet50: layer1_0 has a downsample, layer1_1 not.
  p = variables["params"]
  assert {"conv1", "bn1", "layer1_0", "layer4_2"} <= set(p)
  assert set(p["layer1_0"]) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3",
                                "downsample_conv", "downsample_bn"}
  assert "downsample_conv" not in p["layer1_1"]
  assert p["conv1"]["kernel"].shape == (7, 7, 3, 4)
  assert "bias" not in p["conv1"]
  assert set(variables["batch_stats"]["bn1"]) == {"mean", "var"}


@pytest.mark.parametrize("block,last", [(resnet.BasicBlock, "bn2"),
                                        (resnet.Bottleneck, "bn3")])
def test_zero_init_residual(block, last):
  # Constant conv kernels: no RNG to compile, the test is about the BN init.
  conv = functools.partial(nn.Conv, use_bias=False,
                           kernel_init=nn.initializers.constant(0.1))
  norm = functools.partial(nn.BatchNorm, use_running_average=True)
  x = jnp.ones((1, 4, 4, 8))
  for zero_init in (True, False):
    module = block(planes=8 // block.expansion, strides=1, conv=conv,
                   norm=norm, zero_init_last=zero_init)
    out, variables = jax.jit(module.init_with_output)(jax.random.key(0), x)
    params = variables["params"]
    np.testing.assert_array_equal(params[last]["scale"],
                                  0.0 if zero_init else 1.0)
    np.testing.assert_array_equal(params["bn1"]["scale"], 1.0)
    if zero_init:  # The block starts as relu(identity).
      np.testing.assert_allclose(out, jax.nn.relu(x))


def test_unknown_arch_is_a_clear_error():
  with pytest.raises(ValueError, match="Unknown ResNet arch 'resnet19'"):
    resnet.arch_spec("resnet19")


def test_remat_keeps_parameters_outputs_and_gradients():
  """`remat` recomputes block activations in the backward pass: the same
  variables (names, shapes), outputs and gradients."""
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 16, 3))
  plain = resnet.ResNet(arch="resnet18", width=8, last_stride=1)
  remat = resnet.ResNet(arch="resnet18", width=8, last_stride=1, remat=True)
  v = plain.init(jax.random.PRNGKey(1), x, train=False)
  v_remat = remat.init(jax.random.PRNGKey(1), x, train=False)
  assert jax.tree.structure(v) == jax.tree.structure(v_remat)
  assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(v),
                                                jax.tree.leaves(v_remat)))

  def loss(params, model):
    y, _ = model.apply({**v, "params": params}, x, train=True,
                       mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y)), y

  (l0, y0), g0 = jax.jit(jax.value_and_grad(
      lambda p: loss(p, plain), has_aux=True))(v["params"])
  (l1, y1), g1 = jax.jit(jax.value_and_grad(
      lambda p: loss(p, remat), has_aux=True))(v["params"])
  np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    np.testing.assert_allclose(a, b, rtol=1e-4,
                               atol=1e-4 * float(jnp.abs(b).max()) + 1e-7)
