r"""Ranks a gallery of saved features for query tracklets of your own.

  python -m vreid_jax.search --features=/tmp/feats/gallery.npz \
      --query_dir=queries/ --export=/tmp/demo_export --top_k=10 \
      --output=/tmp/search [--rerank] [--metric=...] [--[no-]normalize]

The gallery is a features file of `python -m vreid_jax.extract` (a
dataset's gallery.npz, or the features.npz of a frames folder) or of the
trainer's `eval.save_features`. The queries are a frames folder (one
sub-folder of frames per tracklet, optional labels.csv; unreadable frames
are named and skipped, as in extract), embedded with the export folder
(`--export`) or a workdir (`--workdir`) with the test-time plan the run
used. The distance is the gallery file's recorded metric and normalisation
unless flags say otherwise; `--rerank` applies k-reciprocal re-ranking
(Zhong et al. 2017; k1=20, k2=6, lambda=0.3) over the queries and the
gallery.

Writes `<output>/ranks.json` (per query: its name and labels, then the top
K gallery entries with rank, position in distance order, gallery row,
tracklet id, pid, camid and distance, and the junk entries met on the way)
and `<output>/ranked_list_<query>.png` (the query's frames, then ranks
1..K with the junk entries among them; gallery frames are read from the
frames folders or the TFDS records the features file names; a match is
drawn green when the query's pid is known and equal).

Ranks are numbered as the CMC counts them (`plots.ranked_list`): gallery
entries the features file flags as junk (`junk`, written by save_features
and extract for the protocol's gallery) and, for a query whose pid is
known, entries with its pid and camera are shown, marked "junk", and not
counted, so rank 3 here is rank 3 of the CMC. `--plain_ranks` numbers
every entry (plain nearest-neighbour ranks, nothing junk).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from vreid_jax import cli
from vreid_jax import extract


class SearchError(ValueError):
  """Bad search input (the message names the flag or file)."""


def load_gallery(path: str) -> dict[str, Any]:
  """A features file with its optional labels and frame locations.

  Raises:
    SearchError: missing file or `features`.
  """
  if not os.path.isfile(path):
    raise SearchError(f"--features={path}: no such file")
  try:
    with np.load(path, allow_pickle=False) as data:
      out = {k: data[k] for k in data.files}
  except Exception as e:  # pylint: disable=broad-except
    raise SearchError(f"--features={path}: cannot read as .npz ({e})"
                      ) from e
  if "features" not in out or out["features"].ndim != 2:
    raise SearchError(f"--features={path}: needs a 2-D 'features' array; "
                      f"found {sorted(out)}")
  n = len(out["features"])
  out.setdefault("pids", np.full(n, -1, np.int64))
  out.setdefault("camids", np.full(n, -1, np.int64))
  if "tracklet_ids" not in out:
    out["tracklet_ids"] = np.arange(n)
  return out


def _frames_of_dir(path: str, height: int, width: int,
                   max_frames: int = 6) -> np.ndarray | None:
  try:
    names = extract.frame_files(path)
  except OSError:
    return None
  return _decode_evenly([os.path.join(path, f) for f in names], height,
                        width, max_frames)


def _decode_evenly(paths_or_bytes, height: int, width: int,
                   max_frames: int) -> np.ndarray | None:
  from vreid_jax.input_pipeline import augment  # pylint: disable=g-import-not-at-top
  n = len(paths_or_bytes)
  if not n:
    return None
  frames = []
  for i in np.unique(np.linspace(0, n - 1, max_frames).astype(int)):
    item = paths_or_bytes[int(i)]
    try:
      if isinstance(item, str):
        with open(item, "rb") as f:
          item = f.read()
      frames.append(augment.decode_resize(item, height, width))
    except Exception:  # pylint: disable=broad-except
      continue  # Pictures only: an unreadable frame is left out.
  return np.stack(frames) if frames else None


class GalleryFrames:
  """Frames of gallery rows for the pictures, from wherever they live."""

  def __init__(self, gallery: dict[str, Any], height: int, width: int):
    self.g = gallery
    self.height, self.width = height, width
    self._sources: dict[str, Any] = {}

  def __call__(self, row: int) -> np.ndarray:
    g = self.g
    frames = None
    if "frame_dirs" in g:
      frames = _frames_of_dir(str(g["frame_dirs"][row]), self.height,
                              self.width)
    elif "records" in g and "splits" in g and "dataset" in g:
      split = str(g["splits"][row])
      try:
        if split not in self._sources:
          from vreid_jax.input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
          self._sources[split] = pipeline._data_source(  # pylint: disable=protected-access
              str(g["dataset"]), str(g["data_dir"]), split)
        record = self._sources[split][int(g["records"][row])]
        frames = _decode_evenly(record["frames"], self.height, self.width,
                                6)
      except Exception:  # pylint: disable=broad-except
        frames = None
    if frames is None:  # No frames to show: a grey tile.
      frames = np.full((1, self.height, self.width, 3), 128, np.uint8)
    return frames


def _safe(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "query"


def search(gallery: dict[str, Any], query_features: np.ndarray, *,
           metric: str, normalize: bool, top_k: int, rerank: bool
           ) -> tuple[np.ndarray, np.ndarray]:
  """(order, distances): the top-k gallery rows per query and their
  distances (re-ranked distances with `rerank`), nothing junk."""
  dist = gallery_distances(gallery, query_features, metric=metric,
                           normalize=normalize, rerank=rerank)
  k = min(top_k, dist.shape[1])
  order = np.argsort(dist, axis=1, kind="stable")[:, :k]
  return order, np.take_along_axis(dist, order, axis=1)


def gallery_distances(gallery: dict[str, Any], query_features: np.ndarray,
                      *, metric: str, normalize: bool, rerank: bool
                      ) -> np.ndarray:
  """(num_queries, num_gallery) distances (re-ranked with `rerank`)."""
  from vreid_jax.evaluation import distances as distances_lib  # pylint: disable=g-import-not-at-top
  gf = gallery["features"]
  if query_features.shape[1] != gf.shape[1]:
    raise SearchError(f"the model's embedding has D={query_features.shape[1]}"
                      f" but the gallery features have D={gf.shape[1]}: "
                      "embed both with the same model")
  if rerank:
    from vreid_jax.evaluation import rerank as rerank_lib  # pylint: disable=g-import-not-at-top
    dist = rerank_lib.k_reciprocal_rerank(query_features, gf, metric=metric,
                                          normalize=normalize)
  else:
    dist = distances_lib.pairwise_distances(query_features, gf,
                                            metric=metric,
                                            normalize=normalize)
  return np.asarray(dist)


def ranked_entries(gallery: dict[str, Any], dist: np.ndarray, query_pid: int,
                   query_camid: int, *, top_k: int, plain: bool = False
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                              Any]:
  """(ranked, junk, plots.RankedList) of one query.

  `ranked`: the top_k counted entries, numbered as the CMC counts them;
  `junk`: the junk entries drawn among them (gallery `junk` flags, same pid
  and camera as a labelled query); both with their 1-based position in
  distance order. `plain`: nothing is junk.
  """
  from vreid_jax.evaluation import plots  # pylint: disable=g-import-not-at-top
  dist = np.asarray(dist).reshape(-1)
  junk = None if plain else gallery.get("junk")
  if junk is not None and np.shape(junk) != dist.shape:
    raise SearchError(f"the gallery's 'junk' has shape {np.shape(junk)}, "
                      f"expected {dist.shape}")
  lst = plots.ranked_list(dist, gallery["pids"], gallery["camids"],
                          query_pid, query_camid,
                          top_k=top_k, gallery_junk=junk,
                          same_camera_rule=not plain)
  order = np.argsort(dist, kind="stable")
  position = np.empty_like(order)
  position[order] = np.arange(1, order.size + 1)
  ranked, junk_entries = [], []
  for row, rank in zip(lst.positions, lst.ranks):
    row = int(row)
    entry = {"rank": rank, "position": int(position[row]),
             "gallery_row": row,
             "tracklet_id": np.asarray(gallery["tracklet_ids"][row]).item(),
             "pid": int(gallery["pids"][row]),
             "camid": int(gallery["camids"][row]),
             "distance": float(dist[row])}
    if rank is None:
      del entry["rank"]
      junk_entries.append(entry)
    else:
      ranked.append(entry)
  return ranked, junk_entries, lst


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Embeds the queries, ranks, writes ranks.json and the pictures."""
  if args.top_k < 1:
    raise SearchError(f"--top_k must be >= 1, got {args.top_k}")
  gallery = load_gallery(args.features)
  metric = args.metric or (str(gallery["metric"]) if "metric" in gallery
                           else "euclidean")
  normalize = (args.normalize if args.normalize is not None else
               bool(gallery["normalize"]) if "normalize" in gallery
               else False)
  source = extract.open_source(workdir=args.workdir, export=args.export,
                               step=args.step)
  footage = extract.scan_frames_dir(args.query_dir, args.labels)
  extract.say_footage(footage)
  query_features, speed = extract.embed_footage(
      source, footage, extract.make_plan(source))
  dist = gallery_distances(gallery, query_features, metric=metric,
                           normalize=normalize, rerank=args.rerank)
  os.makedirs(args.output, exist_ok=True)
  spec = source.spec
  frames_of = GalleryFrames(gallery, spec.height, spec.width)
  queries = []
  pictures = []
  from vreid_jax.evaluation import plots  # pylint: disable=g-import-not-at-top
  for i, name in enumerate(footage.names):
    qp, qc = int(footage.pids[i]), int(footage.camids[i])
    ranked, junk, lst = ranked_entries(gallery, dist[i], qp, qc,
                                       top_k=args.top_k,
                                       plain=args.plain_ranks)
    queries.append({"query": name, "pid": qp, "camid": qc,
                    "frames": len(footage.frames[i]), "ranks": ranked,
                    "junk": junk, "hidden_junk": lst.hidden_junk})
    if args.no_pictures:
      continue
    rows = [int(r) for r in lst.positions]
    path = os.path.join(args.output, f"ranked_list_{i}_{_safe(name)}.png")
    try:
      plots.plot_ranked_lists(
          _decode_evenly(footage.frames[i], spec.height, spec.width, 6),
          [frames_of(r) for r in rows], is_match=lst.is_match,
          is_junk=lst.is_junk, ranks=lst.ranks, path=path,
          title=f"query {name}" + (f" (pid {qp} cam {qc})" if qp >= 0
                                   else "")
          + (" re-ranked" if args.rerank else "")
          + (f"; {lst.hidden_junk} more junk not shown"
             if lst.hidden_junk else ""),
          labels=[f"#{np.asarray(gallery['tracklet_ids'][r]).item()} "
                  f"pid {int(gallery['pids'][r])} cam "
                  f"{int(gallery['camids'][r])}\nd={dist[i][r]:.3g}"
                  for r in rows])
      pictures.append(path)
    except Exception as e:  # pylint: disable=broad-except
      print(f"warning: could not draw {path}: {e}", file=sys.stderr)
  result = {"gallery": os.path.abspath(args.features),
            "num_gallery": int(len(gallery["features"])),
            "model": {"kind": source.kind, "path": source.path,
                      "step": source.step},
            "metric": metric, "normalize": normalize,
            "rerank": bool(args.rerank),
            "top_k": int(min(args.top_k, dist.shape[1])),
            "plain_ranks": bool(args.plain_ranks),
            "speed": speed, "footage": footage.report(),
            "queries": queries, "pictures": pictures}
  with open(os.path.join(args.output, "ranks.json"), "w") as f:
    json.dump(result, f, indent=2)
  return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = cli.ArgumentParser(
      prog="python -m vreid_jax.search",
      description="Rank a gallery features file for query tracklets.")
  p.add_argument("--features", required=True,
                 help="gallery .npz (vreid_jax.extract or save_features)")
  p.add_argument("--query_dir", required=True,
                 help="one sub-folder of frames per query tracklet")
  p.add_argument("--labels", default=None,
                 help="CSV tracklet,pid,camid of the queries (default "
                 "<query_dir>/labels.csv when present)")
  p.add_argument("--export", help="export folder that embedded the gallery")
  p.add_argument("--workdir", help="or the training workdir")
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--top_k", type=int, default=10)
  p.add_argument("--output", required=True, help="output folder")
  p.add_argument("--rerank", action="store_true",
                 help="k-reciprocal re-ranking")
  p.add_argument("--metric", default=None,
                 choices=("euclidean", "sqeuclidean", "cosine"),
                 help="default: the gallery file's, else euclidean")
  p.add_argument("--normalize", default=None,
                 action=argparse.BooleanOptionalAction)
  p.add_argument("--plain_ranks", action="store_true",
                 help="number every entry (no junk: neither the gallery "
                 "file's junk flags nor the same-camera rule)")
  p.add_argument("--no_pictures", action="store_true",
                 help="write ranks.json only")
  return p.parse_args(argv)


def _errors() -> tuple[type[BaseException], ...]:
  from vreid_jax import export as export_lib  # pylint: disable=g-import-not-at-top
  return (SearchError, extract.ExtractError, export_lib.ExportError,
          FileNotFoundError)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the search; a bad input is one `error:` line (exit 2)."""
  return cli.run(_main, argv, errors=_errors, exit_code=2)


def _main(argv: Sequence[str] | None) -> int:
  args = parse_args(argv)
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.ERROR)
  result = run(args)
  print(f"ranked {result['num_gallery']} gallery tracklets for "
        f"{len(result['queries'])} queries; wrote "
        f"{os.path.join(args.output, 'ranks.json')} and "
        f"{len(result['pictures'])} pictures", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
