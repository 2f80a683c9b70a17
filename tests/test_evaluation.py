"""Tests of vreid_jax.evaluation: metrics, distances, evaluate, helpers."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from vreid_jax.evaluation import aggregation
from vreid_jax.evaluation import distances
from vreid_jax.evaluation import evaluate
from vreid_jax.evaluation import evaluate_distances
from vreid_jax.evaluation import evaluate_split
from vreid_jax.evaluation import evaluator
from vreid_jax.evaluation import metrics
from vreid_jax.evaluation import plots
from vreid_jax.evaluation import protocols


# --------------------------------------------------------------------------
# An independent, deliberately plain reference: one query at a time, a full
# stable argsort, junk removed from the ranked list, formulas written out.
# --------------------------------------------------------------------------
def reference_metrics(dist, qp, qc, gp, gc, junk=None, max_rank=20):
  dist, qp, qc, gp, gc = map(np.asarray, (dist, qp, qc, gp, gc))
  junk = gp == -1 if junk is None else np.asarray(junk)
  ap_step, ap_trap, inp, first = [], [], [], []
  for i in range(len(qp)):
    order = np.argsort(dist[i], kind="stable")
    ignore = junk[order] | ((gp[order] == qp[i]) & (gc[order] == qc[i]))
    order = order[~ignore]
    good = gp[order] == qp[i]
    if not good.any():
      continue
    ranks = np.flatnonzero(good) + 1
    step, trap = 0.0, 0.0
    for hit, r in enumerate(ranks, start=1):
      precision = hit / r
      old_precision = 1.0 if r == 1 else (hit - 1) / (r - 1)
      step += precision / len(ranks)
      trap += (old_precision + precision) / 2 / len(ranks)
    ap_step.append(step)
    ap_trap.append(trap)
    inp.append(len(ranks) / ranks[-1])
    first.append(ranks[0])
  first = np.asarray(first)
  cmc = [float(np.mean(first <= k)) for k in range(1, max_rank + 1)]
  return {"mAP_step": np.mean(ap_step), "mAP_trapezoid": np.mean(ap_trap),
          "mINP": np.mean(inp), "cmc_curve": cmc, "num_valid": len(first)}


def ranked_gallery(good_ranks, length):
  """One query (pid 1, cam 0); positives (cam 1) at the given 1-based ranks.

  Gallery item j has distance j, so the ranking is the gallery order.
  """
  gp = np.full(length, 7)
  gp[np.asarray(good_ranks) - 1] = 1
  dist = np.arange(length, dtype=np.float64)[None]
  return dist, [1], [0], gp, np.ones(length, int)


@pytest.mark.parametrize(
    "good_ranks, step, trapezoid, inp",
    [
        # One hit at rank 2: step 1/2; trapezoid (0 + 1/2)/2 = 1/4; INP 1/2.
        ([2], 0.5, 0.25, 0.5),
        # Hits at 1, 3: step (1 + 2/3)/2 = 5/6;
        # trapezoid ((1 + 1)/2 + (1/2 + 2/3)/2)/2 = (1 + 7/12)/2 = 19/24.
        ([1, 3], 5 / 6, 19 / 24, 2 / 3),
        # Hits at 2, 4: step (1/2 + 2/4)/2 = 1/2;
        # trapezoid ((0 + 1/2)/2 + (1/3 + 1/2)/2)/2 = (1/4 + 5/12)/2 = 1/3.
        ([2, 4], 0.5, 1 / 3, 0.5),
        # Hits at 1, 2, 5: step (1 + 1 + 3/5)/3 = 13/15;
        # trapezoid (1 + 1 + (2/4 + 3/5)/2)/3 = 2.55/3 = 0.85; INP 3/5.
        ([1, 2, 5], 13 / 15, 0.85, 0.6),
        # Single hit at rank 1: everything is 1.
        ([1], 1.0, 1.0, 1.0),
    ])
def test_hand_computed_ap(good_ranks, step, trapezoid, inp):
  args = ranked_gallery(good_ranks, 6)
  out_step = evaluate_distances(*args, ap="step")
  out_trap = evaluate_distances(*args, ap="trapezoid")
  assert out_step["mAP"] == pytest.approx(step, abs=1e-12)
  assert out_trap["mAP"] == pytest.approx(trapezoid, abs=1e-12)
  assert out_step["mINP"] == pytest.approx(inp, abs=1e-12)
  first = good_ranks[0]
  assert out_step["cmc_curve"][:6] == [float(k >= first) for k in range(1, 7)]


def test_junk_same_camera_and_distractors():
  # Query pid 1 camera 0. Gallery in distance order:
  #   0: pid 1 cam 0  -> same pid & camera: ignored
  #   1: pid -1       -> junk: ignored
  #   2: pid 0        -> distractor: a negative (rank 1)
  #   3: pid 1 cam 1  -> the positive, rank 2 among non-junk items
  gp, gc = [1, -1, 0, 1], [0, 2, 1, 1]
  dist = [[0.1, 0.2, 0.3, 0.4]]
  out = evaluate_distances(dist, [1], [0], gp, gc)
  assert out["mAP"] == pytest.approx(0.5)
  assert out["cmc_curve"][:2] == [0.0, 1.0]
  out = evaluate_distances(dist, [1], [0], gp, gc, ap="trapezoid")
  assert out["mAP"] == pytest.approx(0.25)
  # An explicit junk mask replaces the default rule: pid 0 becomes junk
  # too (and pid -1 is then an ordinary negative).
  junk = np.array([False, True, True, False])
  out = evaluate_distances(dist, [1], [0], gp, gc, gallery_junk=junk)
  assert out["mAP"] == pytest.approx(1.0)
  junk = np.array([False, False, True, False])
  out = evaluate_distances(dist, [1], [0], gp, gc, gallery_junk=junk)
  assert out["mAP"] == pytest.approx(0.5)


def test_queries_without_positive_are_counted_not_averaged():
  # Query 0 has a positive at rank 1; query 1's only same-pid item is in its
  # own camera; query 2's pid is absent from the gallery.
  gp, gc = [1, 2, 5], [1, 0, 1]
  dist = np.array([[0.0, 1.0, 2.0]] * 3)
  out = evaluate_distances(dist, [1, 2, 3], [0, 0, 0], gp, gc)
  assert out["num_queries"] == 3
  assert out["num_valid_queries"] == 1
  assert out["num_excluded_queries"] == 2
  assert out["excluded_queries"] == [1, 2]
  assert out["mAP"] == 1.0 and out["cmc"]["1"] == 1.0
  with pytest.raises(ValueError, match="none of the 1 queries"):
    evaluate_distances(dist[1:2], [2], [0], gp, gc)


def test_ties_broken_by_gallery_order():
  gp = np.array([7, 1, 7, 1])
  gc = np.ones(4, int)
  dist = np.ones((1, 4))
  # All tied: positives at gallery positions 2 and 4 -> ranks 2 and 4.
  out = evaluate_distances(dist, [1], [0], gp, gc)
  assert out["mAP"] == pytest.approx(0.5)
  # Reversed gallery: positives first and third -> ranks 1 and 3.
  out = evaluate_distances(dist, [1], [0], gp[::-1], gc)
  assert out["mAP"] == pytest.approx(5 / 6)
  # Partial ties in a larger random integer matrix agree with a stable
  # argsort, and junk items tied with positives are still ignored.
  rng = np.random.default_rng(0)
  dist = rng.integers(0, 3, (20, 40)).astype(np.float32)
  qp, qc = rng.integers(-1, 4, 20), rng.integers(0, 2, 20)
  gp, gc = rng.integers(-1, 4, 40), rng.integers(0, 2, 40)
  got = evaluate_distances(dist, qp, qc, gp, gc, query_chunk=3)
  want = reference_metrics(dist, qp, qc, gp, gc)
  assert got["mAP_step"] == pytest.approx(want["mAP_step"], abs=1e-12)
  assert got["mAP_trapezoid"] == pytest.approx(want["mAP_trapezoid"],
                                               abs=1e-12)


def test_invariant_to_gallery_permutation():
  rng = np.random.default_rng(1)
  dist = rng.random((15, 50))                 # continuous: no ties
  qp, qc = rng.integers(0, 5, 15), rng.integers(0, 3, 15)
  gp, gc = rng.integers(-1, 5, 50), rng.integers(0, 3, 50)
  perm = rng.permutation(50)
  a = evaluate_distances(dist, qp, qc, gp, gc)
  b = evaluate_distances(dist[:, perm], qp, qc, gp[perm], gc[perm])
  for key in ("mAP_step", "mAP_trapezoid", "mINP"):
    assert a[key] == pytest.approx(b[key], abs=1e-12)
  assert a["cmc_curve"] == b["cmc_curve"]


def test_perfect_features_score_one():
  pids = np.repeat(np.arange(1, 6), 4)
  cams = np.tile(np.arange(4), 5)
  feats = np.eye(8)[pids] * 10.0
  q = np.arange(0, 20, 4)                     # camera 0 of each identity
  g = np.setdiff1d(np.arange(20), q)
  for ap in ("step", "trapezoid"):
    out = evaluate(feats[q], pids[q], cams[q], feats[g], pids[g], cams[g],
                   ap=ap)
    assert out["mAP"] == 1.0 and out["mINP"] == 1.0
    assert out["cmc"] == {"1": 1.0, "5": 1.0, "10": 1.0, "20": 1.0}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_matches_reference_on_random_data(seed):
  rng = np.random.default_rng(seed)
  m, n = 30, 120
  dist = rng.random((m, n)).astype(np.float32)
  dist[:, 100:] = dist[:, :20]               # some exact ties
  qp, qc = rng.integers(0, 8, m), rng.integers(0, 3, m)
  gp, gc = rng.integers(-1, 8, n), rng.integers(0, 3, n)
  want = reference_metrics(dist, qp, qc, gp, gc, max_rank=10)
  for chunk in (1, 7, None):
    got = evaluate_distances(dist, qp, qc, gp, gc, max_rank=10,
                             query_chunk=chunk)
    assert got["num_valid_queries"] == want["num_valid"]
    for key in ("mAP_step", "mAP_trapezoid", "mINP"):
      assert got[key] == pytest.approx(want[key], abs=1e-12), key
    np.testing.assert_allclose(got["cmc_curve"], want["cmc_curve"])


def test_result_types_and_ranges():
  rng = np.random.default_rng(3)
  qf, gf = rng.standard_normal((10, 4)), rng.standard_normal((40, 4))
  qp, gp = rng.integers(0, 4, 10), rng.integers(0, 4, 40)
  qc, gc = np.zeros(10, int), np.ones(40, int)
  out = evaluate(qf, qp, qc, gf, gp, gc, max_rank=5)
  assert set(out["cmc"]) == {"1", "5"}
  assert len(out["cmc_curve"]) == 5
  for key in ("mAP", "mINP"):
    assert isinstance(out[key], float) and 0.0 <= out[key] <= 1.0
  for key in ("num_queries", "num_valid_queries", "num_excluded_queries"):
    assert type(out[key]) is int  # pylint: disable=unidiomatic-typecheck
  assert np.all(np.diff(out["cmc_curve"]) >= 0)


def test_non_finite_distances_raise():
  dist = np.array([[0.0, np.nan, 1.0]])
  with pytest.raises(ValueError, match="finite"):
    evaluate_distances(dist, [1], [0], [1, 2, 3], [1, 1, 1])
  # A NaN on a junk item does not matter.
  out = evaluate_distances(dist, [1], [0], [1, -1, 3], [1, 1, 1])
  assert out["mAP"] == 1.0


def test_input_not_modified_and_shapes_checked():
  dist = np.arange(6, dtype=np.float64).reshape(2, 3)
  keep = dist.copy()
  evaluate_distances(dist, [1, 2], [0, 0], [1, 2, -1], [1, 1, 1])
  np.testing.assert_array_equal(dist, keep)
  with pytest.raises(ValueError, match="shape"):
    evaluate_distances(dist, [1], [0], [1, 2, -1], [1, 1, 1])
  with pytest.raises(ValueError, match="ap must be"):
    evaluate_distances(dist, [1, 2], [0, 0], [1, 2, -1], [1, 1, 1], ap="x")
  with pytest.raises(ValueError, match="dim"):
    evaluate(np.zeros((2, 3)), [1, 2], [0, 0], np.zeros((3, 4)), [1, 2, 3],
             [1, 1, 1])


# ------------------------------- distances ---------------------------------
@pytest.mark.parametrize("metric", distances.METRICS)
@pytest.mark.parametrize("normalize", [False, True])
def test_distances_match_direct_formulas(metric, normalize):
  rng = np.random.default_rng(4)
  x, y = rng.standard_normal((5, 6)), rng.standard_normal((7, 6))
  xn, yn = x, y
  if normalize or metric == "cosine":
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
  diff = xn[:, None] - yn[None]
  want = {"euclidean": np.sqrt((diff ** 2).sum(-1)),
          "sqeuclidean": (diff ** 2).sum(-1),
          "cosine": 1 - xn @ yn.T}[metric]
  got = distances.pairwise_distances(x, y, metric=metric, normalize=normalize)
  np.testing.assert_allclose(got, want, atol=1e-12)
  assert got.dtype == np.float64
  got32 = distances.pairwise_distances(x.astype(np.float32), y, metric=metric)
  assert got32.dtype == np.float64           # any float64 input -> float64
  blocks = list(distances.distance_chunks(x, y, metric=metric,
                                          normalize=normalize, chunk_size=2))
  assert [(s, e) for s, e, _ in blocks] == [(0, 2), (2, 4), (4, 5)]
  np.testing.assert_allclose(np.concatenate([b for *_, b in blocks]), want,
                             atol=1e-12)


def test_jax_distances_and_backend_match_numpy():
  rng = np.random.default_rng(5)
  # Small integers: squared distances are exact in float32 on both
  # backends, so ties (and hence ranks) are identical.
  qf = rng.integers(-2, 3, (13, 5)).astype(np.float32)
  gf = rng.integers(-2, 3, (50, 5)).astype(np.float32)
  qp, qc = rng.integers(0, 6, 13), rng.integers(0, 2, 13)
  gp, gc = rng.integers(-1, 6, 50), rng.integers(0, 2, 50)
  blocks = list(distances.distance_chunks(qf, gf, metric="sqeuclidean",
                                          chunk_size=4, backend="jax"))
  np.testing.assert_array_equal(
      np.concatenate([b for *_, b in blocks]),
      distances.pairwise_distances(qf, gf, metric="sqeuclidean"))
  kw = dict(metric="sqeuclidean", query_chunk=4)
  a = evaluate(qf, qp, qc, gf, gp, gc, backend="numpy", **kw)
  b = evaluate(qf, qp, qc, gf, gp, gc, backend="jax", **kw)
  assert b["backend"] == "jax"
  for key in ("mAP_step", "mAP_trapezoid", "mINP", "cmc_curve",
              "num_valid_queries", "excluded_queries"):
    assert a[key] == pytest.approx(b[key], abs=1e-12), key
  # The accelerator path (ranks counted on the device), run on the CPU.
  gallery = metrics.make_gallery_index(gp, gc)
  for chunk in (4, 13):
    per_query = evaluator._jax_per_query(  # pylint: disable=protected-access
        qf, qp, qc, gf, gallery, metric="sqeuclidean", normalize=False,
        chunk=chunk, rank_on_device=True)
    c = metrics.summarize(per_query)
    for key in ("mAP_step", "mAP_trapezoid", "mINP", "cmc_curve",
                "excluded_queries"):
      assert a[key] == pytest.approx(c[key], abs=1e-12), key
  # Non-finite features are reported on every path.
  qf[0, 0] = np.nan
  for backend in ("numpy", "jax"):
    with pytest.raises(ValueError, match="finite"):
      evaluate(qf, qp, qc, gf, gp, gc, backend=backend, **kw)
  with pytest.raises(ValueError, match="finite"):
    evaluator._jax_per_query(  # pylint: disable=protected-access
        qf, qp, qc, gf, gallery, metric="sqeuclidean", normalize=False,
        chunk=4, rank_on_device=True)


def test_auto_backend_picks_numpy_unless_jax_runs_on_an_accelerator():
  jax = sys.modules.get("jax")
  on_accelerator = jax is not None and jax.default_backend() != "cpu"
  want = "jax" if on_accelerator else "numpy"
  assert evaluator.resolve_backend("auto") == want
  assert evaluator.resolve_backend("numpy") == "numpy"
  with pytest.raises(ValueError):
    evaluator.resolve_backend("torch")


# ----------------------------- aggregation ----------------------------------
def test_length_bucket_and_all_frames():
  assert [aggregation.length_bucket(n) for n in (1, 2, 3, 8, 9, 300)] == [
      1, 2, 4, 8, 16, 512]
  assert aggregation.length_bucket(9, multiple=8) == 16
  assert aggregation.length_bucket(3, min_length=8) == 8
  assert aggregation.length_bucket(600, max_length=256) == 256
  idx, mask = aggregation.all_frames_indices(5)
  np.testing.assert_array_equal(idx, [0, 1, 2, 3, 4, 0, 1, 2])
  np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 0, 0, 0])
  with pytest.raises(ValueError):
    aggregation.all_frames_indices(5, padded_length=4)


def test_dense_every_frame_and_even_sampling():
  idx, mask = aggregation.dense_clip_indices(10, 4)
  np.testing.assert_array_equal(idx, [[0, 1, 2, 3], [4, 5, 6, 7],
                                      [8, 9, 0, 1]])
  assert mask.all()
  idx, mask = aggregation.dense_clip_indices(10, 4, pad="mask")
  np.testing.assert_array_equal(idx[2], [8, 9, 9, 9])
  np.testing.assert_array_equal(mask[2], [1, 1, 0, 0])
  idx = aggregation.every_frame_clip_indices(5, 3)
  assert idx.shape == (5, 3)
  np.testing.assert_array_equal(idx[0], [0, 1, 2])
  np.testing.assert_array_equal(idx[4], [4, 0, 1])
  np.testing.assert_array_equal(aggregation.evenly_sampled_indices(10, 4),
                                [1, 3, 6, 8])
  np.testing.assert_array_equal(aggregation.evenly_sampled_indices(2, 4),
                                [0, 0, 1, 1])
  assert aggregation.evenly_sampled_indices(100, 8).max() < 100


def test_average_by_tracklet():
  emb = np.array([[1.0, 0], [3, 2], [5, 5], [0, 1]])
  out = aggregation.average_by_tracklet(emb, [0, 0, 2, 1], 3)
  np.testing.assert_allclose(out, [[2, 1], [0, 1], [5, 5]])
  with pytest.raises(ValueError, match="no clip"):
    aggregation.average_by_tracklet(emb, [0, 0, 0, 0], 2)


# ------------------------------- protocols ----------------------------------
def test_generic_splits():
  pids = np.array([1, 2, 3, 1, 2, -1, 0])
  split = protocols.given_split(pids, np.array([1, 1, 0, 0, 0, 0, 0], bool))
  np.testing.assert_array_equal(split.query, [0, 1])
  np.testing.assert_array_equal(split.gallery, [2, 3, 4, 5, 6])
  np.testing.assert_array_equal(split.gallery_junk, [0, 0, 0, 1, 0])
  cams = np.array([1, 1, 1, 2, 2, 2, 2])
  trial = protocols.two_camera_split(pids, cams, [1, 2], query_camera=1,
                                     gallery_camera=2)
  np.testing.assert_array_equal(trial.query, [0, 1])
  np.testing.assert_array_equal(trial.gallery, [3, 4])
  feats = np.eye(7)
  feats[3], feats[4] = feats[0], feats[1]
  assert evaluate_split(feats, pids, cams, trial)["mAP"] == 1.0


def test_mean_std_over_trials():
  trials = [{"mAP": 0.5, "mINP": 0.2, "cmc": {"1": 0.6, "5": 0.9},
             "cmc_curve": [0.6, 0.9]},
            {"mAP": 0.7, "mINP": 0.4, "cmc": {"1": 0.8, "5": 1.0},
             "cmc_curve": [0.8, 1.0]}]
  out = protocols.mean_std_over_trials(trials)
  assert out["num_trials"] == 2
  assert out["mAP"]["mean"] == pytest.approx(0.6)
  assert out["mAP"]["std"] == pytest.approx(0.1)
  assert out["cmc"]["1"]["mean"] == pytest.approx(0.7)
  assert out["cmc_curve"]["mean"] == pytest.approx([0.7, 0.95])
  sample = protocols.mean_std_over_trials(trials, ddof=1)
  assert sample["mAP"]["std"] == pytest.approx(0.1 * np.sqrt(2))


def test_mars_split_on_toy_arrays():
  pids = np.array([1, 1, 2, 2, -1, 0])
  cams = np.array([1, 2, 1, 2, 3, 4])
  sizes = {v: protocols.mars_split(pids, cams, [0, 2], v).gallery.size
           for v in protocols.MARS_GALLERY_VARIANTS}
  assert sizes == {"standard": 3, "with_queries": 5, "matlab": 6}
  with pytest.raises(ValueError, match="variant"):
    protocols.mars_split(pids, cams, [0], "official")


# --------------------------------- plots ------------------------------------
def test_plots_write_png(tmp_path):
  path = plots.plot_cmc([0.5, 0.7, 0.8, 0.9], tmp_path / "cmc.png")
  data = open(path, "rb").read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
  rng = np.random.default_rng(0)
  frames = lambda t: rng.integers(0, 255, (t, 16, 8, 3), dtype=np.uint8)
  path = plots.plot_ranked_lists(
      frames(5), [frames(3), frames(9), frames(1)], [True, False, False],
      [False, False, True], tmp_path / "ranked.png", max_frames=4,
      title="query 0", labels=["pid 1", "pid 2", "pid -1"])
  data = open(path, "rb").read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
  with pytest.raises(ValueError, match="uint8"):
    plots.plot_ranked_lists(np.zeros((2, 4, 4, 3)), [], [], [],
                            tmp_path / "bad.png")
