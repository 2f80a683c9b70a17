"""ResNets on clips with temporal layers in their blocks: the trunk of M3D
and of its 3D baselines (I3D, P3D-A/B/C).

The trunk is torchvision's ResNet (`resnet.py`) run on (B, T, H, W, C)
clips: every 2D conv is a 3D conv of temporal extent 1 (kernel (1, k, k),
so ImageNet weights load one to one), and each bottleneck can carry a
temporal layer of one `kind`:

  "2d"    none: the block is applied frame by frame;
  "m3d"   M3D's local layer on the block's spatial output S (after the 3x3
          conv, BN, ReLU): S + sum_i T_i(S), n dilated temporal convs
          (`TemporalConv`, kernel 3, dense C -> C) (Li et al., TIP, eq. 5-7);
  "p3d_a" P3D-A (serial): S, then T (3x1x1 conv + BN + ReLU);
  "p3d_b" P3D-B (parallel): S(x') + T(x') with x' the 1x1 conv's output;
  "p3d_c" P3D-C (residual): S + T(S), i.e. M3D's local layer with n = 1;
  "i3d"   I3D: the 3x3 conv becomes 3x3x3 (inflated ImageNet weights).
The stem has a kind too (`stem`): "2d" (7x7 conv, 3x3 max pool), "i3d"
(3x7x7 conv and 3x3x3 max pool), "m3d"/"p3d_c" (a local layer after conv1),
"p3d_a" (T after conv1), "p3d_b" (conv1(x) + T(x), T strided 2 in space).

Time is never strided (M3D's TIP version keeps T through the network; the
same for its I3D/P3D baselines, as the spec chooses for a fair Table IV).

Frame masks: the real frames are packed to the front and every temporal
conv (and I3D's temporal kernels and pool) reads its input with the padded
frames zeroed, which is exactly the zero "same" padding of the unpadded
clip; BatchNorm statistics use real frames only. A padded clip therefore
gives every real frame the features of the unpadded one.

Parameter names follow `resnet.ResNet` (conv1, bn1, layer{i}_{j}/conv{k},
bn{k}, downsample_conv/bn); temporal parameters live in submodules named
"local_m3d" (branch_r{rate}), "temporal" and "temporal_bn". `load_imagenet`
fills the 2D parameters from a torchvision file (inflating kernels of
temporal extent kt as W2d / kt, so a static clip gives the 2D answer away
from the clip's ends) and keeps the temporal ones at their initialisation.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vreid_jax.models import common
from vreid_jax.models import resnet
from vreid_jax.models import weights as weights_lib

ModuleDef = Any

KINDS = ("2d", "m3d", "p3d_a", "p3d_b", "p3d_c", "i3d")
TEMPORAL_PARAM_NAMES = ("local_m3d", "temporal", "temporal_bn")

conv_kernel_init = resnet.conv_kernel_init


def _pad(kt: int, k: int, dt: int = 1) -> tuple[tuple[int, int], ...]:
  return ((dt * (kt - 1) // 2,) * 2, ((k - 1) // 2,) * 2,
          ((k - 1) // 2,) * 2)


def _bn_mask(tmask: jax.Array) -> jax.Array:
  return tmask[:, :, None, None, None]


class TemporalConv(nn.Module):
  """A temporal conv over clips: kernel (3, 1, 1), dense C -> C, no bias.

  Reads its input with padded frames zeroed (they then equal the conv's own
  zero padding of the real frames, which come first).

  Attributes:
    features: output channels.
    dilation: temporal dilation r.
    kernel_size: temporal extent (3).
    spatial_stride: stride in height and width (P3D-B's parallel branch
      follows a strided spatial conv).
    kernel_init: init of the kernel (M3D: zeros, so the layer starts as
      the 2D network).
    dtype: computation dtype.
    param_dtype: parameter dtype.
  """
  features: int
  dilation: int = 1
  kernel_size: int = 3
  spatial_stride: int = 1
  kernel_init: Any = nn.initializers.zeros
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, tmask: jax.Array) -> jax.Array:
    k, d, s = self.kernel_size, self.dilation, self.spatial_stride
    return nn.Conv(
        self.features, (k, 1, 1), strides=(1, s, s),
        kernel_dilation=(d, 1, 1), padding=_pad(k, 1, d), use_bias=False,
        kernel_init=self.kernel_init, dtype=self.dtype,
        param_dtype=self.param_dtype)(common.zero_padded(x, tmask))


class LocalM3D(nn.Module):
  """M3D's local multi-scale temporal layer (TIP eq. 5-7) on S = S(x):

    y = S + sum_{i=1..n} T^(i)(S),  T^(i) a temporal conv of dilation r_i,
    y_t^(i) = sum_{a=-1..1} W^(i)[a] S_{t + a r_i}  (dense C -> C)

  With `branch_norm=None` (default, eq. 5 literally) the branches are
  linear, bias-free and zero-initialised: the layer starts as the identity
  (the network as its 2D self) and every branch receives a gradient from
  the first step. `branch_norm="bn_relu"` is the authors' code (each branch
  conv -> BN -> ReLU): there a zero init would leave the branches dead
  forever (ReLU'(0) = 0 after a BN of a zero input), so that option uses
  Kaiming-normal kernels.

  Attributes:
    rates: dilation of each branch (paper: 1, 2, 4 = 2^(i-1); code: 1, 2,
      3). One rate is P3D-C's residual unit.
    branch_norm: None or "bn_relu".
    dtype: computation dtype.
    param_dtype: parameter dtype.
    norm: BatchNorm constructor (for "bn_relu").
  """
  rates: Sequence[int] = (1, 2, 4)
  branch_norm: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm: ModuleDef = common.BatchNorm

  @nn.compact
  def __call__(self, s: jax.Array, tmask: jax.Array, *,
               train: bool) -> jax.Array:
    if self.branch_norm not in (None, "bn_relu"):
      raise ValueError(f"{self.name}: branch_norm must be None or "
                       f"'bn_relu', got {self.branch_norm!r}")
    c = s.shape[-1]
    init = (nn.initializers.zeros if self.branch_norm is None
            else conv_kernel_init)
    y = s
    for r in self.rates:
      t = TemporalConv(c, dilation=r, kernel_init=init, dtype=self.dtype,
                       param_dtype=self.param_dtype,
                       name=f"branch_r{r}")(s, tmask)
      if self.branch_norm == "bn_relu":
        t = nn.relu(self.norm(use_running_average=not train,
                              dtype=self.dtype, param_dtype=self.param_dtype,
                              name=f"branch_r{r}_bn")(
                                  t, mask=_bn_mask(tmask)))
      y = y + t
    return y


class VideoBottleneck(nn.Module):
  """torchvision's Bottleneck on clips, with a temporal layer of `kind`.

  Attributes:
    planes: channels of the inner convs; the output has 4x planes.
    strides: spatial stride of the 3x3 conv (and of the shortcut).
    kind: one of KINDS (module docstring).
    rates: the local layer's dilations ("m3d").
    branch_norm: the local layer's branch form ("m3d", "p3d_c").
    conv: 3D conv constructor.
    norm: BatchNorm constructor.
    zero_init_last: initialise the last BN gamma to 0.
  """
  planes: int
  strides: int
  kind: str
  conv: ModuleDef
  norm: ModuleDef
  rates: Sequence[int] = (1, 2, 4)
  branch_norm: str | None = None
  zero_init_last: bool = False

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array, tmask: jax.Array, *,
               train: bool) -> jax.Array:
    s_, bn = self.strides, _bn_mask(tmask)
    last_init = (nn.initializers.zeros if self.zero_init_last
                 else nn.initializers.ones)
    y = self.conv(self.planes, (1, 1, 1), padding=_pad(1, 1),
                  name="conv1")(x)
    x1 = nn.relu(self.norm(name="bn1")(y, mask=bn))
    kt = 3 if self.kind == "i3d" else 1
    inp = common.zero_padded(x1, tmask) if kt > 1 else x1
    s = self.conv(self.planes, (kt, 3, 3), strides=(1, s_, s_),
                  padding=_pad(kt, 3), name="conv2")(inp)
    s = nn.relu(self.norm(name="bn2")(s, mask=bn))
    dtype, param_dtype = self.conv.keywords["dtype"], (
        self.conv.keywords["param_dtype"])
    if self.kind == "m3d" or self.kind == "p3d_c":
      rates = tuple(self.rates) if self.kind == "m3d" else (1,)
      s = LocalM3D(rates=rates, branch_norm=self.branch_norm, dtype=dtype,
                   param_dtype=param_dtype, name="local_m3d")(
                       s, tmask, train=train)
    elif self.kind == "p3d_a":
      t = TemporalConv(self.planes, kernel_init=conv_kernel_init,
                       dtype=dtype, param_dtype=param_dtype,
                       name="temporal")(s, tmask)
      s = nn.relu(self.norm(name="temporal_bn")(t, mask=bn))
    elif self.kind == "p3d_b":
      s = s + TemporalConv(self.planes, spatial_stride=s_, dtype=dtype,
                           param_dtype=param_dtype,
                           name="temporal")(x1, tmask)
    y = self.conv(self.planes * self.expansion, (1, 1, 1),
                  padding=_pad(1, 1), name="conv3")(s)
    y = self.norm(scale_init=last_init, name="bn3")(y, mask=bn)
    if s_ != 1 or x.shape[-1] != self.planes * self.expansion:
      x = self.conv(self.planes * self.expansion, (1, 1, 1),
                    strides=(1, s_, s_), padding=_pad(1, 1),
                    name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x, mask=bn)
    return nn.relu(x + y)


class VideoBasicBlock(nn.Module):
  """torchvision's BasicBlock (ResNet-18/34) on clips, with a temporal layer
  of `kind` after its first (spatial) conv: S = ReLU(BN(conv1 x)); M3D /
  P3D-C: S + sum_i T_i(S); P3D-A: T after S; P3D-B: S + T(x); I3D: both
  3x3 convs 3x3x3.

  Attributes: as `VideoBottleneck` (`planes` is the output width).
  """
  planes: int
  strides: int
  kind: str
  conv: ModuleDef
  norm: ModuleDef
  rates: Sequence[int] = (1, 2, 4)
  branch_norm: str | None = None
  zero_init_last: bool = False

  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: jax.Array, tmask: jax.Array, *,
               train: bool) -> jax.Array:
    s_, bn = self.strides, _bn_mask(tmask)
    last_init = (nn.initializers.zeros if self.zero_init_last
                 else nn.initializers.ones)
    kt = 3 if self.kind == "i3d" else 1
    dtype, param_dtype = self.conv.keywords["dtype"], (
        self.conv.keywords["param_dtype"])
    inp = common.zero_padded(x, tmask) if kt > 1 else x
    s = self.conv(self.planes, (kt, 3, 3), strides=(1, s_, s_),
                  padding=_pad(kt, 3), name="conv1")(inp)
    s = nn.relu(self.norm(name="bn1")(s, mask=bn))
    if self.kind == "m3d" or self.kind == "p3d_c":
      rates = tuple(self.rates) if self.kind == "m3d" else (1,)
      s = LocalM3D(rates=rates, branch_norm=self.branch_norm, dtype=dtype,
                   param_dtype=param_dtype, name="local_m3d")(
                       s, tmask, train=train)
    elif self.kind == "p3d_a":
      t = TemporalConv(self.planes, kernel_init=conv_kernel_init,
                       dtype=dtype, param_dtype=param_dtype,
                       name="temporal")(s, tmask)
      s = nn.relu(self.norm(name="temporal_bn")(t, mask=bn))
    elif self.kind == "p3d_b":
      s = s + TemporalConv(self.planes, spatial_stride=s_, dtype=dtype,
                           param_dtype=param_dtype,
                           name="temporal")(x, tmask)
    inp = common.zero_padded(s, tmask) if kt > 1 else s
    y = self.conv(self.planes, (kt, 3, 3), padding=_pad(kt, 3),
                  name="conv2")(inp)
    y = self.norm(scale_init=last_init, name="bn2")(y, mask=bn)
    if s_ != 1 or x.shape[-1] != self.planes:
      x = self.conv(self.planes, (1, 1, 1), strides=(1, s_, s_),
                    padding=_pad(1, 1), name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x, mask=bn)
    return nn.relu(x + y)


def default_sites(kind: str, stage_sizes: Sequence[int]
                  ) -> tuple[tuple[int, int], ...]:
  """Blocks (stage, index) that carry the temporal layer of `kind`: M3D's
  four sites are the first block of each stage (TIP: "replacing four 2D
  convolution layers"); P3D and I3D modify every block."""
  if kind == "2d":
    return ()
  if kind == "m3d":
    return tuple((i, 0) for i in range(len(stage_sizes)))
  return tuple((i, j) for i, n in enumerate(stage_sizes) for j in range(n))


class VideoResNet(nn.Module):
  """ResNets on clips with temporal layers (module docstring).

  Attributes:
    arch: "resnet18", "resnet34", "resnet50" or "resnet101".
    width: base channels (64 = torchvision).
    last_stride: stride of layer4 (1 for ReID).
    kind: the temporal layer of the blocks in `sites`.
    sites: (stage, block) pairs that carry it; None = `default_sites`.
    stem: the stem's kind ("2d", "i3d", "m3d", "p3d_a", "p3d_b", "p3d_c").
    rates: dilations of the local M3D layers.
    stem_rates: dilations of a local layer in the stem (the public code's
      fifth M3D layer uses 1, 2, 3).
    branch_norm: the local layers' branch form (None = eq. 5).
    dtype: computation dtype.
    param_dtype: parameter dtype.
  """
  arch: str = "resnet50"
  width: int = 64
  last_stride: int = 1
  kind: str = "2d"
  sites: Sequence[tuple[int, int]] | None = None
  stem: str = "2d"
  rates: Sequence[int] = (1, 2, 4)
  stem_rates: Sequence[int] = (1, 2, 3)
  branch_norm: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, clips: jax.Array, mask: jax.Array | None = None, *,
               train: bool) -> tuple[jax.Array, jax.Array]:
    """Runs the trunk.

    Args:
      clips: (B, T, H, W, 3) normalised frames.
      mask: (B, T) bool, True for real frames (anywhere); None = all real.
      train: BatchNorm batch statistics (of real frames) when True.

    Returns:
      (maps (B, T, h, w, C), tmask (B, T)): the last maps with the real
      frames packed to the front, and which of the T positions are real.
    """
    common.check_shape(clips, (None, None, None, None, 3),
                       f"{self.name}: clips (B, T, H, W, 3)")
    for k, label in ((self.kind, "kind"), (self.stem, "stem")):
      if k not in KINDS:
        raise ValueError(f"{self.name}: {label} must be one of {KINDS}, got "
                         f"{k!r}")
    stage_sizes, block = resnet.arch_spec(self.arch)
    block_cls = (VideoBottleneck if block is resnet.Bottleneck
                 else VideoBasicBlock)
    sites = set(default_sites(self.kind, stage_sizes) if self.sites is None
                else (tuple(s) for s in self.sites))
    b, t = clips.shape[:2]
    dtype = common.resolve_dtype(self.dtype)
    param_dtype = common.resolve_dtype(self.param_dtype)
    conv = functools.partial(nn.Conv, use_bias=False,
                             kernel_init=conv_kernel_init, dtype=dtype,
                             param_dtype=param_dtype)
    norm = functools.partial(common.BatchNorm, use_running_average=not train,
                             dtype=dtype, param_dtype=param_dtype)
    tmask = common.frame_mask(mask, b, t)
    order, _ = common.pack_frames(tmask)
    x = common.gather_frames(clips.astype(dtype), order)
    tmask = jnp.take_along_axis(tmask, order, axis=1)
    bn = _bn_mask(tmask)

    kt = 3 if self.stem == "i3d" else 1
    x = common.zero_padded(x, tmask)
    y = conv(self.width, (kt, 7, 7), strides=(1, 2, 2), padding=_pad(kt, 7),
             name="conv1")(x)
    if self.stem == "p3d_b":  # conv1(x) + T(x), T strided like conv1.
      y = y + TemporalConv(self.width, spatial_stride=2, dtype=dtype,
                           param_dtype=param_dtype, name="temporal")(x, tmask)
    y = nn.relu(norm(name="bn1")(y, mask=bn))
    if self.stem in ("m3d", "p3d_c"):
      rates = tuple(self.stem_rates) if self.stem == "m3d" else (1,)
      y = LocalM3D(rates=rates, branch_norm=self.branch_norm, dtype=dtype,
                   param_dtype=param_dtype, name="local_m3d")(
                       y, tmask, train=train)
    elif self.stem == "p3d_a":
      y = nn.relu(norm(name="temporal_bn")(TemporalConv(
          self.width, kernel_init=conv_kernel_init, dtype=dtype,
          param_dtype=param_dtype, name="temporal")(y, tmask), mask=bn))
    # After a ReLU a zeroed padded frame never exceeds a real value.
    x = nn.max_pool(common.zero_padded(y, tmask), (kt, 3, 3),
                    strides=(1, 2, 2), padding=_pad(kt, 3))
    for i, num_blocks in enumerate(stage_sizes):
      stage_stride = 1 if i == 0 else (self.last_stride if i == 3 else 2)
      for j in range(num_blocks):
        x = block_cls(
            planes=self.width * 2**i,
            strides=stage_stride if j == 0 else 1,
            kind=self.kind if (i, j) in sites else "2d",
            conv=conv, norm=norm, rates=tuple(self.rates),
            branch_norm=self.branch_norm,
            name=f"layer{i + 1}_{j}")(x, tmask, train=train)
    return x, tmask


def spatial_pool(maps: jax.Array) -> jax.Array:
  """(B, T, h, w, C) -> (B, T, C) spatial mean in float32."""
  return jnp.mean(maps.astype(jnp.float32), axis=(2, 3))


def _is_temporal(key: str) -> bool:
  return any(part in TEMPORAL_PARAM_NAMES or part.startswith("branch_r")
             for part in key.split("/"))


def inflate(kernel: np.ndarray, kt: int) -> np.ndarray:
  """A 2D kernel (kh, kw, I, O) as (kt, kh, kw, I, O): W3d[t] = W2d / kt, so
  a static clip gives the 2D answer (away from the clip's ends)."""
  return np.repeat(np.asarray(kernel)[None], kt, axis=0) / kt


def load_imagenet(variables: Mapping[str, Any],
                  weights: str | os.PathLike | Mapping[str, Any], *,
                  arch: str, subtree: str = "backbone",
                  log=None) -> dict[str, Any]:
  """ImageNet (torchvision) weights into a `VideoResNet` at `subtree`.

  2D kernels are reshaped to temporal extent 1, or inflated (W / kt) where
  the model's kernel spans kt frames (I3D); parameters of the temporal
  layers are not in the file and keep their initialisation (zeros for M3D's
  local layers and P3D-B/C: the network starts as the 2D one). Any other
  missing, unexpected or mis-shaped key is an error naming it.
  """
  if isinstance(weights, (str, os.PathLike)):
    weights = weights_lib.read_weights(weights)
  new = resnet.flax_backbone_weights(
      {k.removeprefix("module."): v for k, v in weights.items()}, arch=arch)
  variables = weights_lib.to_dict(variables)
  kept = []
  for collection in weights_lib.COLLECTIONS:
    target = weights_lib.flatten(
        weights_lib.get_subtree(variables.get(collection, {}), subtree))
    for key, value in list(new[collection].items()):
      if key in target and np.ndim(target[key]) == 5 and np.ndim(value) == 4:
        new[collection][key] = inflate(value, target[key].shape[0])
    for key in target:
      if key not in new[collection] and _is_temporal(key):
        new[collection][key] = np.asarray(target[key])
        kept.append(f"{collection}/{key}")
  if log is not None and kept:
    log("%d temporal-layer arrays are not in ImageNet weights and keep "
        "their initialisation (%s)", len(kept), ", ".join(kept[:4]))
  return weights_lib.merge_subtree(
      variables, subtree, new, what=f"ImageNet {arch} into the video "
      f"ResNet {subtree}")
