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
2019), `width` (base channels, 64 = torchvision; tiny values for tests) and
`zero_init_residual` (last BN gamma of every block 0, off by default like
torchvision).

Parameter names follow torchvision so that the mapping of
`vreid_jax.models.weights` is one-to-one: `conv1`, `bn1`, `layer1_0/conv1`,
`layer1_0/downsample_conv`, `layer1_0/downsample_bn`, ...

Padding mask: `ResNet.__call__` takes an optional per-image `mask` (N,) bool.
It is passed to every BatchNorm, so in training the batch statistics are
computed over real frames only and padded frames cannot change the features
of real frames (in eval BatchNorm uses running statistics and every image is
processed independently anyway).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from vreid_jax.models import common

ModuleDef = Any

# torchvision's conv init: kaiming_normal_(mode="fan_out", nonlinearity="relu")
# draws from an untruncated normal.
conv_kernel_init = nn.initializers.variance_scaling(
    2.0, "fan_out", "normal")

BN_MOMENTUM = 0.9  # == PyTorch momentum 0.1.
BN_EPSILON = 1e-5


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
    y = nn.relu(self.norm(name="bn1")(y, mask=mask))
    y = self.conv(self.planes, (3, 3), padding=_pad(3), name="conv2")(y)
    y = self.norm(scale_init=last_init, name="bn2")(y, mask=mask)
    if self.strides != 1 or x.shape[-1] != self.planes * self.expansion:
      x = self.conv(self.planes * self.expansion, (1, 1),
                    strides=(self.strides,) * 2, padding=_pad(1),
                    name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x, mask=mask)
    return nn.relu(x + y)


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
    y = nn.relu(self.norm(name="bn1")(y, mask=mask))
    y = self.conv(self.planes, (3, 3), strides=(self.strides,) * 2,
                  padding=_pad(3), name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y, mask=mask))
    y = self.conv(self.planes * self.expansion, (1, 1), padding=_pad(1),
                  name="conv3")(y)
    y = self.norm(scale_init=last_init, name="bn3")(y, mask=mask)
    if self.strides != 1 or x.shape[-1] != self.planes * self.expansion:
      x = self.conv(self.planes * self.expansion, (1, 1),
                    strides=(self.strides,) * 2, padding=_pad(1),
                    name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x, mask=mask)
    return nn.relu(x + y)


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
    dtype: computation dtype.
    param_dtype: parameter dtype.
    conv: conv constructor; defaults to bias-free nn.Conv with torchvision's
      kaiming-normal (fan_out) init.
    norm: BatchNorm constructor (without `use_running_average`, set from
      `train`); defaults to epsilon 1e-5, momentum 0.9.
  """
  arch: str = "resnet50"
  width: int = 64
  last_stride: int = 2
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  conv: ModuleDef | None = None
  norm: ModuleDef | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               mask: jax.Array | None = None) -> jax.Array:
    """Runs the trunk.

    Args:
      x: (N, H, W, 3) normalised images.
      train: batch statistics (True) or running averages (False) in BN.
      mask: optional (N,) bool, True for real images; BatchNorm batch
        statistics use real images only.

    Returns:
      (N, H/32, W/32, num_features) feature map (H/16, W/16 when
      last_stride == 1).
    """
    common.check_shape(x, (None, None, None, 3), f"{self.name}: images")
    stage_sizes, block_cls = arch_spec(self.arch)
    dtype = common.resolve_dtype(self.dtype)
    param_dtype = common.resolve_dtype(self.param_dtype)
    conv = self.conv or functools.partial(
        nn.Conv, use_bias=False, kernel_init=conv_kernel_init)
    conv = functools.partial(conv, dtype=dtype, param_dtype=param_dtype)
    norm = self.norm or functools.partial(
        nn.BatchNorm, momentum=BN_MOMENTUM, epsilon=BN_EPSILON)
    norm = functools.partial(norm, use_running_average=not train, dtype=dtype,
                             param_dtype=param_dtype)
    bn_mask = None
    if mask is not None:
      common.check_shape(mask, (x.shape[0],), f"{self.name}: mask")
      bn_mask = common.expand_mask(mask.astype(bool), 4)

    x = x.astype(dtype)
    x = conv(self.width, (7, 7), strides=(2, 2), padding=_pad(7),
             name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x, mask=bn_mask))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
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
