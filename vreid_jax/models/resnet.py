"""ResNet-18/34/50/101 with torchvision's exact architecture (He et al. 2016).

The layer arithmetic matches `torchvision.models.resnet` so that imported
ImageNet weights (`vreid_jax.models.weights`) give the same outputs:

* stem: 7x7/2 conv (no bias, padding 3), BatchNorm, ReLU, 3x3/2 max pool with
  padding 1 (padded with -inf, like PyTorch);
* BasicBlock (18/34): 3x3 conv (stride here) + BN + ReLU, 3x3 conv + BN;
* Bottleneck (50/101, "v1.5"): 1x1 conv + BN + ReLU, 3x3 conv with the stride
  + BN + ReLU, 1x1 conv (x4 channels) + BN;
* shortcut: identity, or 1x1 strided conv + BN when the shape changes;
* every padding is written out explicitly (`((1, 1), (1, 1))`), never "SAME",
  because XLA's SAME padding is asymmetric for strided convs and PyTorch's is
  not;
* BatchNorm epsilon 1e-5 and flax momentum 0.9 (PyTorch momentum 0.1).
  PyTorch updates `running_var` with the unbiased batch variance and flax
  with the biased one; the difference is a factor n/(n-1) on the running
  statistics only, with n = frames x pixels, negligible here.

ReID additions: `last_stride` (1 keeps layer4 at 1/16 resolution, Luo et al.
2019), `width` (base channels, 64 = torchvision; tiny values for tests),
`zero_init_residual` (last BN gamma of every block 0, off by default like
torchvision) and `flow_stem`: a second stem for optical flow fused after the
max pool, STAR's eq. 2 (Wu et al., BMVC 2019),

  U = P(ReLU(BN(W1 * I))) + P(ReLU(BN(W2 * O)))

with I the RGB frame, O its flow (B, T, H, W, 2), W1/W2 separate 7x7/2
convs and P the 3x3/2 max pool (the paper omits BN; we keep ResNet's bn1 in
each stem so that ImageNet weights fit the RGB stem). The flow stem's
parameters are `flow_conv1` and `flow_bn1`.

Parameter names follow torchvision so that the mapping below is one-to-one:
`conv1`, `bn1`, `layer1_0/conv1`, `layer1_0/downsample_conv`,
`layer1_0/downsample_bn`, ... `load_torchvision` imports a torchvision state
dict (read by `vreid_jax.models.weights`) into a model's backbone subtree:

  conv1.weight (O, I, kh, kw)            -> params/conv1/kernel (kh, kw, I, O)
  bn1.weight / bias                      -> params/bn1/scale / bias
  bn1.running_mean / running_var         -> batch_stats/bn1/mean / var
  layer{i}.{j}.conv{k}.*, .bn{k}.*       -> layer{i}_{j}/conv{k}, bn{k}
  layer{i}.{j}.downsample.0.* / .1.*     -> layer{i}_{j}/downsample_conv / _bn
  fc.*, *.num_batches_tracked            -> skipped

A flow stem is not in ImageNet weights: it is initialised by the
cross-modality rule of TSN (Wang et al., ECCV 2016), the RGB conv1 kernel
averaged over its 3 input channels and copied to both flow channels, and
flow_bn1 = bn1.

Padding mask: `ResNet.__call__` takes an optional per-image `mask` (N,) bool.
It is passed to every BatchNorm, so in training the batch statistics are
computed over real frames only and padded frames cannot change the features
of real frames (in eval BatchNorm uses running statistics and every image is
processed independently anyway).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vreid_jax.models import common
from vreid_jax.models import weights as weights_lib

ModuleDef = Any

# torchvision's conv init: kaiming_normal_(mode="fan_out", nonlinearity="relu")
# draws from an untruncated normal.
conv_kernel_init = nn.initializers.variance_scaling(
    2.0, "fan_out", "normal")


def stem_block(inputs: jax.Array, prefix: str, *, conv, norm, width: int,
               dtype, bn_mask, train: bool = False) -> jax.Array:
  """torchvision's stem, 7x7/2 conv -> BN -> ReLU -> 3x3/2 max pool, with
  parameters `<prefix>conv1` and `<prefix>bn1` in the calling module ("" for
  RGB, "flow_" for the flow stem of STAR's eq. 2). Shared by `ResNet` and
  `star.Trunk`. In training the pool is `common.max_pool` (the same values
  and gradient, a faster backward); in eval `nn.max_pool`, which export
  (jax2onnx, symbolic batch and time) handles."""
  y = conv(width, (7, 7), strides=(2, 2), padding=_pad(7),
           name=f"{prefix}conv1")(inputs.astype(dtype))
  y = norm_act(norm, y, name=f"{prefix}bn1", mask=bn_mask)
  if train:
    return common.max_pool(y, (3, 3), (2, 2), _pad(3))
  return nn.max_pool(y, (3, 3), strides=(2, 2), padding=_pad(3))


def norm_act(norm: ModuleDef, x: jax.Array, *, name: str,
             mask: jax.Array | None, residual: jax.Array | None = None,
             relu: bool = True, **kwargs) -> jax.Array:
  """relu(norm(x) + residual): BatchNorm, the optional residual add and the
  ReLU, as one layer in training where `norm` builds a `norm.BatchNorm` (the
  fused backward of `norm_impl="fused"`), as three otherwise (and always in
  eval, where there is no backward: the BatchNorm module's own output, e.g.
  for `capture_intermediates`, is then the normalised x as with flax's).
  Same results either way."""
  layer = norm(name=name, **kwargs)
  if (getattr(layer, "fuses_activation", False)
      and layer.use_running_average is False):
    return layer(x, mask=mask, residual=residual, relu=relu)
  y = layer(x, mask=mask)
  if residual is not None:
    y = residual + y
  return nn.relu(y) if relu else y


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
  p = (k - 1) // 2
  return ((p, p), (p, p))


class BasicBlock(nn.Module):
  """torchvision BasicBlock: two 3x3 convs and a residual connection.

  Attributes:
    planes: output channels of both convs.
    strides: stride of the first 3x3 conv (and of the shortcut).
    conv: conv module constructor (functools.partial of nn.Conv).
    norm: BatchNorm constructor (functools.partial of nn.BatchNorm).
    zero_init_last: initialise the last BN gamma to 0 (block starts as the
      identity).
  """
  planes: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  zero_init_last: bool = False

  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None):
    last_init = (nn.initializers.zeros if self.zero_init_last
                 else nn.initializers.ones)
    y = self.conv(self.planes, (3, 3), strides=(self.strides,) * 2,
                  padding=_pad(3), name="conv1")(x)
    y = norm_act(self.norm, y, name="bn1", mask=mask)
    y = self.conv(self.planes, (3, 3), padding=_pad(3), name="conv2")(y)
    if self.strides != 1 or x.shape[-1] != self.planes * self.expansion:
      x = self.conv(self.planes * self.expansion, (1, 1),
                    strides=(self.strides,) * 2, padding=_pad(1),
                    name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x, mask=mask)
    return norm_act(self.norm, y, name="bn2", mask=mask, residual=x,
                    scale_init=last_init)


class Bottleneck(nn.Module):
  """torchvision Bottleneck (v1.5: the stride is on the 3x3 conv).

  Attributes:
    planes: channels of the 1x1 and 3x3 convs; the output has 4x planes.
    strides: stride of the 3x3 conv (and of the shortcut).
    conv: conv module constructor (functools.partial of nn.Conv).
    norm: BatchNorm constructor (functools.partial of nn.BatchNorm).
    zero_init_last: initialise the last BN gamma to 0 (block starts as the
      identity).
  """
  planes: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  zero_init_last: bool = False

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None):
    last_init = (nn.initializers.zeros if self.zero_init_last
                 else nn.initializers.ones)
    y = self.conv(self.planes, (1, 1), padding=_pad(1), name="conv1")(x)
    y = norm_act(self.norm, y, name="bn1", mask=mask)
    y = self.conv(self.planes, (3, 3), strides=(self.strides,) * 2,
                  padding=_pad(3), name="conv2")(y)
    y = norm_act(self.norm, y, name="bn2", mask=mask)
    y = self.conv(self.planes * self.expansion, (1, 1), padding=_pad(1),
                  name="conv3")(y)
    if self.strides != 1 or x.shape[-1] != self.planes * self.expansion:
      x = self.conv(self.planes * self.expansion, (1, 1),
                    strides=(self.strides,) * 2, padding=_pad(1),
                    name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x, mask=mask)
    return norm_act(self.norm, y, name="bn3", mask=mask, residual=x,
                    scale_init=last_init)


# arch -> (blocks per stage, block class).
ARCHS: dict[str, tuple[tuple[int, ...], type[nn.Module]]] = {
    "resnet18": ((2, 2, 2, 2), BasicBlock),
    "resnet34": ((3, 4, 6, 3), BasicBlock),
    "resnet50": ((3, 4, 6, 3), Bottleneck),
    "resnet101": ((3, 4, 23, 3), Bottleneck),
}


def arch_spec(arch: str) -> tuple[tuple[int, ...], type[nn.Module]]:
  """Returns (stage sizes, block class) of `arch`, with a clear error."""
  try:
    return ARCHS[arch]
  except KeyError:
    raise ValueError(
        f"Unknown ResNet arch {arch!r}; expected one of {sorted(ARCHS)}."
    ) from None


def num_features(arch: str, width: int = 64) -> int:
  """Channels of the last feature map (2048 for ResNet-50 at width 64)."""
  _, block = arch_spec(arch)
  return width * 8 * block.expansion


class ResNet(nn.Module):
  """torchvision ResNet trunk (no pooling, no fc): image -> feature map.

  Attributes:
    arch: "resnet18", "resnet34", "resnet50" or "resnet101".
    width: base channels (64 = torchvision); stage i has width * 2**i planes.
    last_stride: stride of layer4 (2 = torchvision, 1 = ReID).
    zero_init_residual: last BN gamma of each block starts at 0.
    flow_stem: add STAR's optical-flow stem (eq. 2), summed with the RGB
      stem after the max pool; `__call__` then needs `flow`.
    in_channels: channels of the input images (3; 2 for a ResNet on
      optical flow, e.g. M3D's RGB + flow two-stream baseline).
    dtype: computation dtype.
    param_dtype: parameter dtype.
    conv: conv constructor; defaults to bias-free nn.Conv with torchvision's
      kaiming-normal (fan_out) init.
    norm: BatchNorm constructor (without `use_running_average`, set from
      `train`); defaults to epsilon 1e-5, momentum 0.9.
    remat: rematerialise each residual block in the backward pass (its
      activations are recomputed instead of stored: less memory for long
      clips and large batches, about one more forward pass of compute). The
      parameters, their names and the results are unchanged.
    norm_impl: "fused" (default; models/norm.py: BatchNorm, residual add
      and ReLU as one op with a hand-written backward, faster to train) or
      "flax" (flax.linen.BatchNorm). The same variables and forward, and
      gradients equal to rounding; used when `norm` is not given.
  """
  arch: str = "resnet50"
  width: int = 64
  last_stride: int = 2
  zero_init_residual: bool = False
  flow_stem: bool = False
  in_channels: int = 3
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  conv: ModuleDef | None = None
  norm: ModuleDef | None = None
  remat: bool = False
  norm_impl: str = "fused"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               mask: jax.Array | None = None,
               flow: jax.Array | None = None) -> jax.Array:
    """Runs the trunk.

    Args:
      x: (N, H, W, 3) normalised images.
      train: batch statistics (True) or running averages (False) in BN.
      mask: optional (N,) bool, True for real images; BatchNorm batch
        statistics use real images only.
      flow: (N, H, W, 2) optical flow of the images; required with
        `flow_stem`, ignored otherwise.

    Returns:
      (N, H/32, W/32, num_features) feature map (H/16, W/16 when
      last_stride == 1).
    """
    common.check_shape(x, (None, None, None, self.in_channels),
                       f"{self.name}: images")
    stage_sizes, block_cls = arch_spec(self.arch)
    dtype = common.resolve_dtype(self.dtype)
    param_dtype = common.resolve_dtype(self.param_dtype)
    conv = self.conv or functools.partial(
        nn.Conv, use_bias=False, kernel_init=conv_kernel_init)
    conv = functools.partial(conv, dtype=dtype, param_dtype=param_dtype)
    norm = self.norm or common.batch_norm(self.norm_impl)
    norm = functools.partial(norm, use_running_average=not train, dtype=dtype,
                             param_dtype=param_dtype)
    bn_mask = None
    if mask is not None:
      common.check_shape(mask, (x.shape[0],), f"{self.name}: mask")
      bn_mask = common.expand_mask(mask.astype(bool), 4)

    stem = functools.partial(stem_block, conv=conv, norm=norm, train=train,
                             width=self.width, dtype=dtype, bn_mask=bn_mask)

    x = stem(x, "")
    if self.flow_stem:
      if flow is None:
        raise ValueError(f"{self.name}: flow_stem=True needs `flow` (N, H, W,"
                         " 2), the optical flow of the images.")
      common.check_shape(flow, x.shape[:1] + (None, None, 2),
                         f"{self.name}: flow (N, H, W, 2)")
      x = x + stem(flow, "flow_")
    if self.remat:
      block_cls = nn.remat(block_cls)
    for i, num_blocks in enumerate(stage_sizes):
      stage_stride = 1 if i == 0 else (self.last_stride if i == 3 else 2)
      for j in range(num_blocks):
        x = block_cls(
            planes=self.width * 2**i,
            strides=stage_stride if j == 0 else 1,
            conv=conv,
            norm=norm,
            zero_init_last=self.zero_init_residual,
            name=f"layer{i + 1}_{j}")(x, mask=bn_mask)
    return x


def global_avg_pool(x: jax.Array) -> jax.Array:
  """(N, H, W, C) -> (N, C) spatial mean, accumulated in float32."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


# ---------------------------------------------------------------------------
# torchvision weights.

_SKIPPED = re.compile(r"^(fc\..*|.*num_batches_tracked)$")
_BN_FIELDS = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
_COLLECTIONS = weights_lib.COLLECTIONS
FLOW_STEM = ("flow_conv1", "flow_bn1")


def _block_names(arch: str) -> list[str]:
  stage_sizes, _ = arch_spec(arch)
  return [f"layer{i + 1}.{j}" for i, n in enumerate(stage_sizes)
          for j in range(n)]


def torchvision_keys(arch: str) -> list[str]:
  """Every torchvision state-dict key the backbone needs (no fc, no counts)."""
  _, block = arch_spec(arch)
  num_convs = 3 if block is Bottleneck else 2
  bn = list(_BN_FIELDS)

  keys = ["conv1.weight"] + [f"bn1.{f}" for f in bn]
  for name in _block_names(arch):
    for k in range(1, num_convs + 1):
      keys.append(f"{name}.conv{k}.weight")
      keys += [f"{name}.bn{k}.{f}" for f in bn]
    if name.endswith(".0") and (block is Bottleneck or
                                not name.startswith("layer1.")):
      keys.append(f"{name}.downsample.0.weight")
      keys += [f"{name}.downsample.1.{f}" for f in bn]
  return keys


def _flax_location(key: str) -> tuple[str, tuple[str, ...]] | None:
  """torchvision key -> (collection, path in the backbone tree), or None."""
  parts = key.split(".")
  field = parts[-1]
  mod = parts[:-1]
  if len(mod) >= 2 and mod[0].startswith("layer"):
    block = f"{mod[0]}_{mod[1]}"
    rest = mod[2:]
    if rest == ["downsample", "0"]:
      layer = "downsample_conv"
    elif rest == ["downsample", "1"]:
      layer = "downsample_bn"
    elif len(rest) == 1:
      layer = rest[0]
    else:
      return None
    path = (block, layer)
  elif len(mod) == 1:
    layer = mod[0]
    path = (layer,)
  else:
    return None
  if layer.startswith("conv") or layer == "downsample_conv":
    return ("params", path + ("kernel",)) if field == "weight" else None
  if layer.startswith("bn") or layer == "downsample_bn":
    if field not in _BN_FIELDS:
      return None
    collection, leaf = _BN_FIELDS[field]
    return collection, path + (leaf,)
  return None


def torchvision_to_flax(state_dict: Mapping[str, Any], *, arch: str,
                        kernel_ndim: int = 2
                        ) -> dict[str, dict[str, np.ndarray]]:
  """Converts a torchvision ResNet state dict to flat Flax backbone weights.

  Args:
    state_dict: torchvision keys -> arrays.
    arch: "resnet18", "resnet34", "resnet50" or "resnet101".
    kernel_ndim: spatial dimensions of the conv kernels: 2 (torchvision,
      (O, I, kh, kw) -> (kh, kw, I, O)) or 3 (Hara's 3D ResNets, (O, I, kt,
      kh, kw) -> (kt, kh, kw, I, O)); the key names are the same.

  Returns:
    {"params": {"layer1_0/conv1/kernel": ...}, "batch_stats": {...}} with
    '/'-joined paths relative to the backbone and Flax layouts (HWIO).

  Raises:
    WeightImportError: keys the arch needs are missing or unknown keys are
      present (every one named).
  """
  expected = set(torchvision_keys(arch))
  given = {k for k in state_dict if not _SKIPPED.match(k)}
  missing = sorted(expected - given)
  unexpected = sorted(given - expected)
  if missing or unexpected:
    raise weights_lib.WeightImportError(weights_lib.report(
        f"torchvision {arch} state dict", missing, unexpected, []))
  out = {c: {} for c in _COLLECTIONS}
  for key in sorted(given):
    collection, path = _flax_location(key)
    value = np.asarray(state_dict[key])
    if path[-1] == "kernel":
      if value.ndim != kernel_ndim + 2:
        raise weights_lib.WeightImportError(
            f"{key}: expected a {kernel_ndim + 2}-d conv weight (O, I, "
            f"{'kt, ' if kernel_ndim == 3 else ''}kh, kw), got shape "
            f"{value.shape}.")
      # OI(T)HW -> (T)HWIO.
      value = value.transpose(tuple(range(2, kernel_ndim + 2)) + (1, 0))
    out[collection]["/".join(path)] = value
  return out


def flax_backbone_weights(weights: Mapping[str, Any], *,
                          arch: str) -> dict[str, dict[str, np.ndarray]]:
  """{"params": flat, "batch_stats": flat} from a torchvision or Flax dict."""
  if weights_lib.is_flax_flat(weights):
    return weights_lib.split_collections(weights, "Flax backbone weights")
  return torchvision_to_flax(weights, arch=arch)


def flow_stem_from_rgb(new: Mapping[str, Mapping[str, np.ndarray]]
                       ) -> dict[str, dict[str, np.ndarray]]:
  """TSN cross-modality init of the flow stem from the RGB stem's weights.

  flow_conv1 = the conv1 kernel averaged over its RGB input channels and
  repeated for the 2 flow channels; flow_bn1 = bn1.
  """
  out = {c: dict(v) for c, v in new.items()}
  kernel = np.asarray(new["params"]["conv1/kernel"])   # (7, 7, 3, O)
  out["params"]["flow_conv1/kernel"] = np.repeat(
      kernel.mean(axis=2, keepdims=True), 2, axis=2)
  for collection in _COLLECTIONS:
    for k, v in new[collection].items():
      if k.startswith("bn1/"):
        out[collection]["flow_" + k] = v
  return out


def load_torchvision(variables: Mapping[str, Any],
                     weights: str | os.PathLike | Mapping[str, Any], *,
                     arch: str, subtree: str = "backbone") -> dict[str, Any]:
  """Returns `variables` with the `subtree` ResNet replaced by `weights`.

  Args:
    variables: model variables with "params"/<subtree> and
      "batch_stats"/<subtree> subtrees (e.g. from `Model.init`).
    weights: a path (.pth/.pt/.safetensors/.npz) or a flat dict, either a
      torchvision state dict or '/'-joined Flax keys ("params/conv1/kernel",
      as written by `python -m vreid_jax.import_weights`).
    arch: ResNet arch of the model ("resnet50", ...).
    subtree: where the ResNet lives in the model's tree.

  Returns:
    New variables (the input is not modified), every leaf cast to the dtype
    of the leaf it replaces. A flow stem in the model and not in the file is
    initialised from the RGB stem (`flow_stem_from_rgb`).

  Raises:
    WeightImportError: naming every missing, unexpected or shape-mismatched
      key (in Flax names, relative to the backbone).
  """
  if isinstance(weights, (str, os.PathLike)):
    weights = weights_lib.read_weights(weights)
  weights = {k.removeprefix("module."): v for k, v in weights.items()}
  new = flax_backbone_weights(weights, arch=arch)
  target = weights_lib.flatten(
      weights_lib.get_subtree(variables.get("params", {}), subtree))
  if "flow_conv1/kernel" in target and "flow_conv1/kernel" not in new[
      "params"]:
    new = flow_stem_from_rgb(new)
  stem = new["params"].get("conv1/kernel")
  want = target.get("conv1/kernel")
  if stem is not None and want is not None and (
      np.shape(want)[2] != np.shape(stem)[2]):
    # A ResNet on other input channels (optical flow): TSN's
    # cross-modality init, the RGB kernel averaged over its inputs.
    new["params"]["conv1/kernel"] = np.repeat(
        np.asarray(stem).mean(axis=2, keepdims=True), np.shape(want)[2],
        axis=2)
  return weights_lib.merge_subtree(variables, subtree, new,
                                   what=f"{arch} weights into {subtree}")


def backbone_shapes(arch: str, width: int) -> dict[str, dict[str, Any]]:
  """Flat shapes of the backbone variables of `arch` at `width` (no compute)."""
  model = ResNet(arch=arch, width=width)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                         train=False))
  return {c: {k: tuple(v.shape)
              for k, v in weights_lib.flatten(shapes[c]).items()}
          for c in _COLLECTIONS}


def convert_file(path: str | os.PathLike, *,
                 arch: str) -> dict[str, np.ndarray]:
  """Reads a weight file and returns the checked, '/'-flattened Flax tree.

  The width is read from `conv1.weight` (64 for torchvision's models) and
  every shape is checked against the backbone `ResNet(arch, width)`.

  Returns:
    {"params/conv1/kernel": ..., "batch_stats/bn1/mean": ..., ...}.
  """
  new = flax_backbone_weights(weights_lib.read_weights(path), arch=arch)
  stem = new["params"].get("conv1/kernel")
  if stem is None:
    raise weights_lib.WeightImportError(
        weights_lib.report(str(path), ["params/conv1/kernel"], [], []))
  expected = backbone_shapes(arch, int(stem.shape[-1]))
  weights_lib.check_against(str(path), new, expected)
  return {f"{c}/{k}": np.asarray(v, np.float32)
          for c in _COLLECTIONS for k, v in new[c].items()}
