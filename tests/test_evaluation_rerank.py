"""k-reciprocal re-ranking against a plain dense implementation."""

from __future__ import annotations

import numpy as np
import pytest

from vreid_jax.evaluation import evaluate
from vreid_jax.evaluation import evaluate_distances
from vreid_jax.evaluation import rerank


def dense_rerank(full, num_query, k1, k2, lam):
  """Straight from the paper, with Python sets and dense (N, N) arrays.

  full: (N, N) original distances of the pool (queries first).
  """
  n = full.shape[0]
  d = full / full.max(axis=1, keepdims=True)
  ranking = np.argsort(d, axis=1, kind="stable")

  def neighbours(i, k):                      # N(i, k): k + 1 items, self too
    return ranking[i, :k + 1]

  def reciprocal(i, k):                      # R(i, k)
    return {int(j) for j in neighbours(i, k) if i in neighbours(j, k)}

  half = int(np.around(k1 / 2))
  v = np.zeros((n, n))
  for i in range(n):
    r = reciprocal(i, k1)
    expanded = set(r)
    for c in r:
      rc = reciprocal(c, half)
      if 3 * len(r & rc) >= 2 * len(rc):     # |R & R_c| >= 2/3 |R_c|
        expanded |= rc
    idx = sorted(expanded)
    weights = np.exp(-d[i, idx])
    v[i, idx] = weights / weights.sum()
  if k2 > 1:
    v = np.stack([v[ranking[i, :k2]].mean(axis=0) for i in range(n)])
  jaccard = np.zeros((num_query, n - num_query))
  for q in range(num_query):
    for g in range(n - num_query):
      vg = v[num_query + g]
      jaccard[q, g] = 1 - (np.minimum(v[q], vg).sum()
                           / np.maximum(v[q], vg).sum())
  return (1 - lam) * jaccard + lam * d[:num_query, num_query:]


def _features(seed, m, n, dim=4, ids=5):
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((ids, dim)) * 2
  qp, gp = rng.integers(0, ids, m), rng.integers(0, ids, n)
  qf = centers[qp] + rng.standard_normal((m, dim))
  gf = centers[gp] + rng.standard_normal((n, dim))
  return qf, qp, gf, gp


def _euclidean(a, b):
  return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))


@pytest.mark.parametrize("k1, k2, lam", [(20, 6, 0.3), (6, 3, 0.3),
                                         (4, 1, 0.5), (5, 2, 0.0)])
def test_rerank_matches_dense_reference(k1, k2, lam):
  qf, _, gf, _ = _features(0, 6, 34)
  x = np.concatenate([qf, gf])
  full = _euclidean(x, x)
  want = dense_rerank(full, 6, k1, k2, lam)
  got = rerank.rerank_distances(full[:6, 6:], full[:6, :6], full[6:, 6:],
                                k1=k1, k2=k2, lambda_value=lam)
  np.testing.assert_allclose(got, want, atol=1e-10)
  # From features, chunked (different float rounding of the distances).
  chunks = list(rerank.k_reciprocal_rerank_chunks(
      qf, gf, k1=k1, k2=k2, lambda_value=lam, chunk_size=4))
  assert [(s, e) for s, e, _ in chunks] == [(0, 4), (4, 6)]
  np.testing.assert_allclose(np.concatenate([c for *_, c in chunks]), want,
                             atol=1e-6)


def test_rerank_with_ties_matches_reference():
  rng = np.random.default_rng(1)
  x = rng.integers(0, 3, (30, 2)).astype(np.float64)   # many equal distances
  full = _euclidean(x, x) + 1e-3 * np.eye(30)[::-1]    # keep rows non-zero
  full = (full + full.T) / 2
  want = dense_rerank(full, 5, 6, 3, 0.3)
  got = rerank.rerank_distances(full[:5, 5:], full[:5, :5], full[5:, 5:],
                                k1=6, k2=3, lambda_value=0.3)
  np.testing.assert_allclose(got, want, atol=1e-10)


def test_topk_stable_equals_stable_argsort():
  rng = np.random.default_rng(2)
  d = rng.integers(0, 4, (50, 30)).astype(np.float32)
  for k in (1, 5, 29, 30):
    np.testing.assert_array_equal(
        rerank._topk_stable(d, k),  # pylint: disable=protected-access
        np.argsort(d, axis=1, kind="stable")[:, :k])


def test_rerank_inside_evaluate():
  qf, qp, gf, gp = _features(3, 8, 40)
  qc, gc = np.zeros(8, int), np.ones(40, int)
  plain = evaluate(qf, qp, qc, gf, gp, gc)
  ranked = evaluate(qf, qp, qc, gf, gp, gc, rerank=True, rerank_k1=6,
                    rerank_k2=3, query_chunk=3)
  assert ranked["rerank"] is True and plain["rerank"] is False
  assert 0.0 <= ranked["mAP"] <= 1.0
  final = rerank.k_reciprocal_rerank(qf, gf, k1=6, k2=3)
  direct = evaluate_distances(final, qp, qc, gp, gc)
  assert ranked["mAP"] == pytest.approx(direct["mAP"], abs=1e-12)


def test_rerank_rejects_bad_parameters():
  qf, _, gf, _ = _features(4, 3, 10)
  with pytest.raises(ValueError, match="lambda"):
    rerank.k_reciprocal_rerank(qf, gf, lambda_value=2.0)
  with pytest.raises(ValueError, match="k1"):
    rerank.k_reciprocal_rerank(qf, gf, k1=0)


def test_rerank_pool_smaller_than_k():
  qf, _, gf, _ = _features(5, 2, 4)
  x = np.concatenate([qf, gf])
  full = _euclidean(x, x)
  want = dense_rerank(full, 2, 20, 6, 0.3)
  got = rerank.rerank_distances(full[:2, 2:], full[:2, :2], full[2:, 2:])
  np.testing.assert_allclose(got, want, atol=1e-10)
