"""STAR: "Spatio-Temporal Associative Representation for Video Person
Re-Identification" (Wu, Zhu, Gong, BMVC 2019). No public code exists; the
shapes and every choice the paper leaves open follow `shared/specs/star.md`.

    clips (B, L, 256, 128, 3), flow (B, L, 256, 128, 2)
      LSTA (eq. 1-5, `Trunk`, per frame):
        U = P(ReLU(BN(W1 * I))) + P(ReLU(BN(W2 * O)))     (eq. 2) (64, 32, 64)
        ResNet-50 stage s, then an LSTA block after its output (s = 1..4):
          M_g = spatial_gate(channel_gate(M))             (eq. 4-5)
        f_i: the last map, (8, 4, 2048) (stride-2 layer4, as the paper)
      GSTA (eq. 6-8, `GSTA`):
        H_i = ConvLSTM(f)_i, h_i = mean_{h,w} H_i         (eq. 6) (B, L, Ch)
        K = softmax_i(W8 ReLU(W7 h_i + b7) + b8)          (eq. 7) (B, L)
        V = W9 (sum_i K_i h_i) + mean_{i,h,w} f_i         (eq. 8) (B, 2048)
      head: a linear classifier with bias on V (eq. 11), triplet on V
      (eq. 12), retrieval on V with Euclidean distance.

Losses (eq. 13, `configs/star_common.py`): L_id + L_trip + 0.1 R_pr, R_pr the
pyramid ranking regulariser of `losses.pyramid_ranking` on aux["frame_maps"].

Pieces shared with other models: the flow stem is `resnet.ResNet`'s
(`flow_stem=True`, eq. 2, with ImageNet's bn1 kept in each stem) rebuilt
here with the same parameter names so that the stages can be interleaved
with LSTA blocks (tested: with attention "none" the trunk is exactly
`resnet.ResNet(flow_stem=True)`); the gates are `attention.ChannelSpatialGate`
(form "lsta" or "cbam"), the ConvLSTM `recurrent.ConvLSTM`, the softmax over
real frames `attention.normalize_scores`, the head `heads.EmbeddingHead`.

Model fields and the paper's rows (configs/star_common.py):

  attention   "lsta": one LSTA block after each ResNet stage in
              `lsta_stages` ("block-wise rather than layer-wise", spec 1b);
              "cbam": CBAM in every bottleneck, before the residual sum (the
              "Baseline CBAM-Multi-loss" of Table 3); "none".
  gsta        GSTA (eq. 6-8); False = the temporal average of the frames'
              pooled maps (eq. 8's residual term alone).
  use_flow    the flow stem (eq. 2); False = RGB only (Fig. 7), no flow
              parameters and no "flow" input.

Choices (spec Sec. 4; the paper is silent): LSTA not residual (eq. 4-5
multiply the main path; `lsta_residual` adds M back); spatial-gate branches
2 -> 1 channel with separate weights per dilation, bottleneck 3 -> 1; the
ConvLSTM has a 3x3 kernel, 512 hidden channels, no peepholes and Flax's +1
forget bias; W7 has 128 channels; b8 is outside the ReLU of eq. 7 (the text
puts it inside: read as a typo); W9 is LeCun-normal (`zero_init_w9` starts V
as the mean-pooled baseline); the flow stem starts from ImageNet's conv1
averaged over RGB (TSN), flow_bn1 = bn1 (`load`).

aux (float32): "frame_maps" f (B, L, h, w, C) and "frame_mask" (B, L) (for
R_pr), "frame_features" (B, L, C) the frames' pooled maps,
"spatial_attention" (B, L, h, w) the last gate's spatial weights (when
there is one), "frame_weights" = "temporal_attention" K (B, L) with GSTA,
"gsta_hidden" (B, L, Ch) the h_i, "features" V and "logits".

Padding: padded frames (mask False) change nothing: every BatchNorm takes
the mask, the gates are per frame, the ConvLSTM keeps its carry on padded
steps, eq. 7's softmax gives them weight 0 and the means of eq. 8 skip
them (tested, in eval and in training).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vreid_jax.models import attention as attention_lib
from vreid_jax.models import common
from vreid_jax.models import heads
from vreid_jax.models import recurrent
from vreid_jax.models import resnet
from vreid_jax.models import weights as weights_lib

ATTENTIONS = ("lsta", "cbam", "none")
ModuleDef = Any


_pad = resnet._pad  # pylint: disable=protected-access


class GatedBottleneck(nn.Module):
  """torchvision's Bottleneck with a channel + spatial gate on the residual
  branch before the sum, as CBAM places it (`layer{i}_{j}/cbam`).

  Attributes: those of `resnet.Bottleneck`, and `gate`, a constructor of
  `attention.ChannelSpatialGate` (its `name` is set here).
  """
  planes: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  gate: ModuleDef
  zero_init_last: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               mask: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    last_init = (nn.initializers.zeros if self.zero_init_last
                 else nn.initializers.ones)
    y = self.conv(self.planes, (1, 1), padding=_pad(1), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y, mask=mask))
    y = self.conv(self.planes, (3, 3), strides=(self.strides,) * 2,
                  padding=_pad(3), name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y, mask=mask))
    y = self.conv(self.planes * 4, (1, 1), padding=_pad(1), name="conv3")(y)
    y = self.norm(scale_init=last_init, name="bn3")(y, mask=mask)
    y, gates = self.gate(name="cbam")(
        y, train=train, mask=None if mask is None else mask.reshape(-1))
    if self.strides != 1 or x.shape[-1] != self.planes * 4:
      x = self.conv(self.planes * 4, (1, 1), strides=(self.strides,) * 2,
                    padding=_pad(1), name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x, mask=mask)
    return nn.relu(x + y.astype(x.dtype)), gates


class Trunk(nn.Module):
  """LSTA (eq. 1-5): the two stems, the ResNet stages and their gates.

  Parameter names are `resnet.ResNet`'s (conv1, bn1, flow_conv1, flow_bn1,
  layer{i}_{j}/...), plus `lsta{i}` (the block after stage i) or
  `layer{i}_{j}/cbam`.

  Attributes:
    arch: ResNet variant (CBAM placement needs a bottleneck arch).
    width: base channels (64 = torchvision).
    last_stride: stride of layer4 (STAR: 2).
    flow_stem: eq. 2's flow stem.
    attention: "lsta", "cbam" or "none".
    lsta_stages: stages (1..4) followed by an LSTA block.
    reduction: r of the channel gates.
    spatial_kernel, dilations: the LSTA spatial gate's branches.
    spatial_attention: use the spatial gate (Fig. 6 ablation: False).
    lsta_residual: M + M_g (not in the paper).
    dtype: computation dtype.
    param_dtype: parameter dtype.
  """
  arch: str = "resnet50"
  width: int = 64
  last_stride: int = 2
  flow_stem: bool = True
  attention: str = "lsta"
  lsta_stages: tuple[int, ...] = (1, 2, 3, 4)
  reduction: int = 16
  spatial_kernel: int = 3
  dilations: tuple[int, ...] = (1, 2, 3)
  spatial_attention: bool = True
  lsta_residual: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               mask: jax.Array | None = None,
               flow: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(N, H, W, 3) frames [+ (N, H, W, 2) flow] -> ((N, h, w, C) maps,
    {"spatial": (N, h', w') the last gate's spatial weights} when gated)."""
    if self.attention not in ATTENTIONS:
      raise ValueError(f"star: config.model.attention must be one of "
                       f"{ATTENTIONS}, got {self.attention!r}")
    bad = sorted(set(self.lsta_stages) - {1, 2, 3, 4})
    if bad:
      raise ValueError(f"star: config.model.lsta_stages must be within 1..4,"
                       f" got {tuple(self.lsta_stages)}")
    common.check_shape(x, (None, None, None, 3), "star: frames (N, H, W, 3)")
    stage_sizes, block_cls = resnet.arch_spec(self.arch)
    if self.attention == "cbam" and block_cls is not resnet.Bottleneck:
      raise ValueError(f"star: attention='cbam' puts CBAM in every "
                       f"bottleneck; config.model.arch={self.arch!r} has none "
                       "(use resnet50 or resnet101)")
    dtype = common.resolve_dtype(self.dtype)
    param_dtype = common.resolve_dtype(self.param_dtype)
    conv = functools.partial(nn.Conv, use_bias=False,
                             kernel_init=resnet.conv_kernel_init, dtype=dtype,
                             param_dtype=param_dtype)
    norm = functools.partial(common.BatchNorm, use_running_average=not train,
                             dtype=dtype, param_dtype=param_dtype)
    gate = functools.partial(
        attention_lib.ChannelSpatialGate, form=self.attention,
        reduction=self.reduction,
        kernel_size=self.spatial_kernel if self.attention == "lsta" else 7,
        dilations=tuple(self.dilations), spatial=self.spatial_attention,
        residual=self.lsta_residual and self.attention == "lsta",
        dtype=dtype, param_dtype=param_dtype)
    bn_mask = None
    if mask is not None:
      common.check_shape(mask, (x.shape[0],), "star: frame mask (N,)")
      bn_mask = common.expand_mask(mask.astype(bool), 4)

    # resnet.ResNet's stem (eq. 2's P(ReLU(BN(W * .)))).
    stem = functools.partial(resnet.stem_block, conv=conv, norm=norm,
                             train=train, width=self.width, dtype=dtype,
                             bn_mask=bn_mask)

    y = stem(x, "")
    if self.flow_stem:
      if flow is None:
        raise ValueError("star: config.model.use_flow=True needs inputs"
                         "['flow'] (N, H, W, 2)")
      common.check_shape(flow, x.shape[:3] + (2,), "star: flow (N, H, W, 2)")
      y = y + stem(flow, "flow_")                                  # eq. 2.
    gates: dict[str, jax.Array] = {}
    for i, num_blocks in enumerate(stage_sizes):
      stage_stride = 1 if i == 0 else (self.last_stride if i == 3 else 2)
      for j in range(num_blocks):
        kwargs = dict(planes=self.width * 2**i,
                      strides=stage_stride if j == 0 else 1, conv=conv,
                      norm=norm, name=f"layer{i + 1}_{j}")
        if self.attention == "cbam":
          y, g = GatedBottleneck(gate=gate, **kwargs)(y, train=train,
                                                      mask=bn_mask)
          gates.update(g)
        else:
          y = block_cls(**kwargs)(y, mask=bn_mask)
      if self.attention == "lsta" and i + 1 in self.lsta_stages:
        y, g = gate(name=f"lsta{i + 1}")(y, train=train, mask=mask)
        gates.update(g)
    out = {"spatial": gates["spatial"]} if "spatial" in gates else {}
    return y, out


class GSTA(nn.Module):
  """GSTA (eq. 6-8): ConvLSTM, temporal softmax attention, residual mean.

  Attributes:
    hidden: Ch, the ConvLSTM's channels (spec: 512).
    kernel_size: the ConvLSTM's kernel (spec: 3).
    attention_hidden: W7's channels (spec: 128).
    zero_init_w9: W9 = 0 at init (V starts as the mean of the frames).
    dtype: computation dtype of the ConvLSTM's input conv.
    param_dtype: parameter dtype.
  """
  hidden: int = 512
  kernel_size: int = 3
  attention_hidden: int = 128
  zero_init_w9: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, maps: jax.Array, mask: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """maps (B, L, h, w, C), mask (B, L) -> (V (B, C), {"frame_weights",
    "temporal_attention": K (B, L), "gsta_hidden": h_i (B, L, Ch)})."""
    common.check_shape(maps, (None, None, None, None, None),
                       f"{self.name}: maps (B, L, h, w, C)")
    param_dtype = common.resolve_dtype(self.param_dtype)
    states, _ = recurrent.ConvLSTM(
        self.hidden, self.kernel_size, dtype=self.dtype,
        param_dtype=param_dtype, name="convlstm")(maps, mask, train=train)
    h = jnp.mean(states, axis=(2, 3))                             # eq. 6.
    # Two 1x1 convs on h_i = two Dense layers (PyTorch's default init).
    u = nn.relu(nn.Dense(self.attention_hidden,
                         kernel_init=common.torch_kernel_init,
                         bias_init=common.torch_bias_init(self.hidden),
                         param_dtype=param_dtype, name="w7")(h))
    scores = nn.Dense(1, kernel_init=common.torch_kernel_init,
                      bias_init=common.torch_bias_init(self.attention_hidden),
                      param_dtype=param_dtype, name="w8")(u)[..., 0]
    k = attention_lib.normalize_scores(scores, mask, "softmax")   # eq. 7.
    attended = jnp.einsum("bt,btc->bc", k, common.zero_padded(h, mask))
    c = maps.shape[-1]
    w9 = nn.Dense(c, kernel_init=(nn.initializers.zeros if self.zero_init_w9
                                  else nn.initializers.lecun_normal()),
                  param_dtype=param_dtype, name="w9")(attended)
    mean = common.masked_mean(jnp.mean(maps.astype(jnp.float32), axis=(2, 3)),
                              mask)
    return w9 + mean, {"frame_weights": k, "temporal_attention": k,   # eq. 8.
                       "gsta_hidden": h}


class Model(nn.Module):
  """STAR (module docstring).

  Attributes:
    num_classes: training identities; 0 builds no classifier.
    arch: ResNet variant ("resnet50").
    width: ResNet base channels (64).
    last_stride: stride of layer4 (2: the paper's f_i is 8 x 4).
    use_flow: eq. 2's flow stem; the inputs then carry "flow".
    attention: "lsta" (the paper), "cbam" (CBAM in every bottleneck, Table
      3's baseline) or "none".
    lsta_stages: the stages followed by an LSTA block ((1, 2, 3, 4)).
    reduction: r of the channel gates (16).
    spatial_kernel: the LSTA spatial branches' kernel (3; Fig. 6: 7).
    dilations: the LSTA spatial branches' dilations ((1, 2, 3); Fig. 6:
      (1, 1, 1)).
    spatial_attention: LSTA's spatial gate (Fig. 6: without it).
    lsta_residual: M + M_g instead of M_g (not in the paper).
    gsta: GSTA (eq. 6-8); False = temporal average pooling of the frames.
    gsta_hidden: the ConvLSTM's channels Ch (512).
    gsta_kernel: the ConvLSTM's kernel (3).
    attention_hidden: W7's channels (128).
    zero_init_w9: W9 = 0 at init.
    neck: the head ("none": the paper's linear classifier with bias on V).
    neck_feat: with neck="bnneck", retrieval "after" or "before" the BN.
    dtype: computation dtype; outputs are float32.
    param_dtype: parameter dtype.
  """
  num_classes: int = 0
  arch: str = "resnet50"
  width: int = 64
  last_stride: int = 2
  use_flow: bool = True
  attention: str = "lsta"
  lsta_stages: Sequence[int] = (1, 2, 3, 4)
  reduction: int = 16
  spatial_kernel: int = 3
  dilations: Sequence[int] = (1, 2, 3)
  spatial_attention: bool = True
  lsta_residual: bool = False
  gsta: bool = True
  gsta_hidden: int = 512
  gsta_kernel: int = 3
  attention_hidden: int = 128
  zero_init_w9: bool = False
  neck: str = "none"
  neck_feat: str = "after"
  dtype: Any = "float32"
  param_dtype: Any = "float32"

  def input_keys(self) -> tuple[str, ...]:
    return ("clips", "mask") + (("flow",) if self.use_flow else ())

  @nn.compact
  def __call__(self, inputs: Mapping[str, jax.Array], *,
               train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Embeds clips: inputs {"clips" (B, L, H, W, 3), "mask" (B, L)[, "flow"
    (B, L, H, W, 2)]} -> (V (B, C), aux) (module docstring)."""
    clips, mask, flow = common.read_inputs(inputs, "star", flow=self.use_flow)
    b, t = clips.shape[:2]
    full_mask = common.frame_mask(mask, b, t)
    dtype = common.resolve_dtype(self.dtype)
    param_dtype = common.resolve_dtype(self.param_dtype)
    maps, gates = Trunk(
        arch=self.arch, width=self.width, last_stride=self.last_stride,
        flow_stem=self.use_flow, attention=self.attention,
        lsta_stages=tuple(self.lsta_stages), reduction=self.reduction,
        spatial_kernel=self.spatial_kernel, dilations=tuple(self.dilations),
        spatial_attention=self.spatial_attention,
        lsta_residual=self.lsta_residual, dtype=dtype,
        param_dtype=param_dtype, name="backbone")(
            common.fold_time(clips), train=train,
            mask=None if mask is None else common.fold_time(full_mask),
            flow=None if flow is None else common.fold_time(flow))
    maps = common.unfold_time(maps, b)                          # {f_i}.
    frames = jnp.mean(maps.astype(jnp.float32), axis=(2, 3))
    aux = {"frame_maps": maps.astype(jnp.float32),
           "frame_mask": full_mask.astype(jnp.float32),
           "frame_features": frames}
    if "spatial" in gates:
      aux["spatial_attention"] = common.unfold_time(
          gates["spatial"].astype(jnp.float32), b)
    if self.gsta:
      features, extra = GSTA(
          self.gsta_hidden, self.gsta_kernel, self.attention_hidden,
          self.zero_init_w9, dtype=dtype, param_dtype=param_dtype,
          name="gsta")(maps, full_mask, train=train)
      aux.update(extra)
    else:
      features = common.masked_mean(frames, full_mask)
    embedding, head_aux = heads.EmbeddingHead(
        self.num_classes, neck=self.neck, neck_feat=self.neck_feat,
        dtype=jnp.float32, param_dtype=param_dtype, name="head")(
            features, train=train,
            mask=None if mask is None else full_mask.any(axis=1))
    aux.update(head_aux)
    return embedding, {k: v.astype(jnp.float32) for k, v in aux.items()}


def _is_attention(key: str) -> bool:
  """Backbone keys that ImageNet weights do not have: the gates."""
  parts = key.split("/")
  return parts[0].startswith("lsta") or "cbam" in parts


def load(variables: Mapping[str, Any],
         path: str | os.PathLike | Mapping[str, Any],
         model_config: Mapping[str, Any]) -> dict[str, Any]:
  """ImageNet ResNet weights (torchvision state dict, .pth/.safetensors/
  .npz, or the .npz of `python -m vreid_jax.import_weights`) into the
  `backbone` subtree: the RGB stem and the stages directly, the flow stem
  by TSN's cross-modality rule (`resnet.flow_stem_from_rgb`: conv1 averaged
  over RGB, flow_bn1 = bn1) unless the file has one; the LSTA / CBAM gates
  keep their initialisation. Any other missing, unexpected or mis-shaped key
  is an error naming it. GSTA and the head are new layers."""
  arch = model_config.get("arch", "resnet50")
  if isinstance(path, (str, os.PathLike)):
    path = weights_lib.read_weights(path)
  new = resnet.flax_backbone_weights(
      {k.removeprefix("module."): v for k, v in path.items()}, arch=arch)
  variables = weights_lib.to_dict(variables)
  target = {c: weights_lib.flatten(weights_lib.get_subtree(
      variables.get(c, {}), "backbone")) for c in weights_lib.COLLECTIONS}
  if ("flow_conv1/kernel" in target["params"]
      and "flow_conv1/kernel" not in new["params"]):
    new = resnet.flow_stem_from_rgb(new)
  for collection in weights_lib.COLLECTIONS:
    for key, value in target[collection].items():
      if key not in new[collection] and _is_attention(key):
        new[collection][key] = np.asarray(value)
  return weights_lib.merge_subtree(
      variables, "backbone", new,
      what=f"ImageNet {arch} into STAR's backbone (config.model.arch)")
