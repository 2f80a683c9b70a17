"""`evaluate`: features in, re-id metrics out; the one call the trainer makes.

Each query chunk goes end to end (distances -> positives' ranks -> per-query
AP/CMC/INP) before the next one starts, so memory is bounded by one
(chunk, num_gallery) block whatever the gallery size.

Where the work runs (`backend`):

* "numpy": distances by host BLAS, ranks by one value sort per row plus a
  vectorised binary search for the positives (`metrics.positive_ranks`).
  Measured on a 2-core CPU at MARS size, this beats XLA there: XLA's argsort
  of 1,980 x 9,330 takes ~4.2 s, NumPy's argsort ~0.3 s, NumPy's value sort
  ~0.04 s (what we use).
* "jax": distances by a jitted function on the default JAX device (XLA's
  CPU GEMM uses AVX-512 where OpenBLAS may not: 2048-d MARS distances took
  0.18-0.5 s vs 0.33-0.7 s). Ranks: on an accelerator, on the device, as a
  count of the items before each positive, ``sum_j [d_j < d_p or (d_j ==
  d_p and j < p)]``, a fused compare-and-reduce that suits a GPU, so only
  the (chunk, max positives) ranks come back; on the CPU, by the NumPy
  value sort above (XLA's CPU sorts are slow).
* "auto" (default): "jax" when JAX is already imported and its default
  backend is not the CPU, else "numpy". Nothing imports JAX for you.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np

from vreid_jax.evaluation import distances as distances_lib
from vreid_jax.evaluation import metrics as metrics_lib
from vreid_jax.evaluation import rerank as rerank_lib

BACKENDS = ("auto", "numpy", "jax")

# Budget for the JAX path's (chunk, max positives, gallery) comparison.
_JAX_COMPARE_BUDGET = 1 << 28


def resolve_backend(backend: str) -> str:
  """'auto' -> 'jax' on an accelerator JAX already uses, else 'numpy'."""
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
  if backend != "auto":
    return backend
  jax = sys.modules.get("jax")
  if jax is not None and jax.default_backend() != "cpu":
    return "jax"
  return "numpy"


def _check_inputs(qf, qp, qc, gf, gp, gc) -> None:
  for name, f, p, c in (("query", qf, qp, qc), ("gallery", gf, gp, gc)):
    fs, ps, cs = np.shape(f), np.shape(p), np.shape(c)
    if len(fs) != 2:
      raise ValueError(f"{name}_features must be (num, dim), got {fs}")
    if ps != (fs[0],) or cs != (fs[0],):
      raise ValueError(f"{name} has {fs[0]} features but pids of shape {ps} "
                       f"and camids of shape {cs}")
  if np.shape(qf)[1] != np.shape(gf)[1]:
    raise ValueError(f"query features have dim {np.shape(qf)[1]}, gallery "
                     f"features {np.shape(gf)[1]}")


def evaluate(query_features: Any, query_pids: Any, query_camids: Any,
             gallery_features: Any, gallery_pids: Any, gallery_camids: Any,
             *, metric: str = "euclidean", normalize: bool = False,
             ap: str = "step", max_rank: int = 20, rerank: bool = False,
             rerank_k1: int = 20, rerank_k2: int = 6,
             rerank_lambda: float = 0.3, gallery_junk: Any | None = None,
             query_chunk: int | None = None,
             backend: str = "auto") -> dict[str, Any]:
  """Re-identification metrics of query features against a gallery.

  Args:
    query_features: (m, D) embeddings (NumPy or JAX arrays).
    query_pids, query_camids: (m,) integer identities and cameras.
    gallery_features: (n, D) embeddings.
    gallery_pids, gallery_camids: (n,) integer identities and cameras.
    metric: "euclidean", "sqeuclidean" or "cosine" (`distances.py`).
    normalize: L2-normalise features before the distance.
    ap: "step" (torchreid, Gao & Nevatia) or "trapezoid" (official MARS
      MATLAB code, GLTR, M3D); both are returned as mAP_step/mAP_trapezoid.
    max_rank: length of the returned CMC curve.
    rerank: apply k-reciprocal re-ranking (`rerank.py`) with `rerank_k1`,
      `rerank_k2`, `rerank_lambda`.
    gallery_junk: (n,) bool mask of gallery items ignored for every query;
      default `gallery_pids == -1`. Same pid and same camera items are
      always ignored (see `metrics.py`).
    query_chunk: query rows per chunk; default keeps one (chunk, n) float
      block near 32 MB.
    backend: "auto", "numpy" or "jax" (module docstring).

  Returns:
    {"mAP", "mINP", "cmc": {"1", "5", "10", "20"}, "cmc_curve",
     "num_queries", "num_valid_queries", "num_excluded_queries",
     "excluded_queries", "mAP_step", "mAP_trapezoid", "ap", "metric",
     "normalize", "rerank", "backend"}: plain Python numbers, fractions in
    [0, 1], JSON-serialisable.
  """
  distances_lib.check_metric(metric)
  if ap not in metrics_lib.AP_DEFINITIONS:
    raise ValueError(f"ap must be one of {metrics_lib.AP_DEFINITIONS}, "
                     f"got {ap!r}")
  _check_inputs(query_features, query_pids, query_camids, gallery_features,
                gallery_pids, gallery_camids)
  backend = "numpy" if rerank else resolve_backend(backend)
  gallery = metrics_lib.make_gallery_index(gallery_pids, gallery_camids,
                                           gallery_junk)
  qp = np.asarray(query_pids)
  qc = np.asarray(query_camids)
  n = gallery.pids.size
  chunk = query_chunk or metrics_lib.default_query_chunk(n)

  if backend == "jax":
    per_query = _jax_per_query(query_features, qp, qc, gallery_features,
                               gallery, metric=metric, normalize=normalize,
                               chunk=chunk, rank_on_device=None)
  elif rerank:
    blocks = rerank_lib.k_reciprocal_rerank_chunks(
        query_features, gallery_features, k1=rerank_k1, k2=rerank_k2,
        lambda_value=rerank_lambda, metric=metric, normalize=normalize,
        chunk_size=chunk)
    per_query = metrics_lib.concat_per_query(
        [metrics_lib.per_query_from_distances(d, qp[s:e], qc[s:e], gallery,
                                              overwrite=True)
         for s, e, d in blocks])
  else:
    per_query = _numpy_per_query(query_features, qp, qc, gallery_features,
                                 gallery, metric=metric, normalize=normalize,
                                 chunk=chunk)
  out = metrics_lib.summarize(per_query, ap=ap, max_rank=max_rank)
  out.update(metric=metric, normalize=bool(normalize), rerank=bool(rerank),
             backend=backend)
  return out


def evaluate_split(features: Any, pids: Any, camids: Any, split: Any,
                   **kwargs) -> dict[str, Any]:
  """`evaluate` on one `protocols.Split` of a test set's tracklet arrays."""
  features = np.asarray(features)
  pids = np.asarray(pids)
  camids = np.asarray(camids)
  q, g = split.query, split.gallery
  return evaluate(features[q], pids[q], camids[q], features[g], pids[g],
                  camids[g], gallery_junk=split.gallery_junk, **kwargs)


def _numpy_per_query(query_features, qp, qc, gallery_features, gallery, *,
                     metric, normalize, chunk) -> metrics_lib.PerQuery:
  """Host path: BLAS distances, value sort + binary search, per chunk.

  Two (chunk, n) buffers are allocated once and reused by every chunk: one
  for the distances, one for the temporary norm sum and then the sorted
  rows.
  """
  qf, gf = np.asarray(query_features), np.asarray(gallery_features)
  dtype = distances_lib.compute_dtype(qf, gf)
  q, q_sq = distances_lib.prepare_features(qf, metric, normalize, dtype)
  g, g_sq = distances_lib.prepare_features(gf, metric, normalize, dtype)
  rows = min(chunk, max(q.shape[0], 1))
  dist_buf = np.empty((rows, g.shape[0]), dtype)
  work_buf = np.empty((rows, g.shape[0]), dtype)
  parts = []
  for s in range(0, q.shape[0], rows):
    e = min(s + rows, q.shape[0])
    d = distances_lib.distance_block(q[s:e], q_sq[s:e], g, g_sq, metric,
                                     out=dist_buf[:e - s],
                                     tmp=work_buf[:e - s])
    parts.append(metrics_lib.per_query_from_distances(
        d, qp[s:e], qc[s:e], gallery, overwrite=True,
        sort_buffer=work_buf[:e - s]))
  return metrics_lib.concat_per_query(parts)


def _bucket(x: int) -> int:
  """Next power of two >= max(x, 1) (few distinct compiled shapes)."""
  return 1 << max(0, int(x) - 1).bit_length()


def _padded_columns(rows: np.ndarray, cols: np.ndarray, num_rows: int,
                    width: int, fill: int) -> np.ndarray:
  """Scatters row-grouped (row, col) pairs into a (num_rows, width) table."""
  counts = np.bincount(rows, minlength=num_rows)
  slot = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
  table = np.full((num_rows, width), fill, np.int32)
  table[rows, slot] = cols
  return table


def _device_ranks(qblock, g, junk, pos_cols, junk_cols, *, metric,
                  normalize):
  """Ranks of a chunk's positives, counted on the device.

  rank(q, p) = 1 + sum_j [d_qj < d_qp or (d_qj == d_qp and j < p)] over the
  non-junk j (junk: `junk` for all queries, `junk_cols` per query, padded
  with out-of-range indices). Also returns whether a non-junk distance is
  not finite.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  d = distances_lib.pairwise_distances_jax(qblock, g, metric=metric,
                                           normalize=normalize)
  rows = jnp.arange(d.shape[0])[:, None]
  masked = jnp.broadcast_to(junk[None, :], d.shape)
  masked = masked.at[rows, junk_cols].set(True, mode="drop")
  bad = jnp.any(~jnp.isfinite(d) & ~masked)
  d = jnp.where(masked, jnp.inf, d)
  v = jnp.take_along_axis(d, jnp.maximum(pos_cols, 0), axis=1)
  idx = jnp.arange(d.shape[1])
  before = ((d[:, None, :] < v[:, :, None])
            | ((d[:, None, :] == v[:, :, None])
               & (idx[None, None, :] < pos_cols[:, :, None])))
  return jnp.sum(before, axis=-1, dtype=jnp.int32) + 1, bad


@functools.cache
def _jitted_device_ranks(metric: str, normalize: bool):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.jit(functools.partial(_device_ranks, metric=metric,
                                   normalize=normalize))


def _jax_per_query(query_features, qp, qc, gallery_features, gallery, *,
                   metric, normalize, chunk,
                   rank_on_device: bool | None) -> metrics_lib.PerQuery:
  """Distances on the JAX device; ranks there too unless it is the CPU."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  if rank_on_device is None:
    rank_on_device = jax.default_backend() != "cpu"
  if not rank_on_device:
    work = None
    parts = []
    for s, e, d in distances_lib.distance_chunks(
        query_features, gallery_features, metric=metric,
        normalize=normalize, chunk_size=chunk, backend="jax"):
      if work is None or work.shape != d.shape:
        work = np.empty_like(d)
      parts.append(metrics_lib.per_query_from_distances(
          d, qp[s:e], qc[s:e], gallery, overwrite=True, sort_buffer=work))
    return metrics_lib.concat_per_query(parts)

  m, n = qp.size, gallery.pids.size
  pairs = metrics_lib.same_identity_pairs(qp, qc, gallery)
  pos_width = _bucket(np.bincount(pairs.pos_rows, minlength=m).max(initial=0))
  junk_width = _bucket(np.bincount(pairs.junk_rows,
                                   minlength=m).max(initial=0))
  pos_table = _padded_columns(pairs.pos_rows, pairs.pos_cols, m, pos_width,
                              -1)
  junk_table = _padded_columns(pairs.junk_rows, pairs.junk_cols, m,
                               junk_width, n)
  chunk = int(max(1, min(chunk, m,
                         _JAX_COMPARE_BUDGET // (pos_width * max(n, 1)))))

  fn = _jitted_device_ranks(metric, bool(normalize))
  q = jnp.asarray(query_features)
  g = jnp.asarray(gallery_features)
  junk = jnp.asarray(gallery.junk)
  # Dispatch every chunk first (JAX runs them asynchronously; each output
  # is only (chunk, pos_width) ints), then fetch.
  pending = []
  for s in range(0, m, chunk):
    e = min(s + chunk, m)
    pad = chunk - (e - s)
    qblock = jnp.pad(q[s:e], ((0, pad), (0, 0)))
    pos = np.pad(pos_table[s:e], ((0, pad), (0, 0)), constant_values=-1)
    jt = np.pad(junk_table[s:e], ((0, pad), (0, 0)), constant_values=n)
    pending.append((s, e, fn(qblock, g, junk, pos, jt)))
  parts = []
  for s, e, (ranks, bad) in pending:
    if bool(bad):
      raise ValueError("distances must be finite (found NaN or inf among "
                       "non-junk items)")
    ranks = np.asarray(ranks)[:e - s]
    hit = pos_table[s:e] >= 0
    rows = np.nonzero(hit)[0]
    parts.append(metrics_lib.per_query_from_ranks(rows, ranks[hit], e - s))
  return metrics_lib.concat_per_query(parts)
