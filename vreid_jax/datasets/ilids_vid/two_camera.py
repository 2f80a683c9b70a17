"""Reading shared by the two-camera datasets: iLIDS-VID, PRID-2011, SDU-VID.

Each publishes one folder per camera holding one folder per person with that
person's frames: a single tracklet per (person, camera). The builders store
the tracklets in one split, `tracklets` (TFDS reserves the name `all`; since
it is the only split, `tfds.data_source(name, split="all")` reads the same
records), in (pid, camera) order, and the protocol's
10 trials as `info.metadata["trials"]` = [{"train": pids, "test": pids}, ...]
plus `info.metadata["protocol"]` (which split, which camera is the query and
which the gallery). `vreid_jax.input_pipeline.splits.select_roles` turns a
trial into record indices without copying frames.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vreid_jax.datasets import base

# The one split of these datasets (TFDS reserves the name "all").
SPLIT = "tracklets"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
NUM_TRIALS = 10
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def frame_number(name: str) -> int | None:
  """The last run of digits in a file name's stem (`..._00317.png` -> 317)."""
  m = _LAST_NUMBER.search(os.path.splitext(name)[0])
  return int(m.group(1)) if m else None


def list_frames(folder: str) -> tuple[list[str], list[int]]:
  """Image files of a tracklet folder, ordered by frame number then name.

  Frames without a number in their name are numbered by their position among
  the name-sorted files (and come after numbered ones).

  Returns:
    (file names, frame numbers), in temporal order.
  """
  names = sorted(n for n in os.listdir(folder)
                 if n.lower().endswith(IMAGE_EXTENSIONS)
                 and os.path.isfile(os.path.join(folder, n)))
  keyed = []
  for pos, name in enumerate(names):
    num = frame_number(name)
    keyed.append((num is None, pos + 1 if num is None else num, name))
  keyed.sort()
  return [k[2] for k in keyed], [k[1] for k in keyed]


def person_folders(cam_dir: str, pattern: re.Pattern[str],
                   dataset: str) -> dict[int, str]:
  """{pid: folder name} of the person folders of one camera.

  Raises:
    ValueError: a folder does not match `pattern` (group 1 is the pid), or
      two folders give the same pid.
  """
  out: dict[int, str] = {}
  for name in sorted(os.listdir(cam_dir)):
    if name.startswith(".") or not os.path.isdir(os.path.join(cam_dir, name)):
      continue  # Files and hidden folders (.ipynb_checkpoints, ...).
    m = pattern.fullmatch(name)
    if m is None:
      raise ValueError(
          f"{dataset}: unexpected folder {os.path.join(cam_dir, name)}: person "
          f"folders must match {pattern.pattern!r}")
    pid = int(m.group(1))
    if pid in out:
      raise ValueError(f"{dataset}: {out[pid]} and {name} in {cam_dir} are "
                       "the same person id")
    out[pid] = name
  return out


def camera_tracklets(manual_dir: str, cameras: Sequence[tuple[int, str]],
                     pattern: re.Pattern[str], dataset: str, *,
                     keep: str, report: base.BuildReport,
                     ) -> tuple[list[base.Tracklet], dict[str, Any]]:
  """Tracklets of the persons of two camera folders, in (pid, camera) order.

  Args:
    manual_dir: the manual dir (paths are stored relative to it).
    cameras: (camera id, camera folder) pairs.
    pattern: person folder names; group 1 is the pid.
    dataset: name used in messages.
    keep: "all" keeps every person folder; "both" keeps persons that have a
      folder in every camera (the others are counted in the returned
      summary, never dropped silently).
    report: empty person folders are recorded there as skipped tracklets.

  Returns:
    (tracklets, summary) where summary counts the persons per camera, the
    persons in only one camera and what was excluded.
  """
  folders = {cam: person_folders(path, pattern, dataset)
             for cam, path in cameras}
  paths = dict(cameras)
  cams = [cam for cam, _ in cameras]
  every = set().union(*(set(f) for f in folders.values()))
  in_all = set.intersection(*(set(f) for f in folders.values()))
  only = {f"camera_{cam}_only": sorted(set(folders[cam]) - in_all)
          for cam in cams}
  if keep == "both":
    kept = in_all
  elif keep == "all":
    kept = every
  else:
    raise ValueError(f"keep={keep!r}")
  out = []
  excluded_tracklets = 0
  for pid in sorted(every):
    for cam in cams:
      if pid not in folders[cam]:
        continue
      if pid not in kept:
        excluded_tracklets += 1
        continue
      folder = os.path.join(paths[cam], folders[cam][pid])
      names, numbers = list_frames(folder)
      rel = os.path.relpath(folder, manual_dir)
      if not names:
        report.skipped_tracklets.append((rel, "no image file"))
        continue
      out.append(base.Tracklet(
          frames=[os.path.join(folder, n) for n in names],
          frame_numbers=numbers, pid=pid, camid=cam, tracklet_id=1,
          path=os.path.join(rel, names[0])))
  summary = {
      "persons_per_camera": {str(cam): len(folders[cam]) for cam in cams},
      "persons_in_every_camera": len(in_all),
      **{k: v for k, v in only.items()},
      "kept": keep,
      "excluded_persons": len(every) - len(kept),
      "excluded_tracklets": excluded_tracklets,
  }
  return out, summary


def random_trials(pids: Sequence[int], *, seed: int,
                  num_trials: int = NUM_TRIALS) -> list[dict[str, list[int]]]:
  """Trials of half test / half train ids drawn with a fixed seed.

  Trial k permutes the sorted `pids` with `np.random.default_rng([seed, k])`;
  the first `len(pids) // 2` are the test ids, the rest the train ids.
  """
  pids = sorted(int(p) for p in pids)
  trials = []
  for k in range(num_trials):
    perm = np.random.default_rng([seed, k]).permutation(len(pids))
    half = len(pids) // 2
    trials.append({"train": sorted(pids[i] for i in perm[half:]),
                   "test": sorted(pids[i] for i in perm[:half])})
  return trials


def check_trials(trials: Sequence[Mapping[str, Sequence[int]]],
                 tracklets: Sequence[base.Tracklet],
                 cameras: Sequence[int]) -> list[str]:
  """Notes on trial ids that have no tracklet in some camera (not fatal)."""
  have = {cam: {t.pid for t in tracklets if t.camid == cam} for cam in cameras}
  notes = []
  for k, trial in enumerate(trials):
    overlap = set(trial["train"]) & set(trial["test"])
    if overlap:
      raise ValueError(f"trial {k} has ids in both train and test: "
                       f"{sorted(overlap)[:10]}")
    for role in ("train", "test"):
      for cam in cameras:
        missing = sorted(set(trial[role]) - have[cam])
        if missing:
          notes.append(f"trial {k}: {len(missing)} {role} ids have no "
                       f"camera-{cam} tracklet: {missing[:10]}")
  return notes
