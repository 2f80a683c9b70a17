"""Index logic of the input pipeline: identity-balanced batches and clips.

Everything here is pure NumPy on integer arrays, deterministic given a
`np.random.Generator`, and independent of how frames are stored.

Identity-balanced (PK) batches (Hermans et al., 2017): each batch holds P
identities with K tracklets each. An epoch plan is built the way the common
ReID samplers build it: every identity's tracklets are shuffled (sampled with
replacement when it has fewer than K) and cut into chunks of K; batches then
draw P distinct identities that still have chunks. An epoch ends when fewer
than P identities have chunks left (`pk_epoch_plan`, `input.pk_epoch =
"tracklets"`: about N / (P K) batches for N tracklets). The older sampler
of deep-person-reid, which Gao & Nevatia's code uses, visits every identity
once per epoch instead, with K of its tracklets (`pk_epoch_plan_ids`,
`input.pk_epoch = "ids"`: num_ids // P batches, 78 on MARS with P = 8): the
same batches, a different unit for "epoch".

Clip sampling (`sample_clip`), T frames from a tracklet of L frames:
  consecutive: T consecutive frames from a uniformly random start; a tracklet
    shorter than T is loop-padded (0,1,..,L-1,0,1,..). The papers' default.
  evenly: T frames evenly spaced over the whole tracklet (random offset
    inside each stride during training, the stride's first frame otherwise).
  restricted: the tracklet is cut into T equal segments and one random frame
    is drawn from each (TSN-style "restricted random"); at test time the
    middle frame of each segment.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CLIP_MODES = ("consecutive", "evenly", "restricted")
PK_EPOCHS = ("tracklets", "ids")


def pk_epoch_plan(pids: np.ndarray, p: int, k: int,
                  rng: np.random.Generator,
                  partners: np.ndarray | None = None) -> np.ndarray:
  """Returns an (num_batches, p*k) array of positions into `pids`.

  Args:
    pids: (N,) identity of each training tracklet.
    p: identities per batch.
    k: tracklets per identity.
    rng: the epoch's random generator.
    partners: optional (N,) pid of each tracklet's partner identity (the
      synthetic benchmark's motion twin) or -1: a drawn identity brings its
      partner into the same batch (while both have chunks), so every batch
      holds pairs that only motion can tell apart.

  Raises:
    ValueError: fewer than p identities.
  """
  pids = np.asarray(pids)
  unique = np.unique(pids)
  if len(unique) < p:
    raise ValueError(
        f"the training set has {len(unique)} identities, fewer than "
        f"input.num_ids_per_batch (P) = {p}: lower it with "
        f"--config.input.num_ids_per_batch={len(unique)} or less")
  chunks: dict[int, list[np.ndarray]] = {}
  for pid in unique:
    members = np.flatnonzero(pids == pid)
    if len(members) < k:
      members = rng.choice(members, size=k, replace=True)
    else:
      members = rng.permutation(members)
    n = len(members) // k
    chunks[int(pid)] = [members[i * k:(i + 1) * k] for i in range(n)]
  partner = {}
  if partners is not None:
    partners = np.asarray(partners)
    for pid in unique:
      twin = int(partners[np.flatnonzero(pids == pid)[0]])
      if twin >= 0 and twin in chunks:
        partner[int(pid)] = twin
  batches = []
  available = [pid for pid in chunks if chunks[pid]]
  while len(available) >= p:
    if partner:
      chosen_pids = []
      order = [available[i] for i in rng.permutation(len(available))]
      in_play = set(available)
      for pid in order:  # Whole pairs first, ...
        if pid in chosen_pids:
          continue
        group = [pid]
        if partner.get(pid) in in_play and partner[pid] not in chosen_pids:
          group.append(partner[pid])
        if len(chosen_pids) + len(group) <= p:
          chosen_pids += group
        if len(chosen_pids) == p:
          break
      for pid in order:  # ... then singles where a pair did not fit.
        if len(chosen_pids) == p:
          break
        if pid not in chosen_pids:
          chosen_pids.append(pid)
    else:
      chosen = rng.choice(len(available), size=p, replace=False)
      chosen_pids = [available[i] for i in chosen]
    batches.append(np.concatenate([chunks[pid].pop() for pid in chosen_pids]))
    available = [pid for pid in available if chunks[pid]]
  return np.stack(batches).astype(np.int64)


def pk_epoch_plan_ids(pids: np.ndarray, p: int, k: int,
                      rng: np.random.Generator) -> np.ndarray:
  """Every identity once per epoch: (num_ids // p, p*k) positions.

  Identities are shuffled and grouped P at a time (the last incomplete group
  is dropped); each draws K of its tracklets, without replacement when it
  has at least K, with replacement otherwise.

  Raises:
    ValueError: fewer than p identities.
  """
  pids = np.asarray(pids)
  unique = np.unique(pids)
  if len(unique) < p:
    raise ValueError(
        f"the training set has {len(unique)} identities, fewer than "
        f"input.num_ids_per_batch (P) = {p}: lower it with "
        f"--config.input.num_ids_per_batch={len(unique)} or less")
  order = rng.permutation(unique)
  rows = []
  for pid in order:
    members = np.flatnonzero(pids == pid)
    rows.append(rng.choice(members, size=k, replace=len(members) < k))
  n = len(rows) // p
  return np.stack([np.concatenate(rows[i * p:(i + 1) * p])
                   for i in range(n)]).astype(np.int64)


def sample_clip(num_frames: int, clip_len: int, mode: str,
                rng: np.random.Generator | None) -> np.ndarray:
  """Returns (clip_len,) frame indices into a tracklet of `num_frames`.

  Args:
    num_frames: tracklet length L >= 1.
    clip_len: T.
    mode: one of CLIP_MODES.
    rng: random generator for training; None for the deterministic test-time
      version (start 0 / first or middle frame of each segment).
  """
  if num_frames < 1:
    raise ValueError("a tracklet has no frame")
  if mode == "consecutive":
    if num_frames >= clip_len:
      start = 0 if rng is None else int(rng.integers(0, num_frames - clip_len
                                                      + 1))
      return np.arange(start, start + clip_len)
    return np.arange(clip_len) % num_frames
  if mode == "evenly":
    edges = np.arange(clip_len) * (num_frames / clip_len)
    if rng is None:
      return np.floor(edges).astype(np.int64)
    stride = num_frames / clip_len
    offset = rng.uniform(0, stride, size=clip_len)
    return np.minimum(np.floor(edges + offset), num_frames - 1).astype(
        np.int64)
  if mode == "restricted":
    bounds = np.linspace(0, num_frames, clip_len + 1)
    lo = np.floor(bounds[:-1]).astype(np.int64)
    hi = np.maximum(np.ceil(bounds[1:]).astype(np.int64), lo + 1)
    hi = np.minimum(hi, num_frames)
    if rng is None:
      return (lo + hi - 1) // 2
    return lo + np.floor(rng.uniform(size=clip_len) * (hi - lo)).astype(
        np.int64)
  raise ValueError(f"input.clip_sampling must be one of {CLIP_MODES}, "
                   f"got {mode!r}")


def shuffled_clip(num_frames: int, clip_len: int,
                  rng: np.random.Generator) -> np.ndarray:
  """The control clip: `clip_len` random frames of the tracklet, in random
  order (distinct frames when the tracklet has enough), so no temporal
  structure survives."""
  if num_frames >= clip_len:
    return rng.permutation(num_frames)[:clip_len]
  return rng.permutation(np.arange(clip_len) % num_frames)


def contiguous_labels(pids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Maps identities to 0..C-1 (sorted by pid). Returns (labels, classes)."""
  classes, labels = np.unique(np.asarray(pids), return_inverse=True)
  return labels.astype(np.int32), classes
