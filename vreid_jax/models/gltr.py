"""GLTR: Global-Local Temporal Representations (Li et al., ICCV 2019).

    clips (B, T, H, W, 3)
      -> backbone (ResNet-50, per frame) -> spatial mean         (B*T, 2048)
      -> reduction (Dense + BN + ReLU) = frame features F         (B, T, d=128)
      -> dtp (Dilated Temporal Pyramid conv, eq. 5-6) = F'        (B, T, N*d)
      -> tsa (Temporal Self-Attention, eq. 7) = F''               (B, T, N*d)
      -> masked temporal average pooling (eq. 4) = GLTR f         (B, N*d)
      -> head (BN-neck)                                           embedding

The paper trains the frame model first (stage 1, 2D CNN on single frames:
`vreid_jax.models.baseline.Model` with T=1, `frame_dim=128`,
`reduction_relu=True`) and then DTP and TSA on 16-frame clips (stage 2). The
`backbone` and `reduction` subtrees have the same names and shapes in both
models, so the stage-1 checkpoint initialises stage 2 subtree by subtree.

`temporal` selects the aggregation of the paper's ablations (Fig. 6, Table 2);
it is resolved once, in `setup`, into the sequence layers and the pooling
module (`Model.temporal_layers`, `Model.aggregator`):

* "gltr": DTP then TSA (the full model).
* "dtp": DTP only.            * "tsa": TSA only (on F).
* "avg": average pooling of F (the baseline).
* "pyramid_nodilation": the DTP pyramid with undilated convs whose kernels
  cover the same receptive field: rate r, width w -> width r*(w-1)+1 (3, 5, 9
  for rates 1, 2, 4, the paper's "d x 9" 3rd branch).
* "tpp": temporal pyramid pooling: average pooling over 1, 2, 4 (= the rates)
  equal temporal bins of F, concatenated (d * (1+2+4) dims).

Padding mask. Padded frames (mask False) provably do not change any output
for real frames, in eval and in training, wherever the mask puts them:
* DTP packs the real frames to the front and zeroes the padded ones before
  each dilated conv (`common.temporal_conv_input`), which is exactly the
  conv's own zero "same" padding of the unpadded tracklet, then puts each
  output back at its frame's position; TSA's 1-wide convs are per frame;
  TSA gives padded frames -inf attention logits (the float32 minimum, so an
  all-padded row stays finite) and zero values; pooling is a masked mean
  (TPP bins are computed from each tracklet's real frames, in order).
* Every BatchNorm over frames (backbone, reduction, TSA) gets the mask, so
  training batch statistics come from real frames only.
The outputs at padded positions of `aux["dtp"]`/`aux["tsa"]` are
meaningless and `aux["attention"]` is 0 in padded rows and columns.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vreid_jax.models import common
from vreid_jax.models import framewise
from vreid_jax.models import temporal as temporal_lib

ModuleDef = Any

TEMPORAL = ("gltr", "dtp", "tsa", "avg", "pyramid_nodilation", "tpp")

load = framewise.load


def default_rates(num_branches: int) -> tuple[int, ...]:
  """The paper's dilation rates r_n = 2^(n-1), n = 1..N."""
  return tuple(2**n for n in range(num_branches))


class DTP(nn.Module):
  """Dilated Temporal Pyramid convolution (GLTR eq. 5-6).

  Branch n is a temporal convolution over the d-dim frame features with
  kernel width w and dilation r_n, 'same' padding (zeros), d -> d channels:

    f_t^(r) = sum_{i=-(w-1)/2}^{(w-1)/2} W^(r)[i] f_{t + r*i}        (eq. 5)
    f'_t = concat(f_t^(r_1), ..., f_t^(r_N))  in R^{N d}             (eq. 6)

  (eq. 5 is written with i = 1..w in the paper; we centre the window so that
  output t is aligned with input t, as Fig. 2 and eq. 2 describe.)

  Paper default: N = 3 branches with r_n = 2^(n-1) = 1, 2, 4 and no identity
  branch. The authors' public code instead uses rates 1, 2, 3 and also
  concatenates the input F itself: pass `rates=(1, 2, 3)` and
  `identity_branch=True` for that variant ((N+1) d outputs, identity first).

  With `dilated=False` every branch is an undilated conv whose kernel width
  r*(w-1)+1 covers the same receptive field (the paper's "pyramid temporal
  convolution without dilation" ablation).

  Attributes:
    rates: dilation rates, one branch each; None = 2^(n-1), n=1..num_branches.
    num_branches: N, used when `rates` is None.
    kernel_size: temporal width w (odd).
    features: output channels per branch; None = input channels d.
    identity_branch: also concatenate the (masked) input, first.
    dilated: dilated kernels (DTP) or wide undilated ones (ablation).
    use_bias: bias in the branch convs (eq. 5 has none).
    dtype: computation dtype.
    param_dtype: parameter dtype.
    conv: temporal conv constructor (functools.partial of nn.Conv).
  """
  rates: Sequence[int] | None = None
  num_branches: int = 3
  kernel_size: int = 3
  features: int | None = None
  identity_branch: bool = False
  dilated: bool = True
  use_bias: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Applies DTP.

    Args:
      x: (B, T, d) frame features F.
      mask: (B, T) bool, True for real frames (anywhere); None = all real.
      train: unused (DTP has no BatchNorm); the sequence-layer signature.

    Returns:
      ((B, T, N*d) features F' (or (N+1)*d with the identity branch), {}).
      Outputs at padded positions are meaningless.
    """
    del train
    common.check_shape(x, (None, None, None), f"{self.name}: F (B, T, d)")
    if self.kernel_size % 2 != 1:
      raise ValueError(f"{self.name}: kernel_size must be odd, got "
                       f"{self.kernel_size}.")
    b, t, d = x.shape
    mask = common.frame_mask(mask, b, t)
    dtype = common.resolve_dtype(self.dtype)
    param_dtype = common.resolve_dtype(self.param_dtype)
    rates = (tuple(self.rates) if self.rates is not None
             else default_rates(self.num_branches))
    features = self.features or d
    # Real frames packed to the front, padded ones zeroed: they read as the
    # conv's own zero padding wherever the mask put them.
    x, inverse = common.temporal_conv_input(x.astype(dtype), mask)
    outs = [x] if self.identity_branch else []
    half = (self.kernel_size - 1) // 2
    for r in rates:
      if self.dilated:
        width, dilation, name = self.kernel_size, r, f"branch_r{r}"
      else:
        width, dilation = r * (self.kernel_size - 1) + 1, 1
        name = f"branch_k{width}"
      outs.append(self.conv(
          features, (width,), kernel_dilation=(dilation,),
          padding=((r * half, r * half),), use_bias=self.use_bias,
          dtype=dtype, param_dtype=param_dtype, name=name)(x))
    return common.gather_frames(jnp.concatenate(outs, axis=-1), inverse), {}


class TSA(nn.Module):
  """Temporal Self-Attention (GLTR eq. 7).

  With F' (B, T, D) (the paper writes it D x T, D = N d) and D/alpha inner
  channels, each "conv" being a 1-wide temporal conv (a per-frame linear
  map):

    B = ReLU(BN(conv_b F')),  C = ReLU(BN(conv_c F'))     (D/alpha x T)
    M = C^T B                                             (T x T)
        M[s, t] = <c_s, b_t>, then softmax over s for each t
    F-bar' = conv_f F'                                    (D/alpha x T)
    F'' = W * (F-bar' . M) + F'                           (eq. 7)
        (F-bar' . M)[:, t] = sum_s F-bar'[:, s] M[s, t]

  W (`conv_w`, kernel and bias) is initialised to 0 as the paper prescribes,
  so TSA starts as the identity F'' = F'.

  Normalisation of M: eq. 7 shows no normalisation of M. The authors' code
  (like the position attention it follows) applies a softmax, and the
  padding mask needs one (-inf logits); `normalization="softmax"` (default)
  normalises over the source frames s so every column of M sums to 1, and
  then eq. 8's weighting vector m = sum_t M[:, t] is the attention each frame
  receives (low for occluded frames, Fig. 3). `normalization="none"` uses
  raw M (padded sources get weight 0).

  Attributes:
    alpha: channel reduction of B, C and F-bar' (paper: 2).
    normalization: "softmax" (over source frames) or "none".
    dtype: computation dtype (the softmax is computed in float32).
    param_dtype: parameter dtype.
    norm: BatchNorm constructor (default `common.BatchNorm`).
  """
  alpha: int = 2
  normalization: str = "softmax"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm: ModuleDef = common.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Applies TSA.

    Args:
      x: (B, T, D) features F'.
      mask: (B, T) bool, True for real frames; None = all real.
      train: BN uses batch statistics (of real frames) when True.

    Returns:
      (F'', {"attention": M, "frame_weights": m}): (B, T, D) updated features,
      the (B, T, T) float32 attention M[b, s, t] (source s, target t;
      columns of real targets sum to 1 with the softmax; 0 in padded rows
      and columns) and eq. 8's weighting vector m_s = sum_t M[s, t] / L over
      the L real targets (B, T): the attention each frame receives, summing
      to 1 over real frames with the softmax.
    """
    common.check_shape(x, (None, None, None), f"{self.name}: F' (B, T, D)")
    b, t, d = x.shape
    if d % self.alpha:
      raise ValueError(f"{self.name}: D={d} is not divisible by "
                       f"alpha={self.alpha}.")
    if self.normalization not in ("softmax", "none"):
      raise ValueError(f"{self.name}: normalization must be 'softmax' or "
                       f"'none', got {self.normalization!r}.")
    inner = d // self.alpha
    mask = common.frame_mask(mask, b, t)
    dtype = common.resolve_dtype(self.dtype)
    param_dtype = common.resolve_dtype(self.param_dtype)
    dense = functools.partial(nn.Dense, dtype=dtype, param_dtype=param_dtype)
    norm = functools.partial(self.norm, use_running_average=not train,
                             dtype=dtype, param_dtype=param_dtype)
    bn_mask = mask[..., None]

    x = x.astype(dtype)
    xz = common.zero_padded(x, mask)
    mat_b = nn.relu(norm(name="bn_b")(
        dense(inner, use_bias=False, name="conv_b")(xz), mask=bn_mask))
    mat_c = nn.relu(norm(name="bn_c")(
        dense(inner, use_bias=False, name="conv_c")(xz), mask=bn_mask))
    logits = jnp.einsum("bsk,btk->bst", mat_c.astype(jnp.float32),
                        mat_b.astype(jnp.float32))
    source_real = mask[:, :, None]
    if self.normalization == "softmax":
      logits = jnp.where(source_real, logits, jnp.finfo(jnp.float32).min)
      attn = jax.nn.softmax(logits, axis=1)
    else:
      attn = jnp.where(source_real, logits, 0.0)
    attn = jnp.where(mask[:, None, :], attn, 0.0)  # Padded targets: unused.

    f_bar = common.zero_padded(dense(inner, name="conv_f")(xz), mask)
    context = jnp.einsum("bsk,bst->btk", f_bar, attn.astype(dtype))
    out = dense(d, kernel_init=nn.initializers.zeros,
                bias_init=nn.initializers.zeros, name="conv_w")(context)
    length = jnp.maximum(mask.sum(axis=1, keepdims=True), 1)
    weights = attn.sum(axis=2) / length
    return out + x, {"attention": attn, "frame_weights": weights}


class Model(framewise.FramewiseModel):
  """GLTR (DTP + TSA) and its ablation variants on per-frame ResNet features.

  Attributes (besides `framewise.FramewiseModel`'s num_classes, arch,
  width, last_stride, reduction_relu, neck, neck_feat, zero_init_residual,
  use_flow, dtype, param_dtype):
    frame_dim: d, the per-frame feature size after the `reduction` layer
      (paper: 128); 0 skips the reduction layer.
    reduction_relu: ReLU after the reduction BN (GLTR: True).
    temporal: "gltr", "dtp", "tsa", "avg", "pyramid_nodilation" or "tpp".
    num_branches: N, pyramid branches when `rates` is None (paper: 3).
    rates: DTP dilation rates (and TPP bin counts); None = 2^(n-1).
      The authors' public code uses (1, 2, 3).
    kernel_size: DTP temporal kernel width w (paper: 3).
    identity_branch: concatenate F to the DTP branches (public code).
    alpha: TSA channel reduction (paper: 2).
    attention_norm: TSA normalisation of M, "softmax" or "none".

  aux (float32), besides "frame_features", "features" and "logits":
    "dtp" (B, T, N*d): F' (variants "gltr", "dtp");
    "pyramid" (B, T, N*d): variant "pyramid_nodilation";
    "tsa" (B, T, D): F'', "attention" (B, T, T): M[b, s, t] and
      "frame_weights" (B, T): the attention each frame receives, eq. 8
      (variants "gltr", "tsa").
  """
  frame_dim: int = 128
  reduction_relu: bool = True
  temporal: str = "gltr"
  num_branches: int = 3
  rates: Sequence[int] | None = None
  kernel_size: int = 3
  identity_branch: bool = False
  alpha: int = 2
  attention_norm: str = "softmax"

  def _rates(self) -> tuple[int, ...]:
    return (tuple(self.rates) if self.rates is not None
            else default_rates(self.num_branches))

  def _dtp(self, dilated: bool, name: str) -> DTP:
    return DTP(rates=self._rates(), kernel_size=self.kernel_size,
               identity_branch=self.identity_branch, dilated=dilated,
               dtype=self.compute_dtype,
               param_dtype=common.resolve_dtype(self.param_dtype), name=name)

  def _tsa(self) -> TSA:
    return TSA(alpha=self.alpha, normalization=self.attention_norm,
               dtype=self.compute_dtype,
               param_dtype=common.resolve_dtype(self.param_dtype),
               name="tsa")

  def temporal_layers(self) -> Sequence[nn.Module]:
    """The sequence layers of `temporal` (Fig. 6), built once."""
    if self.temporal not in TEMPORAL:
      raise ValueError(f"gltr: unknown temporal={self.temporal!r}; expected "
                       f"one of {sorted(TEMPORAL)}.")
    return {
        "gltr": lambda: (self._dtp(True, "dtp"), self._tsa()),
        "dtp": lambda: (self._dtp(True, "dtp"),),
        "tsa": lambda: (self._tsa(),),
        "avg": lambda: (),
        "pyramid_nodilation": lambda: (self._dtp(False, "pyramid"),),
        "tpp": lambda: (),
    }[self.temporal]()

  def aggregator(self) -> nn.Module:
    """Average pooling (eq. 4), or temporal pyramid pooling for "tpp"."""
    if self.temporal == "tpp":
      return temporal_lib.TemporalPyramidPool(bins=self._rates())
    return temporal_lib.AvgPool()
