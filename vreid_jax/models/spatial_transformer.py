"""Spatial transformers on feature maps: the affine grid, a bilinear sampler
written in JAX, and TRL's spatial-temporal transformer (ST²N, Dai et al.,
eqs. 1-6) with its per-frame ablation (STN, Jaderberg et al. 2015).

Grid and sampler (eq. 6). θ = (sˣ, sʸ, τˣ, τʸ) is a scale-and-translation
affine map (eq. 5: [[sˣ, 0, τˣ], [0, sʸ, τʸ]]). The output grid has the
input's size, in normalised coordinates (x, y) ∈ [-1, 1]² with x along the
width; output pixel (x, y) reads the input at x_s = sˣ x + τˣ,
y_s = sʸ y + τʸ, bilinearly. Normalised to pixel coordinates:

  "align_corners" (default): x = -1 and 1 are the centres of the first and
    last pixels, pixel = (x_s + 1)(W - 1)/2. Computed as
    sˣ (j - c) + τˣ c + c with c = (W - 1)/2, so the identity θ = (1, 1,
    0, 0) returns its input exactly and τˣ = 2/(W-1) shifts by one pixel.
  "tf_legacy": the 2017 TensorFlow STN's mapping, pixel = (x_s + 1) W / 2
    (its identity stretches the map slightly: pixel j reads j W/(W-1)).

Outside the map: "border" (default, the TF lineage) clamps the coordinates
to the map, so the border pixels repeat; "zeros" reads zeros (PyTorch's
grid_sample default). The sampler gathers the four neighbours; it is
differentiable in the map and in θ (the bilinear weights are linear in the
coordinates; clamped coordinates have zero gradient).

`SpatialTemporalTransformer` (the localisation network of §III-B):

  X_t (B, T, h, w, C)  the main stream's Incep-2 maps (14 x 14 x 832)
    -> 1x1 conv (512) -> BN -> ReLU -> max pool 2/2 -> 1x1 conv (512) -> BN
       -> ReLU -> spatial mean                         c_t (B, T, 512)  eq. 1
       (the pool in ceil mode like GoogLeNet's: 14 x 14 -> 7 x 7 either
       way, and tiny test maps keep a pixel)
    -> BiLSTM (256 per direction, masked)              [h_fw ; h_bw]    eqs. 2-3
       (`temporal=False`, the STN ablation: no BiLSTM, θ_t from c_t alone)
    -> dropout 0.5 -> FC (4)                           θ_t (B, T, 4)    eqs. 4-5
  Ŷ_t = ST(Y_t, θ_t) on the shared stem maps (56 x 56 x 192)           eq. 6

Initialisation (spec §1.2): the FC starts at W = 0 and bias (1, 1, 0, 0),
so θ is the identity and Ŷ = Y exactly for any input (the paper's generic
Gaussian rule with zero bias would start every frame as a point at the map
centre); the loc-net convs N(0, 0.01²) without bias (BN follows), the
BiLSTM orthogonal with TensorFlow's +1 forget bias.

Padding: the BatchNorms take the frame mask and the BiLSTM skips padded
frames, so the θ of real frames does not depend on padded ones (θ at a
padded frame is meaningless).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vreid_jax.models import common
from vreid_jax.models import googlenet
from vreid_jax.models import recurrent

ModuleDef = Any

PADDINGS = ("border", "zeros")
COORDS = ("align_corners", "tf_legacy")
IDENTITY = (1.0, 1.0, 0.0, 0.0)


def _axis_coordinates(size: int, scale: jax.Array, shift: jax.Array,
                      coords: str) -> jax.Array:
  """Source pixel coordinate of every output index along one axis.

  scale, shift: (N,) -> (N, size) float32.
  """
  j = jnp.arange(size, dtype=jnp.float32)[None, :]
  scale, shift = scale[:, None], shift[:, None]
  if coords == "align_corners":
    c = (size - 1) / 2.0
    return scale * (j - c) + shift * c + c
  if coords == "tf_legacy":
    x = -1.0 + 2.0 * j / max(size - 1, 1)
    return (scale * x + shift + 1.0) * size / 2.0
  raise ValueError(f"coords must be one of {COORDS}, got {coords!r}")


def source_coordinates(theta: jax.Array, height: int, width: int, *,
                       coords: str = "align_corners"
                       ) -> tuple[jax.Array, jax.Array]:
  """The grid generator: input pixel coordinates of each output pixel.

  Args:
    theta: (N, 4) = (sˣ, sʸ, τˣ, τʸ).
    height, width: the output (and input) map size.
    coords: "align_corners" or "tf_legacy" (module docstring).

  Returns:
    (xs, ys), each (N, height, width) float32: column and row coordinates.
  """
  common.check_shape(theta, (None, 4), "theta (N, 4)")
  theta = theta.astype(jnp.float32)
  xs = _axis_coordinates(width, theta[:, 0], theta[:, 2], coords)
  ys = _axis_coordinates(height, theta[:, 1], theta[:, 3], coords)
  n = theta.shape[0]
  return (jnp.broadcast_to(xs[:, None, :], (n, height, width)),
          jnp.broadcast_to(ys[:, :, None], (n, height, width)))


def bilinear_sample(y: jax.Array, xs: jax.Array, ys: jax.Array, *,
                    padding: str = "border") -> jax.Array:
  """Samples maps at real-valued pixel coordinates, bilinearly (gathers).

  Args:
    y: (N, H, W, C) maps.
    xs, ys: (N, Ho, Wo) column and row coordinates in pixels.
    padding: "border" (clamp the coordinates to the map) or "zeros".

  Returns:
    (N, Ho, Wo, C) in y's dtype.
  """
  if padding not in PADDINGS:
    raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
  _, h, w, _ = y.shape
  xs, ys = xs.astype(jnp.float32), ys.astype(jnp.float32)
  if padding == "border":
    xs = jnp.clip(xs, 0.0, w - 1.0)
    ys = jnp.clip(ys, 0.0, h - 1.0)
  x0 = jnp.floor(jax.lax.stop_gradient(xs))
  y0 = jnp.floor(jax.lax.stop_gradient(ys))
  wx1, wy1 = xs - x0, ys - y0
  wx0, wy0 = 1.0 - wx1, 1.0 - wy1
  x0i, y0i = x0.astype(jnp.int32), y0.astype(jnp.int32)

  def gather(img, rows, cols):
    return img[rows, cols]

  out = jnp.zeros(xs.shape + (y.shape[-1],), jnp.float32)
  for dy, wy in ((0, wy0), (1, wy1)):
    for dx, wx in ((0, wx0), (1, wx1)):
      rows, cols = y0i + dy, x0i + dx
      weight = wy * wx
      if padding == "zeros":
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        weight = jnp.where(inside, weight, 0.0)
      values = jax.vmap(gather)(y, jnp.clip(rows, 0, h - 1),
                                jnp.clip(cols, 0, w - 1))
      out = out + weight[..., None] * values.astype(jnp.float32)
  return out.astype(y.dtype)


def affine_warp(y: jax.Array, theta: jax.Array, *, padding: str = "border",
                coords: str = "align_corners") -> jax.Array:
  """Ŷ = ST(Y, θ) (eq. 6): Y (N, H, W, C) warped by θ (N, 4), same size."""
  common.check_shape(y, (theta.shape[0], None, None, None),
                     "affine_warp: maps (N, H, W, C)")
  xs, ys = source_coordinates(theta, y.shape[1], y.shape[2], coords=coords)
  return bilinear_sample(y, xs, ys, padding=padding)


def _identity_bias(key, shape, dtype=jnp.float32):
  del key
  return jnp.asarray(IDENTITY, dtype).reshape(shape)


class SpatialTemporalTransformer(nn.Module):
  """ST²N (eqs. 1-6), or the per-frame STN with `temporal=False`.

  Attributes:
    features: channels of the localisation convs (paper: 512).
    hidden: BiLSTM hidden size per direction (256: 512 concatenated).
    temporal: BiLSTM over time (ST²N); False = the STN ablation (Table I
      rows 5-7), θ_t from frame t only.
    dropout: dropout rate on the FC's input (0.5).
    padding: "border" or "zeros" (outside the map).
    coords: "align_corners" or "tf_legacy" (module docstring).
    dtype: computation dtype of the localisation convs.
    param_dtype: parameter dtype.
    norm: BatchNorm constructor (default `common.BatchNorm`).
  """
  features: int = 512
  hidden: int = 256
  temporal: bool = True
  dropout: float = 0.5
  padding: str = "border"
  coords: str = "align_corners"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm: ModuleDef = common.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array,
               mask: jax.Array | None = None, *, train: bool
               ) -> tuple[jax.Array, jax.Array]:
    """Aligns every frame's maps.

    Args:
      x: (B, T, h, w, C) the localisation input (main stream's Incep-2).
      y: (B, T, H, W, C') the maps to warp (the shared stem's).
      mask: (B, T) bool, True for real frames; None = all real.
      train: BatchNorm batch statistics and dropout.

    Returns:
      (Ŷ (B, T, H, W, C') in y's dtype, θ (B, T, 4) float32).
    """
    common.check_shape(x, (None, None, None, None, None),
                       f"{self.name}: x (B, T, h, w, C)")
    b, t = x.shape[:2]
    common.check_shape(y, (b, t, None, None, None),
                       f"{self.name}: y (B, T, H, W, C)")
    if self.padding not in PADDINGS or self.coords not in COORDS:
      raise ValueError(f"{self.name}: padding must be one of {PADDINGS} and "
                       f"coords one of {COORDS}; got {self.padding!r}, "
                       f"{self.coords!r}")
    dtype = common.resolve_dtype(self.dtype)
    param_dtype = common.resolve_dtype(self.param_dtype)
    full_mask = common.frame_mask(mask, b, t)
    bn_mask = None if mask is None else common.expand_mask(
        common.fold_time(full_mask), 4)
    conv = functools.partial(
        nn.Conv, self.features, (1, 1), use_bias=False,
        kernel_init=nn.initializers.normal(0.01), dtype=dtype,
        param_dtype=param_dtype)
    norm = functools.partial(self.norm, use_running_average=not train,
                             dtype=dtype, param_dtype=param_dtype)
    h = conv(name="loc_conv1")(common.fold_time(x).astype(dtype))
    h = nn.relu(norm(name="loc_bn1")(h, mask=bn_mask))
    h = googlenet.max_pool_ceil(h, 2, 2)
    h = conv(name="loc_conv2")(h)
    h = nn.relu(norm(name="loc_bn2")(h, mask=bn_mask))
    c = common.unfold_time(jnp.mean(h.astype(jnp.float32), axis=(1, 2)), b)
    if self.temporal:
      c, _ = recurrent.Bidirectional(
          features=self.hidden, kernel_init=nn.initializers.orthogonal(),
          recurrent_init=nn.initializers.orthogonal(),
          bias_init=nn.initializers.zeros, forget_bias=1.0, dtype=dtype,
          param_dtype=param_dtype, name="bilstm")(c, full_mask)
    c = nn.Dropout(self.dropout, deterministic=not train)(c)
    theta = nn.Dense(4, kernel_init=nn.initializers.zeros,
                     bias_init=_identity_bias, dtype=jnp.float32,
                     param_dtype=param_dtype, name="fc")(c)
    warped = affine_warp(common.fold_time(y), common.fold_time(theta),
                         padding=self.padding, coords=self.coords)
    return common.unfold_time(warped, b), theta.astype(jnp.float32)
