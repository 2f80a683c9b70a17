r"""Evaluates saved query/gallery features; prints one JSON object.

  python -m vreid_jax.evaluate_features --query=q.npz --gallery=g.npz \
      [--ap=step|trapezoid] [--metric=euclidean|cosine|sqeuclidean] \
      [--normalize] [--rerank] [--max_rank=20] [--backend=auto|numpy|jax] \
      [--dtype=auto|float32|float64]

Each .npz holds `features` (N, D), `pids` (N,) and `camids` (N,) (integers);
the gallery file may also hold `junk` (N,) bool, replacing the default junk
rule pid == -1 (e.g. for the MARS "matlab" gallery). Files written by the
trainer (`eval.save_features=True`) or by `python -m vreid_jax.extract` also
record the run's `protocol`, `ap`, `metric` and `normalize` (0-d arrays),
and the trainer's also `max_rank`; these are used unless
--ap/--metric/--[no-]normalize/--max_rank are given, so such a pair
reproduces the run's metrics.json with no flags ("settings" in the output
says what was used and where it came from).

Fusing streams (`--fuse`): give several files per set, comma-separated, the
same tracklets in the same order (their pids, camids and junk must agree);
each file's features are L2-normalised and the results concatenated, e.g.
M3D's two streams trained separately (eq. 1, evaluated as the authors do):

  python -m vreid_jax.evaluate_features --fuse \
      --query=2d/query_features.npz,m3d/query_features.npz \
      --gallery=2d/gallery_features.npz,m3d/gallery_features.npz Rules and formulas:
`vreid_jax/evaluation/metrics.py`. Distances are computed in the features'
precision (float64 stays float64) unless --dtype says otherwise.

stdout: {"mAP", "mINP", "cmc": {"1", "5", "10", "20"}, "cmc_curve",
"num_queries", "num_valid_queries", "num_excluded_queries", ...}.
A bad file exits with status 2 and a message on stderr naming the file and
the missing key or mismatched shape. Only NumPy is imported unless
--backend=jax or --rerank (SciPy) asks for more.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any



def _idle_cores() -> int:
  """CPU cores not already busy: round(cpu_count - 1-minute load), >= 1."""
  cpus = os.cpu_count() or 1
  try:
    load = os.getloadavg()[0]
  except (AttributeError, OSError):
    return 1
  return int(max(1, min(cpus, round(cpus - load))))


def configure_blas_env() -> None:
  """BLAS threads = idle cores, set before NumPy loads; never overrides.

  On a 2-core VM shared with other jobs, OpenBLAS's threads spin-wait for a
  busy core: two threads made the MARS evaluation 2-4x slower in wall time
  (2x in CPU time) than one. An explicit OPENBLAS_NUM_THREADS or
  MKL_NUM_THREADS in the environment wins. Does nothing once NumPy is
  imported (it could no longer take effect).
  """
  if "numpy" in sys.modules:
    return
  threads = str(_idle_cores())
  os.environ.setdefault("OPENBLAS_NUM_THREADS", threads)
  os.environ.setdefault("MKL_NUM_THREADS", threads)


configure_blas_env()

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from vreid_jax.evaluation import evaluator
# pylint: enable=g-import-not-at-top,wrong-import-position

REQUIRED_KEYS = ("features", "pids", "camids")
# Evaluation settings a features file may record (written by the trainer's
# eval.save_features and by vreid_jax.extract); used unless a flag is given.
SETTINGS = {"ap": "step", "metric": "euclidean", "normalize": False,
            "max_rank": 20}
# Recorded for the record only: reported under "settings", never applied.
RECORDED_INFO = ("protocol", "protocol_name", "dataset")


class FeatureFileError(ValueError):
  """A features file is unreadable or malformed (message names the file)."""


def _labels(arr: np.ndarray, path: str, key: str, num: int) -> np.ndarray:
  if arr.shape != (num,):
    raise FeatureFileError(f"{path}: '{key}' has shape {arr.shape}, expected "
                           f"({num},) to match 'features' ({num} rows)")
  if arr.dtype.kind in "iu":
    return arr.astype(np.int64)
  if arr.dtype.kind in "fb" and np.all(np.equal(np.mod(arr, 1), 0)):
    return arr.astype(np.int64)
  raise FeatureFileError(f"{path}: '{key}' must hold integers, got dtype "
                         f"{arr.dtype}")


def load_feature_file(path: str, *, allow_junk: bool = False
                      ) -> dict[str, np.ndarray]:
  """Reads and checks one .npz features file.

  Raises:
    FeatureFileError: unreadable file, missing key, wrong shape or dtype,
      non-finite features.
  """
  if not os.path.isfile(path):
    raise FeatureFileError(f"{path}: no such file")
  try:
    data = np.load(path, allow_pickle=False)
  except Exception as e:  # pylint: disable=broad-except
    raise FeatureFileError(f"{path}: cannot read as .npz ({e})") from e
  if not hasattr(data, "files"):
    raise FeatureFileError(f"{path}: is a single array, expected an .npz "
                           f"with keys {list(REQUIRED_KEYS)}")
  with data:
    missing = [k for k in REQUIRED_KEYS if k not in data.files]
    if missing:
      raise FeatureFileError(f"{path}: missing key(s) {missing}; found "
                             f"{sorted(data.files)}")
    try:
      features = data["features"]
      pids, camids = data["pids"], data["camids"]
      junk = data["junk"] if (allow_junk and "junk" in data.files) else None
      recorded = {k: data[k].item() for k in tuple(SETTINGS) + RECORDED_INFO
                  if k in data.files and data[k].ndim == 0}
    except Exception as e:  # pylint: disable=broad-except
      raise FeatureFileError(f"{path}: cannot read arrays ({e})") from e
  if features.ndim != 2:
    raise FeatureFileError(f"{path}: 'features' must be 2-D (N, D), got "
                           f"shape {features.shape}")
  if features.dtype.kind not in "fiu":
    raise FeatureFileError(f"{path}: 'features' must be numeric, got dtype "
                           f"{features.dtype}")
  if not np.isfinite(features).all():
    raise FeatureFileError(f"{path}: 'features' contains NaN or inf")
  num = features.shape[0]
  out = {"features": features,
         "pids": _labels(np.asarray(pids), path, "pids", num),
         "camids": _labels(np.asarray(camids), path, "camids", num)}
  if junk is not None:
    if junk.shape != (num,) or junk.dtype != bool:
      raise FeatureFileError(f"{path}: 'junk' must be bool of shape ({num},),"
                             f" got {junk.dtype} {junk.shape}")
    out["junk"] = junk
  out["settings"] = recorded
  return out


def resolve_settings(args: argparse.Namespace, *files: dict[str, Any]
                     ) -> dict[str, Any]:
  """ap, metric, normalize and max_rank: the flag, else what the files
  record (they must agree), else the default; with where each came from.
  The recorded protocol (and its full name and dataset) are reported.

  Raises:
    FeatureFileError: the files record different values and no flag says
      which to use, or different protocols or datasets.
  """
  out: dict[str, Any] = {}
  for key, default in SETTINGS.items():
    flag = getattr(args, key)
    seen = {f["settings"][key] for f in files if key in f["settings"]}
    if flag is not None:
      out[key], source = flag, "flag"
    elif len(seen) > 1:
      raise FeatureFileError(
          f"the query and gallery files record different {key} values "
          f"{sorted(map(str, seen))}; pass --{key} to choose")
    elif seen:
      out[key], source = seen.pop(), "file"
    else:
      out[key], source = default, "default"
    out.setdefault("sources", {})[key] = source
  for key in RECORDED_INFO:
    seen = {str(f["settings"][key]) for f in files if key in f["settings"]}
    if len(seen) > 1:
      raise FeatureFileError(
          f"the feature files record different {key} values "
          f"{sorted(seen)}: a query and gallery (and fused files) must come "
          "from one protocol of one dataset; write them with one run "
          "(eval.save_features) or one vreid_jax.extract call")
    if seen:
      out[key] = seen.pop()
  return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m vreid_jax.evaluate_features",
      description="Re-id metrics (CMC, mAP, mINP) of saved features.")
  p.add_argument("--query", required=True,
                 help="query .npz (comma-separated files with --fuse)")
  p.add_argument("--gallery", required=True,
                 help="gallery .npz (comma-separated files with --fuse)")
  p.add_argument("--fuse", action="store_true",
                 help="several files per set: L2-normalise each file's "
                 "features and concatenate them (two-stream fusion)")
  p.add_argument("--ap", default=None, choices=("step", "trapezoid"),
                 help="AP definition (default: what the files record, else "
                 "step)")
  p.add_argument("--metric", default=None,
                 choices=("euclidean", "sqeuclidean", "cosine"),
                 help="distance (default: what the files record, else "
                 "euclidean)")
  p.add_argument("--normalize", default=None,
                 action=argparse.BooleanOptionalAction,
                 help="L2-normalise features first (default: what the files "
                 "record, else no)")
  p.add_argument("--rerank", action="store_true",
                 help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)")
  p.add_argument("--rerank_k1", type=int, default=20)
  p.add_argument("--rerank_k2", type=int, default=6)
  p.add_argument("--rerank_lambda", type=float, default=0.3)
  p.add_argument("--max_rank", type=int, default=None,
                 help="CMC curve length (default: what the files record, "
                 "else 20)")
  p.add_argument("--backend", default="auto", choices=("auto", "numpy", "jax"))
  p.add_argument("--dtype", default="auto",
                 choices=("auto", "float32", "float64"),
                 help="distance precision; auto = the features' own")
  p.add_argument("--query_chunk", type=int, default=None)
  return p.parse_args(argv)


def fuse_feature_files(paths: Sequence[str], *, allow_junk: bool = False
                       ) -> dict[str, np.ndarray]:
  """Reads several files of the same tracklets; returns one with their
  L2-normalised features concatenated (two-stream fusion).

  Raises:
    FeatureFileError: fewer than two files, or files whose pids, camids or
      junk disagree (not the same tracklets in the same order).
  """
  if len(paths) < 2:
    raise FeatureFileError(f"--fuse needs at least two files per set, got "
                           f"{list(paths)}")
  files = [load_feature_file(p, allow_junk=allow_junk) for p in paths]
  first = files[0]
  for path, f in zip(paths[1:], files[1:]):
    for key in ("pids", "camids", "junk"):
      a, b = first.get(key), f.get(key)
      if (a is None) != (b is None) or (
          a is not None and (a.shape != b.shape or not np.array_equal(a, b))):
        raise FeatureFileError(
            f"{path}: '{key}' differs from {paths[0]}: --fuse needs the "
            "same tracklets in the same order in every file")
  parts = []
  for f in files:
    x = f["features"].astype(np.float64)
    parts.append(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True),
                                1e-12))
  out = dict(first)
  out["features"] = np.concatenate(parts, axis=1).astype(
      np.result_type(*[f["features"].dtype for f in files], np.float32))
  return out


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Loads both files and evaluates; raises FeatureFileError on bad input."""
  if args.fuse:
    query = fuse_feature_files(args.query.split(","))
    gallery = fuse_feature_files(args.gallery.split(","), allow_junk=True)
  else:
    if "," in args.query or "," in args.gallery:
      raise FeatureFileError("several files per set need --fuse")
    query = load_feature_file(args.query)
    gallery = load_feature_file(args.gallery, allow_junk=True)
  dq, dg = query["features"].shape[1], gallery["features"].shape[1]
  if dq != dg:
    raise FeatureFileError(f"feature dims differ: {args.query} has D={dq}, "
                           f"{args.gallery} has D={dg}")
  settings = resolve_settings(args, query, gallery)
  if int(settings["max_rank"]) < 1:
    raise FeatureFileError(f"--max_rank must be >= 1, got "
                           f"{settings['max_rank']}")
  qf, gf = query["features"], gallery["features"]
  if args.dtype != "auto":
    qf, gf = qf.astype(args.dtype), gf.astype(args.dtype)
  if args.backend == "jax":
    import jax  # pylint: disable=g-import-not-at-top,unused-import
  result = evaluator.evaluate(
      qf, query["pids"], query["camids"], gf, gallery["pids"],
      gallery["camids"], metric=settings["metric"],
      normalize=bool(settings["normalize"]), ap=settings["ap"],
      max_rank=int(settings["max_rank"]), rerank=args.rerank,
      rerank_k1=args.rerank_k1, rerank_k2=args.rerank_k2,
      rerank_lambda=args.rerank_lambda, gallery_junk=gallery.get("junk"),
      query_chunk=args.query_chunk, backend=args.backend)
  result["settings"] = settings
  return result


def main(argv: Sequence[str] | None = None) -> int:
  """A bad file is one `error:` line (exit 2; another bad value: exit 1);
  `--debug` or VREID_DEBUG=1 shows the traceback instead."""
  from vreid_jax import cli  # pylint: disable=g-import-not-at-top
  debug = cli.debug_requested(argv)
  args = parse_args(cli.strip_debug(argv))
  try:
    result = run(args)
  except ValueError as e:  # FeatureFileError included.
    if debug:
      raise
    cli.print_error(e)
    return 2 if isinstance(e, FeatureFileError) else 1
  sys.stdout.write(json.dumps(result) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
