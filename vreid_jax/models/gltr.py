"""GLTR: Global-Local Temporal Representations (Li et al., ICCV 2019).

    clips (B, T, H, W, 3)
      -> backbone (ResNet-50, per frame) -> spatial mean         (B*T, 2048)
      -> reduction (Dense + BN + ReLU) = frame features F         (B, T, d=128)
      -> dtp (Dilated Temporal Pyramid conv, eq. 5-6) = F'        (B, T, N*d)
      -> tsa (Temporal Self-Attention, eq. 7) = F''               (B, T, N*d)
      -> masked temporal average pooling (eq. 4) = GLTR f         (B, N*d)
      -> head (BN-neck)                                           embedding

The paper trains the frame model first (stage 1, 2D CNN on single frames:
`vreid_jax.models.baseline.Model` with T=1, `embed_dim=128`,
`reduction_relu=True`) and then DTP and TSA on 16-frame clips (stage 2). The
`backbone` and `reduction` subtrees have the same names and shapes in both
models, so the stage-1 checkpoint initialises stage 2 subtree by subtree.

`temporal` selects the aggregation of the paper's ablations (Fig. 6, Table 2):

* "gltr": DTP then TSA (the full model).
* "dtp": DTP only.            * "tsa": TSA only (on F).
* "avg": average pooling of F (the baseline).
* "pyramid_nodilation": the DTP pyramid with undilated convs whose kernels
  cover the same receptive field: rate r, width w -> width r*(w-1)+1 (3, 5, 9
  for rates 1, 2, 4, the paper's "d x 9" 3rd branch).
* "tpp": temporal pyramid pooling: average pooling over 1, 2, 4 (= the rates)
  equal temporal bins of F, concatenated (d * (1+2+4) dims).

Padding mask. Padded frames (mask False) provably do not change any output
for real frames, in eval and in training:
* DTP zeroes padded frames before each dilated conv, which is exactly the
  conv's own zero "same" padding of the unpadded tracklet when the real
  frames are contiguous (the pipeline pads at the end); TSA's 1-wide convs
  are per
  frame; TSA gives padded frames -inf attention logits (the float32 minimum,
  so an all-padded row stays finite) and zero values; pooling is a masked
  mean (TPP bins are computed from each tracklet's real length).
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
from vreid_jax.models import heads
from vreid_jax.models import resnet

ModuleDef = Any

BN_MOMENTUM = 0.9  # == PyTorch momentum 0.1.
BN_EPSILON = 1e-5

# Temporal variant -> aggregation stages applied in order. "tpp" replaces the
# final average pooling.
_TEMPORAL: dict[str, tuple[str, ...]] = {
    "gltr": ("dtp", "tsa"),
    "dtp": ("dtp",),
    "tsa": ("tsa",),
    "avg": (),
    "pyramid_nodilation": ("pyramid",),
    "tpp": ("tpp",),
}


def default_rates(num_branches: int) -> tuple[int, ...]:
  """The paper's dilation rates r_n = 2^(n-1), n = 1..N."""
  return tuple(2**n for n in range(num_branches))


def _zero_padded(x: jax.Array, mask: jax.Array) -> jax.Array:
  """x (B, T, C) with padded frames (mask False) set to exactly 0."""
  return jnp.where(mask[..., None], x, jnp.zeros((), x.dtype))


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
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Applies DTP.

    Args:
      x: (B, T, d) frame features F.
      mask: (B, T) bool, True for real frames; None = all real.

    Returns:
      (B, T, N*d) (or (N+1)*d with the identity branch) features F'.
    """
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
    # Zeroing padded frames makes them read as the conv's zero padding.
    x = _zero_padded(x.astype(dtype), mask)
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
    return jnp.concatenate(outs, axis=-1)


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
    norm: BatchNorm constructor (functools.partial of nn.BatchNorm).
  """
  alpha: int = 2
  normalization: str = "softmax"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm: ModuleDef = functools.partial(
      nn.BatchNorm, momentum=BN_MOMENTUM, epsilon=BN_EPSILON)

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool) -> tuple[jax.Array, jax.Array]:
    """Applies TSA.

    Args:
      x: (B, T, D) features F'.
      mask: (B, T) bool, True for real frames; None = all real.
      train: BN uses batch statistics (of real frames) when True.

    Returns:
      (F'', M): (B, T, D) updated features and (B, T, T) float32 attention
      M[b, s, t] (source s, target t; columns of real targets sum to 1 with
      the softmax; 0 in padded rows and columns).
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
    xz = _zero_padded(x, mask)
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

    f_bar = _zero_padded(dense(inner, name="conv_f")(xz), mask)
    context = jnp.einsum("bsk,bst->btk", f_bar, attn.astype(dtype))
    out = dense(d, kernel_init=nn.initializers.zeros,
                bias_init=nn.initializers.zeros, name="conv_w")(context)
    return out + x, attn


def temporal_pyramid_pool(x: jax.Array, mask: jax.Array | None,
                          bins: Sequence[int]) -> jax.Array:
  """Temporal pyramid pooling: mean over `n` equal bins, for n in `bins`.

  Bins are laid over each tracklet's real frames (in order), with the
  adaptive-pooling boundaries [floor(k L / n), ceil((k+1) L / n)) for L real
  frames, so every bin is non-empty when L >= 1 and padding never matters.

  Args:
    x: (B, T, d) frame features.
    mask: (B, T) bool, True for real frames; None = all real.
    bins: number of bins of each pyramid level, e.g. (1, 2, 4).

  Returns:
    (B, d * sum(bins)): level by level, bin by bin, d channels each.
  """
  b, t, d = x.shape
  mask = common.frame_mask(mask, b, t)
  pos = jnp.cumsum(mask, axis=1) - 1            # Rank among real frames.
  length = jnp.sum(mask, axis=1)[:, None]       # (B, 1)
  x = x.astype(jnp.float32)
  levels = []
  for n in bins:
    k = jnp.arange(n)[None, :]                  # (1, n)
    start = (k * length) // n                   # (B, n)
    end = ((k + 1) * length + n - 1) // n
    member = (mask[:, None, :]
              & (pos[:, None, :] >= start[:, :, None])
              & (pos[:, None, :] < end[:, :, None]))   # (B, n, T)
    total = jnp.einsum("bnt,btd->bnd", member.astype(x.dtype),
                       jnp.where(mask[..., None], x, 0.0))
    count = jnp.maximum(jnp.sum(member, axis=-1), 1)[..., None]
    levels.append((total / count).reshape(b, n * d))
  return jnp.concatenate(levels, axis=-1)


class Model(nn.Module):
  """GLTR (DTP + TSA) and its ablation variants on per-frame ResNet features.

  Attributes:
    num_classes: training identities; 0 builds no classifier (no "logits").
    arch: ResNet variant of the frame model ("resnet50" in the paper).
    width: ResNet base channels (64 = torchvision).
    last_stride: stride of the last ResNet stage (1 for ReID).
    embed_dim: d, the per-frame feature dimension after the `reduction`
      layer (paper: 128; the name matches the baseline); 0 skips the
      reduction layer.
    reduction_relu: ReLU after the reduction BN.
    temporal: "gltr", "dtp", "tsa", "avg", "pyramid_nodilation" or "tpp".
    num_branches: N, pyramid branches when `rates` is None (paper: 3).
    rates: DTP dilation rates (and TPP bin counts); None = 2^(n-1).
      The authors' public code uses (1, 2, 3).
    kernel_size: DTP temporal kernel width w (paper: 3).
    identity_branch: concatenate F to the DTP branches (public code).
    alpha: TSA channel reduction (paper: 2).
    attention_norm: TSA normalisation of M, "softmax" or "none".
    neck_feat: retrieval embedding taken "after" or "before" the BN-neck.
    zero_init_residual: zero-init the last BN gamma of each ResNet block.
    dtype: computation dtype (name or dtype); outputs are float32.
    param_dtype: parameter dtype.
  """
  num_classes: int = 0
  arch: str = "resnet50"
  width: int = 64
  last_stride: int = 1
  embed_dim: int = 128
  reduction_relu: bool = True
  temporal: str = "gltr"
  num_branches: int = 3
  rates: Sequence[int] | None = None
  kernel_size: int = 3
  identity_branch: bool = False
  alpha: int = 2
  attention_norm: str = "softmax"
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
      (embedding, aux), all float32. embedding (B, D). aux:
        "features" (B, D): GLTR f before the BN-neck (triplet loss);
        "frame_features" (B, T, d): F;
        "logits" (B, num_classes): when num_classes > 0;
        "dtp" (B, T, N*d): F' (variants "gltr", "dtp");
        "pyramid" (B, T, N*d): variant "pyramid_nodilation";
        "tsa" (B, T, D): F'' and "attention" (B, T, T): M[b, s, t]
          (variants "gltr", "tsa").
    """
    try:
      stages = _TEMPORAL[self.temporal]
    except KeyError:
      raise ValueError(f"gltr: unknown temporal={self.temporal!r}; expected "
                       f"one of {sorted(_TEMPORAL)}.") from None
    common.check_shape(clips, (None, None, None, None, 3),
                       "gltr: clips (B, T, H, W, 3)")
    b, t = clips.shape[:2]
    mask_arg, mask = mask, common.frame_mask(mask, b, t)
    dtype = common.resolve_dtype(self.dtype)
    param_dtype = common.resolve_dtype(self.param_dtype)
    rates = (tuple(self.rates) if self.rates is not None
             else default_rates(self.num_branches))

    # Frame features F (the stage-1 frame model's layers, same names).
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
    frames = common.unfold_time(x, b)
    aux = {"frame_features": frames.astype(jnp.float32)}

    h = frames
    features = None
    for stage in stages:
      if stage in ("dtp", "pyramid"):
        h = DTP(rates=rates, kernel_size=self.kernel_size,
                identity_branch=self.identity_branch,
                dilated=stage == "dtp", dtype=dtype, param_dtype=param_dtype,
                name=stage)(h, mask)
        aux[stage] = h.astype(jnp.float32)
      elif stage == "tsa":
        h, attn = TSA(alpha=self.alpha, normalization=self.attention_norm,
                      dtype=dtype, param_dtype=param_dtype, name="tsa")(
                          h, mask, train=train)
        aux["tsa"] = h.astype(jnp.float32)
        aux["attention"] = attn
      elif stage == "tpp":
        features = temporal_pyramid_pool(h, mask, rates)
    if features is None:
      features = common.masked_mean(h.astype(jnp.float32), mask, axis=1)

    neck, logits = heads.BNNeck(self.num_classes, dtype=jnp.float32,
                                param_dtype=param_dtype, name="head")(
                                    features, train=train)
    aux["features"] = features
    if logits is not None:
      aux["logits"] = logits.astype(jnp.float32)
    embedding = heads.select_embedding(features, neck, self.neck_feat)
    return embedding.astype(jnp.float32), aux
