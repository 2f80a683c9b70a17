"""Frame-wise temporal models: 2D features per frame, then time, then a head.

    inputs {"clips" (B, T, H, W, 3), "mask" (B, T)[, "flow" (B, T, H, W, 2)]}
      -> FrameEncoder (backbone + reduction, per frame)     frames F (B, T, d)
      -> sequence layers, in order (e.g. GLTR's DTP, TSA)    (B, T, D)
      -> aggregator (e.g. temporal average pooling)          (B, D) = features
      -> EmbeddingHead (BN-neck or linear classifier)        embedding, logits

`FramewiseModel` is the shared skeleton of the baseline, GLTR and the
frame-level family of Gao & Nevatia. A paper's `Model` subclasses it, adds
its own typed attributes and overrides `temporal_layers` (the sequence
layers, named as in the paper) and `aggregator`; both are resolved once in
`setup`, so the variant of a model is a set of modules, never a string read
while the model runs.

Parameter tree: `backbone`, `reduction` (the frame encoder, at the top
level), the sequence layers by name, and `head`. A frame model (T = 1)
therefore initialises any frame-wise temporal model subtree by subtree.

aux (all float32): "frame_features" (B, T, d), each sequence layer's output
under its name and whatever extra it reports (e.g. "attention"), "features"
(B, D) before the head (the triplet loss reads it) and "logits" when
num_classes > 0.

Padding: padded frames (mask False) change no output for real frames, in
eval and in training: the encoder's BatchNorms take the mask, sequence
layers and aggregators never read padded frames.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vreid_jax.models import common
from vreid_jax.models import encoders
from vreid_jax.models import heads
from vreid_jax.models import resnet
from vreid_jax.models import temporal


class FramewiseModel(nn.Module):
  """Per-frame ResNet features, temporal layers, an aggregator and a head.

  Attributes:
    num_classes: training identities; 0 builds no classifier (no "logits").
    arch: ResNet variant: "resnet18", "resnet34", "resnet50", "resnet101".
    width: ResNet base channels (64 = torchvision).
    last_stride: stride of the last ResNet stage (1 for ReID).
    frame_dim: d, the per-frame feature size after the `reduction` layer;
      0 keeps the backbone's pooled feature (no reduction layer).
    reduction_relu: ReLU at the end of the reduction.
    reduction_norm: BatchNorm in the reduction (GLTR: yes; M3D: no).
    reduction_bias: bias in the reduction's Dense (M3D: yes).
    neck: "bnneck" (Luo et al.), "none" (linear classifier, no BN) or
      "bn_relu_dropout" (M3D's code head).
    neck_feat: retrieval embedding taken "after" or "before" the BN-neck.
    zero_init_residual: zero-init the last BN gamma of each ResNet block.
    use_flow: read optical flow through a second stem (STAR eq. 2; the
      inputs must then carry "flow").
    dtype: computation dtype (name or dtype); outputs are float32.
    param_dtype: parameter dtype.
    remat: rematerialise the backbone's residual blocks in the backward
      pass (memory for long clips or large batches; same results).
    norm_impl: the backbone's BatchNorm: "fused" (default; models/norm.py:
      BN, residual add and ReLU as one op with a hand-written backward;
      same variables and forward, faster training) or "flax"
      (flax.linen.BatchNorm).
  """
  num_classes: int = 0
  arch: str = "resnet50"
  width: int = 64
  last_stride: int = 1
  frame_dim: int = 0
  reduction_relu: bool = False
  reduction_norm: bool = True
  reduction_bias: bool = False
  neck: str = "bnneck"
  neck_feat: str = "after"
  zero_init_residual: bool = False
  use_flow: bool = False
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  remat: bool = False
  norm_impl: str = "fused"

  def input_keys(self) -> tuple[str, ...]:
    """The input keys this model reads."""
    return ("clips", "mask") + (("flow",) if self.use_flow else ())

  def temporal_layers(self) -> Sequence[nn.Module]:
    """Sequence layers applied in order, each created with its `name`."""
    return ()

  def aggregator(self) -> nn.Module:
    """The module that pools into the clip feature (named as in the paper;
    parameter-free pools need no name)."""
    return temporal.AvgPool()

  def aggregator_input(self, h: jax.Array, maps: jax.Array) -> jax.Array:
    """What the aggregator reads: the sequence layers' output (B, T, D) by
    default; an aggregator that needs the frames' feature maps (B, T, h, w,
    C), e.g. Gao & Nevatia's temporal attention, overrides this."""
    del maps
    return h

  @property
  def compute_dtype(self):
    return common.resolve_dtype(self.dtype)

  def setup(self):
    param_dtype = common.resolve_dtype(self.param_dtype)
    self.encoder = encoders.FrameEncoder(
        arch=self.arch, width=self.width, last_stride=self.last_stride,
        zero_init_residual=self.zero_init_residual, flow_stem=self.use_flow,
        frame_dim=self.frame_dim, reduction_relu=self.reduction_relu,
        reduction_norm=self.reduction_norm,
        reduction_bias=self.reduction_bias, dtype=self.compute_dtype,
        param_dtype=param_dtype, remat=self.remat, norm_impl=self.norm_impl)
    # The encoder's `backbone` and `reduction` live at the top of our tree.
    nn.share_scope(self, self.encoder)
    self.layers = tuple(self.temporal_layers())
    # In a tuple, the aggregator keeps the name it was created with.
    self.pooling = (self.aggregator(),)
    self.head = heads.EmbeddingHead(
        self.num_classes, neck=self.neck, neck_feat=self.neck_feat,
        dtype=jnp.float32, param_dtype=param_dtype)

  def __call__(self, inputs: Mapping[str, jax.Array], *,
               train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Embeds a batch of clips.

    Args:
      inputs: {"clips": (B, T, H, W, 3) normalised frames, "mask": (B, T)
        bool (True = real frame; absent = all real), "flow": (B, T, H, W, 2)
        when `use_flow`}.
      train: training mode (BatchNorm batch statistics).

    Returns:
      (embedding (B, D), aux), all float32 (module docstring).
    """
    name = type(self).__module__.rsplit(".", 1)[-1]
    clips, mask, flow = common.read_inputs(inputs, name, flow=self.use_flow)
    b, t = clips.shape[:2]
    full_mask = common.frame_mask(mask, b, t)
    frames, maps = self.encoder(clips, mask, train=train, flow=flow)
    aux = {"frame_features": frames.astype(jnp.float32)}
    h = frames
    for layer in self.layers:
      h, extra = layer(h, full_mask, train=train)
      aux[layer.name] = h.astype(jnp.float32)
      aux.update(extra)
    features, extra = self.pooling[0](self.aggregator_input(h, maps),
                                      full_mask, train=train)
    aux.update(extra)
    # A clip without a real frame stays out of the head's BN statistics.
    embedding, head_aux = self.head(
        features, train=train,
        mask=None if mask is None else full_mask.any(axis=1))
    aux.update(head_aux)
    return embedding, aux


def load(variables: Mapping[str, Any], path: str,
         model_config: Mapping[str, Any]) -> dict[str, Any]:
  """Pretrained weights of a frame-wise model: ImageNet ResNet -> backbone.

  Args:
    variables: the model's initialised variables.
    path: a torchvision ResNet state dict (.pth/.pt/.safetensors/.npz) or the
      .npz written by `python -m vreid_jax.import_weights`.
    model_config: the model's config (`config.model`); `arch` names the
      ResNet.

  Returns:
    The variables with the backbone replaced; a flow stem (use_flow) is
    initialised from the RGB stem (TSN's cross-modality rule).
  """
  return resnet.load_torchvision(variables, path,
                                 arch=model_config.get("arch", "resnet50"),
                                 subtree="backbone")
