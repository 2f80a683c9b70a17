"""Which records of a built dataset play which role: train, query, gallery.

One function, `select_roles`, reads a dataset's `info.metadata` (written by
its builder) and returns, for each role, the TFDS split to read and the
record indices in it. Nothing is copied: a trial of iLIDS-VID is a set of
indices into the one stored split.

Datasets with fixed splits (mars, duke_video_reid, ls_vid,
synthetic_video_reid): each role is a whole split of the same name
(`np.arange(n)`); LS-VID adds "val". Which gallery variant an evaluation uses
(e.g. MARS without junk, or with the queries added back) is decided by the
evaluator from the records' flags, not here.

Datasets evaluated over trials (ilids_vid, prid2011, sdu_vid):
`metadata["trials"][trial]` = {"train": pids, "test": pids} and
`metadata["protocol"]` = {"split", "query_camid", "gallery_camid"}:
  train   = every tracklet of the train ids (both cameras),
  query   = the query-camera (cam1 / cam_a) tracklets of the test ids,
  gallery = the gallery-camera (cam2 / cam_b) tracklets of the test ids.
Indices are in record order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

# Datasets whose published protocol is a set of trials.
TRIAL_DATASETS = ("ilids_vid", "prid2011", "sdu_vid")
# Roles, in order, of the datasets with fixed splits.
FIXED_ROLES = ("train", "val", "query", "gallery")
REQUIRED_ROLES = ("train", "query", "gallery")


def num_trials(metadata: Mapping[str, Any]) -> int:
  """Number of trials a dataset's metadata holds (0 for fixed splits)."""
  return len(metadata.get("trials") or ())


def select_roles(dataset_name: str, metadata: Mapping[str, Any], *,
                 trial: int | None = None,
                 ) -> dict[str, tuple[str, np.ndarray]]:
  """Returns {role: (TFDS split name, record indices)} for a dataset.

  Args:
    dataset_name: the registered builder name ("mars", "ilids_vid", ...;
      a "name/config" form is accepted), used to pick the protocol and in
      messages.
    metadata: the builder's `info.metadata`; must hold "index" (per-split
      {"pid": [...], "camid": [...], ...}) and, for trial datasets,
      "trials" and "protocol".
    trial: 0-based trial number; required by the trial datasets, must be
      None for the datasets with fixed splits.

  Returns:
    {"train", "query", "gallery"} (plus "val" where the dataset has one),
    each (split name, sorted int64 record indices into that split).

  Raises:
    ValueError: a trial is missing, out of range or given to a dataset with
      fixed splits, or the metadata lacks what the protocol needs.
  """
  name = dataset_name.split("/")[0]
  if "index" not in metadata:
    raise ValueError(
        f"{dataset_name}: the metadata has no per-split 'index'; the dataset "
        "was not built by a vreid_jax builder (rebuild it with "
        "data_prep/build.py)")
  index = metadata["index"]
  has_trials = "trials" in metadata
  if name in TRIAL_DATASETS or has_trials:
    return _trial_roles(dataset_name, metadata, index, trial)
  if trial is not None:
    raise ValueError(
        f"{dataset_name} has fixed train/query/gallery splits and no trials: "
        f"leave the trial unset (got trial={trial})")
  roles = dict((metadata.get("protocol") or {}).get("roles") or
               {r: r for r in FIXED_ROLES if r in index})
  missing = [r for r in REQUIRED_ROLES if r not in roles]
  if missing:
    raise ValueError(f"{dataset_name}: no split for role(s) {missing}; the "
                     f"built splits are {sorted(index)}")
  out = {}
  for role in FIXED_ROLES:
    if role not in roles:
      continue
    split = roles[role]
    if split not in index:
      raise ValueError(f"{dataset_name}: role {role!r} reads split "
                       f"{split!r}, which is not built ({sorted(index)})")
    out[role] = (split, np.arange(len(index[split]["pid"]), dtype=np.int64))
  return out


def _trial_roles(dataset_name: str, metadata: Mapping[str, Any],
                 index: Mapping[str, Any], trial: int | None,
                 ) -> dict[str, tuple[str, np.ndarray]]:
  trials = metadata.get("trials")
  if not trials:
    raise ValueError(f"{dataset_name}: the metadata holds no trials; rebuild "
                     "the dataset with data_prep/build.py")
  if trial is None:
    raise ValueError(
        f"{dataset_name} is evaluated over {len(trials)} trials: choose one "
        f"with trial=0..{len(trials) - 1} (config.dataset.trial)")
  if isinstance(trial, bool) or not isinstance(trial, (int, np.integer)):
    raise ValueError(f"{dataset_name}: trial must be an int, got {trial!r}")
  if not 0 <= trial < len(trials):
    raise ValueError(f"{dataset_name}: trial {trial} is out of range; it has "
                     f"trials 0..{len(trials) - 1}")
  protocol = metadata.get("protocol") or {}
  split = protocol.get("split")
  if split is None:
    if len(index) != 1:
      raise ValueError(f"{dataset_name}: the metadata does not say which "
                       f"split holds the trials ({sorted(index)})")
    split = next(iter(index))
  if split not in index:
    raise ValueError(f"{dataset_name}: trial split {split!r} is not built")
  query_cam = int(protocol.get("query_camid", 1))
  gallery_cam = int(protocol.get("gallery_camid", 2))
  pid = np.asarray(index[split]["pid"], np.int64)
  cam = np.asarray(index[split]["camid"], np.int64)
  chosen = trials[trial]
  train_ids = np.asarray(chosen["train"], np.int64)
  test_ids = np.asarray(chosen["test"], np.int64)
  overlap = np.intersect1d(train_ids, test_ids)
  if overlap.size:
    raise ValueError(f"{dataset_name}: trial {trial} puts ids "
                     f"{overlap[:10].tolist()} in both train and test")
  is_test = np.isin(pid, test_ids)
  return {
      "train": (split, np.flatnonzero(np.isin(pid, train_ids))),
      "query": (split, np.flatnonzero(is_test & (cam == query_cam))),
      "gallery": (split, np.flatnonzero(is_test & (cam == gallery_cam))),
  }
