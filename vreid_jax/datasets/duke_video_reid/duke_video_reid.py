"""DukeMTMC-VideoReID (Wu et al., CVPR 2018) as a TFDS builder.

Layout read from the manual dir (as DukeMTMC-VideoReID.zip unpacks):

  DukeMTMC-VideoReID/{train,query,gallery}/<pid4>/<tracklet4>/<frame>.jpg

Frame names come in two formats, both accepted (even within one tracklet):
new `0001_C6_F0099_X30823.jpg` (camera = name[6]) and old
`0001C6F0099X30823.jpg` (camera = name[5]). Frames are ordered by their F
number as an integer (F numbers past 9999 sort after F9999), gaps kept.

Splits `train` (2,196 tracklets of 702 ids), `query` (702) and `gallery`
(2,636), records in (pid folder, tracklet folder) order; pid and tracklet_id
are the folder numbers, the camera comes from the frame names. Gallery
tracklets of the 408 identities that have no query are flagged
`is_distractor`. Disagreements (a frame's pid differing from its folder,
several cameras in one tracklet, unparsable names) are reported in
`info.metadata["layout_notes"]`.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Mapping, Sequence

from absl import logging
import tensorflow_datasets as tfds

from vreid_jax.datasets import base

_FOLDER = "DukeMTMC-VideoReID"
_SPLITS = ("train", "query", "gallery")
_EXTENSIONS = (".jpg", ".jpeg", ".png")
_NAME_RE = re.compile(
    r"^(?P<pid>\d+)(?P<sep>_?)C(?P<cam>\d+)_?F(?P<frame>\d+)_?X\d+\.\w+$")

_INSTRUCTIONS = """\
Download DukeMTMC-VideoReID.zip (https://github.com/Yu-Wu/DukeMTMC-VideoReID;
the DukeMTMC data were withdrawn by Duke in 2019, use a copy you are entitled
to). Unzip it so that DukeMTMC-VideoReID/ is directly under manual_dir:

  unzip DukeMTMC-VideoReID.zip -d $MANUAL_DIR
  # -> $MANUAL_DIR/DukeMTMC-VideoReID/{train,query,gallery}/<pid>/<tracklet>/
"""


def parse_frame_name(name: str) -> tuple[int, int, int] | None:
  """Returns (pid, camera, frame) of a Duke frame name in either format."""
  m = _NAME_RE.match(name)
  if m is None:
    return None
  return int(m["pid"]), int(m["cam"]), int(m["frame"])


def _numbered_dirs(folder: str) -> list[tuple[int, str]]:
  out = []
  for name in sorted(os.listdir(folder)):
    if name.startswith(".") or not os.path.isdir(os.path.join(folder, name)):
      continue  # Files and hidden folders (.ipynb_checkpoints, ...).
    if not name.isdigit():
      raise ValueError(f"DukeMTMC-VideoReID: unexpected folder "
                       f"{os.path.join(folder, name)} (pid and tracklet "
                       "folders are numbers like 0001)")
    out.append((int(name), name))
  return sorted(out)


class DukeVideoReid(base.ReidBuilder):
  """DukeMTMC-VideoReID: 8 cameras, train/query/gallery."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  IMAGE_SIZE = None
  HOMEPAGE = "https://github.com/Yu-Wu/DukeMTMC-VideoReID"
  CITATION = """\
@inproceedings{wu2018exploit,
  title={Exploit the Unknown Gradually: One-Shot Video-Based Person
         Re-Identification by Stepwise Learning},
  author={Wu, Yu and Lin, Yutian and Dong, Xuanyi and Yan, Yan and
          Ouyang, Wanli and Yang, Yi},
  booktitle={CVPR},
  year={2018}
}"""

  def validate_layout(self, manual_dir: str) -> str:
    """Checks the published layout; returns the DukeMTMC-VideoReID folder.

    Raises:
      base.LayoutError: naming every missing folder.
    """
    root = base.dataset_root(manual_dir, _FOLDER, "query")
    base.check_layout(
        "DukeMTMC-VideoReID", manual_dir,
        [(os.path.join(root, s) + "/", "from DukeMTMC-VideoReID.zip")
         for s in _SPLITS],
        "See MANUAL_DOWNLOAD_INSTRUCTIONS of the duke_video_reid builder or "
        "data_prep/README.md.")
    return root

  def _tracklets(
      self, manual_dir: str) -> Mapping[str, Sequence[base.Tracklet]]:
    root = self.validate_layout(manual_dir)
    notes: list[str] = []
    splits = {s: self._split(manual_dir, os.path.join(root, s), notes)
              for s in _SPLITS}
    query_pids = {t.pid for t in splits["query"]}
    for t in splits["gallery"]:
      t.is_distractor = t.pid not in query_pids
    for note in notes[:20]:
      logging.warning("DukeMTMC-VideoReID: %s", note)
    self.info.metadata["layout_notes"] = notes
    self.info.metadata["protocol"] = {
        "roles": {"train": "train", "query": "query", "gallery": "gallery"},
        "distractors": "gallery ids without a query tracklet",
    }
    return splits

  def _split(self, manual_dir: str, folder: str,
             notes: list[str]) -> list[base.Tracklet]:
    out = []
    for pid, pid_name in _numbered_dirs(folder):
      for tid, tid_name in _numbered_dirs(os.path.join(folder, pid_name)):
        tdir = os.path.join(folder, pid_name, tid_name)
        rel = os.path.relpath(tdir, manual_dir)
        files = sorted(n for n in os.listdir(tdir)
                       if n.lower().endswith(_EXTENSIONS))
        if not files:
          self.report.skipped_tracklets.append((rel, "no image file"))
          continue
        keyed, cams, bad_pid, unparsed = [], collections.Counter(), 0, 0
        for pos, name in enumerate(files):
          parsed = parse_frame_name(name)
          if parsed is None:
            unparsed += 1
            keyed.append((1, pos, name))  # After the parsed frames.
            continue
          n_pid, cam, frame = parsed
          bad_pid += n_pid != pid
          cams[cam] += 1
          keyed.append((0, frame, name))
        keyed.sort()
        if unparsed:
          notes.append(f"{rel}: {unparsed} frame names in neither Duke "
                       "format; numbered by position after the others")
        if bad_pid:
          notes.append(f"{rel}: {bad_pid} frame names give another pid than "
                       "the folder; the folder's is kept")
        if len(cams) > 1:
          notes.append(f"{rel}: frames of several cameras {dict(cams)}; the "
                       "most common is kept")
        camid = cams.most_common(1)[0][0] if cams else 0
        if not cams:
          notes.append(f"{rel}: no frame name gives the camera; camid 0")
        out.append(base.Tracklet(
            frames=[os.path.join(tdir, k[2]) for k in keyed],
            frame_numbers=[k[1] if k[0] == 0 else k[1] + 1 for k in keyed],
            pid=pid, camid=camid, tracklet_id=tid,
            path=os.path.join(rel, keyed[0][2])))
    return out
