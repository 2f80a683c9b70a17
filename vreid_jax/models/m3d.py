"""M3D: "Multi-Scale Temporal Cues Learning for Video Person
Re-Identification" (Li, Zhang, Huang, IEEE TIP 2020).

The representation is two streams, f = [f_s, f_t] (eq. 1):

  2D stream (`SpatialStream`, eq. 2):
    clips -> ResNet-50 per frame (last stride 1) -> spatial mean (2048)
          -> Linear 2048 -> 128 (with bias) -> mean over frames = f_s (128)
  M3D stream (`TemporalStream`, eq. 3):
    clips -> the same ResNet-50 run on the clip with a local M3D layer in
             the first block of each stage (`video_resnet.LocalM3D`,
             eq. 5-7: S + sum_i T_i(S), dilations 1, 2, 4)
          -> spatial mean -> Linear 2048 -> 128 = F (B, T, 128)
          -> global M3D layer (eq. 8-10: GLTR's `DTP` with its identity
             branch, dilations 1, 2, 4: [F, F^(1), F^(2), F^(3)], 512)
          -> mean over frames = f_t (512)
  fused (`TwoStream`): [f_s / |f_s|, f_t / |f_t|] (640), Euclidean distance
    (the authors' evaluation L2-normalises each stream's feature).

Training head of each stream (the public code): BatchNorm -> ReLU ->
Dropout 0.5 -> a linear classifier (N(0, 0.001^2)), cross-entropy only;
retrieval uses the feature before it. The paper trains the streams
separately: the 2D stream on single frames (128 images per batch, lr 0.001,
20 epochs), the M3D stream on 16-frame clips (batch 10, lr 0.01, x0.1 every
120 epochs, 400 epochs). Rows of `Model(variant=...)`:

  "2d"         the 2D stream alone (Table III's ResNet-50 baseline)
  "local"      local M3D layers only, temporal mean of F (Table I)
  "global"     the global M3D layer only, on the 2D trunk (Table II)
  "m3d"        local + global: the M3D stream (Table III)
  "two_stream" both streams in one model, trained jointly (the 2D stream
               with a frame-level cross-entropy on every frame of the
               clips, the M3D stream with a clip-level one; two named loss
               instances), features fused (Table VI's headline); the
               paper-faithful route trains "2d" and "m3d" separately and
               fuses their saved features with `evaluate_features --fuse`
  "i3d", "p3d_a", "p3d_b", "p3d_c", "flow_two_stream"
               Table IV's comparison models (`m3d_baselines`).

Where the paper and the authors' code differ (spec m3d.md Sec. 4), the
paper is the default and the code an option: the code's temporal branches
are conv -> BN -> ReLU with zero-initialised kernels, which never receive a
gradient (at init the BN output is exactly 0 and ReLU'(0) = 0), so as
published its local M3D layers stay 2D; we implement eq. 5 literally
(linear, bias-free, zero-initialised: the network starts as the 2D one and
the branches train from the first step), with `branch_norm="bn_relu"` for
the code's form (then Kaiming-initialised so it can train). The code uses
dilations 1, 2, 3 (`rates=(1, 2, 3)`, `global_rates=(1, 2, 3)`) and a
fifth local layer after the stem (`local_stem=True`). Time is never
strided (the TIP version).

Parameter sizes (float32, no classifier; `python -m vreid_jax.summary`):
2D stream 23.77 M (95.1 MB), M3D stream 27.05 M (108.2 MB; the paper: ~110
MB, ~15 MB over 2D), I3D 46.42 M (185.7 MB; the paper: ~76 MB more than
M3D).

Padding: the video trunk packs real frames first and zeroes padded ones
before every temporal conv; the global layer (DTP) and the means read
real frames only; BatchNorms take the mask. Padded frames change nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vreid_jax.models import common
from vreid_jax.models import framewise
from vreid_jax.models import gltr
from vreid_jax.models import heads
from vreid_jax.models import resnet
from vreid_jax.models import video_resnet

VARIANTS = ("2d", "local", "global", "m3d", "two_stream", "i3d", "p3d_a",
            "p3d_b", "p3d_c", "flow_two_stream")


class SpatialStream(framewise.FramewiseModel):
  """M3D's 2D stream: per-frame ResNet-50, Linear 2048 -> 128 (with bias,
  no BN or ReLU), temporal mean; M3D's code head (BN -> ReLU -> Dropout ->
  classifier), retrieval on the 128-d mean (eq. 2).

  Attributes: `framewise.FramewiseModel`'s, with M3D's defaults.
  """
  last_stride: int = 1
  frame_dim: int = 128
  reduction_relu: bool = False
  reduction_norm: bool = False
  reduction_bias: bool = True
  neck: str = "bn_relu_dropout"


def l2_normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class TemporalStream(nn.Module):
  """A clip model on the video ResNet: the M3D stream and its ablations.

  Attributes:
    num_classes: training identities; 0 builds no classifier.
    arch: "resnet50" (or "resnet101").
    width: base channels (64 = torchvision).
    last_stride: stride of layer4 (TIP: 1).
    kind: the trunk's temporal layer ("m3d" local layers, "2d" none, or a
      Table IV baseline: "i3d", "p3d_a", "p3d_b", "p3d_c").
    stem: the stem's kind ("2d"; "m3d" adds the public code's fifth local
      layer; the baselines' own).
    sites: blocks with the temporal layer; None = the kind's default (M3D:
      the first block of each stage).
    rates: local M3D dilations (paper: 1, 2, 4; code: 1, 2, 3).
    branch_norm: None (eq. 5) or "bn_relu" (the code's branch form).
    global_layer: add the global M3D layer.
    global_rates: its dilations.
    embed_dim: d of F (128).
    neck: the head ("bn_relu_dropout" = the code's).
    dropout: the head's dropout rate.
    dtype: computation dtype.
    param_dtype: parameter dtype.

  aux (float32): "frame_features" F (B, T, d) (frames in the trunk's packed
  order), "global_m3d" (B, T, (n+1) d) with the global layer, "features"
  f_t, "logits".
  """
  num_classes: int = 0
  arch: str = "resnet50"
  width: int = 64
  last_stride: int = 1
  kind: str = "m3d"
  stem: str = "2d"
  sites: Sequence[tuple[int, int]] | None = None
  rates: Sequence[int] = (1, 2, 4)
  branch_norm: str | None = None
  global_layer: bool = True
  global_rates: Sequence[int] = (1, 2, 4)
  embed_dim: int = 128
  neck: str = "bn_relu_dropout"
  dropout: float = 0.5
  dtype: Any = "float32"
  param_dtype: Any = "float32"

  def input_keys(self) -> tuple[str, ...]:
    return ("clips", "mask")

  @nn.compact
  def __call__(self, inputs: Mapping[str, jax.Array], *,
               train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    clips, mask, _ = common.read_inputs(inputs, "m3d")
    dtype = common.resolve_dtype(self.dtype)
    param_dtype = common.resolve_dtype(self.param_dtype)
    maps, tmask = video_resnet.VideoResNet(
        arch=self.arch, width=self.width, last_stride=self.last_stride,
        kind=self.kind, stem=self.stem,
        sites=None if self.sites is None else tuple(
            tuple(s) for s in self.sites),
        rates=tuple(self.rates), branch_norm=self.branch_norm, dtype=dtype,
        param_dtype=param_dtype, name="backbone")(clips, mask, train=train)
    frames = nn.Dense(
        self.embed_dim,
        kernel_init=nn.initializers.variance_scaling(2.0, "fan_out",
                                                     "normal"),
        dtype=dtype, param_dtype=param_dtype, name="embedding")(
            video_resnet.spatial_pool(maps))
    aux = {"frame_features": frames.astype(jnp.float32)}
    h = frames
    if self.global_layer:
      h, _ = gltr.DTP(
          rates=tuple(self.global_rates), identity_branch=True, dtype=dtype,
          param_dtype=param_dtype,
          conv=functools.partial(nn.Conv,
                                 kernel_init=nn.initializers.normal(0.001)),
          name="global_m3d")(h, tmask)
      aux["global_m3d"] = h.astype(jnp.float32)
    features = common.masked_mean(h.astype(jnp.float32), tmask, axis=1)
    embedding, head_aux = heads.EmbeddingHead(
        self.num_classes, neck=self.neck, dropout=self.dropout,
        dtype=jnp.float32, param_dtype=param_dtype, name="head")(
            features, train=train)
    aux.update(head_aux)
    return embedding, aux


class TwoStream(nn.Module):
  """Both streams, fused: [f_s / |f_s|, f_t / |f_t|] (module docstring).

  The 2D stream sees every frame as a one-frame clip (its training is image
  training, as in the paper) and its feature is the mean over the real
  frames; the M3D stream sees the clip.

  Attributes:
    num_classes: training identities (both streams' classifiers).
    arch, width, last_stride: the ResNet of both streams.
    rates, global_rates, branch_norm, local_stem: the M3D stream's layers.
    embed_dim: d (128).
    dtype, param_dtype: as the streams'.

  aux (float32): "features" (the fused feature), "spatial_features" f_s,
  "temporal_features" f_t, "logits" (the M3D stream's, per clip),
  "spatial_logits" (the 2D stream's, per frame: (B, T, classes)).
  """
  num_classes: int = 0
  arch: str = "resnet50"
  width: int = 64
  last_stride: int = 1
  rates: Sequence[int] = (1, 2, 4)
  global_rates: Sequence[int] = (1, 2, 4)
  branch_norm: str | None = None
  local_stem: bool = False
  embed_dim: int = 128
  dtype: Any = "float32"
  param_dtype: Any = "float32"

  def input_keys(self) -> tuple[str, ...]:
    return ("clips", "mask")

  @nn.compact
  def __call__(self, inputs: Mapping[str, jax.Array], *,
               train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    clips, mask, _ = common.read_inputs(inputs, "m3d (two_stream)")
    b, t = clips.shape[:2]
    mask = common.frame_mask(mask, b, t)
    f_frames, aux_s = SpatialStream(
        num_classes=self.num_classes, arch=self.arch, width=self.width,
        last_stride=self.last_stride, frame_dim=self.embed_dim,
        dtype=self.dtype, param_dtype=self.param_dtype, name="spatial")(
            {"clips": clips.reshape((b * t, 1) + clips.shape[2:]),
             "mask": mask.reshape(b * t, 1)}, train=train)
    f_s = common.masked_mean(f_frames.reshape(b, t, -1), mask, axis=1)
    f_t, aux_t = TemporalStream(
        num_classes=self.num_classes, arch=self.arch, width=self.width,
        last_stride=self.last_stride, kind="m3d",
        stem="m3d" if self.local_stem else "2d", rates=tuple(self.rates),
        branch_norm=self.branch_norm, global_rates=tuple(self.global_rates),
        embed_dim=self.embed_dim, dtype=self.dtype,
        param_dtype=self.param_dtype, name="temporal")(inputs, train=train)
    fused = jnp.concatenate([l2_normalize(f_s), l2_normalize(f_t)], axis=-1)
    aux = {"features": fused, "spatial_features": f_s,
           "temporal_features": f_t}
    if "logits" in aux_t:
      aux["logits"] = aux_t["logits"]
      aux["spatial_logits"] = aux_s["logits"].reshape(b, t, -1)
    return fused, aux


def Model(num_classes: int = 0, *, variant: str = "two_stream",  # pylint: disable=invalid-name
          **kwargs) -> nn.Module:
  """The model of a row of the paper (module docstring); the variant is
  resolved here, once, to a module class and its settings."""
  from vreid_jax.models import m3d_baselines  # pylint: disable=g-import-not-at-top
  if variant not in VARIANTS:
    raise ValueError(f"m3d: variant must be one of {VARIANTS}, got "
                     f"{variant!r}")
  if variant == "2d":
    return SpatialStream(num_classes=num_classes, **kwargs)
  if variant == "two_stream":
    return TwoStream(num_classes=num_classes, **kwargs)
  if variant in m3d_baselines.BASELINES or variant == "flow_two_stream":
    return m3d_baselines.model(variant, num_classes, **kwargs)
  local_stem = kwargs.pop("local_stem", False)
  return TemporalStream(
      num_classes=num_classes, kind="2d" if variant == "global" else "m3d",
      stem="m3d" if local_stem and variant != "global" else "2d",
      global_layer=variant != "local", **kwargs)


def load(variables: Mapping[str, Any], path: str,
         model_config: Mapping[str, Any], *, log=None) -> dict[str, Any]:
  """ImageNet weights (torchvision) into every ResNet of the model: the 2D
  stream's per-frame ResNet directly, the video trunks with their temporal
  layers kept at their (zero) initialisation and I3D's kernels inflated
  (W / 3 over time), the flow stream with TSN's cross-modality conv1."""
  from vreid_jax.models import m3d_baselines  # pylint: disable=g-import-not-at-top
  variant = model_config.get("variant", "two_stream")
  arch = model_config.get("arch", "resnet50")
  if variant == "2d":
    return resnet.load_torchvision(variables, path, arch=arch)
  if variant == "two_stream":
    variables = resnet.load_torchvision(variables, path, arch=arch,
                                        subtree="spatial/backbone")
    return video_resnet.load_imagenet(variables, path, arch=arch,
                                      subtree="temporal/backbone", log=log)
  if variant == "flow_two_stream":
    return m3d_baselines.load_flow_two_stream(variables, path, arch=arch)
  return video_resnet.load_imagenet(variables, path, arch=arch, log=log)
