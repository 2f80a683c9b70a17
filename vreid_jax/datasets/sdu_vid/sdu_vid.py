"""SDU-VID (Liu et al., ICCV 2015) as a TFDS builder.

THE LAYOUT IS AN ASSUMPTION TO CONFIRM: no public loader of SDU-VID is known.
The dataset is described as published like iLIDS-VID (two camera folders with
one folder per person), so this builder reads

  SDU-VID/cam1/personNNN/*.png|*.jpg
  SDU-VID/cam2/personNNN/*.png|*.jpg

where a person folder is any folder whose name holds a number (the pid: its
digits, e.g. person012 -> 12), and frames are ordered by the last number in
their file name (files without a number come last, in name order). Frame
sizes vary (IMAGE_SIZE is None). If your copy is laid out differently,
rearrange it into this layout (or adapt `validate_layout`).

One split, `tracklets` (TFDS reserves `all`): every person folder's
tracklet of both cameras, in (pid, camera) order, tracklet_id 1.

Trials: no split file is published, so the 10 trials are drawn here with a
fixed seed: among the persons seen by both cameras (sorted), trial k permutes
them with `np.random.default_rng([TRIAL_SEED, k])` (TRIAL_SEED = 0); the
first half are the test persons, the rest the train persons (iLIDS-VID
style, 150/150 for the 300 persons). Protocol: query = cam1, gallery = cam2
tracklets of the test persons.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from absl import logging
import tensorflow_datasets as tfds

from vreid_jax.datasets import base
from vreid_jax.datasets.ilids_vid import two_camera

SPLIT = two_camera.SPLIT

TRIAL_SEED = 0
_FOLDER = "SDU-VID"
_PERSON = re.compile(r"\D*(\d+)")

_INSTRUCTIONS = """\
Request SDU-VID from its authors (Liu, Ma, Zhang and Huang, "A
Spatio-Temporal Appearance Representation for Video-Based Pedestrian
Re-Identification", ICCV 2015; Shandong University). Arrange it so that
SDU-VID/ is directly under manual_dir with one folder per camera and one
folder per person:

  $MANUAL_DIR/SDU-VID/cam1/personNNN/*.png|*.jpg
  $MANUAL_DIR/SDU-VID/cam2/personNNN/*.png|*.jpg

This layout is an assumption (no public loader exists): check that your copy
matches it.
"""


class SduVid(base.ReidBuilder):
  """SDU-VID: 300 ids, 2 cameras, 600 tracklets; 10 seeded trials."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release (assumed iLIDS-VID-like "
                            "layout)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  IMAGE_SIZE = None
  CITATION = """\
@inproceedings{liu2015spatio,
  title={A Spatio-Temporal Appearance Representation for Video-Based
         Pedestrian Re-Identification},
  author={Liu, Kan and Ma, Bingpeng and Zhang, Wei and Huang, Rui},
  booktitle={ICCV},
  year={2015}
}"""

  def validate_layout(self, manual_dir: str) -> str:
    """Checks the (assumed) layout; returns the SDU-VID folder.

    Raises:
      base.LayoutError: naming every missing folder.
    """
    root = base.dataset_root(manual_dir, _FOLDER, "cam1")
    origin = "the SDU-VID frames, one folder per person (assumed layout)"
    base.check_layout("SDU-VID", manual_dir, [
        (os.path.join(root, "cam1") + "/", origin),
        (os.path.join(root, "cam2") + "/", origin),
    ], "See MANUAL_DOWNLOAD_INSTRUCTIONS of the sdu_vid builder or "
       "data_prep/README.md.")
    return root

  def _tracklets(
      self, manual_dir: str) -> Mapping[str, Sequence[base.Tracklet]]:
    root = self.validate_layout(manual_dir)
    tracklets, summary = two_camera.camera_tracklets(
        manual_dir, [(1, os.path.join(root, "cam1")),
                     (2, os.path.join(root, "cam2"))],
        _PERSON, "SDU-VID", keep="all", report=self.report)
    both = sorted({t.pid for t in tracklets if t.camid == 1}
                  & {t.pid for t in tracklets if t.camid == 2})
    trials = two_camera.random_trials(both, seed=TRIAL_SEED)
    notes = []
    for key in ("camera_1_only", "camera_2_only"):
      if summary[key]:
        notes.append(f"{len(summary[key])} persons have a folder in only one "
                     f"camera ({key}); they are stored but in no trial: "
                     f"{summary[key][:10]}")
    for note in notes:
      logging.warning("SDU-VID: %s", note)
    self.info.metadata["layout_notes"] = notes
    self.info.metadata["persons"] = summary
    self.info.metadata["trials"] = trials
    self.info.metadata["protocol"] = {
        "split": SPLIT, "query_camid": 1, "gallery_camid": 2,
        "trials_source": (f"drawn: np.random.default_rng([{TRIAL_SEED}, k]) "
                          "permutes the sorted persons of both cameras; "
                          "first half test"),
    }
    return {SPLIT: tracklets}
