"""From a pipeline batch to a model's `inputs`: the one place it happens.

The input pipeline emits uint8 frames and uint8-quantised flow (one byte per
channel on the host and over the host-to-device link); `preprocess` runs on
the accelerator, inside the jitted training step, the evaluators' embedding
function and (later) an export, so all three see the same numbers:

  clips: (x / 255 - mean) / std, float32            (B, T, H, W, 3)
  mask:  bool, True for real frames                  (B, T)
  flow:  dequantised pixels * flow_scale, float32    (B, T, H, W, 2)
         (0 px is stored as 128; with flow_scale = 1/20 the +-20 px range
         of the store maps to [-1, 1], STAR's input convention)

`InputSpec` (hashable, built once from `config.input`) says which keys the
config serves; `dummy_inputs` builds zero inputs of those keys for
`Model.init`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from vreid_jax.input_pipeline import augment
from vreid_jax.input_pipeline import flow as flow_lib


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """What a config feeds a model (from `config.input`).

  Attributes:
    height: frame height.
    width: frame width.
    clip_len: training clip length T.
    mean: RGB mean in [0, 1].
    std: RGB std in [0, 1] units.
    with_flow: batches carry "flow".
    flow_scale: multiplies the dequantised flow (pixels).
    flow_bound: the store's quantisation bound in pixels.
    shuffle_frames: clips come with their frames in a random order, at
      training and test time (the control that removes temporal order).
  """
  height: int
  width: int
  clip_len: int
  mean: tuple[float, float, float] = augment.IMAGENET_MEAN
  std: tuple[float, float, float] = augment.IMAGENET_STD
  with_flow: bool = False
  flow_scale: float = 1.0 / flow_lib.BOUND
  flow_bound: float = flow_lib.BOUND
  shuffle_frames: bool = False

  @classmethod
  def from_config(cls, inp) -> InputSpec:
    """From `config.input` (a ConfigDict or mapping)."""
    return cls(height=int(inp["height"]), width=int(inp["width"]),
               clip_len=int(inp["clip_len"]),
               mean=tuple(float(x) for x in inp["mean"]),
               std=tuple(float(x) for x in inp["std"]),
               with_flow=bool(inp.get("with_flow", False)),
               flow_scale=float(inp.get("flow_scale",
                                        1.0 / flow_lib.BOUND)),
               shuffle_frames=bool(inp.get("shuffle_frames", False)))

  @property
  def keys(self) -> tuple[str, ...]:
    """The input keys this config serves."""
    return ("clips", "mask") + (("flow",) if self.with_flow else ())

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def preprocess(batch: Mapping[str, Any], spec: InputSpec) -> dict[str, Any]:
  """A model's `inputs` from a batch of uint8 clips (and flow); jittable.

  Args:
    batch: {"clips": (B, T, H, W, 3) uint8, "mask": (B, T) bool[, "flow":
      (B, T, H, W, 2) uint8]} (other keys, e.g. labels, are ignored).
    spec: the config's InputSpec.

  Returns:
    {"clips": float32, "mask": bool[, "flow": float32]} (module docstring).
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  inputs = {"clips": augment.normalize(batch["clips"], spec.mean, spec.std),
            "mask": jnp.asarray(batch["mask"]).astype(bool)}
  if spec.with_flow:
    if "flow" not in batch:
      raise ValueError("config.input.with_flow=True but the batch has no "
                       "'flow'")
    q = jnp.asarray(batch["flow"]).astype(jnp.float32)
    pixels = q * (2.0 * spec.flow_bound / 255.0) - spec.flow_bound
    inputs["flow"] = pixels * spec.flow_scale
  return inputs


def dummy_inputs(spec: InputSpec, batch_size: int = 1,
                 clip_len: int | None = None,
                 keys: Sequence[str] | None = None) -> dict[str, Any]:
  """Zero `inputs` of the served keys (for `Model.init` and shape checks)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  t = clip_len or spec.clip_len
  shape = (batch_size, t, spec.height, spec.width)
  keys = spec.keys if keys is None else tuple(keys)
  out = {"clips": jnp.zeros(shape + (3,), jnp.float32),
         "mask": jnp.ones((batch_size, t), bool)}
  if "flow" in keys:
    out["flow"] = jnp.zeros(shape + (2,), jnp.float32)
  return out


def check_model_inputs(model_keys: Sequence[str], spec: InputSpec,
                       model_name: str) -> None:
  """Fails when the model and the config disagree on what is served.

  A model that reads flow needs `input.with_flow=True`; flow served to a
  model that does not read it would be decoded and dropped at full cost.
  """
  model_keys = tuple(model_keys)
  if "flow" in model_keys and not spec.with_flow:
    raise ValueError(
        f"model {model_name!r} reads optical flow but config.input.with_flow"
        " is False: set --config.input.with_flow=True (compute the dataset's"
        " flow first with data_prep/flow.py)")
  if spec.with_flow and "flow" not in model_keys:
    raise ValueError(
        f"config.input.with_flow=True but model {model_name!r} does not read"
        " flow (it would be decoded and dropped): set "
        "--config.input.with_flow=False, or choose a model option that reads "
        "it (e.g. --config.model.use_flow=True for the baseline and GLTR)")
