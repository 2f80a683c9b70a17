r"""TV-L1 optical flow: JAX (vreid_jax.flow) against OpenCV, speed and accuracy.

On the same frame pairs of known motion (at MARS's 256x128 by default):
  * translated and smoothly warped random textures, and consecutive frames
    of the synthetic ReID benchmark whose background scroll the renderer
    knows (vreid_jax/flow/known_motion.py), plus a static pair;
  * the average end-point error (EPE) against the truth of each backend,
    and between the two backends' flows;
  * frame pairs per second of each backend (JAX: `batching.PairFlow` over
    every local device, compilation excluded and reported apart; OpenCV:
    DualTVL1OpticalFlow with its own threads, cv2.getNumThreads()), and the
    projected time for all of MARS (1,191,003 frames in 20,478 tracklets:
    1,170,525 pairs; the last frame of a tracklet repeats a flow).

  python benchmarks/flow_bench.py [--size=256x128] [--synthetic=12] \
      [--backends=jax,opencv] [--batch_size=N] [--min_pairs=N] \
      [--opencv_threads=N] [--tvl1=name=value,...] \
      [--save_pairs=F.npz | --load_pairs=F.npz] [--json=OUT]

--save_pairs / --load_pairs carry the very same pairs to a machine without
tensorflow-datasets (the synthetic frames need its renderer's package).
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

MARS_FRAMES = 1_191_003
MARS_TRACKLETS = 20_478
MARS_PAIRS = MARS_FRAMES - MARS_TRACKLETS


def _load_cli():
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "data_prep_flow", os.path.join(ROOT, "data_prep", "flow.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def make_pairs(size, synthetic, seed=0):
  from vreid_jax.flow import known_motion as km
  return (km.standard_pairs(size, seed=seed, num_synthetic=synthetic)
          + [km.static_pair(size, seed)])


def save_pairs(path, pairs):
  np.savez_compressed(
      path, names=np.asarray([p.name for p in pairs]),
      i0=np.stack([p.i0 for p in pairs]), i1=np.stack([p.i1 for p in pairs]),
      flow=np.stack([p.flow for p in pairs]),
      valid=np.stack([p.valid for p in pairs]))


def load_pairs(path):
  from vreid_jax.flow import known_motion as km
  with np.load(path) as d:
    return [km.KnownPair(str(n), a, b, f, v) for n, a, b, f, v in
            zip(d["names"], d["i0"], d["i1"], d["flow"], d["valid"])]


def run_jax(pairs, timed, params, batch_size):
  """(flows of `pairs`, pairs/s on `timed`, compile seconds, info)."""
  import jax
  from vreid_jax.flow import batching
  engine = batching.PairFlow(params, per_device_batch=batch_size)
  warm = timed[:engine.batch_size]
  start = time.perf_counter()
  engine([(p.i0, p.i1) for p in warm])
  compile_s = time.perf_counter() - start
  flows = engine([(p.i0, p.i1) for p in pairs])
  start = time.perf_counter()
  engine([(p.i0, p.i1) for p in timed])
  seconds = time.perf_counter() - start
  info = {"devices": [str(d) for d in engine.devices],
          "batch_size": engine.batch_size,
          "platform": engine.devices[0].platform,
          "jax": jax.__version__}
  return flows, len(timed) / seconds, compile_s, info


def run_opencv(pairs, timed, params, threads=None):
  import cv2
  from vreid_jax.input_pipeline import flow as flow_lib
  if threads:
    cv2.setNumThreads(threads)
  algo = params.to_opencv(flow_lib.tvl1_factory())
  flows = [algo.calc(p.i0, p.i1, None) for p in pairs]
  start = time.perf_counter()
  for p in timed:
    algo.calc(p.i0, p.i1, None)
  seconds = time.perf_counter() - start
  return flows, len(timed) / seconds, {"threads": cv2.getNumThreads(),
                                       "opencv": cv2.__version__}


def _hours(pairs_per_s):
  return MARS_PAIRS / pairs_per_s / 3600.0


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="256x128", help="HxW of the frames")
  parser.add_argument("--synthetic", type=int, default=12,
                      help="synthetic-benchmark pairs (besides 4 textures)")
  parser.add_argument("--backends", default="jax,opencv")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="JAX pairs per device and call (default: 1 on "
                      "CPU, 128 on accelerators)")
  parser.add_argument("--min_pairs", type=int, default=0,
                      help="time at least this many pairs (the moving "
                      "pairs, cycled)")
  parser.add_argument("--opencv_threads", type=int, default=None,
                      help="cv2.setNumThreads (default: OpenCV's choice)")
  parser.add_argument("--tvl1", default=None,
                      help="TV-L1 parameters name=value,... (default "
                      "OpenCV's)")
  parser.add_argument("--save_pairs", default=None)
  parser.add_argument("--load_pairs", default=None)
  parser.add_argument("--json", default=None, help="write the results here")
  args = parser.parse_args(argv)
  cli = _load_cli()
  params = cli.parse_tvl1(args.tvl1)
  size = cli.parse_size(args.size)
  backends = [b for b in args.backends.split(",") if b]
  from vreid_jax.flow import known_motion as km

  start = time.perf_counter()
  pairs = (load_pairs(args.load_pairs) if args.load_pairs
           else make_pairs(size, args.synthetic))
  print(f"{len(pairs)} pairs of {pairs[0].i0.shape[0]}x"
        f"{pairs[0].i0.shape[1]} in {time.perf_counter() - start:.1f} s")
  if args.save_pairs:
    save_pairs(args.save_pairs, pairs)
    print(f"saved to {args.save_pairs}")
  moving = [p for p in pairs if p.name != "static"]
  count = max(args.min_pairs, len(moving))
  timed = [moving[i % len(moving)] for i in range(count)]
  names = km.names(pairs)

  results = {"size": list(pairs[0].i0.shape), "params": vars(params),
             "timed_pairs": len(timed), "cpu_count": os.cpu_count(),
             "load_before": os.getloadavg(), "backends": {}}
  flows = {}
  for backend in backends:
    if backend == "jax":
      f, rate, compile_s, info = run_jax(pairs, timed, params,
                                         args.batch_size)
      info["compile_and_first_batch_s"] = compile_s
    elif backend == "opencv":
      try:
        f, rate, info = run_opencv(pairs, timed, params,
                                   args.opencv_threads)
      except (ImportError, AttributeError) as e:
        print(f"opencv: skipped ({e})")
        continue
    else:
      raise ValueError(f"unknown backend {backend!r}")
    flows[backend] = f
    info.update(pairs_per_s=rate, mars_hours=_hours(rate))
    results["backends"][backend] = info
  results["load_after"] = os.getloadavg()

  # EPE table.
  cols = [b for b in ("jax", "opencv") if b in flows]
  header = (f"{'pair':14s} {'max|gt|':>7s} {'valid':>6s} "
            + " ".join(f"{'EPE ' + b:>11s}" for b in cols)
            + (f" {'jax-opencv':>10s}" if len(cols) == 2 else ""))
  print("\nEnd-point error (px) against the truth on valid pixels"
        + (", and mean EPE between the two flows (all pixels)"
           if len(cols) == 2 else "") + ":")
  print(header)
  rows = []
  for i, (name, pair) in enumerate(zip(names, pairs)):
    row = {"pair": name, "max_truth": float(np.abs(pair.flow).max()),
           "valid": float(pair.valid.mean())}
    for b in cols:
      row[b] = km.end_point_error(flows[b][i], pair.flow, pair.valid)
    if len(cols) == 2:
      row["jax_vs_opencv"] = km.end_point_error(flows["jax"][i],
                                                flows["opencv"][i])
    rows.append(row)
    print(f"{name:14s} {row['max_truth']:7.2f} {row['valid']:6.2f} "
          + " ".join(f"{row[b]:11.4f}" for b in cols)
          + (f" {row['jax_vs_opencv']:10.4f}" if len(cols) == 2 else ""))
  kinds = sorted({r["pair"].rsplit("-", 1)[0] for r in rows},
                 key=[r["pair"].rsplit("-", 1)[0] for r in rows].index)
  for kind in kinds:
    sel = [r for r in rows if r["pair"].rsplit("-", 1)[0] == kind]
    print(f"{'mean ' + kind:14s} {'':7s} {'':6s} "
          + " ".join(f"{np.mean([r[b] for r in sel]):11.4f}" for b in cols)
          + (f" {np.mean([r['jax_vs_opencv'] for r in sel]):10.4f}"
             if len(cols) == 2 else ""))
  results["epe"] = rows
  if len(cols) == 2:
    worst = max(r["jax"] - r["opencv"] for r in rows)
    ok = worst <= 0.1
    results["jax_within_0.1px_of_opencv"] = ok
    print(f"JAX EPE - OpenCV EPE: at most {worst:+.4f} px over the pairs "
          f"({'within' if ok else 'NOT within'} +0.1 px)")

  print("\nSpeed (frame pairs per second, "
        f"{len(timed)} pairs timed; MARS = {MARS_PAIRS:,} pairs):")
  for b, info in results["backends"].items():
    extra = (f"{info['platform']} x{len(info['devices'])}, batch "
             f"{info['batch_size']}, compile+first batch "
             f"{info['compile_and_first_batch_s']:.1f} s"
             if b == "jax" else f"{info['threads']} OpenCV threads")
    print(f"  {b:7s} {info['pairs_per_s']:8.2f} pairs/s  "
          f"{1000.0 / info['pairs_per_s']:8.1f} ms/pair  MARS: "
          f"{info['mars_hours']:8.1f} h ({info['mars_hours'] / 24:.2f} "
          f"days) on this machine  [{extra}]")
  print(f"  load average (1, 5, 15 min): before "
        f"{' '.join(f'{x:.2f}' for x in results['load_before'])}, after "
        f"{' '.join(f'{x:.2f}' for x in results['load_after'])}; "
        f"{os.cpu_count()} CPUs")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1, default=str)
  return 0


if __name__ == "__main__":
  sys.exit(main())
