"""Baseline: per-frame ResNet + temporal average pooling + BN-neck.

This is the "baseline" of GLTR's Table 2 (ResNet-50 + average pooling) and
the frame model of GLTR's stage 1 (trained on single frames, T=1): its
`backbone` and `reduction` subtrees initialise `vreid_jax.models.gltr.Model`
(set `frame_dim=128, reduction_relu=True` to match GLTR's frame features).

    clips (B, T, H, W, 3)
      -> backbone (ResNet, per frame) -> spatial mean         (B*T, C)
      -> reduction (Dense + BN [+ ReLU], when frame_dim > 0)   (B*T, d)
      -> masked temporal mean                                  (B, d) = features
      -> head (BN-neck)                                        embedding, logits

With `use_flow=True` the backbone gets STAR's second stem for optical flow,
summed with the RGB stem after the max pool (eq. 2): this is STAR's
"ResNet50-ID" baseline (two stems, no attention, average pooling) and the
smallest model of this codebase that reads flow.

Padding: frames with mask False never reach the temporal mean, and every
BatchNorm is given the mask, so in training its batch statistics come from
real frames only. Hence a padded tracklet has the same embedding as the
unpadded one, in eval and in training.
"""

from __future__ import annotations

from vreid_jax.models import framewise

load = framewise.load


class Model(framewise.FramewiseModel):
  """Frame-level ResNet with temporal average pooling and a BN-neck head.

  The attributes are `framewise.FramewiseModel`'s: num_classes, arch,
  width, last_stride, frame_dim, reduction_relu, neck, neck_feat,
  zero_init_residual, use_flow, dtype, param_dtype.
  """
