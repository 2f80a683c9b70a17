"""PRID-2011 multi-shot (Hirzer et al., SCIA 2011) as a TFDS builder.

Layout read from the manual dir (as the archive unpacks):

  prid_2011/multi_shot/cam_a/person_NNNN/NNNN.png     385 persons
  prid_2011/multi_shot/cam_b/person_NNNN/NNNN.png     749 persons
  splits_prid2011.json        optional; also looked for in prid_2011/

What is stored: one split, `tracklets` (TFDS reserves `all`), with the cam_a
(camera 1) and cam_b (camera 2) tracklets of every person that has a folder
in BOTH cameras (200 persons, 400 tracklets), in (pid, camera) order; pid is
NNNN of `person_NNNN`, tracklet_id 1, frames ordered by NNNN.png. Persons
seen by one camera only (185 in cam_a, 549 in cam_b) can never be matched
across cameras and are not stored; their counts and ids are in
`info.metadata["persons"]` (printed by data_prep/build.py), never dropped
silently.

The standard protocol's 178-person rule (persons of both cameras with more
than 27 frames; ids 6, 19, 31, ... 200 out) is NOT applied to the stored
records: it is implicit in the split file, whose 10 trials of 89 train and
89 test persons name only those 178. `info.metadata["trials"]` holds the
trials as pids. The split file is read from the manual dir when present,
else the copy bundled with this package (`splits_prid2011.json`, the file in
common use by torchreid and Gao & Nevatia's code). Persons with at most 27
frames in a camera are listed in `info.metadata["persons"]["short"]` for
reference. Protocol: query = cam_a, gallery = cam_b tracklets of the test
persons.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging
import tensorflow_datasets as tfds

from vreid_jax.datasets import base
from vreid_jax.datasets.ilids_vid import two_camera

SPLIT = two_camera.SPLIT

_FOLDER = "prid_2011"
_SPLITS_FILE = "splits_prid2011.json"
_PERSON = re.compile(r"person_(\d+)")
_MIN_FRAMES = 27  # The standard protocol keeps persons with more frames.

_INSTRUCTIONS = """\
Download PRID-2011 (prid_2011.zip) from TU Graz:
https://www.tugraz.at/institute/icg/research/team-bischof/lrs/downloads/prid11
Unpack it so that prid_2011/ is directly under manual_dir:

  unzip prid_2011.zip -d $MANUAL_DIR
  # -> $MANUAL_DIR/prid_2011/multi_shot/cam_{a,b}/person_NNNN/NNNN.png

Optionally put a split file (a JSON list of 10 {"train": [...], "test": [...]}
of person folder names) at $MANUAL_DIR/splits_prid2011.json; without one the
bundled copy of the split file in common use is used.
"""


def bundled_splits_path() -> str:
  """The split file shipped with this package."""
  return os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      _SPLITS_FILE)


def read_splits(path: str) -> list[dict[str, list[int]]]:
  """Reads a PRID split file: 10 {"train", "test"} lists of person folders.

  Returns:
    Per trial {"train": pids, "test": pids}.

  Raises:
    ValueError: the file is not such a list.
  """
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"PRID-2011: cannot read split file {path} ({e})") from e
  if not isinstance(data, list) or not data:
    raise ValueError(f"PRID-2011: {path} must hold a list of "
                     '{"train": [...], "test": [...]} trials')
  trials = []
  for k, trial in enumerate(data):
    if not isinstance(trial, Mapping) or not {"train", "test"} <= set(trial):
      raise ValueError(f"PRID-2011: trial {k} of {path} lacks train/test")
    out = {}
    for role in ("train", "test"):
      pids = []
      for name in trial[role]:
        m = _PERSON.fullmatch(str(name))
        if m is None:
          raise ValueError(f"PRID-2011: trial {k} of {path}: {name!r} is not "
                           "a person folder name like person_0001")
        pids.append(int(m.group(1)))
      out[role] = sorted(pids)
    trials.append(out)
  return trials


class Prid2011(base.ReidBuilder):
  """PRID-2011 multi-shot: persons of both cameras, 10 published trials."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  IMAGE_SIZE = (128, 64)
  HOMEPAGE = ("https://www.tugraz.at/institute/icg/research/team-bischof/lrs/"
              "downloads/prid11")
  CITATION = """\
@inproceedings{hirzer2011person,
  title={Person Re-identification by Descriptive and Discriminative
         Classification},
  author={Hirzer, Martin and Beleznai, Csaba and Roth, Peter M. and
          Bischof, Horst},
  booktitle={Scandinavian Conference on Image Analysis (SCIA)},
  year={2011}
}"""

  def validate_layout(self, manual_dir: str) -> tuple[str, str]:
    """Checks the published layout; returns (multi_shot folder, split file).

    Raises:
      base.LayoutError: naming every missing file or folder.
    """
    root = base.dataset_root(manual_dir, _FOLDER, "multi_shot")
    multi = os.path.join(root, "multi_shot")
    origin = "from prid_2011.zip"
    base.check_layout("PRID-2011", manual_dir, [
        (os.path.join(multi, "cam_a") + "/", origin),
        (os.path.join(multi, "cam_b") + "/", origin),
    ], "See MANUAL_DOWNLOAD_INSTRUCTIONS of the prid2011 builder or "
       "data_prep/README.md.")
    splits = bundled_splits_path()
    for candidate in (os.path.join(manual_dir, _SPLITS_FILE),
                      os.path.join(root, _SPLITS_FILE)):
      if os.path.isfile(candidate):
        splits = candidate
        break
    return multi, splits

  def _tracklets(
      self, manual_dir: str) -> Mapping[str, Sequence[base.Tracklet]]:
    multi, splits_file = self.validate_layout(manual_dir)
    tracklets, summary = two_camera.camera_tracklets(
        manual_dir, [(1, os.path.join(multi, "cam_a")),
                     (2, os.path.join(multi, "cam_b"))],
        _PERSON, "PRID-2011", keep="both", report=self.report)
    trials = read_splits(splits_file)
    notes = two_camera.check_trials(trials, tracklets, (1, 2))
    lengths: dict[int, list[int]] = {}
    for t in tracklets:
      lengths.setdefault(t.pid, []).append(len(t.frames))
    summary["short"] = sorted(p for p, n in lengths.items()
                              if min(n) <= _MIN_FRAMES)
    summary["cam_a_only"] = summary.pop("camera_1_only")
    summary["cam_b_only"] = summary.pop("camera_2_only")
    logging.info(
        "PRID-2011: stored the %d persons seen by both cameras; excluded %d "
        "persons (%d cam_a only, %d cam_b only) and their %d tracklets.",
        summary["persons_in_every_camera"], summary["excluded_persons"],
        len(summary["cam_a_only"]), len(summary["cam_b_only"]),
        summary["excluded_tracklets"])
    for note in notes[:20]:
      logging.warning("PRID-2011: %s", note)
    trial_source = ("bundled splits_prid2011.json"
                    if splits_file == bundled_splits_path() else splits_file)
    self.info.metadata["layout_notes"] = notes
    self.info.metadata["persons"] = _json_ready(summary)
    self.info.metadata["trials"] = trials
    self.info.metadata["protocol"] = {
        "split": SPLIT, "query_camid": 1, "gallery_camid": 2,
        "trials_source": trial_source,
        "stored": ("multi_shot tracklets of the persons in both cameras; the "
                   "178-person rule (> 27 frames) is implicit in the trials"),
    }
    return {SPLIT: tracklets}


def _json_ready(summary: Mapping[str, Any]) -> dict[str, Any]:
  return {k: (list(v) if isinstance(v, (list, tuple)) else v)
          for k, v in summary.items()}
