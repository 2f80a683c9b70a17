"""Named evaluation protocols: which test tracklets are queries and gallery.

Every function takes the per-tracklet arrays of a dataset's test set (pids,
camera ids, and which rows are queries) and returns a `Split`: query indices,
gallery indices and a gallery junk mask. The ranking rules themselves (same
pid and same camera ignored, pid -1 junk, pid 0 distractors are negatives,
queries without a positive excluded and counted) are the same everywhere and
live in `metrics.py`; `evaluator.evaluate_split` applies a split.

MARS (`mars_split`), three gallery variants that papers use; always name it:

* "standard" (torchreid; Gao & Nevatia): test tracklets minus the queries
  minus pid -1 -> 9,330 gallery items; 140 of the 1,980 queries then have no
  cross-camera positive and are excluded (counted in the results).
* "with_queries" (AP3D, TKP): queries stay in the gallery (the same-camera
  rule removes each query from its own list), pid -1 removed -> 11,310.
* "matlab" (official MARS evaluation code, used by GLTR and M3D): all
  12,180 test tracklets; junk = pid -1, plus same pid & same camera.
  Use it with `ap="trapezoid"` to reproduce the MATLAB numbers.

DukeMTMC-VideoReID and LS-VID (`given_split`): query and gallery are the
dataset's own sets (Duke: 702 query / 2,636 gallery tracklets); junk =
pid -1 (none in the releases).

iLIDS-VID, PRID-2011, SDU-VID (`two_camera_split` + `mean_std_over_trials`):
10 trials, each with its own test identities; query = the test ids' tracklets
in the first camera (cam1 / cam_a), gallery = those in the second camera.
Report the mean (and std) over the 10 trials of every metric.

Cross-dataset (train on A, test on B): the test protocol of B is used
unchanged (its split, its gallery variant, its AP definition); nothing
about A enters the evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

MARS_GALLERY_VARIANTS = ("standard", "with_queries", "matlab")


class Split(NamedTuple):
  """One evaluation: rows of the test-set arrays used as queries/gallery.

  Attributes:
    name: protocol name, e.g. "mars/standard".
    query: (m,) int64 indices of the query tracklets.
    gallery: (n,) int64 indices of the gallery tracklets.
    gallery_junk: (n,) bool, gallery items ignored for every query (aligned
      with `gallery`); per-query same-camera junk is added by the metrics.
  """
  name: str
  query: np.ndarray
  gallery: np.ndarray
  gallery_junk: np.ndarray


class MarsProtocol(NamedTuple):
  """The official MARS test-set protocol files, 0-based.

  Attributes:
    pids: (12180,) pid of each test tracklet (0 distractor, -1 junk).
    camids: (12180,) camera 1..6.
    query: (1980,) 0-based row numbers of the query tracklets.
    start, end: (12180,) 1-based inclusive rows into test_name.txt.
  """
  pids: np.ndarray
  camids: np.ndarray
  query: np.ndarray
  start: np.ndarray
  end: np.ndarray


def load_mars_protocol(info_dir: str | os.PathLike) -> MarsProtocol:
  """Reads MARS `info/tracks_test_info.mat` and `info/query_IDX.mat`.

  `track_test_info` is (12180, 4) [start, end, pid, camera]; `query_IDX` is
  (1, 1980) 1-based rows of it.
  """
  from scipy import io as sio  # pylint: disable=g-import-not-at-top
  info_dir = os.fspath(info_dir)
  paths = [os.path.join(info_dir, f) for f in ("tracks_test_info.mat",
                                               "query_IDX.mat")]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(f"MARS protocol files missing: {missing}")
  info = np.asarray(sio.loadmat(paths[0])["track_test_info"]).astype(np.int64)
  query = np.asarray(sio.loadmat(paths[1])["query_IDX"]).astype(np.int64)
  query = query.ravel() - 1
  if info.ndim != 2 or info.shape[1] != 4:
    raise ValueError(f"track_test_info must be (N, 4), got {info.shape}")
  if query.min() < 0 or query.max() >= info.shape[0]:
    raise ValueError("query_IDX points outside track_test_info")
  return MarsProtocol(pids=info[:, 2], camids=info[:, 3], query=query,
                      start=info[:, 0], end=info[:, 1])


def _indices(query: Any, num: int) -> np.ndarray:
  """Query rows from either indices or a boolean mask."""
  q = np.asarray(query)
  if q.dtype == bool:
    if q.shape != (num,):
      raise ValueError(f"query mask must have shape ({num},), got {q.shape}")
    return np.flatnonzero(q)
  q = q.astype(np.int64).ravel()
  if q.size and (q.min() < 0 or q.max() >= num):
    raise ValueError(f"query indices must be in [0, {num})")
  if np.unique(q).size != q.size:
    raise ValueError("query indices contain duplicates")
  return q


def mars_split(pids: Any, camids: Any, query: Any,
               variant: str = "standard") -> Split:
  """The MARS query/gallery split for one gallery variant.

  Args:
    pids, camids: (N,) labels of the test tracklets (N = 12,180).
    query: 0-based query rows (or a bool mask).
    variant: "standard" (9,330), "with_queries" (11,310) or "matlab"
      (12,180); see the module docstring.
  """
  pids = np.asarray(pids)
  if np.shape(camids) != pids.shape:
    raise ValueError("pids and camids must have the same shape")
  q = _indices(query, pids.size)
  junk = pids == -1
  if variant == "standard":
    keep = ~junk
    keep[q] = False
  elif variant == "with_queries":
    keep = ~junk
  elif variant == "matlab":
    keep = np.ones(pids.size, bool)
  else:
    raise ValueError(f"MARS variant must be one of {MARS_GALLERY_VARIANTS}, "
                     f"got {variant!r}")
  gallery = np.flatnonzero(keep)
  return Split(name=f"mars/{variant}", query=q, gallery=gallery,
               gallery_junk=junk[gallery])


def given_split(pids: Any, is_query: Any, name: str = "given") -> Split:
  """Query = the rows marked as queries, gallery = all the other rows.

  For datasets shipping separate query and gallery sets (DukeMTMC-VideoReID,
  LS-VID): concatenate them, mark the query rows. Junk = pid -1.
  """
  pids = np.asarray(pids)
  q = _indices(is_query, pids.size)
  keep = np.ones(pids.size, bool)
  keep[q] = False
  gallery = np.flatnonzero(keep)
  return Split(name=name, query=q, gallery=gallery,
               gallery_junk=pids[gallery] == -1)


def duke_split(pids: Any, is_query: Any) -> Split:
  """DukeMTMC-VideoReID: the dataset's query and gallery folders."""
  return given_split(pids, is_query, name="dukemtmc_videoreid")


def lsvid_split(pids: Any, is_query: Any) -> Split:
  """LS-VID: the test list's query rows (info_test 'query') vs the rest."""
  return given_split(pids, is_query, name="ls_vid")


def two_camera_split(pids: Any, camids: Any, test_pids: Sequence[int], *,
                     query_camera: int, gallery_camera: int,
                     name: str = "two_camera") -> Split:
  """One trial of iLIDS-VID / PRID-2011 / SDU-VID.

  Args:
    pids, camids: (N,) labels of all tracklets of the dataset.
    test_pids: the trial's test identities.
    query_camera: camera id of the queries (cam1 / cam_a).
    gallery_camera: camera id of the gallery (cam2 / cam_b).
  """
  pids = np.asarray(pids)
  camids = np.asarray(camids)
  is_test = np.isin(pids, np.asarray(test_pids))
  q = np.flatnonzero(is_test & (camids == query_camera))
  g = np.flatnonzero(is_test & (camids == gallery_camera))
  return Split(name=name, query=q, gallery=g, gallery_junk=pids[g] == -1)


def mean_std_over_trials(results: Sequence[Mapping[str, Any]], *,
                         ddof: int = 0) -> dict[str, Any]:
  """Mean and standard deviation of each metric over trials.

  Args:
    results: one `evaluate` dictionary per trial.
    ddof: 0 for the population std (default), 1 for the sample std.

  Returns:
    {"num_trials", "mAP": {"mean", "std"}, "mINP": {...},
     "cmc": {"1": {"mean", "std"}, ...}, "cmc_curve": {"mean": [...],
     "std": [...]}} over the keys present in every trial.
  """
  if not results:
    raise ValueError("no trial results")

  def stats(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    std = float(v.std(ddof=ddof)) if v.size > ddof else 0.0
    return {"mean": float(v.mean()), "std": std}

  out: dict[str, Any] = {"num_trials": len(results)}
  for key in ("mAP", "mINP", "mAP_step", "mAP_trapezoid"):
    if all(key in r for r in results):
      out[key] = stats([r[key] for r in results])
  ranks = set.intersection(*(set(r.get("cmc", {})) for r in results))
  out["cmc"] = {k: stats([r["cmc"][k] for r in results])
                for k in sorted(ranks, key=int)}
  if all("cmc_curve" in r for r in results):
    length = min(len(r["cmc_curve"]) for r in results)
    curves = np.asarray([r["cmc_curve"][:length] for r in results])
    out["cmc_curve"] = {
        "mean": curves.mean(axis=0).tolist(),
        "std": (curves.std(axis=0, ddof=ddof).tolist()
                if len(results) > ddof else [0.0] * length)}
  return out
