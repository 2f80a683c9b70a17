"""GoogLeNet (Inception v1 with BatchNorm, Szegedy et al. 2015), torchvision's.

The layer arithmetic matches `torchvision.models.googlenet` (the BN
GoogLeNet that torchvision and TF-slim ship), so imported ImageNet weights
give the same outputs:

* BasicConv: conv without bias -> BatchNorm (epsilon 1e-3) -> ReLU;
* stem: conv1 7x7/2 (64, padding 3) -> maxpool 3/2 -> conv2 1x1 (64) ->
  conv3 3x3 (192, padding 1);
* Inception block: [1x1 ; 1x1 -> 3x3 ; 1x1 -> 3x3 ; maxpool 3/1 -> 1x1]
  concatenated (the "5x5" branch uses a 3x3 kernel, as in torchvision);
* every max pool uses PyTorch's ceil_mode=True (`max_pool_ceil`), padded
  with -inf;
* no LRN, no auxiliary heads, no dropout and no fc (dropped).

Inputs are normalised to [-1, 1] (`input.mean = input.std = 0.5`): what the
ported weights expect (torchvision's `transform_input=True` turns
ImageNet-normalised input into exactly this).

The network is split into the stages of Dai et al.'s TRL paper (Fig. 2),
so that a model can share the stem and copy the rest:

  stage    layers                                      224 x 224 input
  convs    conv1 -> maxpool1 -> conv2 -> conv3         56 x 56 x 192
  incep1   maxpool2 -> inception3a, 3b                 28 x 28 x 480
  incep2   maxpool3 -> inception4a .. 4e               14 x 14 x 832
  incep3   maxpool4 (2/2) -> inception5a, 5b           7 x 7 x 1024

`Convs` is the stem, `InceptionStages` runs incep1..3 and returns every
stage's output, `GoogLeNet` is the two in sequence (the torchvision trunk).
`width` scales every channel count by width / 64 (64 = torchvision; tiny
values for tests).

Parameter names follow torchvision one to one (`conv1/conv`, `conv1/bn`,
`incep1/inception3a/branch2_0/conv`, ...), and `load_torchvision` imports a
torchvision state dict (read by `vreid_jax.models.weights`, no pickled code
executed) into a model's stem and stage subtrees:

  conv1.conv.weight (O, I, kh, kw)           -> convs: conv1/conv/kernel (kh, kw, I, O)
  conv1.bn.weight / bias                     -> convs: conv1/bn/scale / bias
  conv1.bn.running_mean / running_var        -> convs: batch_stats conv1/bn/mean / var
  inception3a.branch2.0.conv.weight          -> stages: incep1/inception3a/branch2_0/conv/kernel
  inception3a.branch4.1.bn.*                 -> stages: incep1/inception3a/branch4_1/bn/*
  fc.*, aux1.*, aux2.*, *.num_batches_tracked -> skipped

Parameters (width 64): convs 124,736, incep1-3 5,475,168; the whole trunk
5,599,904 (torchvision's 6,624,904 without the fc's 1,025,000).

Padding mask: every BatchNorm takes an optional per-image mask (N,), so
training statistics come from real frames only.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vreid_jax.models import common
from vreid_jax.models import weights as weights_lib

ModuleDef = Any

BN_EPSILON = 1e-3   # torchvision's BasicConv2d (and TF-slim's).
# torchvision's init of GoogLeNet's convs: N(0, 0.01^2) truncated at +-2.
conv_kernel_init = nn.initializers.truncated_normal(0.01)

# name -> (output channels, kernel, stride, padding) at width 64.
STEM = (("conv1", 64, 7, 2, 3), ("conv2", 64, 1, 1, 0),
        ("conv3", 192, 3, 1, 1))
# Inception blocks at width 64: (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5,
# pool_proj); the input width follows from the previous block.
BLOCKS = {
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
# stage -> ((pool window, pool stride), blocks).
STAGES = {
    "incep1": ((3, 2), ("inception3a", "inception3b")),
    "incep2": ((3, 2), ("inception4a", "inception4b", "inception4c",
                        "inception4d", "inception4e")),
    "incep3": ((2, 2), ("inception5a", "inception5b")),
}
# Branch convs of a block, in torchvision's names, with their kernel size and
# index into the block's channel tuple.
_BRANCHES = (("branch1", 1, 0), ("branch2_0", 1, 1), ("branch2_1", 3, 2),
             ("branch3_0", 1, 3), ("branch3_1", 3, 4), ("branch4_1", 1, 5))


def channels(n: int, width: int) -> int:
  """`n` channels of the torchvision network scaled to `width` (>= 1)."""
  return max(1, int(round(n * width / 64)))


def stage_channels(stage: str, width: int = 64) -> int:
  """Output channels of a stage ("convs", "incep1", ...) at `width`."""
  if stage == "convs":
    return channels(STEM[-1][1], width)
  c = BLOCKS[STAGES[stage][1][-1]]
  return sum(channels(c[i], width) for i in (0, 2, 4, 5))


def num_features(width: int = 64) -> int:
  """Channels of the last map (1024 at width 64)."""
  return stage_channels("incep3", width)


def max_pool_ceil(x: jax.Array, window: int, stride: int,
                  padding: int = 0) -> jax.Array:
  """PyTorch's MaxPool2d(window, stride, padding, ceil_mode=True), NHWC.

  Output size ceil((n + 2p - k) / s) + 1, minus one when the last window
  would start in the right padding (PyTorch's rule); the extra right
  padding is -inf. A map smaller than the window still gives one output
  (PyTorch would refuse; only tiny test frames get there).
  """
  pads = []
  for n in x.shape[1:3]:
    out = max(math.ceil((n + 2 * padding - window) / stride) + 1, 1)
    if out > 1 and (out - 1) * stride >= n + padding:
      out -= 1
    extra = max(0, (out - 1) * stride + window - n - 2 * padding)
    pads.append((padding, padding + extra))
  return nn.max_pool(x, (window, window), strides=(stride, stride),
                     padding=pads)


class BasicConv(nn.Module):
  """torchvision's BasicConv2d: conv (no bias) -> BatchNorm -> ReLU.

  Attributes:
    features: output channels.
    kernel: square kernel size.
    strides: stride.
    padding: symmetric padding (written out, never "SAME").
    train: BatchNorm batch statistics (True) or running averages.
    dtype: computation dtype.
    param_dtype: parameter dtype.
    norm: BatchNorm constructor (default epsilon 1e-3, momentum 0.9).
  """
  features: int
  kernel: int
  strides: int = 1
  padding: int = 0
  train: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm: ModuleDef | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None
               ) -> jax.Array:
    p = self.padding
    y = nn.Conv(self.features, (self.kernel, self.kernel),
                strides=(self.strides, self.strides), padding=((p, p), (p, p)),
                use_bias=False, kernel_init=conv_kernel_init,
                dtype=self.dtype, param_dtype=self.param_dtype,
                name="conv")(x.astype(self.dtype))
    norm = self.norm or functools.partial(common.BatchNorm,
                                          epsilon=BN_EPSILON)
    y = norm(use_running_average=not self.train, dtype=self.dtype,
             param_dtype=self.param_dtype, name="bn")(y, mask=mask)
    return nn.relu(y)


class Inception(nn.Module):
  """One Inception block (torchvision's, with its 3x3 "5x5" branch).

  Attributes:
    block: the torchvision block name ("inception3a", ...).
    width: channel scale (64 = torchvision).
    conv: `BasicConv` constructor with train/dtype set.
  """
  block: str
  width: int
  conv: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None
               ) -> jax.Array:
    c = [channels(n, self.width) for n in BLOCKS[self.block]]
    conv = {name: self.conv(c[i], k, padding=k // 2, name=name)
            for name, k, i in _BRANCHES}
    b1 = conv["branch1"](x, mask)
    b2 = conv["branch2_1"](conv["branch2_0"](x, mask), mask)
    b3 = conv["branch3_1"](conv["branch3_0"](x, mask), mask)
    b4 = conv["branch4_1"](max_pool_ceil(x, 3, 1, 1), mask)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


def _conv_factory(train, dtype, param_dtype, norm):
  return functools.partial(BasicConv, train=train,
                           dtype=common.resolve_dtype(dtype),
                           param_dtype=common.resolve_dtype(param_dtype),
                           norm=norm)


def _bn_mask(mask: jax.Array | None, n: int, name: str):
  if mask is None:
    return None
  common.check_shape(mask, (n,), f"{name}: mask (N,)")
  return common.expand_mask(mask.astype(bool), 4)


class Convs(nn.Module):
  """The stem ("Convs" of TRL): conv1 -> maxpool -> conv2 -> conv3.

  Attributes:
    width: channel scale (64 = torchvision).
    dtype: computation dtype.
    param_dtype: parameter dtype.
    norm: BatchNorm constructor (default epsilon 1e-3).
  """
  width: int = 64
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm: ModuleDef | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               mask: jax.Array | None = None) -> jax.Array:
    """(N, H, W, 3) images in [-1, 1] -> (N, H/4, W/4, 192 at width 64)."""
    common.check_shape(x, (None, None, None, 3), f"{self.name}: images")
    conv = _conv_factory(train, self.dtype, self.param_dtype, self.norm)
    bn_mask = _bn_mask(mask, x.shape[0], self.name)
    for name, features, k, s, p in STEM:
      x = conv(channels(features, self.width), k, strides=s, padding=p,
               name=name)(x, bn_mask)
      if name == "conv1":
        x = max_pool_ceil(x, 3, 2)
    return x


class InceptionStage(nn.Module):
  """One stage of TRL's split: a max pool, then its Inception blocks.

  Attributes:
    stage: "incep1", "incep2" or "incep3".
    width: channel scale (64 = torchvision).
    conv: `BasicConv` constructor with train/dtype set.
  """
  stage: str
  width: int
  conv: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None
               ) -> jax.Array:
    (window, stride), blocks = STAGES[self.stage]
    x = max_pool_ceil(x, window, stride)
    for block in blocks:
      x = Inception(block, self.width, self.conv, name=block)(x, mask)
    return x


class InceptionStages(nn.Module):
  """Incep-1, Incep-2 and Incep-3 of TRL, each returned.

  Attributes:
    width: channel scale (64 = torchvision).
    stages: the stages to run, in order (a prefix of incep1..3).
    dtype: computation dtype.
    param_dtype: parameter dtype.
    norm: BatchNorm constructor (default epsilon 1e-3).
  """
  width: int = 64
  stages: Sequence[str] = ("incep1", "incep2", "incep3")
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm: ModuleDef | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               mask: jax.Array | None = None) -> dict[str, jax.Array]:
    """The stem's maps (N, h, w, C) -> {stage: its output maps}."""
    conv = _conv_factory(train, self.dtype, self.param_dtype, self.norm)
    bn_mask = _bn_mask(mask, x.shape[0], self.name)
    out = {}
    for stage in self.stages:
      x = InceptionStage(stage, self.width, conv, name=stage)(x, bn_mask)
      out[stage] = x
    return out


class GoogLeNet(nn.Module):
  """torchvision's GoogLeNet trunk: `Convs` then `InceptionStages`.

  Attributes:
    width: channel scale (64 = torchvision).
    dtype: computation dtype.
    param_dtype: parameter dtype.
  """
  width: int = 64
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               mask: jax.Array | None = None) -> dict[str, jax.Array]:
    """(N, H, W, 3) -> {"convs", "incep1", "incep2", "incep3": maps}."""
    kw = dict(width=self.width, dtype=self.dtype,
              param_dtype=self.param_dtype)
    y = Convs(**kw, name="convs")(x, train=train, mask=mask)
    out = {"convs": y}
    out.update(InceptionStages(**kw, name="stages")(y, train=train,
                                                    mask=mask))
    return out


# ---------------------------------------------------------------------------
# torchvision weights.

_SKIPPED = re.compile(r"^(fc\..*|aux[12]\..*|.*num_batches_tracked)$")
_BN_FIELDS = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
_COLLECTIONS = weights_lib.COLLECTIONS
_STAGE_OF = {block: stage for stage, (_, blocks) in STAGES.items()
             for block in blocks}


def torchvision_keys() -> list[str]:
  """Every torchvision state-dict key the trunk needs (no fc, aux, counts)."""
  keys = []

  def basic(prefix):
    keys.append(f"{prefix}.conv.weight")
    keys.extend(f"{prefix}.bn.{f}" for f in _BN_FIELDS)

  for name, *_ in STEM:
    basic(name)
  for block in BLOCKS:
    for branch, _, _ in _BRANCHES:
      basic(f"{block}.{branch.replace('_', '.')}")
  return keys


def _flax_location(key: str) -> tuple[str, str, str]:
  """torchvision key -> (part "convs"/"stages", collection, flax path)."""
  parts = key.split(".")
  field, layer = parts[-1], parts[-2]         # conv|bn, weight|bias|...
  if layer == "conv":
    collection, leaf = "params", "kernel"
  else:
    collection, leaf = _BN_FIELDS[field]
  if parts[0] in _STAGE_OF:
    branch = "_".join(parts[1:-2])
    path = f"{_STAGE_OF[parts[0]]}/{parts[0]}/{branch}/{layer}/{leaf}"
    return "stages", collection, path
  return "convs", collection, f"{parts[0]}/{layer}/{leaf}"


def torchvision_to_flax(state_dict: Mapping[str, Any]
                        ) -> dict[str, dict[str, dict[str, np.ndarray]]]:
  """Converts a torchvision GoogLeNet state dict to flat Flax weights.

  Args:
    state_dict: torchvision keys -> arrays (a leading "module." removed).

  Returns:
    {"convs": {"params": {"conv1/conv/kernel": ...}, "batch_stats": {...}},
     "stages": {"params": {"incep1/inception3a/branch1/conv/kernel": ...},
                ...}}, '/'-joined paths relative to `Convs` and to
    `InceptionStages`, kernels in HWIO.

  Raises:
    WeightImportError: keys the trunk needs are missing or unknown keys are
      present (every one named).
  """
  state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
  expected = set(torchvision_keys())
  given = {k for k in state_dict if not _SKIPPED.match(k)}
  missing = sorted(expected - given)
  unexpected = sorted(given - expected)
  if missing or unexpected:
    raise weights_lib.WeightImportError(weights_lib.report(
        "torchvision GoogLeNet state dict", missing, unexpected, []))
  out = {part: {c: {} for c in _COLLECTIONS} for part in ("convs", "stages")}
  bad = []
  for key in sorted(given):
    part, collection, path = _flax_location(key)
    value = np.asarray(state_dict[key])
    if path.endswith("kernel"):
      if value.ndim != 4:
        bad.append(f"{key} (expected (O, I, kh, kw), got {value.shape})")
        continue
      value = value.transpose(2, 3, 1, 0)
    out[part][collection][path] = value
  if bad:
    raise weights_lib.WeightImportError(weights_lib.report(
        "torchvision GoogLeNet state dict", [], [], bad))
  return out


def load_torchvision(variables: Mapping[str, Any],
                     weights: str | os.PathLike | Mapping[str, Any], *,
                     convs: str = "convs",
                     stages: Sequence[str] = ("stages",)) -> dict[str, Any]:
  """Returns `variables` with a GoogLeNet's stem and stages from `weights`.

  Args:
    variables: model variables (e.g. from `Model.init`).
    weights: a path (.pth/.pt/.safetensors/.npz) or a flat dict with
      torchvision's GoogLeNet keys.
    convs: the subtree of the `Convs` stem.
    stages: the subtrees of `InceptionStages` copies; each receives the same
      ImageNet weights (TRL's two streams start equal).

  Returns:
    New variables (the input is not modified), each leaf cast to the dtype
    of the leaf it replaces.

  Raises:
    WeightImportError: naming every missing, unexpected or shape-mismatched
      key (torchvision names for the file, Flax names for the model).
  """
  if isinstance(weights, (str, os.PathLike)):
    weights = weights_lib.read_weights(weights)
  new = torchvision_to_flax(weights)
  variables = weights_lib.merge_subtree(
      variables, convs, new["convs"], what=f"GoogLeNet weights into {convs}")
  for subtree in stages:
    variables = weights_lib.merge_subtree(
        variables, subtree, new["stages"],
        what=f"GoogLeNet weights into {subtree}")
  return variables
