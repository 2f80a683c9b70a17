"""Temporal aggregators: frame features (B, T, d) -> one clip feature.

Every aggregator has one signature,

    aggregator(x (B, T, d), mask (B, T) | None, *, train) -> (feature, aux)

with `feature` (B, D) float32 and `aux` a dict of named intermediates (may
be empty), so a model can swap them without other changes. Sequence layers
that keep the time axis (GLTR's DTP and TSA, recurrent layers) have the
same signature with a (B, T, D') output instead; a model runs its sequence
layers in order and then one aggregator.

Padding: aggregators never read a padded frame (mask False); a row with no
real frame gives 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vreid_jax.models import common


class AvgPool(nn.Module):
  """Temporal average pooling over the real frames (GLTR eq. 4, Gao's TP)."""

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    del train
    common.check_shape(x, (None, None, None), f"{self.name}: x (B, T, d)")
    return common.masked_mean(x.astype(jnp.float32), mask, axis=1), {}


def temporal_pyramid_pool(x: jax.Array, mask: jax.Array | None,
                          bins: Sequence[int]) -> jax.Array:
  """Temporal pyramid pooling: mean over `n` equal bins, for n in `bins`.

  Bins are laid over each tracklet's real frames (in order), with the
  adaptive-pooling boundaries [floor(k L / n), ceil((k+1) L / n)) for L real
  frames, so every bin is non-empty when L >= 1 and padding never matters.

  Args:
    x: (B, T, d) frame features.
    mask: (B, T) bool, True for real frames; None = all real.
    bins: number of bins of each pyramid level, e.g. (1, 2, 4).

  Returns:
    (B, d * sum(bins)) float32: level by level, bin by bin, d channels each.
  """
  b, t, d = x.shape
  mask = common.frame_mask(mask, b, t)
  pos = jnp.cumsum(mask, axis=1) - 1            # Rank among real frames.
  length = jnp.sum(mask, axis=1)[:, None]       # (B, 1)
  x = x.astype(jnp.float32)
  levels = []
  for n in bins:
    k = jnp.arange(n)[None, :]                  # (1, n)
    start = (k * length) // n                   # (B, n)
    end = ((k + 1) * length + n - 1) // n
    member = (mask[:, None, :]
              & (pos[:, None, :] >= start[:, :, None])
              & (pos[:, None, :] < end[:, :, None]))   # (B, n, T)
    total = jnp.einsum("bnt,btd->bnd", member.astype(x.dtype),
                       jnp.where(mask[..., None], x, 0.0))
    count = jnp.maximum(jnp.sum(member, axis=-1), 1)[..., None]
    levels.append((total / count).reshape(b, n * d))
  return jnp.concatenate(levels, axis=-1)


class TemporalPyramidPool(nn.Module):
  """Temporal pyramid pooling (GLTR Fig. 6 "TPP"): `temporal_pyramid_pool`.

  Attributes:
    bins: bins of each level, e.g. (1, 2, 4); the output has d * sum(bins)
      channels.
  """
  bins: Sequence[int] = (1, 2, 4)

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    del train
    common.check_shape(x, (None, None, None), f"{self.name}: x (B, T, d)")
    return temporal_pyramid_pool(x, mask, tuple(self.bins)), {}


class MaxPool(nn.Module):
  """Temporal max pooling over the real frames (Gao & Nevatia, Table 2).

  The gradient of each feature goes to its first maximal frame
  (`common.reduce_max`; PyTorch's `max(dim)` does the same)."""

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    del train
    common.check_shape(x, (None, None, None), f"{self.name}: x (B, T, d)")
    x = x.astype(jnp.float32)
    mask = common.frame_mask(mask, x.shape[0], x.shape[1])
    masked = jnp.where(mask[..., None], x, -jnp.inf)
    # A row without a real frame gives 0, like the other aggregators.
    return jnp.where(mask.any(axis=1)[:, None],
                     common.reduce_max(masked, 1), 0.0), {}


def last_real(x: jax.Array, mask: jax.Array | None) -> jax.Array:
  """x (B, T, ...) at each row's last real frame (index T-1 without a mask)."""
  b, t = x.shape[:2]
  mask = common.frame_mask(mask, b, t)
  index = jnp.max(jnp.where(mask, jnp.arange(t)[None, :], 0), axis=1)
  return jnp.take_along_axis(
      x, index.reshape((b, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]


class LastPool(nn.Module):
  """The feature at the last real frame: an RNN's final hidden state h_T
  (Gao & Nevatia, Table 6)."""

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    del train
    common.check_shape(x, (None, None, None), f"{self.name}: x (B, T, d)")
    return last_real(x.astype(jnp.float32), mask), {}
