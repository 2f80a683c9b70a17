"""3D ResNets (Hara, Kataoka & Satoh, "Can Spatiotemporal 3D CNNs Retrace
the History of 2D CNNs and ImageNet?", CVPR 2018), the 3D CNN of Gao &
Nevatia's comparison.

Layer arithmetic of Hara's 3D-ResNets-PyTorch (shortcut type B):

* stem: 7x7x7 conv, stride (1, 2, 2), padding 3, no bias; BatchNorm; ReLU;
  3x3x3 max pool, stride 2 in time, height and width, padding 1;
* Bottleneck (50/101): 1x1x1 conv + BN + ReLU, 3x3x3 conv with the stride
  + BN + ReLU, 1x1x1 conv (x4 channels) + BN; BasicBlock (18/34): two
  3x3x3 convs;
* stages [3, 4, 6, 3] (ResNet-50) of width 64/128/256/512 (x4), layer1
  stride 1, layers 2-4 stride 2 in time, height and width;
* shortcut "B": a 1x1x1 conv with the stride + BN when the shape changes;
* Kaiming-normal (fan_out) conv init, BN gamma 1 and beta 0.

Input and output are channels-last, (B, T, H, W, C), so no permute is needed.
For a 4-frame 224 x 112 clip the maps are (B, 1, 7, 4, 2048) after layer4.

Frame masks. A 3D conv mixes neighbouring frames, and the temporal strides
change which frames line up, so padding can only be made inert exactly: the
real frames are packed to the front (`common.pack_frames`), and before every
convolution or pool that spans frames the positions beyond each clip's real
length are set to 0 (which is then exactly the zero padding of the unpadded
clip; for the max pool, which follows a ReLU, 0 never exceeds a real value).
The real length after a stride-2 step is ceil(L / 2), i.e. the mask is
subsampled `mask[:, ::2]`; every BatchNorm takes the mask (training
statistics over real positions only) and the global pooling is a masked
mean. Hence a padded clip gives exactly the features of the unpadded one.

Kinetics weights: Hara's state dicts use torchvision's key names (conv1,
bn1, layer{i}.{j}.conv{k}, downsample.0/1, fc) with 5-d kernels (O, I, kt,
kh, kw); `load_torchvision` maps them like the 2D import (fc skipped).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from vreid_jax.models import common
from vreid_jax.models import resnet
from vreid_jax.models import weights as weights_lib

ModuleDef = Any

conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pad3(kt: int, k: int) -> tuple[tuple[int, int], ...]:
  return (((kt - 1) // 2,) * 2, ((k - 1) // 2,) * 2, ((k - 1) // 2,) * 2)


def _bn_mask(tmask: jax.Array) -> jax.Array:
  return tmask[:, :, None, None, None]


def _strided(tmask: jax.Array, stride: int) -> jax.Array:
  """The real-position mask after a 'same'-padded temporal stride."""
  return tmask[:, ::stride] if stride > 1 else tmask


class BasicBlock3D(nn.Module):
  """Two 3x3x3 convs and a residual connection (ResNet-18/34 3D).

  Attributes:
    planes: output channels.
    strides: (temporal, spatial) stride of the first conv and shortcut.
    conv: conv constructor.
    norm: BatchNorm constructor.
  """
  planes: int
  strides: tuple[int, int]
  conv: ModuleDef
  norm: ModuleDef

  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x, tmask):
    st, s = self.strides
    out_mask = _strided(tmask, st)
    y = self.conv(self.planes, (3, 3, 3), strides=(st, s, s),
                  padding=_pad3(3, 3), name="conv1")(
                      common.zero_padded(x, tmask))
    y = nn.relu(self.norm(name="bn1")(y, mask=_bn_mask(out_mask)))
    y = self.conv(self.planes, (3, 3, 3), padding=_pad3(3, 3),
                  name="conv2")(common.zero_padded(y, out_mask))
    y = self.norm(name="bn2")(y, mask=_bn_mask(out_mask))
    if st != 1 or s != 1 or x.shape[-1] != self.planes * self.expansion:
      x = self.conv(self.planes * self.expansion, (1, 1, 1),
                    strides=(st, s, s), padding=_pad3(1, 1),
                    name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x, mask=_bn_mask(out_mask))
    return nn.relu(x + y), out_mask


class Bottleneck3D(nn.Module):
  """1x1x1 -> 3x3x3 (strided) -> 1x1x1 (x4) bottleneck (ResNet-50/101 3D).

  Attributes:
    planes: channels of the inner convs; the output has 4x planes.
    strides: (temporal, spatial) stride of the 3x3x3 conv and shortcut.
    conv: conv constructor.
    norm: BatchNorm constructor.
  """
  planes: int
  strides: tuple[int, int]
  conv: ModuleDef
  norm: ModuleDef

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x, tmask):
    st, s = self.strides
    out_mask = _strided(tmask, st)
    y = self.conv(self.planes, (1, 1, 1), padding=_pad3(1, 1),
                  name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y, mask=_bn_mask(tmask)))
    y = self.conv(self.planes, (3, 3, 3), strides=(st, s, s),
                  padding=_pad3(3, 3), name="conv2")(
                      common.zero_padded(y, tmask))
    y = nn.relu(self.norm(name="bn2")(y, mask=_bn_mask(out_mask)))
    y = self.conv(self.planes * self.expansion, (1, 1, 1),
                  padding=_pad3(1, 1), name="conv3")(y)
    y = self.norm(name="bn3")(y, mask=_bn_mask(out_mask))
    if st != 1 or s != 1 or x.shape[-1] != self.planes * self.expansion:
      x = self.conv(self.planes * self.expansion, (1, 1, 1),
                    strides=(st, s, s), padding=_pad3(1, 1),
                    name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x, mask=_bn_mask(out_mask))
    return nn.relu(x + y), out_mask


ARCHS: dict[str, tuple[tuple[int, ...], type[nn.Module]]] = {
    "resnet18": ((2, 2, 2, 2), BasicBlock3D),
    "resnet34": ((3, 4, 6, 3), BasicBlock3D),
    "resnet50": ((3, 4, 6, 3), Bottleneck3D),
    "resnet101": ((3, 4, 23, 3), Bottleneck3D),
}


def num_features(arch: str, width: int = 64) -> int:
  """Channels of the last maps (2048 for ResNet-50 at width 64)."""
  if arch not in ARCHS:
    raise ValueError(f"Unknown 3D ResNet arch {arch!r}; expected one of "
                     f"{sorted(ARCHS)}.")
  return width * 8 * ARCHS[arch][1].expansion


class ResNet3D(nn.Module):
  """Hara's 3D ResNet trunk (no pooling, no fc): clip -> feature maps.

  Attributes:
    arch: "resnet18", "resnet34", "resnet50" or "resnet101".
    width: base channels (64 = Hara's).
    dtype: computation dtype.
    param_dtype: parameter dtype.
    norm: BatchNorm constructor (default `common.BatchNorm`).
  """
  arch: str = "resnet50"
  width: int = 64
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm: ModuleDef | None = None

  @nn.compact
  def __call__(self, clips: jax.Array, mask: jax.Array | None = None, *,
               train: bool) -> tuple[jax.Array, jax.Array]:
    """Runs the trunk.

    Args:
      clips: (B, T, H, W, 3) normalised frames.
      mask: (B, T) bool, True for real frames (anywhere); None = all real.
      train: batch statistics (True) or running averages (False) in BN.

    Returns:
      (maps (B, t, h, w, C), tmask (B, t)): the last maps, with the real
      frames packed to the front, and which of their t positions are real.
    """
    common.check_shape(clips, (None, None, None, None, 3),
                       f"{self.name}: clips (B, T, H, W, 3)")
    if self.arch not in ARCHS:
      raise ValueError(f"Unknown 3D ResNet arch {self.arch!r}; expected one "
                       f"of {sorted(ARCHS)}.")
    stage_sizes, block_cls = ARCHS[self.arch]
    b, t = clips.shape[:2]
    dtype = common.resolve_dtype(self.dtype)
    param_dtype = common.resolve_dtype(self.param_dtype)
    conv = functools.partial(nn.Conv, use_bias=False,
                             kernel_init=conv_kernel_init, dtype=dtype,
                             param_dtype=param_dtype)
    norm = functools.partial(self.norm or common.BatchNorm,
                             use_running_average=not train, dtype=dtype,
                             param_dtype=param_dtype)
    tmask = common.frame_mask(mask, b, t)
    order, _ = common.pack_frames(tmask)
    x = common.gather_frames(clips.astype(dtype), order)
    tmask = jnp.take_along_axis(tmask, order, axis=1)

    x = conv(self.width, (7, 7, 7), strides=(1, 2, 2), padding=_pad3(7, 7),
             name="conv1")(common.zero_padded(x, tmask))
    x = nn.relu(norm(name="bn1")(x, mask=_bn_mask(tmask)))
    x = nn.max_pool(common.zero_padded(x, tmask), (3, 3, 3),
                    strides=(2, 2, 2), padding=_pad3(3, 3))
    tmask = _strided(tmask, 2)
    for i, num_blocks in enumerate(stage_sizes):
      stride = 1 if i == 0 else 2
      for j in range(num_blocks):
        x, tmask = block_cls(
            planes=self.width * 2**i,
            strides=(stride, stride) if j == 0 else (1, 1),
            conv=conv, norm=norm, name=f"layer{i + 1}_{j}")(x, tmask)
    return x, tmask


def global_pool(maps: jax.Array, tmask: jax.Array) -> jax.Array:
  """(B, t, h, w, C) -> (B, C): mean over real positions, in float32."""
  spatial = jnp.mean(maps.astype(jnp.float32), axis=(2, 3))
  return common.masked_mean(spatial, tmask, axis=1)


def load_torchvision(variables: Mapping[str, Any],
                     weights: str | os.PathLike | Mapping[str, Any], *,
                     arch: str, subtree: str = "backbone") -> dict[str, Any]:
  """Returns `variables` with the `subtree` 3D ResNet from a Kinetics file.

  Args:
    variables: model variables with params/<subtree> and
      batch_stats/<subtree>.
    weights: a path (.pth/.pt/.safetensors/.npz) or a flat dict: Hara's
      3D-ResNets-PyTorch state dict (torchvision key names, 5-d kernels
      (O, I, kt, kh, kw); "module." and a wrapping "state_dict" are removed;
      fc is skipped), or '/'-joined Flax keys.
    arch: "resnet18", ..., "resnet101".
    subtree: where the 3D ResNet lives in the model's tree.

  Raises:
    WeightImportError: naming every missing, unexpected or shape-mismatched
      key.
  """
  if isinstance(weights, (str, os.PathLike)):
    weights = weights_lib.read_weights(weights)
  weights = {k.removeprefix("module."): v for k, v in weights.items()}
  if weights_lib.is_flax_flat(weights):
    new = weights_lib.split_collections(weights, "Flax 3D ResNet weights")
  else:
    new = resnet.torchvision_to_flax(weights, arch=arch, kernel_ndim=3)
  return weights_lib.merge_subtree(
      variables, subtree, new, what=f"3D {arch} weights into {subtree}")


def backbone_shapes(arch: str, width: int) -> dict[str, dict[str, Any]]:
  """Flat shapes of the 3D backbone variables (no compute)."""
  model = ResNet3D(arch=arch, width=width)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 4, 32, 32, 3)),
                         train=False))
  return {c: {k: tuple(v.shape)
              for k, v in weights_lib.flatten(shapes[c]).items()}
          for c in weights_lib.COLLECTIONS}
