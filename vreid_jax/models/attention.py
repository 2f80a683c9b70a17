"""Attention over time, shared by the models that weight frames.

`TemporalAttentionPool` is the temporal attention of Gao & Nevatia
("Revisiting Temporal Modeling for Video-based Person ReID", BMVC 2018,
Sec. 3.1, Fig. 1C). From the last feature maps of every frame, (B, T, h, w,
C), an attention generation network gives one score s_t per frame:

  "spatial conv + temporal conv" (`scorer="temporal_conv"`, the paper's best):
      u_t = ReLU(conv_{h x w}(maps_t))             (B, T, d_t), one whole-map
      s_t = conv1d_{k=3}(u)_t                      kernel of C -> d_t
  "spatial conv + FC" (`scorer="fc"`):
      s_t = FC(u_t)                                (d_t -> 1, per frame)

then normalises the scores over the clip's real frames,

  softmax (eq. 2):          a_t = exp(s_t) / sum_i exp(s_i)
  sigmoid + L1 (eq. 3):     a_t = sigmoid(s_t) / sum_i sigmoid(s_i)

and pools the spatially averaged frame features f_t = GAP(maps_t):

  f_c = sum_t a_t f_t                                              (eq. 1)

Eq. 1 also divides by T; the authors' code does not, and with weights that
sum to 1 the result is then a convex combination of the frame features (the
1/T would only shrink features against the triplet margin). We follow the
code (spec choice 2). The authors' code applies a ReLU to the scores before
the normaliser (`relu=True`, default, for fidelity): when every score is
<= 0 the weights become exactly uniform and no gradient reaches the
attention branch (the likely cause of the "weights stuck at 1/T" reports);
`relu=False` removes it.

The spatial kernel covers the whole map, so its size follows the input
(7 x 4 for 224 x 112 frames and a stride-2 ResNet-50, as in the paper). Init
is PyTorch's default (U(+-1/sqrt(fan_in)) for weights and biases).

Padding: the temporal conv sees the real frames packed to the front
(`common.temporal_conv_input`), padded frames get weight 0 and are never
read by the weighted sum.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vreid_jax.models import common

SCORERS = ("temporal_conv", "fc")
NORMALIZATIONS = ("softmax", "sigmoid")


def normalize_scores(scores: jax.Array, mask: jax.Array,
                     normalization: str) -> jax.Array:
  """Attention weights over the real frames: eq. 2 or eq. 3.

  Args:
    scores: (B, T) float scores s_t.
    mask: (B, T) bool, True for real frames.
    normalization: "softmax" or "sigmoid" (sigmoid, then L1 over time).

  Returns:
    (B, T) float32 weights, >= 0, summing to 1 over each row's real frames
    and 0 on padded frames (a row with no real frame is all 0).
  """
  scores = scores.astype(jnp.float32)
  if normalization == "softmax":
    logits = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=1)
  elif normalization == "sigmoid":
    sig = jnp.where(mask, jax.nn.sigmoid(scores), 0.0)
    weights = sig / jnp.maximum(sig.sum(axis=1, keepdims=True), 1e-12)
  else:
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got "
                     f"{normalization!r}")
  return jnp.where(mask, weights, 0.0)


class TemporalAttentionPool(nn.Module):
  """Gao & Nevatia's temporal attention pooling (module docstring).

  Attributes:
    features: d_t, channels of the spatial conv (paper: 256).
    scorer: "temporal_conv" or "fc".
    normalization: "softmax" (eq. 2) or "sigmoid" (eq. 3).
    relu: ReLU on the scores before the normaliser (authors' code).
    temporal_kernel: width of the temporal conv (paper: 3).
    dtype: computation dtype (scores and weights in float32).
    param_dtype: parameter dtype.
  """
  features: int = 256
  scorer: str = "temporal_conv"
  normalization: str = "softmax"
  relu: bool = True
  temporal_kernel: int = 3
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, maps: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Pools a clip's frames.

    Args:
      maps: (B, T, h, w, C) last feature maps of the frames.
      mask: (B, T) bool, True for real frames; None = all real.
      train: unused (no BatchNorm); the aggregator signature.

    Returns:
      (f_c (B, C) float32, {"attention": a, "frame_weights": a}): the (B, T)
      weights a_t under the paper's name and under the name every attention
      model reports its per-frame weights with.
    """
    del train
    common.check_shape(maps, (None, None, None, None, None),
                       f"{self.name}: maps (B, T, h, w, C)")
    if self.scorer not in SCORERS:
      raise ValueError(f"{self.name}: scorer must be one of {SCORERS}, got "
                       f"{self.scorer!r}")
    if self.normalization not in NORMALIZATIONS:
      raise ValueError(f"{self.name}: normalization must be one of "
                       f"{NORMALIZATIONS}, got {self.normalization!r}")
    b, t, h, w, c = maps.shape
    mask = common.frame_mask(mask, b, t)
    dtype = common.resolve_dtype(self.dtype)
    param_dtype = common.resolve_dtype(self.param_dtype)
    u = nn.Conv(self.features, (h, w), padding="VALID",
                kernel_init=common.torch_kernel_init,
                bias_init=common.torch_bias_init(h * w * c), dtype=dtype,
                param_dtype=param_dtype, name="spatial_conv")(
                    common.fold_time(maps).astype(dtype))
    u = nn.relu(u).reshape(b, t, self.features)
    if self.scorer == "fc":
      scores = nn.Dense(1, kernel_init=common.torch_kernel_init,
                        bias_init=common.torch_bias_init(self.features),
                        dtype=dtype, param_dtype=param_dtype, name="fc")(u)
    else:
      k = self.temporal_kernel
      packed, inverse = common.temporal_conv_input(u, mask)
      scores = nn.Conv(1, (k,), padding=(((k - 1) // 2, (k - 1) // 2),),
                       kernel_init=common.torch_kernel_init,
                       bias_init=common.torch_bias_init(k * self.features),
                       dtype=dtype, param_dtype=param_dtype,
                       name="temporal_conv")(packed)
      scores = common.gather_frames(scores, inverse)
    scores = scores[..., 0].astype(jnp.float32)
    if self.relu:
      scores = nn.relu(scores)
    weights = normalize_scores(scores, mask, self.normalization)
    frames = jnp.mean(maps.astype(jnp.float32), axis=(2, 3))     # f_t.
    frames = common.zero_padded(frames, mask)
    return jnp.einsum("bt,btc->bc", weights, frames), {
        "attention": weights, "frame_weights": weights}
