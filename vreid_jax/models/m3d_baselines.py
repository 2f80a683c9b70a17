"""The comparison models of M3D's Table IV: inflated and pseudo-3D CNNs, and
the RGB + optical-flow two-stream ResNet-50.

Each 3D baseline is the video ResNet (`video_resnet.VideoResNet`) with one
kind of temporal layer in every bottleneck and in the stem, followed by the
same head as the M3D stream without its global layer (Linear 2048 -> 128,
temporal mean, M3D's code head), so Table IV compares trunks only:

  "i3d"    Carreira & Zisserman: every 3x3 conv -> 3x3x3, conv1 3x7x7, max
           pool 3x3x3; ImageNet weights inflated W3d[t] = W2d / 3.
  "p3d_a"  Qiu et al.'s P3D-A (serial): S -> T, each conv + BN + ReLU, in
           every block and after the stem; T Kaiming-initialised.
  "p3d_b"  P3D-B (parallel): S(x') + T(x'); stem conv1(x) + T(x); T zero.
  "p3d_c"  P3D-C (residual): S + T(S), M3D's local layer with one branch,
           in every block and after the stem; T zero.

The official code (spec m3d.md Sec. 1f) follows conv -> BN -> ReLU temporal
branches with zero init, which never train (see `m3d.py`); the zero-init
branches here are linear (trainable), P3D-A keeps its serial BN + ReLU with
a non-zero init. Time is never strided (TIP's M3D protocol, for a fair
comparison).

"flow_two_stream" (Table IV's "A&O" two-stream): two per-frame ResNet-50
streams, on RGB and on TV-L1 optical flow (2 input channels; TSN's
cross-modality ImageNet init, conv1 averaged over RGB), each with M3D's 2D
stream head and its own classifier, features fused [f_rgb / |f_rgb|,
f_flow / |f_flow|]. Needs `input.with_flow=True`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vreid_jax.models import common
from vreid_jax.models import encoders
from vreid_jax.models import heads
from vreid_jax.models import resnet

# variant -> (block kind, stem kind) of the video trunk.
BASELINES = {
    "i3d": ("i3d", "i3d"),
    "p3d_a": ("p3d_a", "p3d_a"),
    "p3d_b": ("p3d_b", "p3d_b"),
    "p3d_c": ("p3d_c", "p3d_c"),
}


def model(variant: str, num_classes: int, **kwargs) -> nn.Module:
  """The Table IV model named by `variant`."""
  from vreid_jax.models import m3d  # pylint: disable=g-import-not-at-top
  if variant == "flow_two_stream":
    return FlowTwoStream(num_classes=num_classes, **kwargs)
  kind, stem = BASELINES[variant]
  return m3d.TemporalStream(num_classes=num_classes, kind=kind, stem=stem,
                            global_layer=False, **kwargs)


class FlowTwoStream(nn.Module):
  """RGB + optical-flow two-stream ResNet-50 (M3D's Table IV "A&O").

  Attributes:
    num_classes: training identities (a classifier per stream).
    arch, width, last_stride: the ResNet of both streams.
    embed_dim: d of each stream's frame features (128).
    dtype, param_dtype: computation and parameter dtypes.

  aux (float32): "features" (fused), "rgb_features", "flow_features",
  "logits" (the RGB stream's), "flow_logits".
  """
  num_classes: int = 0
  arch: str = "resnet50"
  width: int = 64
  last_stride: int = 1
  embed_dim: int = 128
  dtype: Any = "float32"
  param_dtype: Any = "float32"

  def input_keys(self) -> tuple[str, ...]:
    return ("clips", "mask", "flow")

  def _stream(self, x, mask, *, train, channels, name):
    dtype = common.resolve_dtype(self.dtype)
    param_dtype = common.resolve_dtype(self.param_dtype)
    frames, _ = encoders.FrameEncoder(
        arch=self.arch, width=self.width, last_stride=self.last_stride,
        frame_dim=self.embed_dim, reduction_relu=False,
        reduction_norm=False, reduction_bias=True, in_channels=channels,
        dtype=dtype, param_dtype=param_dtype, name=f"{name}_encoder")(
            x, mask, train=train)
    feature = common.masked_mean(frames.astype(jnp.float32),
                                 common.frame_mask(mask, *x.shape[:2]),
                                 axis=1)
    return heads.EmbeddingHead(
        self.num_classes, neck="bn_relu_dropout", dtype=jnp.float32,
        param_dtype=param_dtype, name=f"{name}_head")(feature, train=train)

  @nn.compact
  def __call__(self, inputs: Mapping[str, jax.Array], *,
               train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    from vreid_jax.models import m3d  # pylint: disable=g-import-not-at-top
    clips, mask, flow = common.read_inputs(inputs, "m3d (flow_two_stream)",
                                           flow=True)
    f_rgb, aux_rgb = self._stream(clips, mask, train=train, channels=3,
                                  name="rgb")
    f_flow, aux_flow = self._stream(flow, mask, train=train, channels=2,
                                    name="flow")
    fused = jnp.concatenate([m3d.l2_normalize(f_rgb),
                             m3d.l2_normalize(f_flow)], axis=-1)
    aux = {"features": fused, "rgb_features": f_rgb,
           "flow_features": f_flow}
    if "logits" in aux_rgb:
      aux["logits"] = aux_rgb["logits"]
      aux["flow_logits"] = aux_flow["logits"]
    return fused, aux


def load_flow_two_stream(variables: Mapping[str, Any], path: str, *,
                         arch: str) -> dict[str, Any]:
  """ImageNet into both streams; the flow stream's conv1 by TSN's
  cross-modality rule (`resnet.load_torchvision`)."""
  for stream in ("rgb", "flow"):
    variables = resnet.load_torchvision(
        variables, path, arch=arch, subtree=f"{stream}_encoder/backbone")
  return variables
