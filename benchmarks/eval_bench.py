r"""Benchmark of vreid_jax.evaluation at MARS size (and a big synthetic mode).

  python benchmarks/eval_bench.py [--mars_info=../shared/protocols/mars] \
      [--dims=128,2048] [--repeats=3] [--no_rerank] [--jax]
  python benchmarks/eval_bench.py --big [--big_queries=20000] \
      [--big_gallery=200000] [--big_dim=128]

MARS mode: the real protocol (1,980 queries x 9,330 gallery tracklets of the
"standard" variant, real ids and cameras) with synthetic float32 Gaussian
features carrying an identity signal (`synthetic_features`). It
times, in the same process and on the same features:

* ours: `evaluate` (distances + CMC + both mAPs + mINP), after a warm-up;
* baseline: the plain NumPy way of torchreid-style code: one full distance
  matrix, then a Python loop over queries with an argsort per query;

and prints both with their ratio, the results' agreement, the peak traced
memory (tracemalloc) of our evaluation, the process peak RSS, and the time
of k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3) on the same problem.

Big mode: 20,000 queries x 200,000 gallery items (synthetic ids and
cameras), evaluated chunk by chunk; prints the time and the peak RSS, which
must stay under 4 GB (no full 20,000 x 200,000 matrix is ever held).
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
# First: sets the BLAS thread count as the command line does (idle cores),
# which must happen before NumPy is imported.
from vreid_jax import evaluate_features  # pylint: disable=unused-import
import numpy as np

from vreid_jax.evaluation import distances
from vreid_jax.evaluation import evaluate
from vreid_jax.evaluation import protocols


def peak_rss_mb() -> float:
  """Process peak resident set size (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def baseline_distances(qf, gf):
  """One full euclidean distance matrix, the usual expansion formula."""
  distmat = ((qf ** 2).sum(1)[:, None] + (gf ** 2).sum(1)[None, :]
             - 2 * qf @ gf.T)
  return np.sqrt(np.maximum(distmat, 0))


def baseline_loop(distmat, qp, qc, gp, gc, max_rank=20):
  """torchreid-style metrics: a Python loop, an argsort per query, step AP."""
  all_cmc, all_ap = [], []
  for i in range(len(qp)):
    order = np.argsort(distmat[i], kind="stable")
    remove = (gp[order] == qp[i]) & (gc[order] == qc[i])
    matches = (gp[order] == qp[i])[~remove]
    if not matches.any():
      continue
    cmc = matches.cumsum()
    cmc[cmc > 1] = 1
    all_cmc.append(cmc[:max_rank])
    hits = matches.cumsum()
    precision = hits / (np.arange(len(matches)) + 1.0)
    all_ap.append((precision * matches).sum() / matches.sum())
  return {"mAP": float(np.mean(all_ap)),
          "rank1": float(np.mean(all_cmc, axis=0)[0]),
          "num_valid_queries": len(all_ap)}


def distances_only(qf, gf):
  """Our chunked distance computation alone (to split the timings)."""
  for _ in distances.distance_chunks(qf, gf, chunk_size=224):
    pass


def baseline_per_query(qf, qp, qc, gf, gp, gc):
  """The whole baseline: distance matrix, then the per-query loop."""
  return baseline_loop(baseline_distances(qf, gf), qp, qc, gp, gc)


def synthetic_features(pids, dim, seed=0, signal=0.7):
  """Gaussian identity centre * signal * (128 / dim)^(1/4) + unit noise.

  The scaling keeps the difficulty similar across dims (mAP ~0.55 at 128-d,
  ~0.8 at 2048-d on MARS standard with signal 0.7).
  """
  rng = np.random.default_rng(seed)
  ids, inverse = np.unique(pids, return_inverse=True)
  centers = rng.standard_normal((ids.size, dim), dtype=np.float32)
  noise = rng.standard_normal((pids.size, dim), dtype=np.float32)
  scale = np.float32(signal * (128 / dim) ** 0.25)
  return scale * centers[inverse] + noise


def time_best(fn, repeats):
  times, out = [], None
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t)
  return min(times), float(np.median(times)), out


def mars_mode(args):
  mars = protocols.load_mars_protocol(args.mars_info)
  split = protocols.mars_split(mars.pids, mars.camids, mars.query, "standard")
  q, g = split.query, split.gallery
  qp, qc, gp, gc = mars.pids[q], mars.camids[q], mars.pids[g], mars.camids[g]
  print(f"MARS standard protocol: {q.size} queries x {g.size} gallery "
        f"(real ids/cameras from {args.mars_info}); {os.cpu_count()} CPUs, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, "
        f"load average {os.getloadavg()[0]:.1f}")
  for dim in [int(d) for d in args.dims.split(",")]:
    feats = synthetic_features(mars.pids, dim)
    qf, gf = feats[q], feats[g]
    inputs = (qf, qp, qc, gf, gp, gc)
    run = functools.partial(evaluate, *inputs, backend="numpy")
    run()                                                 # warm-up
    best, median, ours = time_best(run, args.repeats)
    tracemalloc.start()
    run()
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    dist_best, _, _ = time_best(
        functools.partial(distances_only, qf, gf), args.repeats)
    reps = max(1, args.repeats // 2)
    base_best, base_median, base = time_best(
        functools.partial(baseline_per_query, *inputs), reps)
    distmat = baseline_distances(qf, gf)
    loop_best, _, _ = time_best(
        functools.partial(baseline_loop, distmat, qp, qc, gp, gc), reps)
    del distmat
    print(f"\n[{dim}-d float32] mAP {ours['mAP']:.4f} rank-1 "
          f"{ours['cmc']['1']:.4f} mINP {ours['mINP']:.4f} "
          f"(trapezoid mAP {ours['mAP_trapezoid']:.4f}); valid queries "
          f"{ours['num_valid_queries']}, excluded "
          f"{ours['num_excluded_queries']}")
    print(f"  ours, distances + CMC + mAP + mINP: best {best:.3f} s, median "
          f"{median:.3f} s ({args.repeats} runs after a warm-up)")
    print(f"  per-query NumPy loop baseline:      best {base_best:.3f} s, "
          f"median {base_median:.3f} s")
    print(f"  speed-up: {base_best / best:.1f}x end to end; the distance "
          f"GEMM alone takes {dist_best:.3f} s in both, so after it: ours "
          f"{max(best - dist_best, 1e-3):.3f} s vs loop {loop_best:.3f} s "
          f"({loop_best / max(best - dist_best, 1e-3):.0f}x)")
    print(f"  agreement: |mAP diff| {abs(base['mAP'] - ours['mAP']):.1e}, "
          f"|rank-1 diff| {abs(base['rank1'] - ours['cmc']['1']):.1e}")
    print(f"  peak traced memory of one evaluation: {traced / 2**20:.0f} MiB")
    if args.jax:
      import jax
      jrun = functools.partial(evaluate, *inputs, backend="jax")
      jrun()
      jbest, _, jout = time_best(jrun, args.repeats)
      print(f"  backend='jax' on {jax.default_backend()}: best {jbest:.3f} s"
            f" (|mAP diff| {abs(jout['mAP'] - ours['mAP']):.1e})")
    if not args.no_rerank:
      t = time.perf_counter()
      rr = evaluate(*inputs, rerank=True)
      print(f"  k-reciprocal re-ranking + evaluation (k1=20, k2=6, "
            f"lambda=0.3, pool {q.size + g.size}): "
            f"{time.perf_counter() - t:.1f} s; mAP {rr['mAP']:.4f} rank-1 "
            f"{rr['cmc']['1']:.4f}")
  print(f"\nprocess peak RSS: {peak_rss_mb():.0f} MiB")


def big_mode(args):
  m, n, dim = args.big_queries, args.big_gallery, args.big_dim
  rng = np.random.default_rng(0)
  num_ids = max(2, n // 20)
  gp = rng.integers(1, num_ids, n)
  gc = rng.integers(1, 16, n)
  qp = rng.integers(1, num_ids, m)
  qc = rng.integers(1, 16, m)
  centers = rng.standard_normal((num_ids, dim), dtype=np.float32)
  gf = 0.5 * centers[gp] + rng.standard_normal((n, dim), dtype=np.float32)
  qf = 0.5 * centers[qp] + rng.standard_normal((m, dim), dtype=np.float32)
  del centers
  print(f"big synthetic evaluation: {m} queries x {n} gallery, {dim}-d "
        f"float32 ({(qf.nbytes + gf.nbytes) / 2**20:.0f} MiB of features; a "
        f"full distance matrix would be {m * n * 4 / 2**30:.0f} GiB); peak "
        f"RSS before: {peak_rss_mb():.0f} MiB")
  t = time.perf_counter()
  out = evaluate(qf, qp, qc, gf, gp, gc, backend="numpy")
  elapsed = time.perf_counter() - t
  rss = peak_rss_mb()
  print(f"  evaluate: {elapsed:.1f} s; mAP {out['mAP']:.4f} rank-1 "
        f"{out['cmc']['1']:.4f}; valid queries {out['num_valid_queries']}")
  print(f"  process peak RSS: {rss:.0f} MiB "
        f"({'within' if rss < 4096 else 'OVER'} the 4 GB budget)")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--mars_info", default=str(REPO.parent / "shared"
                                            / "protocols" / "mars"))
  p.add_argument("--dims", default="128,2048")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--no_rerank", action="store_true")
  p.add_argument("--jax", action="store_true",
                 help="also time backend='jax' (imports JAX)")
  p.add_argument("--big", action="store_true")
  p.add_argument("--big_queries", type=int, default=20000)
  p.add_argument("--big_gallery", type=int, default=200000)
  p.add_argument("--big_dim", type=int, default=128)
  args = p.parse_args()
  if args.big:
    big_mode(args)
  else:
    mars_mode(args)


if __name__ == "__main__":
  main()
