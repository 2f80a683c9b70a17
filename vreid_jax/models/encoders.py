"""The frame encoder: a 2D backbone applied to every frame of a clip.

    clips (B, T, H, W, 3) [+ flow (B, T, H, W, 2)]
      -> backbone (ResNet per frame, time folded into the batch)   maps
      -> spatial mean                                              (B*T, C)
      -> reduction (Dense + BN [+ ReLU], when frame_dim > 0)        (B*T, d)
      -> frames (B, T, d), maps (B, T, h, w, C)

Its submodules are named `backbone` and `reduction`. Models build it in
`setup` and share their scope with it (`nn.share_scope`), so those names sit
at the top of the model's tree: a frame model (the baseline with T=1, GLTR's
stage 1) initialises any temporal model built on the same encoder, subtree
for subtree.

Padding: with a mask, every BatchNorm of the backbone and the reduction
computes its training statistics over real frames only, and frames are
processed independently, so padded frames change no real frame's features.
With `mask=None` (every frame real) BatchNorm runs unmasked.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vreid_jax.models import common
from vreid_jax.models import heads
from vreid_jax.models import resnet


class FrameEncoder(nn.Module):
  """Per-frame ResNet features of a clip batch.

  Attributes:
    arch: ResNet variant ("resnet18", "resnet34", "resnet50", "resnet101").
    width: ResNet base channels (64 = torchvision).
    last_stride: stride of the last ResNet stage (1 for ReID).
    zero_init_residual: zero-init the last BN gamma of each ResNet block.
    flow_stem: add the optical-flow stem (STAR eq. 2; `resnet.ResNet`).
    frame_dim: d, the per-frame feature size after the `reduction` layer;
      0 keeps the backbone's pooled feature (no reduction layer).
    reduction_relu: ReLU at the end of the reduction.
    reduction_norm: BatchNorm after the reduction's Dense.
    reduction_bias: bias in the reduction's Dense.
    in_channels: input channels (3 for RGB; 2 for a ResNet on flow).
    dtype: computation dtype.
    param_dtype: parameter dtype.
    remat: rematerialise the backbone's residual blocks (`resnet.ResNet`).
    norm_impl: the backbone's BatchNorm, "flax" or "fused" (`resnet.ResNet`).
  """
  arch: str = "resnet50"
  width: int = 64
  last_stride: int = 1
  zero_init_residual: bool = False
  flow_stem: bool = False
  frame_dim: int = 0
  reduction_relu: bool = False
  reduction_norm: bool = True
  reduction_bias: bool = False
  in_channels: int = 3
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: bool = False
  norm_impl: str = "fused"

  @nn.compact
  def __call__(self, clips: jax.Array, mask: jax.Array | None = None, *,
               train: bool, flow: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
    """Encodes every frame.

    Args:
      clips: (B, T, H, W, 3) normalised frames.
      mask: (B, T) bool, True for real frames; None = all real (BatchNorm
        unmasked).
      train: training mode (BatchNorm batch statistics).
      flow: (B, T, H, W, 2) optical flow, used with `flow_stem`.

    Returns:
      (frames, maps): frames (B, T, d) in `dtype` (d = frame_dim, or the
      backbone's channels without reduction) and the backbone's last maps
      (B, T, h, w, C).
    """
    b = clips.shape[0]
    dtype = common.resolve_dtype(self.dtype)
    param_dtype = common.resolve_dtype(self.param_dtype)
    fmask = None if mask is None else common.fold_time(mask.astype(bool))
    fflow = None if flow is None or not self.flow_stem else (
        common.fold_time(flow))
    maps = resnet.ResNet(
        arch=self.arch, width=self.width, last_stride=self.last_stride,
        zero_init_residual=self.zero_init_residual,
        flow_stem=self.flow_stem, in_channels=self.in_channels, dtype=dtype,
        param_dtype=param_dtype, remat=self.remat, norm_impl=self.norm_impl,
        name="backbone")(
            common.fold_time(clips), train=train, mask=fmask, flow=fflow)
    x = resnet.global_avg_pool(maps)
    if self.frame_dim > 0:
      x = heads.FrameReduction(
          self.frame_dim, relu=self.reduction_relu,
          batch_norm=self.reduction_norm, use_bias=self.reduction_bias,
          dtype=dtype, param_dtype=param_dtype, name="reduction")(
              x, train=train, mask=fmask)
    return common.unfold_time(x, b), common.unfold_time(maps, b)
