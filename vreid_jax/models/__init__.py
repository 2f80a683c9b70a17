"""Models of vreid_jax, found by module path (no registry).

A config names a model by module: `config.model_name = "gltr"` builds
`vreid_jax.models.gltr.Model(num_classes=..., **config.model)` and loads
pretrained weights with `vreid_jax.models.gltr.load(variables, path,
config.model)`. Every model module has these two names.

The model contract:

* `Model(num_classes=..., **config.model)(inputs, *, train)` with `inputs`
  a mapping: "clips" (B, T, H, W, 3) normalised float frames, "mask" (B, T)
  bool (True = real frame; padded frames provably change nothing) and, for
  models that read it, "flow" (B, T, H, W, 2)
  (`vreid_jax.input_pipeline.preprocess` builds it from a batch);
* it returns `(embedding (B, D), aux)`, aux a dict of named float32
  intermediates ("features" for the triplet loss, "logits", attention maps,
  ...), so losses, tests and pictures take what they need;
* `Model.input_keys()` names the inputs it reads (default clips and mask).

`embed_fn(model)` is the one function that turns (variables, inputs) into
embeddings; training's evaluators, export and extraction all use it.

Shared layers: `common` (dtypes, time folding, masks, BatchNorm defaults),
`resnet` (torchvision-exact ResNets, flow stem, torchvision import),
`encoders` (the per-frame encoder), `temporal` (aggregators), `heads`
(frame reduction, embedding head), `framewise` (the frame-wise model
skeleton), `weights` (weight files and merging).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

DEFAULT_INPUT_KEYS = ("clips", "mask")


def get_module(model_name: str) -> ModuleType:
  """`vreid_jax.models.<model_name>`, with a clear error."""
  from vreid_jax import config_utils  # pylint: disable=g-import-not-at-top
  return config_utils.import_named("vreid_jax.models", model_name,
                                   "config.model_name", "Model")


def build_model(model_name: str, num_classes: int,
                model_config: Mapping[str, Any]):
  """`vreid_jax.models.<model_name>.Model(num_classes, **model_config)`."""
  kwargs = {k: tuple(v) if isinstance(v, list) else v
            for k, v in dict(model_config).items()}
  try:
    return get_module(model_name).Model(num_classes=num_classes, **kwargs)
  except TypeError as e:
    raise ValueError(f"config.model for model_name={model_name!r}: {e}") from e


def input_keys(model) -> tuple[str, ...]:
  """The input keys `model` reads."""
  fn = getattr(model, "input_keys", None)
  return tuple(fn()) if fn is not None else DEFAULT_INPUT_KEYS


def embed_fn(model) -> Callable[[Any, Mapping[str, Any]], Any]:
  """The eval-mode embedding function `embed(variables, inputs) -> (B, D)`.

  `inputs` are preprocessed (`vreid_jax.input_pipeline.preprocess`), the
  output is float32. This is the function the evaluators jit, and the one
  an export serialises.
  """

  def embed(variables, inputs):
    embedding, _ = model.apply(variables, inputs, train=False)
    return embedding

  return embed


def predict_fn(model, aux_keys: tuple[str, ...]
               ) -> Callable[[Any, Mapping[str, Any]], Any]:
  """`predict(variables, inputs) -> (embedding, {k: aux[k]})` in eval mode,
  for the aux keys the model has among `aux_keys` (analysis evaluators)."""

  def predict(variables, inputs):
    embedding, aux = model.apply(variables, inputs, train=False)
    return embedding, {k: aux[k] for k in aux_keys if k in aux}

  return predict
