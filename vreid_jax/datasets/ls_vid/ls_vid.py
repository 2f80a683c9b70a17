"""LS-VID (Li et al., ICCV 2019) as a TFDS builder.

Layout read from the manual dir (as the release unpacks):

  LS-VID/tracklet_train/...  tracklet_val/...  tracklet_test/...
  LS-VID/list_sequence/list_seq_train.txt | list_seq_val.txt | list_seq_test.txt
  LS-VID/test/data/info_test.mat   HDF5 (MATLAB 7.3), key 'query'
  -- or, in releases that ship NumPy files instead of the .mat --
  LS-VID/test/query.npy            (test/data/query.npy also accepted)
  LS-VID/test/info_test.npy        optional (test/data/info_test.npy too)

Each list line is `<relative path prefix> <pid>` (CR/LF stripped); the
tracklet's frames are the image files `LS-VID/<prefix>*`, sorted by name.

What is assumed (from third-party loaders, not from the files; everything
that does not hold is reported in `info.metadata["layout_notes"]`):
  * A frame basename split on `_` gives 4 tokens
    `<tracklet>_<frame>_<camera>_<k>`: the camera is token 2 counting from 0
    (the third token; 1..15), the frame number token 1 (token 3 when token 1
    does not vary within the tracklet and token 3 does; the position when
    neither is a number), the tracklet number token 0 (stored as
    tracklet_id; the list row when it is not a number). Every frame of a
    tracklet must give the same camera. Frames are ordered by name, as the
    list convention says, whatever their numbers.
  * `query` in info_test.mat and `query.npy` hold 1-based rows of
    list_seq_test.txt (a 0-based file, recognised by holding row 0, is
    accepted and reported).
  * `info_test.npy`, when present, has one row per test tracklet with the
    pid in column 2 and the camera in column 3 (MARS-style
    [start, end, pid, camera]); it is only cross-checked against the list
    and the names, which win.
  * Paper split: train 842 ids, val 200 ids, test 2,730 ids.

Splits: `train` and `val` (their lists, in order), `query` (the test rows
that the query index names, in its order) and `gallery` (the other test
rows, in list order).
"""

from __future__ import annotations

import bisect
import collections
import os
from collections.abc import Mapping, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from vreid_jax.datasets import base

_FOLDER = "LS-VID"
_LISTS = ("train", "val", "test")
_EXTENSIONS = (".jpg", ".jpeg", ".png")
_PAPER_IDS = {"train": 842, "val": 200, "test": 2730}
_INT32_MAX = 2**31 - 1

_INSTRUCTIONS = """\
LS-VID is distributed by agreement: request it from the authors via
http://www.pkuvmc.com/dataset.html (Li et al., "Global-Local Temporal
Representations for Video Person Re-Identification", ICCV 2019). Unpack it so
that LS-VID/ is directly under manual_dir:

  $MANUAL_DIR/LS-VID/tracklet_{train,val,test}/...
  $MANUAL_DIR/LS-VID/list_sequence/list_seq_{train,val,test}.txt
  $MANUAL_DIR/LS-VID/test/data/info_test.mat   (or test/query.npy +
                                                 test/info_test.npy)
"""


def read_list(path: str) -> list[tuple[str, int]]:
  """Reads `<prefix> <pid>` lines (CR/LF stripped, blank lines skipped)."""
  out = []
  with open(path, "r", encoding="utf-8", newline="") as f:
    for num, line in enumerate(f.read().splitlines(), 1):
      line = line.strip()
      if not line:
        continue
      parts = line.rsplit(None, 1)
      if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
        raise ValueError(f"LS-VID: {path} line {num} is {line!r}; expected "
                         "'<path prefix> <pid>'")
      out.append((parts[0], int(parts[1])))
  return out


def _as_rows(values: np.ndarray, source: str) -> np.ndarray:
  values = np.asarray(values)
  if values.ndim > 1 and sorted(values.shape)[-2] != 1:
    raise ValueError(f"LS-VID: {source} has shape {values.shape}; expected a "
                     "vector of row numbers")
  values = values.reshape(-1)
  if values.size == 0:
    raise ValueError(f"LS-VID: {source} names no query row")
  if not np.issubdtype(values.dtype, np.number) or not np.all(
      np.equal(np.mod(values, 1), 0)):
    raise ValueError(f"LS-VID: {source} holds non-integer row numbers")
  return values.astype(np.int64)


def read_query_mat(path: str) -> np.ndarray:
  """Rows under key 'query' of info_test.mat (HDF5, else MATLAB v5)."""
  import h5py  # pylint: disable=g-import-not-at-top
  if h5py.is_hdf5(path):
    with h5py.File(path, "r") as f:
      if "query" not in f:
        raise ValueError(f"LS-VID: {path} has no dataset 'query' (it has "
                         f"{sorted(f.keys())})")
      return _as_rows(np.asarray(f["query"]), path)
  import scipy.io  # pylint: disable=g-import-not-at-top
  try:
    data = scipy.io.loadmat(path)
  except Exception as e:  # scipy raises several types for broken files.
    raise ValueError(f"LS-VID: {path} is neither HDF5 nor a MATLAB file "
                     f"({e})") from e
  if "query" not in data:
    raise ValueError(f"LS-VID: {path} has no variable 'query'")
  return _as_rows(data["query"], path)


def frame_numbers(tokens: Sequence[Sequence[str]]) -> list[int]:
  """Frame numbers of a tracklet's frames from their `_`-split names.

  Token 1 (`<tracklet>_<frame>_<camera>_<k>`, the third-party loaders'
  reading); token 3 instead when token 1 is the same in every frame and
  token 3 is not; the position (1-based) when neither is a number.
  """
  def column(k):
    values = [t[k] if len(t) > k else "" for t in tokens]
    if all(v.isdigit() and int(v) <= _INT32_MAX for v in values):
      return [int(v) for v in values]
    return None
  first, last = column(1), column(3)
  if first is not None and (len(set(first)) > 1 or last is None or
                            len(set(last)) == 1):
    return first
  if last is not None:
    return last
  return list(range(1, len(tokens) + 1))


def _load_npy(path: str) -> np.ndarray:
  try:
    return np.load(path, allow_pickle=False)
  except ValueError as e:
    raise ValueError(f"LS-VID: {path} is not a plain numeric .npy file "
                     f"({e}); pickled arrays are not read") from e


class LsVid(base.ReidBuilder):
  """LS-VID: 3,772 ids, 15 cameras, train/val/query/gallery."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  IMAGE_SIZE = None
  HOMEPAGE = "http://www.pkuvmc.com/dataset.html"
  CITATION = """\
@inproceedings{li2019global,
  title={Global-Local Temporal Representations for Video Person
         Re-Identification},
  author={Li, Jianing and Wang, Jingdong and Tian, Qi and Gao, Wen and
          Zhang, Shiliang},
  booktitle={ICCV},
  year={2019}
}"""

  def validate_layout(self, manual_dir: str) -> dict[str, str | None]:
    """Checks the published layout.

    Returns:
      {"root", "query_mat", "query_npy", "info_npy"}: the LS-VID folder and
      the query files found (None when absent).

    Raises:
      base.LayoutError: naming every missing file or folder.
    """
    root = base.dataset_root(manual_dir, _FOLDER, "list_sequence")
    origin = "from the LS-VID release"
    required = [(os.path.join(root, f"tracklet_{s}") + "/", origin)
                for s in _LISTS]
    required += [(os.path.join(root, "list_sequence", f"list_seq_{s}.txt"),
                  origin) for s in _LISTS]

    def first(*names):
      for name in names:
        path = os.path.join(root, *name.split("/"))
        if os.path.isfile(path):
          return path
      return None
    found = {
        "root": root,
        "query_mat": first("test/data/info_test.mat"),
        "query_npy": first("test/query.npy", "test/data/query.npy"),
        "info_npy": first("test/info_test.npy", "test/data/info_test.npy"),
    }
    if found["query_mat"] is None and found["query_npy"] is None:
      required.append((
          os.path.join(root, "test", "data", "info_test.mat"),
          "the test query rows, " + origin + "; releases without it ship "
          "test/query.npy (with test/info_test.npy) instead, either is "
          "enough"))
    base.check_layout("LS-VID", manual_dir, required,
                      "See MANUAL_DOWNLOAD_INSTRUCTIONS of the ls_vid builder "
                      "or data_prep/README.md.")
    return found

  def _tracklets(
      self, manual_dir: str) -> Mapping[str, Sequence[base.Tracklet]]:
    found = self.validate_layout(manual_dir)
    root = found["root"]
    notes: list[str] = []
    listdir_cache: dict[str, list[str]] = {}
    claimed: collections.Counter[str] = collections.Counter()
    lists = {s: read_list(os.path.join(root, "list_sequence",
                                       f"list_seq_{s}.txt")) for s in _LISTS}
    splits = {s: self._split(manual_dir, root, s, lists[s], notes,
                             listdir_cache, claimed) for s in _LISTS}
    shared = sum(1 for n in claimed.values() if n > 1)
    if shared:
      notes.append(f"{shared} frame files match the prefixes of several list "
                   "lines (ambiguous prefixes); they are in each tracklet")

    test_lines = lists["test"]
    if found["query_mat"] is not None:
      source = found["query_mat"]
      rows = read_query_mat(source)
    else:
      source = found["query_npy"]
      rows = _as_rows(_load_npy(source), source)
    n_test = len(test_lines)
    if rows.min() == 0 and rows.max() < n_test:
      notes.append(f"{os.path.relpath(source, manual_dir)} holds row 0: read "
                   "as 0-based rows (the .mat is 1-based)")
      rows = rows + 1
    if rows.min() < 1 or rows.max() > n_test:
      raise ValueError(
          f"LS-VID: {source} names rows {rows.min()}..{rows.max()} but "
          f"list_seq_test.txt has {n_test} lines: the files do not belong "
          "together")
    if len(np.unique(rows)) != len(rows):
      raise ValueError(f"LS-VID: {source} names some test rows twice")
    if found["info_npy"] is not None:
      notes += self._check_info(found["info_npy"], test_lines,
                                splits["test"], manual_dir)

    test = splits.pop("test")
    by_row = dict(test)  # row -> tracklet (rows with frames only).
    is_query = set(rows.tolist())
    query = [by_row[r] for r in rows.tolist() if r in by_row]
    gallery = [t for r, t in test if r not in is_query]
    gallery_pids = {t.pid for t in gallery}
    lonely = sum(1 for t in query if t.pid not in gallery_pids)
    if lonely:
      notes.append(f"{lonely} queries have no gallery tracklet of their id")
    ids = {"train": len({t.pid for _, t in splits["train"]}),
           "val": len({t.pid for _, t in splits["val"]}),
           "test": len({t.pid for _, t in test})}
    for s, n in ids.items():
      if n != _PAPER_IDS[s]:
        notes.append(f"{s} has {n} ids (the paper's split: {_PAPER_IDS[s]})")
    for note in notes[:20]:
      logging.warning("LS-VID: %s", note)
    self.info.metadata["layout_notes"] = notes
    self.info.metadata["persons"] = ids
    self.info.metadata["protocol"] = {
        "roles": {"train": "train", "val": "val", "query": "query",
                  "gallery": "gallery"},
        "query_source": os.path.relpath(source, manual_dir),
        "gallery": "test tracklets not in the query index",
    }
    return {"train": [t for _, t in splits["train"]],
            "val": [t for _, t in splits["val"]],
            "query": query, "gallery": gallery}

  def _split(self, manual_dir: str, root: str, split: str,
             lines: Sequence[tuple[str, int]], notes: list[str],
             listdir_cache: dict[str, list[str]],
             claimed: collections.Counter[str],
             ) -> list[tuple[int, base.Tracklet]]:
    """(1-based list row, tracklet) of each list line that has frames."""
    out = []
    bad_tokens = bad_cam = mixed_cam = 0
    for row, (prefix, pid) in enumerate(lines, 1):
      rel_dir, stem = os.path.split(prefix.replace("\\", "/"))
      folder = os.path.join(root, rel_dir)
      if folder not in listdir_cache:
        try:
          listdir_cache[folder] = sorted(
              n for n in os.listdir(folder)
              if n.lower().endswith(_EXTENSIONS))
        except OSError:
          listdir_cache[folder] = []
      listing = listdir_cache[folder]  # Sorted: the prefix is one range.
      lo = bisect.bisect_left(listing, stem)
      hi = lo
      while hi < len(listing) and listing[hi].startswith(stem):
        hi += 1
      names = listing[lo:hi]
      if not names:
        self.report.skipped_tracklets.append(
            (f"{split} row {row} {prefix}", "no frame matches the prefix"))
        continue
      cams, tid = collections.Counter(), None
      split_names = []
      for name in names:
        claimed[os.path.join(folder, name)] += 1
        tokens = os.path.splitext(name)[0].split("_")
        split_names.append(tokens)
        if len(tokens) != 4:
          bad_tokens += 1
        cam = tokens[2] if len(tokens) > 2 else ""
        if cam.isdigit():
          cams[int(cam)] += 1
        if tid is None and tokens[0].isdigit() and int(
            tokens[0]) <= _INT32_MAX:
          tid = int(tokens[0])
      numbers = frame_numbers(split_names)
      if len(cams) > 1:
        mixed_cam += 1
      camid = cams.most_common(1)[0][0] if cams else 0
      if not 1 <= camid <= 15:
        bad_cam += 1
      rel = os.path.relpath(os.path.join(folder, names[0]), manual_dir)
      out.append((row, base.Tracklet(
          frames=[os.path.join(folder, n) for n in names],
          frame_numbers=numbers, pid=pid, camid=camid,
          tracklet_id=row if tid is None else tid, path=rel)))
    if bad_tokens:
      notes.append(f"{split}: {bad_tokens} frame names do not split into 4 "
                   "'_' tokens")
    if bad_cam:
      notes.append(f"{split}: {bad_cam} tracklets have no camera 1..15 in "
                   "token 2 of their frame names")
    if mixed_cam:
      notes.append(f"{split}: {mixed_cam} tracklets mix cameras; the most "
                   "common is kept")
    return out

  def _check_info(self, path: str, lines: Sequence[tuple[str, int]],
                  test: Sequence[tuple[int, base.Tracklet]],
                  manual_dir: str) -> list[str]:
    """Cross-checks info_test.npy (pid col 2, camera col 3) with the list."""
    rel = os.path.relpath(path, manual_dir)
    info = _load_npy(path)
    if info.ndim != 2 or info.shape[0] != len(lines) or info.shape[1] < 4:
      return [f"{rel} has shape {info.shape}, not ({len(lines)}, >=4): not "
              "cross-checked"]
    pid_bad = int(np.sum(info[:, 2].astype(np.int64) != np.asarray(
        [pid for _, pid in lines], np.int64)))
    cam_bad = sum(int(info[row - 1, 3]) != t.camid for row, t in test)
    notes = []
    if pid_bad:
      notes.append(f"{rel}: column 2 differs from the list's pid in "
                   f"{pid_bad} rows; the list is kept")
    if cam_bad:
      notes.append(f"{rel}: column 3 differs from the frame names' camera in "
                   f"{cam_bad} rows; the names are kept")
    return notes
