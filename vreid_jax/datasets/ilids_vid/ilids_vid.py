"""iLIDS-VID (Wang et al., ECCV 2014) as a TFDS builder.

Layout read from the manual dir (as the archive unpacks):

  i-LIDS-VID/sequences/cam1/personNNN/cam1_personNNN_FFFFF.png
  i-LIDS-VID/sequences/cam2/personNNN/cam2_personNNN_FFFFF.png
  train-test people splits/train_test_splits_ilidsvid.mat   ls_set (10, 300)

(`train-test people splits/` is also looked for inside `i-LIDS-VID/`.)

One split, `tracklets` (TFDS reserves `all`): the tracklet of every person
folder of both cameras, in (pid, camera) order; pid is NNN of `personNNN`,
camera 1 or 2, tracklet_id 1 (one tracklet per person and camera); frames
ordered by FFFFF.

Trials (`info.metadata["trials"]`): row k of `ls_set` holds 1-based indices
into the sorted list of cam1 person folders; the first half (150) are the
test persons and the second half (150) the train persons (torchreid's
reading of the file). Protocol: query = cam1 tracklets of the test persons,
gallery = cam2 tracklets of the test persons.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from vreid_jax.datasets import base
from vreid_jax.datasets.ilids_vid import two_camera

SPLIT = two_camera.SPLIT

_FOLDER = "i-LIDS-VID"
_SPLITS_DIR = "train-test people splits"
_SPLITS_FILE = "train_test_splits_ilidsvid.mat"
_PERSON = re.compile(r"person(\d+)")

_INSTRUCTIONS = """\
Download iLIDS-VID (iLIDS-VID.tar) from the QMUL page
https://xiatian-zhu.github.io/downloads_qmul_iLIDS-VID_ReID_dataset.html
(formerly on http://www.eecs.qmul.ac.uk/~xiatian/).
Unpack it in manual_dir so that i-LIDS-VID/ and "train-test people splits/"
are directly under manual_dir:

  tar -xf iLIDS-VID.tar -C $MANUAL_DIR
  # -> $MANUAL_DIR/i-LIDS-VID/sequences/cam{1,2}/personNNN/*.png
  # -> $MANUAL_DIR/train-test people splits/train_test_splits_ilidsvid.mat
"""


def read_ls_set(path: str) -> np.ndarray:
  """Reads `ls_set` (trials x persons) from a MATLAB v5 or v7.3 file."""
  import h5py  # pylint: disable=g-import-not-at-top
  import scipy.io  # pylint: disable=g-import-not-at-top
  if h5py.is_hdf5(path):  # MATLAB v7.3 files are HDF5.
    with h5py.File(path, "r") as f:
      if "ls_set" not in f:
        raise ValueError(f"iLIDS-VID: {path} has no variable 'ls_set'")
      ls_set = np.asarray(f["ls_set"]).T  # h5py sees MATLAB arrays transposed.
  else:
    try:
      data = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several types for broken files.
      raise ValueError(f"iLIDS-VID: cannot read {path} as a MATLAB file "
                       f"({e})") from e
    if "ls_set" not in data:
      raise ValueError(f"iLIDS-VID: {path} has no variable 'ls_set'")
    ls_set = np.asarray(data["ls_set"])
  if ls_set.ndim != 2 or ls_set.shape[1] < 2:
    raise ValueError(f"iLIDS-VID: ls_set in {path} has shape {ls_set.shape}; "
                     "expected (trials, persons)")
  if not np.all(np.equal(np.mod(ls_set, 1), 0)):
    raise ValueError(f"iLIDS-VID: ls_set in {path} holds non-integers")
  return ls_set.astype(np.int64)


def trials_from_ls_set(ls_set: np.ndarray, cam1_pids: Sequence[int],
                       path: str = "ls_set") -> list[dict[str, list[int]]]:
  """Reads each row as [test persons | train persons] of sorted cam1 folders.

  Args:
    ls_set: (trials, persons), 1-based indices into `cam1_pids`.
    cam1_pids: pids of the sorted cam1 person folders.
    path: the file, for messages.

  Raises:
    ValueError: an index is out of range or repeated within a row.
  """
  n = len(cam1_pids)
  if ls_set.min() < 1 or ls_set.max() > n:
    raise ValueError(
        f"iLIDS-VID: {path} indexes persons {ls_set.min()}..{ls_set.max()} "
        f"but sequences/cam1 has {n} person folders: the splits file does "
        "not match the frames")
  half = ls_set.shape[1] // 2
  trials = []
  for k, row in enumerate(ls_set):
    if len(set(row.tolist())) != len(row):
      raise ValueError(f"iLIDS-VID: row {k} of ls_set in {path} repeats a "
                       "person")
    trials.append({"train": sorted(int(cam1_pids[i - 1]) for i in row[half:]),
                   "test": sorted(int(cam1_pids[i - 1]) for i in row[:half])})
  return trials


class IlidsVid(base.ReidBuilder):
  """iLIDS-VID: 300 ids, 2 cameras, 600 tracklets, 10 published trials."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  IMAGE_SIZE = (128, 64)
  HOMEPAGE = ("https://xiatian-zhu.github.io/"
              "downloads_qmul_iLIDS-VID_ReID_dataset.html")
  CITATION = """\
@inproceedings{wang2014person,
  title={Person Re-identification by Video Ranking},
  author={Wang, Taiqing and Gong, Shaogang and Zhu, Xiatian and Wang, Shengjin},
  booktitle={ECCV},
  year={2014}
}"""

  def validate_layout(self, manual_dir: str) -> tuple[str, str]:
    """Checks the published layout; returns (dataset root, splits file).

    Raises:
      base.LayoutError: naming every missing file or folder.
    """
    root = base.dataset_root(manual_dir, _FOLDER, "sequences")
    splits = os.path.join(manual_dir, _SPLITS_DIR, _SPLITS_FILE)
    if not os.path.isfile(splits) and os.path.isfile(
        os.path.join(root, _SPLITS_DIR, _SPLITS_FILE)):
      splits = os.path.join(root, _SPLITS_DIR, _SPLITS_FILE)
    origin = "from iLIDS-VID.tar"
    base.check_layout("iLIDS-VID", manual_dir, [
        (os.path.join(root, "sequences", "cam1") + "/", origin),
        (os.path.join(root, "sequences", "cam2") + "/", origin),
        (splits, "the 10 published trials, " + origin),
    ], "See MANUAL_DOWNLOAD_INSTRUCTIONS of the ilids_vid builder or "
       "data_prep/README.md.")
    return root, splits

  def _tracklets(
      self, manual_dir: str) -> Mapping[str, Sequence[base.Tracklet]]:
    root, splits_file = self.validate_layout(manual_dir)
    seq = os.path.join(root, "sequences")
    tracklets, summary = two_camera.camera_tracklets(
        manual_dir, [(1, os.path.join(seq, "cam1")),
                     (2, os.path.join(seq, "cam2"))],
        _PERSON, "iLIDS-VID", keep="all", report=self.report)
    cam1_pids = sorted(two_camera.person_folders(
        os.path.join(seq, "cam1"), _PERSON, "iLIDS-VID"))
    trials = trials_from_ls_set(read_ls_set(splits_file), cam1_pids,
                                splits_file)
    notes = two_camera.check_trials(trials, tracklets, (1, 2))
    for key in ("camera_1_only", "camera_2_only"):
      if summary[key]:
        notes.append(f"{len(summary[key])} persons have a folder in only one "
                     f"camera ({key}): {summary[key][:10]}")
    for note in notes[:20]:
      logging.warning("iLIDS-VID: %s", note)
    self.info.metadata["layout_notes"] = notes
    self.info.metadata["persons"] = summary
    self.info.metadata["trials"] = trials
    self.info.metadata["protocol"] = {
        "split": SPLIT, "query_camid": 1, "gallery_camid": 2,
        "trials_source": (f"{_SPLITS_DIR}/{_SPLITS_FILE}: ls_set rows index "
                          "the sorted cam1 person folders (1-based); first "
                          "half test, second half train"),
    }
    return {SPLIT: tracklets}
