"""Baseline: per-frame ResNet + temporal average pooling + BN-neck.

This is the "baseline" of GLTR's Table 2 (ResNet-50 + average pooling) and
the frame model of GLTR's stage 1 (trained on single frames, T=1): its
`backbone` and `reduction` subtrees initialise `vreid_jax.models.gltr.Model`
(set `embed_dim=128, reduction_relu=True` to match GLTR's frame features).

    clips (B, T, H, W, 3)
      -> backbone (ResNet, per frame) -> spatial mean       (B*T, C)
      -> reduction (Dense + BN [+ ReLU], when embed_dim > 0) (B*T, d)
      -> masked temporal mean                                (B, d) = features
      -> head (BN-neck)                                      embedding, logits

Padding: frames with mask False never reach the temporal mean, and every
BatchNorm is given the mask, so in training its batch statistics come from
real frames only. Hence a padded tracklet has the same embedding as the
unpadded one, in eval and in training.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vreid_jax.models import common
from vreid_jax.models import heads
from vreid_jax.models import resnet


class Model(nn.Module):
  """Frame-level ResNet with temporal average pooling and a BN-neck head.

  Attributes:
    num_classes: training identities; 0 builds no classifier (no "logits").
    arch: ResNet variant: "resnet18", "resnet34", "resnet50", "resnet101".
    width: ResNet base channels (64 = torchvision).
    last_stride: stride of the last ResNet stage (1 for ReID).
    embed_dim: per-frame reduction dimension; 0 keeps the backbone feature.
    reduction_relu: ReLU after the reduction BN (GLTR's frame features use
      one; set True when this model is GLTR's stage 1).
    neck_feat: retrieval embedding taken "after" or "before" the BN-neck.
    zero_init_residual: zero-init the last BN gamma of each ResNet block.
    dtype: computation dtype (name or dtype); outputs are float32.
    param_dtype: parameter dtype.
  """
  num_classes: int = 0
  arch: str = "resnet50"
  width: int = 64
  last_stride: int = 1
  embed_dim: int = 0
  reduction_relu: bool = False
  neck_feat: str = "after"
  zero_init_residual: bool = False
  dtype: Any = "float32"
  param_dtype: Any = "float32"

  @nn.compact
  def __call__(self, clips: jax.Array, mask: jax.Array | None = None, *,
               train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Embeds a batch of clips.

    Args:
      clips: (B, T, H, W, 3) normalised frames.
      mask: (B, T) bool, True for real frames; None = all real.
      train: training mode (BatchNorm batch statistics).

    Returns:
      (embedding, aux): embedding (B, D) float32; aux has "features" (B, D)
      pre-neck feature, "frame_features" (B, T, d), and "logits"
      (B, num_classes) when num_classes > 0; all float32.
    """
    common.check_shape(clips, (None, None, None, None, 3),
                       "baseline: clips (B, T, H, W, 3)")
    b, t = clips.shape[:2]
    mask_arg, mask = mask, common.frame_mask(mask, b, t)
    dtype = common.resolve_dtype(self.dtype)
    param_dtype = common.resolve_dtype(self.param_dtype)

    # BatchNorm masks only when there is padding (an all-True mask would
    # only add work).
    fmask = None if mask_arg is None else common.fold_time(mask)
    fmap = resnet.ResNet(
        arch=self.arch, width=self.width, last_stride=self.last_stride,
        zero_init_residual=self.zero_init_residual, dtype=dtype,
        param_dtype=param_dtype, name="backbone")(
            common.fold_time(clips), train=train, mask=fmask)
    x = resnet.global_avg_pool(fmap)
    if self.embed_dim > 0:
      x = heads.FrameReduction(
          self.embed_dim, relu=self.reduction_relu, dtype=dtype,
          param_dtype=param_dtype, name="reduction")(x, train=train,
                                                     mask=fmask)
    frames = common.unfold_time(x.astype(jnp.float32), b)

    features = common.masked_mean(frames, mask, axis=1)
    neck, logits = heads.BNNeck(self.num_classes, dtype=jnp.float32,
                                param_dtype=param_dtype, name="head")(
                                    features, train=train)
    aux = {"features": features, "frame_features": frames}
    if logits is not None:
      aux["logits"] = logits.astype(jnp.float32)
    embedding = heads.select_embedding(features, neck, self.neck_feat)
    return embedding.astype(jnp.float32), aux
