"""k-reciprocal re-ranking (Zhong, Zheng, Cao & Li, CVPR 2017).

Written from the paper's description. Pool P = queries followed by gallery
items (N = m + n); neighbours are searched in the whole pool, as the
authors' released code does.

1. Original distance. d(i, j) is the chosen metric divided by the row's
   maximum, d(i, j) = dist(i, j) / max_j' dist(i, j'), so the Gaussian kernel
   below does not depend on the feature scale. N(i, k) is the first k + 1
   items of i's ranking by d (i itself is normally first), ties broken by
   pool index.
2. k-reciprocal neighbours: R(i, k) = {j in N(i, k) : i in N(j, k)}.
3. Expansion, with h = round(k1 / 2):
   R*(i) = R(i, k1) united with every R(c, h), c in R(i, k1), for which
   |R(i, k1) & R(c, h)| >= 2/3 |R(c, h)| (the paper's >=; tested exactly,
   in integers: 3 |R(i, k1) & R(c, h)| >= 2 |R(c, h)|).
4. Gaussian-kernel vectors: V_ij = exp(-d(i, j)) for j in R*(i),
   0 elsewhere, then each row is divided by its sum (as the released code
   does; the Jaccard distance below is otherwise unchanged in form).
5. Local query expansion: V_i <- (1 / k2) sum_{m in N(i, k2 - 1)} V_m,
   i.e. the mean over the first k2 items of i's ranking (none for k2 = 1).
6. Jaccard distance (with min/max for the weighted sets):
   d_J(q, g) = 1 - sum_j min(V_qj, V_gj) / sum_j max(V_qj, V_gj),
   computed as 1 - M / (|V_q|_1 + |V_g|_1 - M) with M = sum_j min(...).
7. Final distance: (1 - lambda) d_J(q, g) + lambda d(q, g).

Defaults k1 = 20, k2 = 6, lambda = 0.3 (the paper's settings).

Memory: only (chunk, N) distance rows, an (N, k1 + 1) neighbour table and
the sparse V (a few hundred non-zeros per row) are held; the Jaccard term is
accumulated from V's non-zeros through an inverted index (gallery items per
column), never a dense (N, N) matrix. Output comes one query chunk at a time.
The pool is scanned twice for distances (neighbours, then V's weights), so
the cost is ~2 N^2 D flops plus O(N (k1 + 1)^2 (h + 1)) set work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from vreid_jax.evaluation import distances as distances_lib

RowsFn = Callable[[int, int, int], np.ndarray]

# Max (query non-zero, gallery non-zero) pairs expanded at once.
_PAIR_BUDGET = 1 << 21
# Max elements of the (rows, k1+1, h+1, k1+1) membership test at once.
_SET_BUDGET = 1 << 24


def _topk_stable(d: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k smallest entries of each row, by (value, index).

  argpartition + a small sort; rows whose k-th value is tied with an item
  left out fall back to a stable argsort, so the result always equals
  `np.argsort(d, axis=1, kind="stable")[:, :k]`.
  """
  n = d.shape[1]
  if k >= n:
    return np.argsort(d, axis=1, kind="stable")
  part = np.argpartition(d, k - 1, axis=1)[:, :k]
  vals = np.take_along_axis(d, part, axis=1)
  order = np.lexsort((part, vals), axis=1)
  top = np.take_along_axis(part, order, axis=1)
  kth = np.take_along_axis(vals, order[:, -1:], axis=1)
  ambiguous = np.flatnonzero((d <= kth).sum(axis=1) > k)
  if ambiguous.size:
    top[ambiguous] = np.argsort(d[ambiguous], axis=1, kind="stable")[:, :k]
  return top


def _reciprocal(initial: np.ndarray, k: int,
                chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """R(i, k) as (N, k + 1) candidate table N(i, k) and a membership mask."""
  fwd = initial[:, :k + 1]
  mask = np.empty(fwd.shape, bool)
  for s in range(0, fwd.shape[0], chunk):
    e = min(s + chunk, fwd.shape[0])
    back = initial[fwd[s:e], :k + 1]                  # (c, k + 1, k + 1)
    mask[s:e] = (back == np.arange(s, e)[:, None, None]).any(axis=-1)
  return fwd, mask


def _expanded_sets(fwd_k: np.ndarray, mask_k: np.ndarray, fwd_h: np.ndarray,
                   mask_h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """R*(i) for every i as CSR (indptr, sorted indices)."""
  num, width_k = fwd_k.shape
  width_h = fwd_h.shape[1]
  size_h = mask_h.sum(axis=1)
  members = np.where(mask_k, fwd_k, -1)               # R(i, k1), -1 = none
  chunk = max(1, _SET_BUDGET // (width_k * width_h * width_k))
  counts, cols = [], []
  for s in range(0, num, chunk):
    e = min(s + chunk, num)
    cand = fwd_k[s:e]                                 # c in N(i, k1)
    half = np.where(mask_h[cand], fwd_h[cand], -2)    # R(c, h), -2 = none
    inside = (half[..., None] == members[s:e, None, None, :]).any(axis=-1)
    inter = inside.sum(axis=-1)                       # |R(i,k1) & R(c,h)|
    accept = mask_k[s:e] & (3 * inter >= 2 * size_h[cand])
    added = np.where(accept[..., None] & (half >= 0), half, num)
    own = np.where(mask_k[s:e], fwd_k[s:e], num)
    allc = np.sort(np.concatenate([own, added.reshape(e - s, -1)], axis=1),
                   axis=1)
    keep = allc < num
    keep[:, 1:] &= allc[:, 1:] != allc[:, :-1]
    counts.append(keep.sum(axis=1))
    cols.append(allc[keep])
  counts = np.concatenate(counts)
  indptr = np.zeros(num + 1, np.int64)
  np.cumsum(counts, out=indptr[1:])
  return indptr, np.concatenate(cols).astype(np.int64)


def _min_overlap(vq, vg_csc, num_gallery: int) -> np.ndarray:
  """M[r, g] = sum_j min(vq[r, j], vg[g, j]) over shared non-zeros j.

  vq: CSR (c, N); vg_csc: CSC (num_gallery, N). Each non-zero (r, j) of vq
  meets the gallery rows listed in column j of vg (the inverted index).
  """
  c = vq.shape[0]
  out = np.zeros(c * num_gallery, np.float64)
  q_rows = np.repeat(np.arange(c), np.diff(vq.indptr))
  q_cols, q_vals = vq.indices, vq.data
  per_nz = np.diff(vg_csc.indptr)[q_cols]
  ends = np.cumsum(per_nz)
  # Split the non-zeros into groups of at most ~_PAIR_BUDGET pairs.
  cuts = np.searchsorted(ends, np.arange(_PAIR_BUDGET, ends[-1] if ends.size
                                         else 0, _PAIR_BUDGET))
  bounds = np.unique(np.concatenate([[0], cuts, [q_cols.size]]))
  for a, b in zip(bounds[:-1], bounds[1:]):
    cnt = per_nz[a:b]
    total = int(cnt.sum())
    if not total:
      continue
    starts = vg_csc.indptr[q_cols[a:b]]
    pos = np.repeat(starts - (np.cumsum(cnt) - cnt), cnt) + np.arange(total)
    g = vg_csc.indices[pos]
    mins = np.minimum(np.repeat(q_vals[a:b], cnt), vg_csc.data[pos])
    out += np.bincount(np.repeat(q_rows[a:b], cnt) * num_gallery + g,
                       weights=mins, minlength=c * num_gallery)
  return out.reshape(c, num_gallery)


def _rerank_core(rows_fn: RowsFn, num_query: int, num_pool: int, *,
                 k1: int, k2: int, lambda_value: float, chunk_size: int
                 ) -> Iterator[tuple[int, int, np.ndarray]]:
  """Re-ranked (query, gallery) distances, one query chunk at a time."""
  from scipy import sparse  # pylint: disable=g-import-not-at-top
  if k1 < 1 or k2 < 1:
    raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
  if not 0.0 <= lambda_value <= 1.0:
    raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
  n_pool = num_pool
  num_gallery = n_pool - num_query
  width = min(max(k1 + 1, k2), n_pool)
  # Pass 1: row maxima and the first k1 + 1 neighbours of every pool item.
  rowmax = np.empty(n_pool)
  initial = np.empty((n_pool, width), np.int64)
  for s in range(0, n_pool, chunk_size):
    e = min(s + chunk_size, n_pool)
    d = rows_fn(s, e, 0)
    if not np.isfinite(d).all():
      raise ValueError("re-ranking needs finite distances")
    mx = d.max(axis=1)
    mx = np.where(mx > 0, mx, 1.0)
    d /= mx[:, None].astype(d.dtype)
    rowmax[s:e] = mx
    initial[s:e] = _topk_stable(d, width)
  half = int(np.around(k1 / 2))
  fwd_k, mask_k = _reciprocal(initial, min(k1, width - 1))
  fwd_h, mask_h = _reciprocal(initial, min(half, width - 1))
  indptr, indices = _expanded_sets(fwd_k, mask_k, fwd_h, mask_h)
  # Pass 2: Gaussian weights of the expanded sets, rows summing to 1.
  data = np.empty(indices.size)
  for s in range(0, n_pool, chunk_size):
    e = min(s + chunk_size, n_pool)
    d = rows_fn(s, e, 0)
    d /= rowmax[s:e, None].astype(d.dtype)
    a, b = indptr[s], indptr[e]
    r = np.repeat(np.arange(e - s), np.diff(indptr[s:e + 1]))
    data[a:b] = np.exp(-d[r, indices[a:b]].astype(np.float64))
  row_of = np.repeat(np.arange(n_pool), np.diff(indptr))
  data /= np.bincount(row_of, data, n_pool)[row_of]
  v = sparse.csr_matrix((data, indices, indptr), shape=(n_pool, n_pool))
  k2 = min(k2, width)                       # a pool smaller than k2
  if k2 > 1:
    qe = sparse.csr_matrix(
        (np.full(n_pool * k2, 1.0 / k2),
         initial[:, :k2].ravel(), np.arange(0, n_pool * k2 + 1, k2)),
        shape=(n_pool, n_pool))
    v = (qe @ v).tocsr()
  v_query = v[:num_query]
  v_gallery = v[num_query:].tocsc()
  sum_query = np.asarray(v_query.sum(axis=1)).ravel()
  sum_gallery = np.asarray(v[num_query:].sum(axis=1)).ravel()
  for s in range(0, num_query, chunk_size):
    e = min(s + chunk_size, num_query)
    overlap = _min_overlap(v_query[s:e], v_gallery, num_gallery)
    union = sum_query[s:e, None] + sum_gallery[None, :] - overlap
    jaccard = 1.0 - overlap / np.maximum(union, 1e-12)
    d = rows_fn(s, e, num_query).astype(np.float64)
    d /= rowmax[s:e, None]
    yield s, e, (1.0 - lambda_value) * jaccard + lambda_value * d


def k_reciprocal_rerank_chunks(
    query_features: Any, gallery_features: Any, *, k1: int = 20, k2: int = 6,
    lambda_value: float = 0.3, metric: str = "euclidean",
    normalize: bool = False, chunk_size: int = 256
) -> Iterator[tuple[int, int, np.ndarray]]:
  """Yields (start, stop, re-ranked distances of queries start:stop).

  Args:
    query_features: (m, D) features.
    gallery_features: (n, D) features.
    k1, k2, lambda_value: the paper's parameters (see module docstring).
    metric, normalize: the original distance (`distances.py`).
    chunk_size: rows per distance block.
  """
  distances_lib.check_metric(metric)
  qf = np.asarray(query_features)
  gf = np.asarray(gallery_features)
  if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
    raise ValueError(f"features must be (m, D) and (n, D), got {qf.shape} "
                     f"and {gf.shape}")
  dtype = distances_lib.compute_dtype(qf, gf)
  pool, pool_sq = distances_lib.prepare_features(
      np.concatenate([qf, gf]), metric, normalize, dtype)

  def rows_fn(s: int, e: int, col: int) -> np.ndarray:
    return distances_lib.distance_block(pool[s:e], pool_sq[s:e], pool[col:],
                                        pool_sq[col:], metric)

  yield from _rerank_core(rows_fn, qf.shape[0], pool.shape[0], k1=k1, k2=k2,
                          lambda_value=lambda_value, chunk_size=chunk_size)


def k_reciprocal_rerank(query_features: Any, gallery_features: Any,
                        **kwargs) -> np.ndarray:
  """Dense (m, n) re-ranked distances; kwargs as the chunked version."""
  blocks = [b for _, _, b in k_reciprocal_rerank_chunks(
      query_features, gallery_features, **kwargs)]
  n = np.shape(gallery_features)[0]
  return np.concatenate(blocks) if blocks else np.zeros((0, n))


def rerank_distances(q_g: Any, q_q: Any, g_g: Any, *, k1: int = 20,
                     k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
  """Re-ranking from precomputed distance blocks (small problems).

  Args:
    q_g: (m, n) query-gallery distances.
    q_q: (m, m) query-query distances.
    g_g: (n, n) gallery-gallery distances.

  Returns:
    (m, n) re-ranked distances.
  """
  q_g, q_q, g_g = (np.asarray(x, np.float64) for x in (q_g, q_q, g_g))
  m, n = q_g.shape
  if q_q.shape != (m, m) or g_g.shape != (n, n):
    raise ValueError(f"expected q_q {(m, m)} and g_g {(n, n)}, got "
                     f"{q_q.shape} and {g_g.shape}")
  full = np.block([[q_q, q_g], [q_g.T, g_g]])

  def rows_fn(s: int, e: int, col: int) -> np.ndarray:
    return full[s:e, col:].copy()

  blocks = [b for _, _, b in _rerank_core(
      rows_fn, m, m + n, k1=k1, k2=k2, lambda_value=lambda_value,
      chunk_size=256)]
  return np.concatenate(blocks) if blocks else np.zeros((0, n))
