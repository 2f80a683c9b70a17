"""Gao & Nevatia, "Revisiting Temporal Modeling for Video-based Person
ReID" (BMVC 2018): four ways of turning frames into one clip feature, under
one protocol.

2D family (`TemporalModel`, a `framewise.FramewiseModel`):

    clips (B, T, H, W, 3), 224 x 112, T = 4
      -> backbone (ResNet-50, per frame, last stride 2)    maps (B, T, 7, 4, 2048)
      -> spatial mean                                      f_c^t (B, T, 2048)
      -> temporal modeling:
           "avg"        f_c = mean_t f_c^t                           (Sec 3.1)
           "max"        f_c = max_t f_c^t                            (Table 2)
           "attention"  f_c = sum_t a_t f_c^t, a from the maps       (eq. 1-3)
                        (`attention.TemporalAttentionPool`)
           "rnn"        o = LSTM/GRU(f_c), f_c = mean_t o_t or h_T   (Tables 6-8)
      -> head                                              logits, embedding f_c

3D CNN (`VideoModel`, temporal="c3d"): Hara's 3D ResNet-50
(`resnet3d.ResNet3D`) on the clip, global average pooling -> f_c (B, 2048).

`Model(num_classes, temporal=..., **kwargs)` builds the one of the two that
`temporal` names (the variant is resolved to a module class once, here).
The image baseline of the paper (Table 3, T = 1) is "avg" on 1-frame clips.

Head: the paper's, a linear classifier with bias on f_c, the triplet loss
on f_c and retrieval on f_c (`neck="none"`, default); the BN-neck of our
other models is an option (`neck="bnneck"`).

Parameter counts (625 classes, 224 x 112): "avg" 24,788,657 (ResNet-50
without fc, 23,508,032, + 2048 x 625 + 625); "attention" adds 14,681,089
(spatial conv 2048 x 256 x 7 x 4 + 256, temporal conv 256 x 3 + 1); "rnn"
adds the LSTM's 5,246,976 and has a 512-way input to the classifier.

Where the paper and the authors' code differ, and what we do (spec
`gao.md` Sec. 5): eq. 1's 1/T is left out as in the code (weights sum to 1);
the code's ReLU before the attention normaliser is kept, as a flag
(`attention_relu`); "spatial conv + FC" follows the paper (the code never
shipped it); max pooling is inside the model (the paper's Table 2), not the
code's gallery-level max; the RNN is the code's evident intent (its file
does not build).

Padding: every variant ignores padded frames, wherever the mask puts them
(the frame encoder's BatchNorms take the mask; pooling, attention and the
recurrence never read a padded frame; the 3D ResNet packs real frames first
and zeroes the rest before every temporal conv).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vreid_jax.models import attention as attention_lib
from vreid_jax.models import common
from vreid_jax.models import framewise
from vreid_jax.models import heads
from vreid_jax.models import recurrent
from vreid_jax.models import resnet
from vreid_jax.models import resnet3d
from vreid_jax.models import temporal as temporal_lib

TEMPORAL = ("avg", "max", "attention", "rnn", "c3d")
RNN_OUTPUTS = ("mean", "final")


class TemporalModel(framewise.FramewiseModel):
  """The 2D family: per-frame ResNet-50, then pooling, attention or an RNN.

  Attributes (besides `framewise.FramewiseModel`'s):
    temporal: "avg", "max", "attention" or "rnn".
    attention: "temporal_conv" (spatial + temporal conv) or "fc" (spatial
      conv + FC).
    attention_norm: "softmax" (eq. 2) or "sigmoid" (eq. 3).
    attention_relu: ReLU on the scores before the normaliser (code).
    attention_dim: d_t (paper: 256).
    rnn_cell: "lstm" or "gru".
    rnn_hidden: D_h (paper: 512).
    rnn_output: "mean" (average of the outputs: the code and the best
      setting) or "final" (the final hidden state h_T).

  aux (float32): "frame_features" (B, T, 2048), "features" f_c, "logits";
  "attention" (B, T) weights for "attention"; "rnn" (B, T, D_h) outputs for
  "rnn".
  """
  last_stride: int = 2
  neck: str = "none"
  temporal: str = "attention"
  attention: str = "temporal_conv"
  attention_norm: str = "softmax"
  attention_relu: bool = True
  attention_dim: int = 256
  rnn_cell: str = "lstm"
  rnn_hidden: int = 512
  rnn_output: str = "mean"

  def _check(self) -> None:
    if self.temporal not in TEMPORAL[:-1]:
      raise ValueError(f"gao: temporal must be one of {TEMPORAL}, got "
                       f"{self.temporal!r}")
    if self.rnn_output not in RNN_OUTPUTS:
      raise ValueError(f"gao: rnn_output must be one of {RNN_OUTPUTS}, got "
                       f"{self.rnn_output!r}")

  def temporal_layers(self) -> Sequence[nn.Module]:
    self._check()
    if self.temporal != "rnn":
      return ()
    return (recurrent.Recurrent(
        features=self.rnn_hidden, cell=self.rnn_cell,
        dtype=self.compute_dtype,
        param_dtype=common.resolve_dtype(self.param_dtype), name="rnn"),)

  def aggregator(self) -> nn.Module:
    self._check()
    if self.temporal == "attention":
      return attention_lib.TemporalAttentionPool(
          features=self.attention_dim, scorer=self.attention,
          normalization=self.attention_norm, relu=self.attention_relu,
          dtype=self.compute_dtype,
          param_dtype=common.resolve_dtype(self.param_dtype),
          name="attention")
    if self.temporal == "max":
      return temporal_lib.MaxPool()
    if self.temporal == "rnn" and self.rnn_output == "final":
      return temporal_lib.LastPool()
    return temporal_lib.AvgPool()

  def aggregator_input(self, h: jax.Array, maps: jax.Array) -> jax.Array:
    return maps if self.temporal == "attention" else h


class VideoModel(nn.Module):
  """The 3D CNN: Hara's 3D ResNet on the clip, global pooling, the head.

  Attributes:
    num_classes: training identities; 0 builds no classifier.
    arch: 3D ResNet depth ("resnet50" in the paper).
    width: base channels (64).
    neck: "none" (the paper's linear head) or "bnneck".
    neck_feat: with the BN-neck, retrieval "after" or "before" it.
    dtype: computation dtype; outputs are float32.
    param_dtype: parameter dtype.

  aux (float32): "features" f_c (B, C), "logits".
  """
  num_classes: int = 0
  arch: str = "resnet50"
  width: int = 64
  neck: str = "none"
  neck_feat: str = "after"
  dtype: Any = "float32"
  param_dtype: Any = "float32"

  def input_keys(self) -> tuple[str, ...]:
    return ("clips", "mask")

  @nn.compact
  def __call__(self, inputs: Mapping[str, jax.Array], *,
               train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    clips, mask, _ = common.read_inputs(inputs, "gao (c3d)")
    param_dtype = common.resolve_dtype(self.param_dtype)
    maps, tmask = resnet3d.ResNet3D(
        arch=self.arch, width=self.width, dtype=self.dtype,
        param_dtype=param_dtype, name="backbone")(clips, mask, train=train)
    features = resnet3d.global_pool(maps, tmask)
    return heads.EmbeddingHead(
        self.num_classes, neck=self.neck, neck_feat=self.neck_feat,
        dtype=jnp.float32, param_dtype=param_dtype, name="head")(
            features, train=train)


def Model(num_classes: int = 0, *, temporal: str = "attention",  # pylint: disable=invalid-name
          **kwargs) -> nn.Module:
  """The model of a row of the paper: `VideoModel` for "c3d", else
  `TemporalModel(temporal=...)`."""
  if temporal not in TEMPORAL:
    raise ValueError(f"gao: temporal must be one of {TEMPORAL}, got "
                     f"{temporal!r}")
  if temporal == "c3d":
    return VideoModel(num_classes=num_classes, **kwargs)
  return TemporalModel(num_classes=num_classes, temporal=temporal, **kwargs)


def load(variables: Mapping[str, Any], path: str,
         model_config: Mapping[str, Any]) -> dict[str, Any]:
  """Pretrained weights: Kinetics 3D ResNet for "c3d" (Hara's checkpoint
  `resnet-50-kinetics.pth`, or a converted .npz/.safetensors), ImageNet
  ResNet (torchvision) for the 2D family; into the `backbone` subtree."""
  arch = model_config.get("arch", "resnet50")
  if model_config.get("temporal", "attention") == "c3d":
    return resnet3d.load_torchvision(variables, path, arch=arch)
  return resnet.load_torchvision(variables, path, arch=arch)
