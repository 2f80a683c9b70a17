"""Test-time frame selection and clip averaging (index logic only).

How a tracklet of L frames becomes model inputs at test time. These helpers
only return frame indices (and masks); the model decides how frames are
pooled (temporal aggregation lives in the model, see STYLE.md).

* `all_frames_indices`: the whole tracklet in one pass, padded up to a length
  bucket (`length_bucket`) so varied lengths compile a few shapes, not one
  per length; padded slots repeat the tracklet (loop) and are masked out.
* `dense_clip_indices`: non-overlapping T-frame clips covering the tracklet
  (Gao & Nevatia's "all clips" test), the last one loop-padded or masked.
* `every_frame_clip_indices`: a T-frame clip starting at every frame (M3D's
  test protocol), frames past the end wrap around.
* `evenly_sampled_indices`: T frames spread evenly over the tracklet (the
  centre of each of T equal segments).
* `average_by_tracklet`: the mean clip embedding of each tracklet.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _check_length(length: int, clip_len: int | None = None) -> None:
  if length < 1:
    raise ValueError(f"tracklet length must be >= 1, got {length}")
  if clip_len is not None and clip_len < 1:
    raise ValueError(f"clip length must be >= 1, got {clip_len}")


def length_bucket(length: int, *, multiple: int | None = None,
                  min_length: int = 1, max_length: int | None = None) -> int:
  """Padded length for a tracklet of `length` frames.

  Next power of two by default (at most ~2x the work, log2(max L) shapes),
  or the next multiple of `multiple` (at most `multiple - 1` padded frames).
  The result is at least `min_length` and, if given, at most `max_length`
  (never below `length` unless `max_length` cuts it: the caller then
  truncates or clips).
  """
  _check_length(length)
  target = max(length, min_length)
  if multiple is not None:
    if multiple < 1:
      raise ValueError(f"multiple must be >= 1, got {multiple}")
    bucket = -(-target // multiple) * multiple
  else:
    bucket = 1 << (target - 1).bit_length()
  if max_length is not None:
    bucket = min(bucket, max_length)
  return int(bucket)


def all_frames_indices(length: int, padded_length: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Every frame once, loop-padded to `padded_length` (default bucket).

  Returns:
    (indices (Lp,), mask (Lp,)): indices[t] = t mod L, mask[t] = t < L.
  """
  _check_length(length)
  lp = length_bucket(length) if padded_length is None else padded_length
  if lp < length:
    raise ValueError(f"padded_length {lp} is shorter than the tracklet "
                     f"({length} frames)")
  t = np.arange(lp)
  return t % length, t < length


def dense_clip_indices(length: int, clip_len: int, *, pad: str = "loop"
                       ) -> tuple[np.ndarray, np.ndarray]:
  """ceil(L / T) non-overlapping clips covering every frame.

  Clip k holds frames kT .. kT + T - 1. Past the end, pad="loop" repeats the
  tracklet from its start ((kT + t) mod L, all slots valid, as Gao &
  Nevatia's code does) and pad="mask" repeats the last frame with
  mask False.

  Returns:
    (indices (K, T), mask (K, T)).
  """
  _check_length(length, clip_len)
  num = -(-length // clip_len)
  t = np.arange(num * clip_len).reshape(num, clip_len)
  if pad == "loop":
    return t % length, np.ones(t.shape, bool)
  if pad == "mask":
    return np.minimum(t, length - 1), t < length
  raise ValueError(f"pad must be 'loop' or 'mask', got {pad!r}")


def every_frame_clip_indices(length: int, clip_len: int) -> np.ndarray:
  """A clip starting at every frame: indices[s, t] = (s + t) mod L, (L, T)."""
  _check_length(length, clip_len)
  return (np.arange(length)[:, None] + np.arange(clip_len)[None, :]) % length


def evenly_sampled_indices(length: int, num_frames: int) -> np.ndarray:
  """T frames at the centres of T equal segments: floor((k + 1/2) L / T).

  Repeats frames when L < T; the first and last segments are represented
  whatever L is.
  """
  _check_length(length, num_frames)
  k = np.arange(num_frames)
  return ((2 * k + 1) * length) // (2 * num_frames)


def average_by_tracklet(clip_embeddings: Any, tracklet_ids: Any,
                        num_tracklets: int) -> np.ndarray:
  """Mean of the clip embeddings of each tracklet.

  Args:
    clip_embeddings: (C, D) one embedding per clip.
    tracklet_ids: (C,) ints in [0, num_tracklets), the tracklet of each clip.
    num_tracklets: number of tracklets M.

  Returns:
    (M, D) float array, out[i] = mean{clip_embeddings[c] : tracklet_ids[c] = i}.

  Raises:
    ValueError: an id is out of range or a tracklet has no clip.
  """
  emb = np.asarray(clip_embeddings)
  ids = np.asarray(tracklet_ids).astype(np.int64)
  if emb.ndim != 2 or ids.shape != (emb.shape[0],):
    raise ValueError(f"expected (C, D) embeddings and (C,) ids, got "
                     f"{emb.shape} and {ids.shape}")
  if ids.size and (ids.min() < 0 or ids.max() >= num_tracklets):
    raise ValueError(f"tracklet ids must be in [0, {num_tracklets})")
  counts = np.bincount(ids, minlength=num_tracklets)
  empty = np.flatnonzero(counts == 0)
  if empty.size:
    raise ValueError(f"{empty.size} tracklets have no clip, e.g. "
                     f"{empty[:5].tolist()}")
  dtype = np.result_type(emb.dtype, np.float32)
  sums = np.zeros((num_tracklets, emb.shape[1]), dtype)
  np.add.at(sums, ids, emb)
  return sums / counts[:, None]
