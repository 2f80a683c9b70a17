"""Heads shared by the models: frame feature reduction and the embedding head.

`FrameReduction` is the per-frame layer that maps the pooled backbone feature
to a d-dim frame feature (Dense + BN [+ ReLU]). Every frame model builds it
with `name="reduction"`, so a checkpoint of the frame model (baseline, T=1)
initialises the `backbone` and `reduction` subtrees of a temporal model.

`EmbeddingHead` turns a clip feature f_t into the retrieval embedding and
the identity logits, with one of two necks:

* "bnneck" (default): the head of Luo et al., "Bag of Tricks and A Strong
  Baseline for Deep Person Re-identification" (CVPRW 2019). f_t (used by the
  triplet loss) goes through a BatchNorm without bias (the "bias frozen" BN)
  giving f_i, and a bias-free linear classifier on f_i (init N(0, 0.001^2))
  gives the logits. Retrieval uses f_i ("after") or f_t ("before").
* "none": a linear classifier with bias on f_t and retrieval on f_t, the
  head of Gao & Nevatia (2018) and STAR (PyTorch's default Linear init,
  U(+-1/sqrt(fan_in))).
* "bn_relu_dropout": M3D's training head (its public code): BatchNorm ->
  ReLU -> Dropout(0.5) -> a linear classifier (N(0, 0.001^2), zero bias);
  retrieval on f_t, before the BatchNorm.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vreid_jax.models import common

ModuleDef = Any

NECKS = ("bnneck", "none", "bn_relu_dropout")
NECK_FEATS = ("after", "before")

class FrameReduction(nn.Module):
  """Per-frame reduction: Dense -> [BatchNorm] [-> ReLU].

  GLTR: Dense (no bias) + BN + ReLU; M3D: a plain Dense with bias
  (`use_bias=True, batch_norm=False, relu=False`).

  Attributes:
    features: output dimension d (GLTR, M3D: 128).
    relu: apply a ReLU at the end.
    batch_norm: BatchNorm after the Dense.
    use_bias: bias in the Dense.
    dtype: computation dtype.
    param_dtype: parameter dtype.
    norm: BatchNorm constructor (default `common.BatchNorm`).
  """
  features: int
  relu: bool = True
  batch_norm: bool = True
  use_bias: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm: ModuleDef = common.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               mask: jax.Array | None = None) -> jax.Array:
    """Reduces (N, C) pooled features to (N, features).

    Args:
      x: (N, C) features.
      train: BN uses batch statistics when True.
      mask: optional (N,) bool; BN batch statistics use True rows only.

    Returns:
      (N, features) in `dtype`.
    """
    common.check_shape(x, (None, None), f"{self.name}: features (N, C)")
    dtype = common.resolve_dtype(self.dtype)
    param_dtype = common.resolve_dtype(self.param_dtype)
    y = nn.Dense(self.features, use_bias=self.use_bias,
                 kernel_init=nn.initializers.kaiming_normal(),
                 dtype=dtype, param_dtype=param_dtype, name="dense")(x)
    if self.batch_norm:
      bn_mask = None if mask is None else mask.astype(bool)[:, None]
      y = self.norm(use_running_average=not train, dtype=dtype,
                    param_dtype=param_dtype, name="bn")(y, mask=bn_mask)
    return nn.relu(y) if self.relu else y


class EmbeddingHead(nn.Module):
  """Clip feature -> (embedding, {"features", "logits"}), BN-neck or linear.

  Attributes:
    num_classes: number of training identities; 0 builds no classifier.
    neck: "bnneck" (Luo et al.), "none" (a linear classifier on f_t) or
      "bn_relu_dropout" (M3D's code).
    neck_feat: with the BN-neck, retrieve with the feature "after" the BN
      (f_i) or "before" it (f_t). Ignored by the other necks (f_t).
    dropout: the dropout rate of "bn_relu_dropout".
    dtype: computation dtype (the models pass float32: the head is tiny and
      the logits feed a softmax).
    param_dtype: parameter dtype.
    norm: BatchNorm constructor (default `common.BatchNorm`).
  """
  num_classes: int = 0
  neck: str = "bnneck"
  neck_feat: str = "after"
  dropout: float = 0.5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm: ModuleDef = common.BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               mask: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Applies the head.

    Args:
      x: (B, D) clip feature f_t.
      train: BN uses batch statistics when True.
      mask: optional (B,) bool: rows that are real clips (a clip with no
        real frame is left out of the BatchNorm's batch statistics).

    Returns:
      (embedding (B, D), aux) all float32; aux has "features" (f_t, for the
      triplet loss) and, when num_classes > 0, "logits" (B, num_classes).
    """
    if self.neck not in NECKS:
      raise ValueError(f"{self.name}: neck must be one of {NECKS}, got "
                       f"{self.neck!r}.")
    if self.neck_feat not in NECK_FEATS:
      raise ValueError(f"neck_feat must be 'after' or 'before', got "
                       f"{self.neck_feat!r}.")
    common.check_shape(x, (None, None), f"{self.name}: features (B, D)")
    dtype = common.resolve_dtype(self.dtype)
    param_dtype = common.resolve_dtype(self.param_dtype)
    x = x.astype(jnp.float32)
    aux = {"features": x}
    bn_mask = None if mask is None else mask.astype(bool)[:, None]
    if self.neck == "bnneck":
      # Bias-free BN: Luo et al. freeze the BN shift so that the
      # classifier's hyperplanes pass through the origin of f_i.
      f_i = self.norm(use_running_average=not train, use_bias=False,
                      dtype=dtype, param_dtype=param_dtype, name="bn")(
                          x, mask=bn_mask)
      if self.num_classes > 0:
        # Luo et al. initialise the classifier with N(0, 0.001^2).
        aux["logits"] = nn.Dense(
            self.num_classes, use_bias=False,
            kernel_init=nn.initializers.normal(0.001), dtype=dtype,
            param_dtype=param_dtype, name="classifier")(f_i)
      embedding = f_i if self.neck_feat == "after" else x
    elif self.neck == "bn_relu_dropout":
      y = nn.relu(self.norm(use_running_average=not train, dtype=dtype,
                            param_dtype=param_dtype, name="bn")(
                                x, mask=bn_mask))
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
      if self.num_classes > 0:
        aux["logits"] = nn.Dense(
            self.num_classes, kernel_init=nn.initializers.normal(0.001),
            dtype=dtype, param_dtype=param_dtype, name="classifier")(y)
      embedding = x
    else:
      if self.num_classes > 0:
        aux["logits"] = nn.Dense(
            self.num_classes, kernel_init=common.torch_kernel_init,
            bias_init=common.torch_bias_init(x.shape[-1]), dtype=dtype,
            param_dtype=param_dtype, name="classifier")(x)
      embedding = x
    aux = {k: v.astype(jnp.float32) for k, v in aux.items()}
    return embedding.astype(jnp.float32), aux
