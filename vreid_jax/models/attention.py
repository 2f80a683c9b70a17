"""Attention layers shared by the models: over time, and over a feature map.

Besides Gao & Nevatia's temporal attention below, the end of this file has
the channel + spatial gates of a feature map (`ChannelGate`, `SpatialGate`,
`ChannelSpatialGate`): STAR's LSTA block (eq. 4-5) and CBAM.

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


# ---------------------------------------------------------------------------
# Channel + spatial gates of a feature map: STAR's LSTA block and CBAM.
#
# STAR (Wu, Zhu, Gong, BMVC 2019, eq. 4-5), per frame on a map M (h, w, C):
#
#   channel (eq. 4):  M_c = M * sigmoid(W4 (relu(W3 avg(M) + b3)
#                                           + relu(W3 max(M) + b3)) + b4)
#   spatial (eq. 5):  M_s = [mean_c(M_c), max_c(M_c)]               (h, w, 2)
#                     M_g = M_c * sigmoid(W6 [relu(W5_d * M_s + b5_d)]_d + b6)
#
# W3: C -> C/r shared by both pooled paths, W4: C/r -> C once on their sum;
# W5_d: a 3x3 conv of dilation d in {1, 2, 3} (padding d, separate weights
# per dilation, 2 -> 1 channel each: the spec's reading of "W5 ... b5_i"),
# W6: a 1x1 bottleneck 3 -> 1.
#
# CBAM (Woo et al., ECCV 2018), the comparison of STAR's Table 3 / Fig. 6:
# the MLP is applied to each pooled path and the results summed (so its b4
# counts twice: STAR's gate with b4 equals CBAM's with b4 / 2), and the
# spatial gate is one 7x7 conv on [max, mean] (2 -> 1, no bias) + BatchNorm
# + sigmoid.
#
# Init: PyTorch's default (U(+-1/sqrt(fan_in))), as both papers' PyTorch
# code would have it; CBAM's BatchNorm is the common one. The max poolings
# are `common.reduce_max` (gradient to the first maximum, as PyTorch's max
# pooling; `jnp.max`'s gradient can be NaN under XLA, see there).

GATE_FORMS = ("lsta", "cbam")


class ChannelGate(nn.Module):
  """Channel attention of a feature map: STAR eq. 4 or CBAM's.

  Attributes:
    reduction: r, C -> C / r in the shared MLP (16 in both papers).
    form: "lsta" (W4 once on the summed paths, eq. 4) or "cbam" (the MLP on
      each path, summed after W4).
    dtype: computation dtype (the gate itself is float32).
    param_dtype: parameter dtype.
  """
  reduction: int = 16
  form: str = "lsta"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Gates (N, h, w, C); returns (gated map, (N, C) channel weights)."""
    common.check_shape(x, (None, None, None, None),
                       f"{self.name}: maps (N, h, w, C)")
    if self.form not in GATE_FORMS:
      raise ValueError(f"{self.name}: form must be one of {GATE_FORMS}, got "
                       f"{self.form!r}")
    c = x.shape[-1]
    hidden = max(c // self.reduction, 1)
    param_dtype = common.resolve_dtype(self.param_dtype)
    dense = lambda n, fan_in, name: nn.Dense(  # pylint: disable=g-long-lambda
        n, kernel_init=common.torch_kernel_init,
        bias_init=common.torch_bias_init(fan_in), dtype=jnp.float32,
        param_dtype=param_dtype, name=name)
    w3, w4 = dense(hidden, c, "fc1"), dense(c, hidden, "fc2")
    x32 = x.astype(jnp.float32)
    avg, mx = jnp.mean(x32, axis=(1, 2)), common.reduce_max(x32, (1, 2))
    if self.form == "lsta":
      logits = w4(nn.relu(w3(avg)) + nn.relu(w3(mx)))
    else:
      logits = w4(nn.relu(w3(avg))) + w4(nn.relu(w3(mx)))
    weights = jax.nn.sigmoid(logits)
    dtype = common.resolve_dtype(self.dtype)
    return (x32 * weights[:, None, None, :]).astype(dtype), weights


class SpatialGate(nn.Module):
  """Spatial attention of a feature map: STAR eq. 5 or CBAM's.

  Attributes:
    form: "lsta" (dilated 3x3 branches + a 1x1 bottleneck, eq. 5) or "cbam"
      (one 7x7 conv + BatchNorm).
    kernel_size: the branches' kernel (STAR: 3; Fig. 6's "7x7 kernel as
      CBAM" variant: 7); CBAM's conv (7).
    dilations: one branch per dilation (STAR: (1, 2, 3); Fig. 6's "3x3
      without dilation": (1, 1, 1)).
    branch_width: output channels of each branch (spec: 1).
    dtype: computation dtype of the gated map.
    param_dtype: parameter dtype.
  """
  form: str = "lsta"
  kernel_size: int = 3
  dilations: tuple[int, ...] = (1, 2, 3)
  branch_width: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False,
               mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Gates (N, h, w, C).

    Args:
      x: the map.
      train: BatchNorm batch statistics (CBAM form only).
      mask: optional (N,) bool: BatchNorm statistics over True rows only.

    Returns:
      (gated map, (N, h, w) spatial weights in (0, 1)).
    """
    common.check_shape(x, (None, None, None, None),
                       f"{self.name}: maps (N, h, w, C)")
    if self.form not in GATE_FORMS:
      raise ValueError(f"{self.name}: form must be one of {GATE_FORMS}, got "
                       f"{self.form!r}")
    param_dtype = common.resolve_dtype(self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean_c, max_c = jnp.mean(x32, axis=-1), common.reduce_max(x32, -1)
    k = self.kernel_size
    if self.form == "lsta":
      pooled = jnp.stack([mean_c, max_c], axis=-1)            # M_s (eq. 5).
      branches = []
      for i, d in enumerate(self.dilations):
        p = d * (k - 1) // 2
        branches.append(nn.relu(nn.Conv(
            self.branch_width, (k, k), kernel_dilation=(d, d),
            padding=((p, p), (p, p)), kernel_init=common.torch_kernel_init,
            bias_init=common.torch_bias_init(2 * k * k), dtype=jnp.float32,
            param_dtype=param_dtype, name=f"dilated_{i}")(pooled)))
      cat = jnp.concatenate(branches, axis=-1)
      logits = nn.Conv(1, (1, 1), kernel_init=common.torch_kernel_init,
                       bias_init=common.torch_bias_init(cat.shape[-1]),
                       dtype=jnp.float32, param_dtype=param_dtype,
                       name="bottleneck")(cat)
    else:
      pooled = jnp.stack([max_c, mean_c], axis=-1)            # CBAM's order.
      p = (k - 1) // 2
      y = nn.Conv(1, (k, k), padding=((p, p), (p, p)), use_bias=False,
                  kernel_init=common.torch_kernel_init, dtype=jnp.float32,
                  param_dtype=param_dtype, name="conv")(pooled)
      bn_mask = None if mask is None else common.expand_mask(
          mask.astype(bool), 4)
      logits = common.BatchNorm(use_running_average=not train,
                                dtype=jnp.float32, param_dtype=param_dtype,
                                name="bn")(y, mask=bn_mask)
    weights = jax.nn.sigmoid(logits[..., 0])
    dtype = common.resolve_dtype(self.dtype)
    return (x32 * weights[..., None]).astype(dtype), weights


class ChannelSpatialGate(nn.Module):
  """Channel gate, then spatial gate: STAR's LSTA block or CBAM.

  Attributes:
    form: "lsta" or "cbam" (both gates take it).
    reduction: r of the channel MLP.
    kernel_size, dilations: the spatial gate's (`SpatialGate`).
    spatial: apply the spatial gate (Fig. 6 "w/o spatial attentive conv":
      False).
    residual: return M + M_g instead of M_g (not in the paper; spec 4.1's
      fallback if training is unstable).
    dtype: computation dtype.
    param_dtype: parameter dtype.
  """
  form: str = "lsta"
  reduction: int = 16
  kernel_size: int = 3
  dilations: tuple[int, ...] = (1, 2, 3)
  spatial: bool = True
  residual: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False,
               mask: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Gates (N, h, w, C); returns (map, {"channel" (N, C)[, "spatial"
    (N, h, w)]})."""
    y, channel = ChannelGate(self.reduction, self.form, dtype=self.dtype,
                             param_dtype=self.param_dtype, name="channel")(x)
    out = {"channel": channel}
    if self.spatial:
      y, out["spatial"] = SpatialGate(
          self.form, self.kernel_size, tuple(self.dilations),
          dtype=self.dtype, param_dtype=self.param_dtype, name="spatial")(
              y, train=train, mask=mask)
    if self.residual:
      y = x + y
    return y, out
