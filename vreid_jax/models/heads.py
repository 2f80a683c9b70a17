"""Heads shared by the models: frame feature reduction and the BN-neck.

`FrameReduction` is the per-frame layer that maps the pooled backbone feature
to a d-dim frame feature (Dense + BN [+ ReLU]). Every model builds it with
`name="reduction"`, so a checkpoint of the frame model (baseline, T=1)
initialises the `backbone` and `reduction` subtrees of a temporal model.

`BNNeck` is the head of Luo et al., "Bag of Tricks and A Strong Baseline for
Deep Person Re-identification" (CVPRW 2019): the global feature f_t (used by
the triplet loss) goes through a BatchNorm without bias (the "bias frozen"
BN) giving f_i, and a bias-free linear classifier on f_i gives the ID logits.
Retrieval uses f_i ("after", default) or f_t ("before").
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vreid_jax.models import common

ModuleDef = Any

BN_MOMENTUM = 0.9  # == PyTorch momentum 0.1.
BN_EPSILON = 1e-5


class FrameReduction(nn.Module):
  """Per-frame reduction: Dense (no bias) -> BatchNorm [-> ReLU].

  Attributes:
    features: output dimension d (GLTR: 128).
    relu: apply a ReLU after the BN.
    dtype: computation dtype.
    param_dtype: parameter dtype.
    norm: BatchNorm constructor (functools.partial of nn.BatchNorm).
  """
  features: int
  relu: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm: ModuleDef = functools.partial(
      nn.BatchNorm, momentum=BN_MOMENTUM, epsilon=BN_EPSILON)

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
    y = nn.Dense(self.features, use_bias=False,
                 kernel_init=nn.initializers.kaiming_normal(),
                 dtype=dtype, param_dtype=param_dtype, name="dense")(x)
    bn_mask = None if mask is None else mask.astype(bool)[:, None]
    y = self.norm(use_running_average=not train, dtype=dtype,
                  param_dtype=param_dtype, name="bn")(y, mask=bn_mask)
    return nn.relu(y) if self.relu else y


class BNNeck(nn.Module):
  """BN-neck head: f_t -> BN (no bias) -> f_i -> Dense (no bias) -> logits.

  Attributes:
    num_classes: number of training identities; 0 builds no classifier.
    dtype: computation dtype (the models pass float32: the head is tiny and
      the logits feed a softmax).
    param_dtype: parameter dtype.
    norm: BatchNorm constructor (functools.partial of nn.BatchNorm).
  """
  num_classes: int = 0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm: ModuleDef = functools.partial(
      nn.BatchNorm, momentum=BN_MOMENTUM, epsilon=BN_EPSILON)

  @nn.compact
  def __call__(self, x: jax.Array, *,
               train: bool) -> tuple[jax.Array, jax.Array | None]:
    """Applies the neck.

    Args:
      x: (B, D) global feature f_t.
      train: BN uses batch statistics when True.

    Returns:
      (f_i, logits): (B, D) post-BN feature and (B, num_classes) logits, or
      None for the logits when num_classes == 0.
    """
    common.check_shape(x, (None, None), f"{self.name}: features (B, D)")
    dtype = common.resolve_dtype(self.dtype)
    param_dtype = common.resolve_dtype(self.param_dtype)
    # Bias-free BN: Luo et al. freeze the BN shift so that the classifier's
    # hyperplanes pass through the origin of f_i.
    f_i = self.norm(use_running_average=not train, use_bias=False,
                    dtype=dtype, param_dtype=param_dtype, name="bn")(x)
    logits = None
    if self.num_classes > 0:
      # Luo et al. initialise the classifier with N(0, 0.001^2).
      logits = nn.Dense(self.num_classes, use_bias=False,
                        kernel_init=nn.initializers.normal(0.001),
                        dtype=dtype, param_dtype=param_dtype,
                        name="classifier")(f_i)
    return f_i, logits


def select_embedding(features: jax.Array, neck_features: jax.Array,
                     neck_feat: str) -> jax.Array:
  """Retrieval embedding: post-BN ("after") or pre-BN ("before") feature."""
  if neck_feat == "after":
    return neck_features
  if neck_feat == "before":
    return features
  raise ValueError(f"neck_feat must be 'after' or 'before', got {neck_feat!r}.")
