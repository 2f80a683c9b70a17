"""TRL + ST²N: Dai, Zhang, Lu, Wang, "Video Person Re-identification by
Temporal Residual Learning" (IEEE TIP 2019; arXiv:1802.07918).

Two streams over one shared stem (Fig. 2; spec trl_st2n.md §1):

  clips (B, T, 224, 224, 3) in [-1, 1]
    -> Convs (GoogLeNet stem, shared)                      Y_t (56, 56, 192)
  main stream:
    Y_t -> Incep-1ᴼ -> Incep-2ᴼ (X_t, 14 x 14 x 832) -> Incep-3ᴼ -> GAP
                                                             f_tᴼ (B, T, 1024)
  alignment stream:
    Ŷ_t = ST²N(X, Y)_t (eqs. 1-6: `spatial_transformer`; θ_t from a BiLSTM
          over the loc-net features of the whole clip)
    Ŷ_t -> Incep-1ᴬ -> Incep-2ᴬ -> Incep-3ᴬ -> GAP             f_tᴬ (B, T, 1024)
  TRL per stream (eqs. 7-15, `TemporalResidual`, weights not shared):
    g_t¹ = BiLSTM1(f)_t = [fw ; bw]            (B, T, 2H = 1024)   eqs. 7-9
    ḡ¹ = mean_t g_t¹     the generic feature                       eq. 10
    r_t = ḡ¹ - g_t¹      the residuals (sum to 0 over real frames)
    g_t² = BiLSTM2(r)_t, ḡ² = mean_t g_t²   the specific feature   eqs. 11-13
    g = α ḡ¹ + (1 - α) ḡ²                  (B, 1024)            eqs. 14-15
  heads (§III-D): a linear classifier per stream on g (N(0, 0.01²), zero
    bias; one CE loss per stream, summed); at test (eq. 16)
    g = [β gᴼ/|gᴼ|₂ ; (1 - β) gᴬ/|gᴬ|₂]     (B, 2048), Euclidean distance.

Rows of Table I (`Model(variant=...)`; `alpha` overrides the row's α, e.g.
for Fig. 5a's sweep):

  lstm_g         G+LSTM_g: main stream, a unidirectional LSTM (H = 512),
                 mean over time (α = 1)
  bilstm_g       G+BiLSTM_g (the Baseline): α = 1, BiLSTM2 not built
  bilstm_s       G+BiLSTM_s: α = 0 (BiLSTM1 still feeds the residuals)
  trl            G+BiLSTM_g+BiLSTM_s: α = 0.5
  bilstm_g_stn, bilstm_s_stn, trl_stn
                 the same three with the alignment stream behind a per-frame
                 STN (no BiLSTM in the localisation network)
  bilstm_g_st2n, bilstm_s_st2n, full
                 ... behind ST²N; `full` is the paper's model.

Choices (spec §4; the authors published no code): LSTM sizes per direction
(TRL 512, ST²N 256); no projection between GAP and TRL; θ unconstrained
with the identity initialisation (W = 0, bias (1, 1, 0, 0)), so Ŷ = Y at
init and, with both Inception copies loaded from the same ImageNet weights,
OSD = ASD exactly; 'border' padding with align_corners; loc-net gradients
reach the main stream's Incep-1/2 (no stop-gradient); BiLSTMs orthogonal
(input and recurrent kernels), zero biases and TensorFlow's +1 forget bias;
new layers N(0, 0.01²) ("variance 0.01" read as std). The single-stream
rows retrieve with gᴼ/|gᴼ|₂ (eq. 16 with β = 1).

Stage 1 (§IV-B, ST²N pre-training): `frame_classifiers=True` adds a frame
classifier per stream on f_tᴼ and f_tᴬ ("frame_logits", "frame_logits_align",
(B, T, classes)); the stage-1 config puts a frame-level CE on them, which
reaches the stem, ST²N and the Inception copies and no TRL parameter.

aux (float32): "frame_features" f_tᴼ and "frame_features_align" f_tᴬ (B, T,
1024); "features_main" gᴼ, "features_align" gᴬ, "generic_main",
"specific_main", ... (B, 1024); "features" the eq. 16 descriptor (also the
embedding); "logits", "logits_align" (B, classes); "frame_logits",
"frame_logits_align" in stage 1; "stn_theta" (B, T, 4) = (sˣ, sʸ, τˣ, τʸ)
per frame with an alignment stream (the `stn_boxes` evaluator draws it).

Parameters (`python -m vreid_jax.summary`, 224 x 224, no classifier): full
38,542,852 (stem 124,736; each Inception copy 5,475,168; ST²N 2,269,188;
each TRL 12,599,296 = BiLSTM1 + BiLSTM2 of 6,299,648, PyTorch-style cells
with two bias vectors, 2,048 more per direction than TensorFlow's one);
bilstm_g (the Baseline) 11,899,552; + 625 x 1,025 per classifier (full:
39,824,102). 50.7 GFLOPs per 10-frame clip (two streams), 29.0 for one.

Padding: padded frames (mask False) change nothing, in eval and training:
every BatchNorm takes the mask, the BiLSTMs skip padded frames in both
directions, the means read real frames only and residuals are taken over
real frames.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vreid_jax.models import common
from vreid_jax.models import googlenet
from vreid_jax.models import recurrent
from vreid_jax.models import spatial_transformer

ALIGNMENTS = ("none", "stn", "st2n")
# Table I row -> (alignment stream, α, bidirectional LSTMs).
ROWS = {
    "lstm_g": dict(alignment="none", alpha=1.0, bidirectional=False),
    "bilstm_g": dict(alignment="none", alpha=1.0, bidirectional=True),
    "bilstm_s": dict(alignment="none", alpha=0.0, bidirectional=True),
    "trl": dict(alignment="none", alpha=0.5, bidirectional=True),
    "bilstm_g_stn": dict(alignment="stn", alpha=1.0, bidirectional=True),
    "bilstm_s_stn": dict(alignment="stn", alpha=0.0, bidirectional=True),
    "trl_stn": dict(alignment="stn", alpha=0.5, bidirectional=True),
    "bilstm_g_st2n": dict(alignment="st2n", alpha=1.0, bidirectional=True),
    "bilstm_s_st2n": dict(alignment="st2n", alpha=0.0, bidirectional=True),
    "full": dict(alignment="st2n", alpha=0.5, bidirectional=True),
}
VARIANTS = tuple(ROWS)


def l2_normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def fuse(g_main: jax.Array, g_align: jax.Array | None = None,
         beta: float = 0.5) -> jax.Array:
  """Eq. 16: [β gᴼ/|gᴼ|₂ ; (1 - β) gᴬ/|gᴬ|₂]; gᴼ/|gᴼ|₂ for one stream."""
  if g_align is None:
    return l2_normalize(g_main)
  return jnp.concatenate([beta * l2_normalize(g_main),
                          (1.0 - beta) * l2_normalize(g_align)], axis=-1)


def lstm_layer(hidden: int, *, bidirectional: bool, dtype, param_dtype,
               name: str) -> nn.Module:
  """TRL's recurrent layer: TensorFlow's LSTMCell recipe (orthogonal input
  and recurrent kernels, zero biases, +1 forget bias), masked."""
  cls = recurrent.Bidirectional if bidirectional else recurrent.Recurrent
  return cls(features=hidden, kernel_init=nn.initializers.orthogonal(),
             recurrent_init=nn.initializers.orthogonal(),
             bias_init=nn.initializers.zeros, forget_bias=1.0, dtype=dtype,
             param_dtype=param_dtype, name=name)


class TemporalResidual(nn.Module):
  """TRL over one stream's frame features (eqs. 7-15).

  Attributes:
    hidden: H per direction (paper: 512).
    alpha: α of eqs. 14-15 (1: generic only, BiLSTM2 not built; 0: specific
      only).
    bidirectional: BiLSTMs (False: one forward LSTM each, G+LSTM_g).
    dtype: input projection dtype of the LSTMs.
    param_dtype: parameter dtype.
  """
  hidden: int = 512
  alpha: float = 0.5
  bidirectional: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """f (B, T, C), mask (B, T) -> (g (B, D), aux).

    aux: "lstm1" g¹ (B, T, D), "generic" ḡ¹ (B, D), "residual" r (B, T, D)
    (0 at padded frames) and, when α < 1, "specific" ḡ² (B, D); D = 2H
    (H unidirectional).
    """
    del train
    common.check_shape(f, (None, None, None), f"{self.name}: f (B, T, C)")
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"{self.name}: alpha must be in [0, 1], got "
                       f"{self.alpha}")
    b, t, _ = f.shape
    mask = common.frame_mask(mask, b, t)
    layer = functools.partial(lstm_layer, self.hidden,
                              bidirectional=self.bidirectional,
                              dtype=common.resolve_dtype(self.dtype),
                              param_dtype=common.resolve_dtype(
                                  self.param_dtype))
    g1, _ = layer(name="bilstm1")(f, mask)
    generic = common.masked_mean(g1, mask, axis=1)
    residual = common.zero_padded(generic[:, None, :] - g1, mask)
    aux = {"lstm1": g1, "generic": generic, "residual": residual}
    if self.alpha == 1.0:
      return generic, aux
    g2, _ = layer(name="bilstm2")(residual, mask)
    specific = common.masked_mean(g2, mask, axis=1)
    aux["specific"] = specific
    return self.alpha * generic + (1.0 - self.alpha) * specific, aux


class TRLNet(nn.Module):
  """The two-stream network of TRL + ST²N (module docstring).

  Attributes:
    num_classes: training identities; 0 builds no classifier.
    width: GoogLeNet channel scale (64 = torchvision).
    alignment: "none" (main stream only), "stn" or "st2n".
    alpha: α of eqs. 14-15.
    beta: β of eq. 16.
    bidirectional: BiLSTMs in TRL (False: G+LSTM_g).
    trl_hidden: TRL's H per direction (512).
    loc_features: the localisation convs' channels (512).
    loc_hidden: ST²N's BiLSTM H per direction (256).
    loc_dropout: dropout before ST²N's FC (0.5).
    padding: sampler padding ("border" or "zeros").
    coords: sampler coordinates ("align_corners" or "tf_legacy").
    frame_classifiers: add stage 1's frame classifiers.
    dtype: computation dtype; outputs are float32.
    param_dtype: parameter dtype.
  """
  num_classes: int = 0
  width: int = 64
  alignment: str = "st2n"
  alpha: float = 0.5
  beta: float = 0.5
  bidirectional: bool = True
  trl_hidden: int = 512
  loc_features: int = 512
  loc_hidden: int = 256
  loc_dropout: float = 0.5
  padding: str = "border"
  coords: str = "align_corners"
  frame_classifiers: bool = False
  dtype: Any = "float32"
  param_dtype: Any = "float32"

  def input_keys(self) -> tuple[str, ...]:
    return ("clips", "mask")

  @nn.compact
  def __call__(self, inputs: Mapping[str, jax.Array], *,
               train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    if self.alignment not in ALIGNMENTS:
      raise ValueError(f"trl: alignment must be one of {ALIGNMENTS}, got "
                       f"{self.alignment!r}")
    clips, mask, _ = common.read_inputs(inputs, "trl")
    b, t = clips.shape[:2]
    full_mask = common.frame_mask(mask, b, t)
    # mask=None (every frame real): BatchNorm runs unmasked.
    fmask = None if mask is None else common.fold_time(full_mask)
    dtype = common.resolve_dtype(self.dtype)
    param_dtype = common.resolve_dtype(self.param_dtype)
    kw = dict(width=self.width, dtype=dtype, param_dtype=param_dtype)
    y = googlenet.Convs(**kw, name="convs")(common.fold_time(clips),
                                            train=train, mask=fmask)
    main = googlenet.InceptionStages(**kw, name="main")(y, train=train,
                                                        mask=fmask)
    maps = {"main": main["incep3"]}
    aux = {}
    if self.alignment != "none":
      warped, theta = spatial_transformer.SpatialTemporalTransformer(
          features=self.loc_features, hidden=self.loc_hidden,
          temporal=self.alignment == "st2n", dropout=self.loc_dropout,
          padding=self.padding, coords=self.coords, dtype=dtype,
          param_dtype=param_dtype, name=self.alignment)(
              common.unfold_time(main["incep2"], b),
              common.unfold_time(y, b), mask, train=train)
      aux["stn_theta"] = theta
      maps["align"] = googlenet.InceptionStages(**kw, name="align")(
          common.fold_time(warped), train=train, mask=fmask)["incep3"]
    classifier = functools.partial(
        nn.Dense, self.num_classes, kernel_init=nn.initializers.normal(0.01),
        bias_init=nn.initializers.zeros, dtype=jnp.float32,
        param_dtype=param_dtype)
    g = {}
    for stream, stream_maps in maps.items():
      suffix = "" if stream == "main" else f"_{stream}"
      f = common.unfold_time(
          jnp.mean(stream_maps.astype(jnp.float32), axis=(1, 2)), b)
      aux["frame_features" + suffix] = f
      g[stream], trl_aux = TemporalResidual(
          hidden=self.trl_hidden, alpha=self.alpha,
          bidirectional=self.bidirectional, dtype=dtype,
          param_dtype=param_dtype, name=f"trl_{stream}")(f, full_mask)
      aux[f"features_{stream}"] = g[stream]
      for key in ("generic", "specific"):
        if key in trl_aux:
          aux[f"{key}_{stream}"] = trl_aux[key]
      if self.num_classes > 0:
        aux["logits" + suffix] = classifier(name=f"classifier_{stream}")(
            g[stream])
        if self.frame_classifiers:
          aux["frame_logits" + suffix] = classifier(
              name=f"frame_classifier_{stream}")(f)
    embedding = fuse(g["main"], g.get("align"), self.beta)
    aux["features"] = embedding
    return embedding, {k: v.astype(jnp.float32) for k, v in aux.items()}


def row_settings(variant: str) -> dict[str, Any]:
  """The model fields a Table I row fixes (alignment, alpha, bidirectional)."""
  if variant not in ROWS:
    raise ValueError(f"trl: variant must be one of {VARIANTS}, got "
                     f"{variant!r}")
  return dict(ROWS[variant])


def Model(num_classes: int = 0, *, variant: str = "full",  # pylint: disable=invalid-name
          alpha: float | None = None, **kwargs) -> nn.Module:
  """The model of a Table I row; `alpha` (not None) overrides the row's α,
  other keyword arguments are `TRLNet`'s."""
  settings = row_settings(variant)
  if alpha is not None:
    settings["alpha"] = float(alpha)
  settings.update(kwargs)
  return TRLNet(num_classes=num_classes, **settings)


def load(variables: Mapping[str, Any], path: str,
         model_config: Mapping[str, Any]) -> dict[str, Any]:
  """ImageNet GoogLeNet (a torchvision state dict, .pth/.safetensors/.npz)
  into the shared stem and into every Inception copy (both streams start
  from the same weights, spec §1.1)."""
  del model_config
  params = variables.get("params", {})
  streams = tuple(s for s in ("main", "align") if s in params)
  return googlenet.load_torchvision(variables, path, convs="convs",
                                    stages=streams)
