"""MARS (Zheng et al., ECCV 2016) as a TFDS builder.

Layout read from the manual dir (exactly as published):

  MARS/bbox_train/<pid folder>/<name>.jpg   e.g. 0001/0001C1T0001F001.jpg
  MARS/bbox_test/<pid folder>/<name>.jpg    pid folders 0000 and 00-1 too
  MARS/info/train_name.txt                  one frame name per line (CRLF)
  MARS/info/test_name.txt
  MARS/info/tracks_train_info.mat           track_train_info, (8298, 4)
  MARS/info/tracks_test_info.mat            track_test_info, (12180, 4)
  MARS/info/query_IDX.mat                   query_IDX, (1, 1980), 1-based

Splits:
  train:   the 8,298 rows of `track_train_info`, in table order.
  query:   the 1,980 rows of `track_test_info` that `query_IDX` names, in
           `query_IDX` order.
  gallery: the other 10,200 test rows, in table order, including the pid 0
           distractors (`is_distractor`) and the pid -1 junk (`is_junk`).
           Which of them an evaluation keeps (the 9,330 "standard", the
           11,310 "with queries" or the official 12,180 gallery) is the
           evaluator's choice: no variant is baked into the records.

A tracklet's frames are `names[start-1:end]` of the name list, in name-list
order; frame numbers come from the names (`F` field), gaps kept. pid and
camera are the table's; every tracklet's names are checked against them and
mismatches are reported in `info.metadata["layout_notes"]`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from absl import logging
import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from vreid_jax.datasets import base

_FOLDER = "MARS"
_INFO_FILES = {
    "train_name.txt": None,
    "test_name.txt": None,
    "tracks_train_info.mat": "track_train_info",
    "tracks_test_info.mat": "track_test_info",
    "query_IDX.mat": "query_IDX",
}
# PPPPCcTttttFfff.jpg; pid "00-1" is junk.
_NAME_RE = re.compile(
    r"^(?P<pid>00-1|\d{4})C(?P<cam>\d+)T(?P<trk>\d+)F(?P<frame>\d+)\.\w+$")

_INSTRUCTIONS = """\
Request MARS from its authors (project page
http://zheng-lab.cecs.anu.edu.au/Project/project_mars.html, formerly
http://www.liangzheng.com.cn/Project/project_mars.html): the frames come as
bbox_train.zip and bbox_test.zip; the evaluation files are the info/ folder of
https://github.com/liangzheng06/MARS-evaluation (the same files ship with the
GLTR and M3D code). Unpack so that the folder MARS/ is directly under
manual_dir:

  mkdir -p $MANUAL_DIR/MARS && cd $MANUAL_DIR/MARS
  unzip bbox_train.zip && unzip bbox_test.zip     # -> bbox_train/, bbox_test/
  cp -r MARS-evaluation/info .                    # -> info/*.txt, info/*.mat

manual_dir may also be the MARS folder itself.
"""


def parse_name(name: str) -> tuple[int, int, int, int] | None:
  """Returns (pid, camera, tracklet, frame) of a MARS frame name, or None."""
  if (len(name) == 19 and name[4] == "C" and name[6] == "T" and
      name[11] == "F" and name[15] == "." and name[7:11].isdigit() and
      name[12:15].isdigit() and name[5].isdigit()):  # The published form.
    pid_str = name[:4]
    if pid_str.isdigit() or pid_str == "00-1":
      return (-1 if pid_str == "00-1" else int(pid_str), int(name[5]),
              int(name[7:11]), int(name[12:15]))
  m = _NAME_RE.match(name)
  if m is None:
    return None
  pid = -1 if m["pid"] == "00-1" else int(m["pid"])
  return pid, int(m["cam"]), int(m["trk"]), int(m["frame"])


def read_name_list(path: str) -> list[str]:
  """Reads a name list (CRLF or LF), stripping each line, dropping blanks."""
  with open(path, "r", encoding="utf-8", newline="") as f:
    return [line.strip() for line in f.read().splitlines() if line.strip()]


def _load_mat(path: str, key: str) -> np.ndarray:
  try:
    data = scipy.io.loadmat(path)
  except Exception as e:  # scipy raises several types for broken files.
    raise ValueError(f"MARS: cannot read {path} as a MATLAB file ({e}); "
                     "re-copy it from the MARS-evaluation info/ folder") from e
  if key not in data:
    raise ValueError(f"MARS: {path} has no variable {key!r} (it has "
                     f"{sorted(k for k in data if not k.startswith('__'))})")
  return np.asarray(data[key])


class Mars(base.ReidBuilder):
  """MARS: 1,261 ids, 6 cameras, 20,478 tracklets (train/query/gallery)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  IMAGE_SIZE = (256, 128)
  HOMEPAGE = "http://zheng-lab.cecs.anu.edu.au/Project/project_mars.html"
  CITATION = """\
@inproceedings{zheng2016mars,
  title={MARS: A Video Benchmark for Large-Scale Person Re-identification},
  author={Zheng, Liang and Bie, Zhi and Sun, Yifan and Wang, Jingdong and
          Su, Chi and Wang, Shengjin and Tian, Qi},
  booktitle={ECCV},
  year={2016}
}"""

  def validate_layout(self, manual_dir: str) -> str:
    """Checks the published layout; returns the MARS root folder.

    Raises:
      base.LayoutError: naming every missing file or folder.
    """
    root = base.dataset_root(manual_dir, _FOLDER, "info")
    info = "MARS evaluation files, the info/ folder of MARS-evaluation"
    required = [(os.path.join(root, f"bbox_{s}") + "/",
                 f"frames, from bbox_{s}.zip") for s in ("train", "test")]
    required += [(os.path.join(root, "info", f), info) for f in _INFO_FILES]
    base.check_layout("MARS", manual_dir, required,
                      "See MANUAL_DOWNLOAD_INSTRUCTIONS of the mars builder "
                      "or data_prep/README.md.")
    return root

  def _tracklets(
      self, manual_dir: str) -> Mapping[str, Sequence[base.Tracklet]]:
    root = self.validate_layout(manual_dir)
    info = os.path.join(root, "info")
    notes: list[str] = []
    train = self._split_tracklets(
        manual_dir, root, "train",
        read_name_list(os.path.join(info, "train_name.txt")),
        _load_mat(os.path.join(info, "tracks_train_info.mat"),
                  "track_train_info"), notes)
    test = self._split_tracklets(
        manual_dir, root, "test",
        read_name_list(os.path.join(info, "test_name.txt")),
        _load_mat(os.path.join(info, "tracks_test_info.mat"),
                  "track_test_info"), notes)
    query_idx = _load_mat(os.path.join(info, "query_IDX.mat"),
                          "query_IDX").astype(np.int64).reshape(-1)
    if query_idx.size and (query_idx.min() < 1 or
                           query_idx.max() > len(test)):
      raise ValueError(
          f"MARS: info/query_IDX.mat holds rows {query_idx.min()}.."
          f"{query_idx.max()}, but tracks_test_info.mat has {len(test)} rows "
          "(query_IDX is 1-based): the info files do not belong together")
    if len(np.unique(query_idx)) != len(query_idx):
      raise ValueError("MARS: info/query_IDX.mat names some rows twice")
    is_query = np.zeros(len(test), bool)
    is_query[query_idx - 1] = True
    query = [test[i - 1] for i in query_idx]
    gallery = [t for t, q in zip(test, is_query) if not q]
    if notes:
      for note in notes[:20]:
        logging.warning("MARS: %s", note)
    self.info.metadata["layout_notes"] = notes
    self.info.metadata["protocol"] = {
        "roles": {"train": "train", "query": "query", "gallery": "gallery"},
        "gallery": ("every test tracklet not in query_IDX, junk (pid -1) and "
                    "distractors (pid 0) included and flagged"),
    }
    return {"train": train, "query": query, "gallery": gallery}

  def _split_tracklets(self, manual_dir: str, root: str, split: str,
                       names: list[str], table: np.ndarray,
                       notes: list[str]) -> list[base.Tracklet]:
    """Turns one [start, end, pid, camera] table into tracklets."""
    table_file = f"info/tracks_{split}_info.mat"
    if table.ndim != 2 or table.shape[1] < 4:
      raise ValueError(f"MARS: {table_file} has shape {table.shape}; expected "
                       "(N, 4) rows of [start, end, pid, camera]")
    table = table.astype(np.int64)
    bad = (table[:, 0] < 1) | (table[:, 1] < table[:, 0]) | (
        table[:, 1] > len(names))
    if bad.any():
      row = int(np.flatnonzero(bad)[0])
      raise ValueError(
          f"MARS: {table_file} row {row + 1} spans names {table[row, 0]}.."
          f"{table[row, 1]} but info/{split}_name.txt has {len(names)} names "
          f"({int(bad.sum())} bad rows): the info files do not belong "
          "together")
    folder = os.path.join(root, f"bbox_{split}")
    rel_root = os.path.relpath(folder, manual_dir)
    sep = os.sep
    out = []
    for row, (start, end, pid, cam) in enumerate(table[:, :4]):
      frames, numbers, tids = [], [], []
      mismatch = False
      for pos, name in enumerate(names[start - 1:end]):
        parsed = parse_name(name)
        if parsed is None:
          notes.append(f"{split} row {row + 1}: cannot parse frame name "
                       f"{name!r}; numbered by position")
          numbers.append(pos + 1)
        else:
          n_pid, n_cam, n_tid, n_frame = parsed
          mismatch |= (n_pid, n_cam) != (pid, cam)
          if n_tid not in tids:
            tids.append(n_tid)
          numbers.append(n_frame)
        frames.append(f"{folder}{sep}{name[:4]}{sep}{name}")
      if mismatch:
        notes.append(f"{split} row {row + 1}: table says pid {pid} camera "
                     f"{cam}, its frame names say otherwise (first "
                     f"{names[start - 1]}); the table's values are kept")
      if len(tids) > 1:
        notes.append(f"{split} row {row + 1}: frames of several tracklet "
                     f"numbers {tids}; the first is kept")
      first = names[start - 1]
      out.append(base.Tracklet(
          frames=frames, frame_numbers=numbers, pid=int(pid), camid=int(cam),
          tracklet_id=tids[0] if tids else row + 1,
          path=os.path.join(rel_root, first[:4], first),
          is_distractor=int(pid) == 0, is_junk=int(pid) == -1))
    return out
