"""Retrieval metrics for re-identification: CMC, mAP (step or trapezoid), mINP.

Everything here is pure NumPy and vectorised over queries: a query chunk's
distance matrix goes in, one row of per-query numbers per query comes out, and
`summarize` averages them. Nothing loops over queries in Python.

Ranking rules (the same for every protocol; protocols only choose the sets):

* For query q, gallery item j is **junk** (removed from q's ranked list, neither
  right nor wrong) when `gallery_junk[j]` (default rule: `gallery_pid == -1`),
  or when it has q's pid *and* q's camera (the same-camera rule; this also
  removes the query itself when queries stay in the gallery).
* j is a **positive** ("good") for q when it has q's pid, another camera and is
  not junk. Every other item, distractors (pid 0) included, is a negative.
* Items are ranked by increasing distance. **Ties are broken by gallery order**
  (a stable sort): of two items at equal distance, the one with the smaller
  gallery index ranks first.
* A query with no positive is **excluded** from every average; `summarize`
  reports `num_queries`, `num_valid_queries`, `num_excluded_queries` and the
  excluded query indices, never dropping them silently.

Let a valid query have G positives, at ranks r_1 < r_2 < ... < r_G (1-based
ranks among the non-junk items), hit i being at rank r_i.

* CMC: cmc(k) = P(r_1 <= k), the fraction of valid queries whose first
  positive is within the top k.
* Step AP (mean of the precision at each hit), used by Gao & Nevatia
  ("Revisiting temporal modeling") and torchreid:

      AP_step = (1/G) * sum_i  i / r_i

* Trapezoid AP, the official MARS / Market-1501 MATLAB `compute_AP`, used by
  the numbers GLTR and M3D report: precision integrated over recall with the
  trapezoid rule, starting from precision 1 at recall 0:

      old_i = 1 if r_i == 1 else (i - 1) / (r_i - 1)   (precision one rank up)
      AP_trap = (1/G) * sum_i  (old_i + i / r_i) / 2

  One hit at rank 2: AP_step = 1/2, AP_trap = (0 + 1/2)/2 = 1/4.
* mINP (Ye et al., "Deep learning for person re-identification: a survey and
  outlook", TPAMI 2021): INP = G / r_G, the precision at the hardest
  (last) positive; mINP is its mean over valid queries.

mAP and mINP are means over valid queries; all values are fractions in [0, 1].
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

AP_DEFINITIONS = ("step", "trapezoid")
REPORTED_RANKS = (1, 5, 10, 20)

# Max number of (tie, gallery) comparisons materialised at once when ranks
# need the tie-break scan (only rows with exactly equal distances do).
_TIE_BLOCK_ELEMENTS = 1 << 22


class GalleryIndex(NamedTuple):
  """Gallery labels prepared once and shared by every query chunk.

  Attributes:
    pids: (n,) int64 identity of each gallery item.
    camids: (n,) int64 camera of each gallery item.
    junk: (n,) bool, items ignored for every query.
    junk_cols: indices where `junk` is True.
    order: stable argsort of `pids` (gallery indices grouped by pid, ascending
      gallery index inside a pid).
    sorted_pids: `pids[order]`.
  """
  pids: np.ndarray
  camids: np.ndarray
  junk: np.ndarray
  junk_cols: np.ndarray
  order: np.ndarray
  sorted_pids: np.ndarray


class QueryPairs(NamedTuple):
  """A query chunk's sparse relations to the gallery (pairs sharing a pid).

  Attributes:
    pos_rows, pos_cols: positives as (row in chunk, gallery index) pairs,
      grouped by row.
    junk_rows, junk_cols: same pid and same camera pairs that are not already
      junk for every query (the per-query junk).
  """
  pos_rows: np.ndarray
  pos_cols: np.ndarray
  junk_rows: np.ndarray
  junk_cols: np.ndarray


class PerQuery(NamedTuple):
  """Per-query results of a chunk (arrays of length num_queries).

  Attributes:
    num_good: number of positives G (0: the query is excluded).
    first_rank: rank of the first positive r_1 (0 when G == 0).
    ap_step: step AP (0 when G == 0).
    ap_trapezoid: trapezoid (MATLAB) AP (0 when G == 0).
    inp: G / r_G (0 when G == 0).
  """
  num_good: np.ndarray
  first_rank: np.ndarray
  ap_step: np.ndarray
  ap_trapezoid: np.ndarray
  inp: np.ndarray


def _as_labels(x: Any, name: str) -> np.ndarray:
  arr = np.asarray(x)
  if arr.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
  if arr.dtype.kind in "iu":
    return arr.astype(np.int64, copy=False)
  if arr.dtype.kind in "fb" and np.all(np.equal(np.mod(arr, 1), 0)):
    return arr.astype(np.int64)
  raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")


def default_gallery_junk(gallery_pids: Any) -> np.ndarray:
  """The default junk rule: gallery items with pid -1 (MARS "00-1")."""
  return np.asarray(gallery_pids) == -1


def make_gallery_index(gallery_pids: Any, gallery_camids: Any,
                       gallery_junk: Any | None = None) -> GalleryIndex:
  """Prepares gallery labels for `same_identity_pairs`.

  Args:
    gallery_pids: (n,) integer identities.
    gallery_camids: (n,) integer cameras.
    gallery_junk: optional (n,) bool mask of items ignored for every query.
      It *replaces* the default rule `gallery_pids == -1`; pass
      `(gallery_pids == -1) | extra` to add to it.
  """
  pids = _as_labels(gallery_pids, "gallery_pids")
  camids = _as_labels(gallery_camids, "gallery_camids")
  if camids.shape != pids.shape:
    raise ValueError(f"gallery_camids has shape {camids.shape}, gallery_pids "
                     f"{pids.shape}")
  if gallery_junk is None:
    junk = default_gallery_junk(pids)
  else:
    junk = np.asarray(gallery_junk)
    if junk.dtype != bool or junk.shape != pids.shape:
      raise ValueError(f"gallery_junk must be a bool mask of shape "
                       f"{pids.shape}, got {junk.dtype} {junk.shape}")
  order = np.argsort(pids, kind="stable")
  return GalleryIndex(pids=pids, camids=camids, junk=junk,
                      junk_cols=np.flatnonzero(junk), order=order,
                      sorted_pids=pids[order])


def same_identity_pairs(query_pids: Any, query_camids: Any,
                        gallery: GalleryIndex) -> QueryPairs:
  """Finds each query's positives and per-query junk, O(#same-pid pairs).

  Uses the pid-sorted gallery: the items sharing query q's pid are one
  contiguous run `gallery.order[lo_q:hi_q]`; no (queries x gallery) mask is
  built.
  """
  qp = _as_labels(query_pids, "query_pids")
  qc = _as_labels(query_camids, "query_camids")
  if qc.shape != qp.shape:
    raise ValueError(f"query_camids has shape {qc.shape}, query_pids "
                     f"{qp.shape}")
  lo = np.searchsorted(gallery.sorted_pids, qp, side="left")
  hi = np.searchsorted(gallery.sorted_pids, qp, side="right")
  counts = hi - lo
  total = int(counts.sum())
  rows = np.repeat(np.arange(qp.size), counts)
  run_start = np.repeat(lo - (np.cumsum(counts) - counts), counts)
  cols = gallery.order[run_start + np.arange(total)]
  same_cam = gallery.camids[cols] == qc[rows]
  not_junk = ~gallery.junk[cols]
  pos = not_junk & ~same_cam
  pjunk = not_junk & same_cam
  return QueryPairs(pos_rows=rows[pos], pos_cols=cols[pos],
                    junk_rows=rows[pjunk], junk_cols=cols[pjunk])


def _rowwise_searchsorted(sorted_rows: np.ndarray, rows: np.ndarray,
                          values: np.ndarray, side: str) -> np.ndarray:
  """np.searchsorted(sorted_rows[rows[k]], values[k], side) for every k.

  A vectorised binary search: ceil(log2(n + 1)) steps, each one gather of
  len(values) elements.
  """
  c, n = sorted_rows.shape
  del c
  flat = sorted_rows.reshape(-1)
  base = rows.astype(np.int64) * n
  lo = np.zeros(values.shape, np.int64)
  hi = np.full(values.shape, n, np.int64)
  for _ in range(int(n).bit_length()):
    active = lo < hi
    if not active.any():
      break
    mid = (lo + hi) >> 1
    probe = flat[base + np.minimum(mid, n - 1)]
    go_right = (probe < values) if side == "left" else (probe <= values)
    go_right &= active
    lo = np.where(go_right, mid + 1, lo)
    hi = np.where(active & ~go_right, mid, hi)
  return lo


def positive_ranks(distances: Any, pairs: QueryPairs, gallery: GalleryIndex,
                   *, overwrite: bool = False,
                   sort_buffer: np.ndarray | None = None) -> np.ndarray:
  """1-based ranks of each positive among the query's non-junk items.

  rank(q, p) = 1 + #{j non-junk for q : d_qj < d_qp}
                 + #{j non-junk for q : d_qj == d_qp and j < p}

  which is the position of p in a stable argsort of the non-junk row. Instead
  of an argsort, each row is sorted once by value (junk set to +inf) and the
  positives are located by binary search; rows with exact ties among the
  positives' values get the index tie-break by a direct scan.

  Args:
    distances: (c, n) distances of a query chunk to the whole gallery.
    pairs: `same_identity_pairs` for the chunk.
    gallery: `make_gallery_index` of the gallery.
    overwrite: allow writing into `distances` (saves a copy).
    sort_buffer: optional array of the distances' shape and dtype that
      receives the sorted rows (reused across chunks: no fresh allocation).

  Returns:
    (len(pairs.pos_rows),) int64 ranks, aligned with `pairs.pos_rows`.

  Raises:
    ValueError: a non-junk distance is not finite.
  """
  d = np.asarray(distances)
  if d.ndim != 2 or d.shape[1] != gallery.pids.size:
    raise ValueError(f"distances must be (num_queries, {gallery.pids.size}), "
                     f"got {d.shape}")
  if d.dtype not in (np.float32, np.float64):
    d = d.astype(np.float64)
  elif not overwrite or not d.flags.writeable:
    d = d.copy()
  c, n = d.shape
  values = d[pairs.pos_rows, pairs.pos_cols]
  if gallery.junk_cols.size:
    d[:, gallery.junk_cols] = np.inf
  d[pairs.junk_rows, pairs.junk_cols] = np.inf
  if (sort_buffer is not None and sort_buffer.shape == d.shape
      and sort_buffer.dtype == d.dtype):
    srt = sort_buffer
    np.copyto(srt, d)
    srt.sort(axis=1)
  else:
    srt = np.sort(d, axis=1)
  # Junk went to +inf: the first num_valid sorted values are the non-junk
  # ones, all finite iff the row's last one and first one are.
  num_valid = (n - gallery.junk_cols.size
               - np.bincount(pairs.junk_rows, minlength=c))
  has = np.flatnonzero(num_valid > 0)
  if has.size and not (np.isfinite(srt[has, num_valid[has] - 1]).all()
                       and np.isfinite(srt[has, 0]).all()):
    raise ValueError("distances must be finite (found NaN or inf among "
                     "non-junk items)")
  rows = pairs.pos_rows
  below = _rowwise_searchsorted(srt, rows, values, "left")
  upto = _rowwise_searchsorted(srt, rows, values, "right")
  ranks = below + 1
  tied = np.flatnonzero(upto - below > 1)
  if tied.size:
    cols = np.arange(n)
    step = max(1, _TIE_BLOCK_ELEMENTS // max(n, 1))
    for s in range(0, tied.size, step):
      t = tied[s:s + step]
      equal_before = ((d[rows[t]] == values[t, None])
                      & (cols[None, :] < pairs.pos_cols[t, None]))
      ranks[t] += equal_before.sum(axis=1)
  return ranks


def per_query_from_ranks(rows: np.ndarray, ranks: np.ndarray,
                         num_queries: int) -> PerQuery:
  """CMC first-hit rank, both APs and INP from the positives' ranks.

  Args:
    rows: (P,) query (row) of each positive.
    ranks: (P,) 1-based rank of each positive among the non-junk items.
    num_queries: number of rows c.

  Returns:
    A `PerQuery` of length-c arrays (see the module docstring for formulas).
  """
  rows = np.asarray(rows, np.int64)
  ranks = np.asarray(ranks, np.int64)
  order = np.lexsort((ranks, rows))
  rows, ranks = rows[order], ranks[order]
  num_good = np.bincount(rows, minlength=num_queries)
  start = np.cumsum(num_good) - num_good
  hit = np.arange(rows.size) - start[rows] + 1          # i, 1-based
  r = ranks.astype(np.float64)
  precision = hit / r                                   # i / r_i
  old = np.where(ranks == 1, 1.0, (hit - 1) / np.maximum(r - 1, 1))
  denom = np.maximum(num_good, 1)
  ap_step = np.bincount(rows, precision, num_queries) / denom
  ap_trap = np.bincount(rows, 0.5 * (old + precision), num_queries) / denom
  valid = num_good > 0
  first_rank = np.zeros(num_queries, np.int64)
  first_rank[valid] = ranks[start[valid]]
  inp = np.zeros(num_queries, np.float64)
  inp[valid] = num_good[valid] / ranks[start[valid] + num_good[valid] - 1]
  return PerQuery(num_good=num_good, first_rank=first_rank, ap_step=ap_step,
                  ap_trapezoid=ap_trap, inp=inp)


def concat_per_query(parts: list[PerQuery]) -> PerQuery:
  """Joins chunk results in query order."""
  if not parts:
    return PerQuery(*(np.zeros(0) for _ in PerQuery._fields))
  return PerQuery(*(np.concatenate(f) for f in zip(*parts)))


def cmc_curve(first_rank: np.ndarray, max_rank: int) -> np.ndarray:
  """cmc[k-1] = fraction of the given (valid) queries with r_1 <= k."""
  first_rank = np.asarray(first_rank, np.int64)
  if first_rank.size == 0:
    return np.zeros(max_rank)
  hist = np.bincount(np.minimum(first_rank, max_rank + 1),
                     minlength=max_rank + 2)
  return np.cumsum(hist[1:max_rank + 1]) / first_rank.size


def summarize(per_query: PerQuery, *, ap: str = "step",
              max_rank: int = 20) -> dict[str, Any]:
  """Averages per-query results over the valid queries.

  Returns:
    {"mAP", "mINP", "cmc": {"1", "5", "10", "20"} (those <= max_rank),
     "cmc_curve" (length max_rank), "mAP_step", "mAP_trapezoid", "ap",
     "num_queries", "num_valid_queries", "num_excluded_queries",
     "excluded_queries" (indices of queries without a positive)}, as plain
    Python floats and ints.

  Raises:
    ValueError: unknown `ap`, or no query has a positive.
  """
  if ap not in AP_DEFINITIONS:
    raise ValueError(f"ap must be one of {AP_DEFINITIONS}, got {ap!r}")
  if max_rank < 1:
    raise ValueError(f"max_rank must be >= 1, got {max_rank}")
  valid = per_query.num_good > 0
  num_valid = int(valid.sum())
  if num_valid == 0:
    raise ValueError(f"none of the {valid.size} queries has a positive "
                     "(a gallery item with its pid from another camera)")
  curve = cmc_curve(per_query.first_rank[valid], max_rank)
  m_step = float(per_query.ap_step[valid].mean())
  m_trap = float(per_query.ap_trapezoid[valid].mean())
  excluded = np.flatnonzero(~valid)
  return {
      "mAP": m_step if ap == "step" else m_trap,
      "mINP": float(per_query.inp[valid].mean()),
      "cmc": {str(k): float(curve[k - 1]) for k in REPORTED_RANKS
              if k <= max_rank},
      "cmc_curve": [float(x) for x in curve],
      "ap": ap,
      "mAP_step": m_step,
      "mAP_trapezoid": m_trap,
      "num_queries": int(valid.size),
      "num_valid_queries": num_valid,
      "num_excluded_queries": int(excluded.size),
      "excluded_queries": [int(i) for i in excluded],
  }


def per_query_from_distances(distances: Any, query_pids: Any,
                             query_camids: Any, gallery: GalleryIndex,
                             *, overwrite: bool = False,
                             sort_buffer: np.ndarray | None = None
                             ) -> PerQuery:
  """Per-query results for one query chunk of a distance matrix."""
  pairs = same_identity_pairs(query_pids, query_camids, gallery)
  ranks = positive_ranks(distances, pairs, gallery, overwrite=overwrite,
                         sort_buffer=sort_buffer)
  return per_query_from_ranks(pairs.pos_rows, ranks, np.shape(query_pids)[0])


def evaluate_distances(distances: Any, query_pids: Any, query_camids: Any,
                       gallery_pids: Any, gallery_camids: Any, *,
                       ap: str = "step", max_rank: int = 20,
                       gallery_junk: Any | None = None,
                       query_chunk: int | None = None) -> dict[str, Any]:
  """Metrics from a precomputed (num_queries, num_gallery) distance matrix.

  The pure-function entry point for hand-built matrices; `evaluate` (in
  `evaluator.py`) computes the distances from features chunk by chunk. The
  input matrix is never modified.

  Args:
    distances: (m, n) distances, smaller is more similar.
    query_pids, query_camids: (m,) integer labels.
    gallery_pids, gallery_camids: (n,) integer labels.
    ap: "step" or "trapezoid" (see module docstring).
    max_rank: length of the CMC curve.
    gallery_junk: optional (n,) bool mask; default `gallery_pids == -1`.
    query_chunk: rows per chunk (bounds the temporary memory).

  Returns:
    The `summarize` dictionary.
  """
  if ap not in AP_DEFINITIONS:
    raise ValueError(f"ap must be one of {AP_DEFINITIONS}, got {ap!r}")
  d = np.asarray(distances)
  gallery = make_gallery_index(gallery_pids, gallery_camids, gallery_junk)
  qp = _as_labels(query_pids, "query_pids")
  qc = _as_labels(query_camids, "query_camids")
  if d.ndim != 2 or d.shape != (qp.size, gallery.pids.size):
    raise ValueError(f"distances must have shape ({qp.size}, "
                     f"{gallery.pids.size}), got {d.shape}")
  chunk = query_chunk or default_query_chunk(gallery.pids.size,
                                             d.dtype.itemsize)
  parts = []
  for s in range(0, qp.size, chunk):
    e = min(s + chunk, qp.size)
    parts.append(per_query_from_distances(d[s:e], qp[s:e], qc[s:e], gallery))
  return summarize(concat_per_query(parts), ap=ap, max_rank=max_rank)


def default_query_chunk(num_gallery: int, itemsize: int = 4,
                        budget_bytes: int = 8 << 20) -> int:
  """Queries per chunk: one (chunk, num_gallery) buffer near budget_bytes.

  Clamped to [64, 1024] rows: fewer rows make BLAS and the per-chunk NumPy
  calls inefficient; 8 MB blocks measured fastest at MARS size (~224 rows).
  """
  rows = budget_bytes // max(1, num_gallery * itemsize)
  return int(min(1024, max(64, rows)))
