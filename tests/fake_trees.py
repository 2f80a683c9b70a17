"""Tiny fake trees of the six real datasets, in their published layouts.

Each `make_*_tree(root, ...)` writes a small tree under `root` exactly as the
dataset is distributed (see DATASETS.md), with tiny flat-colour images of the
dataset's frame size, and returns what a builder must make of it:
`{split: [ExpectedTracklet, ...]}` in record order, plus whatever the
dataset's protocol needs (trials, query rows).

Reused by the builder tests and by any test that needs a built real-layout
dataset (e.g. the flow tests).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

MARS_SIZE = (256, 128)  # (height, width)
ILIDS_SIZE = (128, 64)
PRID_SIZE = (128, 64)


@dataclasses.dataclass
class ExpectedTracklet:
  """What one record of a built split must hold."""
  pid: int
  camid: int
  tracklet_id: int
  frame_numbers: list[int]
  is_distractor: bool = False
  is_junk: bool = False
  path: str = ""  # First frame, relative to the manual dir.

  @property
  def num_frames(self) -> int:
    return len(self.frame_numbers)


# --- images -------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def image_bytes(size: tuple[int, int], color: tuple[int, int, int] = (90, 120,
                                                                         150),
                fmt: str = "JPEG") -> bytes:
  """Encoded flat-colour image of (height, width) `size` (tiny in bytes)."""
  img = Image.new("RGB", (size[1], size[0]), color)
  buf = io.BytesIO()
  if fmt == "JPEG":
    img.save(buf, format="JPEG", quality=30)
  else:
    img.save(buf, format=fmt, optimize=True)
  return buf.getvalue()


def moving_square_bytes(size: tuple[int, int], t: int,
                        fmt: str = "PNG") -> bytes:
  """A textured square moving 2 px to the right per frame t (flow tests)."""
  h, w = size
  arr = np.repeat(np.random.default_rng(1).integers(0, 50, (h, w, 1)), 3,
                  axis=2).astype(np.uint8)  # Static texture.
  side = max(4, min(h, w) // 3)
  y0 = (h - side) // 2
  x0 = min(w - side, 2 + 2 * t)
  texture = np.random.default_rng(0).integers(60, 255, (side, side, 1))
  arr[y0:y0 + side, x0:x0 + side] = texture.astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format=fmt)
  return buf.getvalue()


def _color(*keys: int) -> tuple[int, int, int]:
  h = abs(hash(keys)) % (1 << 24)
  return (h & 255, (h >> 8) & 255, (h >> 16) & 255)


def write_image(path: str, size: tuple[int, int], fmt: str = "JPEG",
                color: tuple[int, int, int] | None = None,
                data: bytes | None = None) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if data is None:
    data = image_bytes(tuple(size), color or (90, 120, 150), fmt)
  with open(path, "wb") as f:
    f.write(data)


def corrupt_file(path: str) -> None:
  """Overwrites an image with bytes no decoder accepts."""
  with open(path, "wb") as f:
    f.write(b"\xff\xd8\xff\xe0 this is not a JPEG any more")


# --- MARS ---------------------------------------------------------------------
MarsSpec = tuple[int, int, int, Sequence[int]]  # pid, camera, tracklet, frames

MARS_TRAIN: list[MarsSpec] = [
    (1, 1, 1, [1, 2, 3]),
    (1, 2, 1, [1, 2, 5, 6]),        # Gap 2 -> 5.
    (2, 3, 1, [1, 2]),
    (2, 1, 2, [1, 2, 3]),
]
MARS_TEST: list[MarsSpec] = [
    (-1, 1, 1, [1, 2]),             # Junk.
    (0, 2, 1, [1, 2, 3]),           # Distractor.
    (3, 1, 1, [1, 2, 3]),
    (3, 2, 1, [2, 3, 4]),           # Does not start at F001.
    (3, 2, 2, [1, 2]),
    (4, 1, 1, [1, 2, 3, 4]),
    (4, 3, 1, [1, 3, 4]),           # Gap.
    (5, 1, 1, [1, 2]),
]
MARS_QUERY = [(4, 1, 1), (3, 1, 1)]  # Keys of MARS_TEST, query_IDX order.


def mars_pid_str(pid: int) -> str:
  return "00-1" if pid == -1 else f"{pid:04d}"


def mars_name(pid: int, cam: int, trk: int, frame: int) -> str:
  return f"{mars_pid_str(pid)}C{cam}T{trk:04d}F{frame:03d}.jpg"


def write_mars_info(info_dir: str, train_names: Sequence[str],
                    test_names: Sequence[str], train_table: np.ndarray,
                    test_table: np.ndarray, query_idx: Sequence[int], *,
                    crlf: bool = True) -> None:
  """Writes the five MARS info files (tables and query rows are 1-based)."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  os.makedirs(info_dir, exist_ok=True)
  eol = "\r\n" if crlf else "\n"
  for name, names in (("train_name.txt", train_names),
                      ("test_name.txt", test_names)):
    with open(os.path.join(info_dir, name), "w", newline="") as f:
      f.write("".join(n + eol for n in names))
  scipy.io.savemat(os.path.join(info_dir, "tracks_train_info.mat"),
                   {"track_train_info": np.asarray(train_table, np.int32)})
  scipy.io.savemat(os.path.join(info_dir, "tracks_test_info.mat"),
                   {"track_test_info": np.asarray(test_table, np.int32)})
  scipy.io.savemat(os.path.join(info_dir, "query_IDX.mat"),
                   {"query_IDX": np.asarray(query_idx, np.uint16)[None, :]})


def make_mars_tree(root: str, *, train: Sequence[MarsSpec] = tuple(MARS_TRAIN),
                   test: Sequence[MarsSpec] = tuple(MARS_TEST),
                   query: Sequence[tuple[int, int, int]] = tuple(MARS_QUERY),
                   crlf: bool = True,
                   size: tuple[int, int] = MARS_SIZE,
                   ) -> dict[str, list[ExpectedTracklet]]:
  """Writes `root/MARS` (bbox_train, bbox_test, info) for the given tracklets.

  Tracklets are sorted by name, as in the real name lists; the tables are in
  name-list order and `query` (keys (pid, camera, tracklet) of `test`) gives
  the query_IDX order.

  Returns:
    {"train", "query", "gallery"}: expected records in builder order.
  """
  mars = os.path.join(root, "MARS")
  out: dict[str, list[ExpectedTracklet]] = {}
  tables, names_of = {}, {}
  for split, spec in (("train", train), ("test", test)):
    spec = sorted(spec, key=lambda s: mars_name(s[0], s[1], s[2], s[3][0]))
    names, table, expected = [], [], []
    for pid, cam, trk, frames in spec:
      start = len(names) + 1
      for fr in frames:
        name = mars_name(pid, cam, trk, fr)
        names.append(name)
        write_image(os.path.join(mars, f"bbox_{split}", mars_pid_str(pid),
                                 name), size, color=_color(pid, cam, trk))
      table.append([start, len(names), pid, cam])
      expected.append(ExpectedTracklet(
          pid=pid, camid=cam, tracklet_id=trk, frame_numbers=list(frames),
          is_distractor=pid == 0, is_junk=pid == -1,
          path=os.path.join("MARS", f"bbox_{split}", mars_pid_str(pid),
                            mars_name(pid, cam, trk, frames[0]))))
    tables[split] = (np.asarray(table, np.int32), expected)
    names_of[split] = names
  test_table, test_expected = tables["test"]
  keys = [(t.pid, t.camid, t.tracklet_id) for t in test_expected]
  query_rows = [keys.index(tuple(k)) + 1 for k in query]
  write_mars_info(os.path.join(mars, "info"), names_of["train"],
                  names_of["test"], tables["train"][0], test_table,
                  query_rows, crlf=crlf)
  out["train"] = tables["train"][1]
  out["query"] = [test_expected[r - 1] for r in query_rows]
  out["gallery"] = [t for i, t in enumerate(test_expected)
                    if i + 1 not in query_rows]
  return out


def read_mars_protocol(protocol_dir: str) -> dict[str, Any]:
  """Reads the real MARS info files plainly (independently of the builder)."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  out: dict[str, Any] = {}
  for split in ("train", "test"):
    with open(os.path.join(protocol_dir, f"{split}_name.txt"), "rb") as f:
      out[f"{split}_names"] = [ln.decode().strip() for ln in f
                               if ln.strip()]
    out[f"{split}_table"] = scipy.io.loadmat(os.path.join(
        protocol_dir, f"tracks_{split}_info.mat"))[f"track_{split}_info"]
  out["query_idx"] = scipy.io.loadmat(os.path.join(
      protocol_dir, "query_IDX.mat"))["query_IDX"].reshape(-1).astype(int)
  return out


def expected_mars_tracklet(names: Sequence[str], row: Sequence[int],
                           split: str) -> ExpectedTracklet:
  """What the record of one [start, end, pid, camera] row must hold."""
  start, end, pid, cam = (int(x) for x in row[:4])
  frames = names[start - 1:end]
  return ExpectedTracklet(
      pid=pid, camid=cam, tracklet_id=int(frames[0][7:11]),
      frame_numbers=[int(n[12:15]) for n in frames],
      is_distractor=pid == 0, is_junk=pid == -1,
      path=os.path.join("MARS", f"bbox_{split}", frames[0][:4], frames[0]))


def make_mars_subset_tree(root: str, protocol_dir: str, *,
                          train_rows: Sequence[int], test_rows: Sequence[int],
                          size: tuple[int, int] = MARS_SIZE,
                          ) -> dict[str, list[ExpectedTracklet]]:
  """A MARS tree restricted to some rows of the REAL protocol files.

  The chosen rows (0-based, of track_train_info / track_test_info) keep
  their real frame names, pids and cameras; the name lists, the tables
  (start/end renumbered) and query_IDX (the real queries among the chosen
  test rows, in query_IDX order, renumbered) are rewritten consistently, and
  a frame file is written for every name.

  Returns:
    {"train", "query", "gallery"}: expected records in builder order.
  """
  real = read_mars_protocol(protocol_dir)
  mars = os.path.join(root, "MARS")
  data = image_bytes(tuple(size))
  new: dict[str, Any] = {}
  expected: dict[str, list[ExpectedTracklet]] = {}
  for split, rows in (("train", train_rows), ("test", test_rows)):
    names, table, exp = [], [], []
    for r in sorted(rows):
      row = real[f"{split}_table"][r]
      frames = real[f"{split}_names"][row[0] - 1:row[1]]
      table.append([len(names) + 1, len(names) + len(frames), row[2], row[3]])
      names += frames
      exp.append(expected_mars_tracklet(real[f"{split}_names"], row, split))
      for name in frames:
        write_image(os.path.join(mars, f"bbox_{split}", name[:4], name), size,
                    data=data)
    new[split] = (names, np.asarray(table, np.int32))
    expected[split] = exp
  new_row = {r: k + 1 for k, r in enumerate(sorted(test_rows))}
  query = [new_row[q - 1] for q in real["query_idx"] if q - 1 in new_row]
  write_mars_info(os.path.join(mars, "info"), new["train"][0],
                  new["test"][0], new["train"][1], new["test"][1], query)
  test = expected.pop("test")
  expected["query"] = [test[q - 1] for q in query]
  expected["gallery"] = [t for k, t in enumerate(test) if k + 1 not in query]
  return expected


def copy_mars_protocol(root: str, protocol_dir: str) -> str:
  """`root/MARS` with the real info files and empty frame folders."""
  import shutil  # pylint: disable=g-import-not-at-top
  mars = os.path.join(root, "MARS")
  os.makedirs(os.path.join(mars, "info"), exist_ok=True)
  for split in ("train", "test"):
    os.makedirs(os.path.join(mars, f"bbox_{split}"), exist_ok=True)
  for f in ("train_name.txt", "test_name.txt", "tracks_train_info.mat",
            "tracks_test_info.mat", "query_IDX.mat"):
    shutil.copy(os.path.join(protocol_dir, f), os.path.join(mars, "info", f))
  return mars


# --- DukeMTMC-VideoReID -------------------------------------------------------
# pid, tracklet, camera, frame numbers, "new" or "old" frame-name format.
DukeSpec = tuple[int, int, int, Sequence[int], str]

DUKE_SPLITS: dict[str, list[DukeSpec]] = {
    "train": [
        (1, 1, 6, [99, 100, 101], "new"),
        (1, 2, 2, [2, 3, 7], "old"),                    # Starts at 2, gap.
        (3, 1, 1, [9998, 9999, 10000, 10001], "new"),  # Past 4 digits.
    ],
    "query": [
        (5, 1, 3, [1, 2], "new"),
        (6, 4, 8, [5, 6, 7], "old"),
    ],
    "gallery": [
        (5, 2, 4, [1, 2, 3], "new"),
        (6, 1, 7, [3, 4], "old"),
        (9, 1, 5, [1, 2], "new"),                      # Distractor id.
    ],
}


def duke_frame_name(pid: int, cam: int, frame: int, x: int, fmt: str) -> str:
  if fmt == "new":
    return f"{pid:04d}_C{cam}_F{frame:04d}_X{x:05d}.jpg"
  return f"{pid:04d}C{cam}F{frame:04d}X{x:05d}.jpg"


def make_duke_tree(root: str, *,
                   splits: Mapping[str, Sequence[DukeSpec]] | None = None,
                   ) -> dict[str, list[ExpectedTracklet]]:
  """Writes `root/DukeMTMC-VideoReID/{train,query,gallery}/<pid>/<trk>/`.

  Frames have varied sizes (Duke crops are not resized). Records are
  expected in (pid, tracklet) folder order; gallery ids absent from the
  query are flagged as distractors.
  """
  splits = DUKE_SPLITS if splits is None else splits
  duke = os.path.join(root, "DukeMTMC-VideoReID")
  query_pids = {s[0] for s in splits.get("query", [])}
  out = {}
  for split, spec in splits.items():
    os.makedirs(os.path.join(duke, split), exist_ok=True)
    expected = []
    for pid, trk, cam, frames, fmt in sorted(spec, key=lambda s: s[:2]):
      tdir = os.path.join(duke, split, f"{pid:04d}", f"{trk:04d}")
      # Written in reverse, with X decreasing: order must come from F.
      for k, fr in enumerate(reversed(frames)):
        size = (100 + 7 * k, 40 + 3 * k)
        write_image(os.path.join(tdir, duke_frame_name(pid, cam, fr, 50000 -
                                                       fr, fmt)), size)
      expected.append(ExpectedTracklet(
          pid=pid, camid=cam, tracklet_id=trk,
          frame_numbers=sorted(frames),
          is_distractor=split == "gallery" and pid not in query_pids,
          path=os.path.join("DukeMTMC-VideoReID", split, f"{pid:04d}",
                            f"{trk:04d}", duke_frame_name(
                                pid, cam, min(frames), 50000 - min(frames),
                                fmt))))
    out[split] = expected
  return out


# --- Two-camera datasets: iLIDS-VID, PRID-2011, SDU-VID -----------------------
def _two_camera_expected(frames: Mapping[int, Mapping[int, Sequence[int]]],
                         pids: Iterable[int],
                         path_of) -> list[ExpectedTracklet]:
  out = []
  for pid in sorted(pids):
    for cam in sorted(frames):
      if pid in frames[cam]:
        fr = sorted(frames[cam][pid])
        out.append(ExpectedTracklet(pid=pid, camid=cam, tracklet_id=1,
                                    frame_numbers=fr,
                                    path=path_of(cam, pid, fr[0])))
  return out


def default_two_camera_frames(pids: Sequence[int], *, seed: int = 0,
                              min_len: int = 2, max_len: int = 5,
                              ) -> dict[int, dict[int, list[int]]]:
  """{camera: {pid: frame numbers}} with random lengths and start frames."""
  rng = np.random.default_rng(seed)
  out: dict[int, dict[int, list[int]]] = {1: {}, 2: {}}
  for cam in (1, 2):
    for pid in pids:
      n = int(rng.integers(min_len, max_len + 1))
      start = int(rng.integers(1, 300))
      out[cam][pid] = list(range(start, start + n))
  return out


def make_ilids_tree(root: str, *, pids: Sequence[int] = (1, 2, 4, 5, 7, 8, 10,
                                                          11),
                    frames: Mapping[int, Mapping[int, Sequence[int]]] | None =
                    None,
                    ls_set: np.ndarray | None = None, num_trials: int = 10,
                    seed: int = 0, size: tuple[int, int] = ILIDS_SIZE,
                    moving: bool = False) -> dict[str, Any]:
  """Writes `root/i-LIDS-VID/sequences/cam{1,2}/personNNN/` and the splits.

  `ls_set` (trials x persons, 1-based rows of the sorted cam1 person
  folders; first half test, second half train) defaults to seeded
  permutations. With `moving`, frames show a square moving 2 px right per
  frame (for the optical flow tests) instead of a flat colour.

  Returns:
    {"tracklets": expected records, "trials": [{"train": pids, "test": pids}],
     "ls_set": the array written}.
  """
  frames = default_two_camera_frames(pids, seed=seed) if frames is None else (
      frames)
  seq = os.path.join(root, "i-LIDS-VID", "sequences")
  for cam, per_pid in frames.items():
    os.makedirs(os.path.join(seq, f"cam{cam}"), exist_ok=True)
    for pid, numbers in per_pid.items():
      for t, fr in enumerate(sorted(numbers)):
        write_image(os.path.join(
            seq, f"cam{cam}", f"person{pid:03d}",
            f"cam{cam}_person{pid:03d}_{fr:05d}.png"), size, fmt="PNG",
                    color=_color(pid, cam),
                    data=moving_square_bytes(size, t) if moving else None)
  cam1 = sorted(frames[1])
  if ls_set is None:
    rng = np.random.default_rng(seed + 1)
    ls_set = np.stack([rng.permutation(len(cam1)) + 1
                       for _ in range(num_trials)]).astype(np.float64)
  split_dir = os.path.join(root, "train-test people splits")
  os.makedirs(split_dir, exist_ok=True)
  import scipy.io  # pylint: disable=g-import-not-at-top
  scipy.io.savemat(os.path.join(split_dir, "train_test_splits_ilidsvid.mat"),
                   {"ls_set": ls_set})
  half = ls_set.shape[1] // 2
  if 1 <= ls_set.min() and ls_set.max() <= len(cam1):
    trials = [{"test": sorted(cam1[int(i) - 1] for i in row[:half]),
               "train": sorted(cam1[int(i) - 1] for i in row[half:])}
              for row in ls_set]
  else:  # A deliberately broken file.
    trials = None
  all_pids = set(frames[1]) | set(frames[2])
  expected = _two_camera_expected(
      frames, all_pids, lambda c, p, f: os.path.join(
          "i-LIDS-VID", "sequences", f"cam{c}", f"person{p:03d}",
          f"cam{c}_person{p:03d}_{f:05d}.png"))
  return {"tracklets": expected, "trials": trials, "ls_set": ls_set}


def make_prid_tree(root: str, *,
                   frames: Mapping[int, Mapping[int, Sequence[int]]] | None =
                   None,
                   splits: Sequence[Mapping[str, Sequence[str]]] | None = None,
                   splits_path: str | None = "splits_prid2011.json",
                   size: tuple[int, int] = PRID_SIZE) -> dict[str, Any]:
  """Writes `root/prid_2011/multi_shot/cam_{a,b}/person_NNNN/NNNN.png`.

  Default: persons 1..6 in both cameras (person 3 with a short cam_b
  tracklet), 7 and 8 only in cam_a, 9 only in cam_b. `splits` (person folder
  names) is written to `root/<splits_path>` unless `splits_path` is None.

  Returns:
    {"tracklets": expected records (persons in both cameras), "trials": pids,
     "excluded_pids": {"cam_a_only": [...], "cam_b_only": [...]}}.
  """
  if frames is None:
    frames = {1: {p: list(range(1, 4 + p % 3)) for p in (1, 2, 3, 4, 5, 6, 7,
                                                          8)},
              2: {p: list(range(1, 3 + p % 2)) for p in (1, 2, 3, 4, 5, 6,
                                                         9)}}
  if splits is None:
    splits = [{"train": ["person_0001", "person_0002", "person_0003"],
               "test": ["person_0004", "person_0005", "person_0006"]},
              {"train": ["person_0004", "person_0005", "person_0006"],
               "test": ["person_0001", "person_0002", "person_0003"]}]
  ms = os.path.join(root, "prid_2011", "multi_shot")
  cam_name = {1: "cam_a", 2: "cam_b"}
  for cam, per_pid in frames.items():
    os.makedirs(os.path.join(ms, cam_name[cam]), exist_ok=True)
    for pid, numbers in per_pid.items():
      for fr in numbers:
        write_image(os.path.join(ms, cam_name[cam], f"person_{pid:04d}",
                                 f"{fr:04d}.png"), size, fmt="PNG",
                    color=_color(pid, cam))
  if splits_path is not None:
    with open(os.path.join(root, splits_path), "w") as f:
      json.dump(list(splits), f)
  both = set(frames[1]) & set(frames[2])
  expected = _two_camera_expected(
      frames, both, lambda c, p, f: os.path.join(
          "prid_2011", "multi_shot", cam_name[c], f"person_{p:04d}",
          f"{f:04d}.png"))
  trials = [{k: sorted(int(n.split("_")[-1]) for n in s[k])
             for k in ("train", "test")} for s in splits]
  return {"tracklets": expected, "trials": trials,
          "excluded_pids": {"cam_a_only": sorted(set(frames[1]) - both),
                            "cam_b_only": sorted(set(frames[2]) - both)}}


def make_sdu_tree(root: str, *, pids: Sequence[int] = (1, 2, 3, 4, 5, 6),
                  frames: Mapping[int, Mapping[int, Sequence[int]]] | None =
                  None, seed: int = 3) -> dict[str, Any]:
  """Writes `root/SDU-VID/cam{1,2}/personNNN/NNNNN.{png,jpg}` (sizes vary).

  Returns:
    {"tracklets": expected records}.
  """
  frames = default_two_camera_frames(pids, seed=seed) if frames is None else (
      frames)
  sdu = os.path.join(root, "SDU-VID")
  for cam, per_pid in frames.items():
    os.makedirs(os.path.join(sdu, f"cam{cam}"), exist_ok=True)
    for pid, numbers in per_pid.items():
      ext, fmt = (".png", "PNG") if pid % 2 else (".jpg", "JPEG")
      for fr in numbers:
        write_image(os.path.join(sdu, f"cam{cam}", f"person{pid:03d}",
                                 f"{fr:05d}{ext}"), (96 + pid, 48 + cam),
                    fmt=fmt)
  all_pids = set(frames[1]) | set(frames[2])

  def path_of(c, p, f):
    ext = ".png" if p % 2 else ".jpg"
    return os.path.join("SDU-VID", f"cam{c}", f"person{p:03d}",
                        f"{f:05d}{ext}")
  return {"tracklets": _two_camera_expected(frames, all_pids, path_of)}


# --- LS-VID -------------------------------------------------------------------
# pid, tracklet number, camera, frame numbers.
LsvidSpec = tuple[int, int, int, Sequence[int]]

LSVID_SPLITS: dict[str, list[LsvidSpec]] = {
    "train": [(1, 1, 3, [0, 1, 2]), (1, 2, 12, [5, 6]), (2, 1, 1, [3, 4])],
    "val": [(7, 1, 2, [0, 1]), (7, 2, 4, [2, 3, 4])],
    "test": [(10, 1, 5, [0, 1, 2]), (10, 2, 15, [0, 1]), (11, 1, 9, [4, 5]),
             (11, 2, 5, [0, 1, 2]), (12, 1, 6, [1, 2])],
}
LSVID_QUERY_ROWS = [3, 1]  # 1-based rows of list_seq_test.txt.


def lsvid_frame_name(pid: int, trk: int, cam: int, frame: int) -> str:
  """`<tracklet>_<frame>_<camera>_<k>.jpg`: 4 tokens, the camera is token 2."""
  return f"{pid:04d}{trk:03d}_{frame:04d}_{cam:02d}_001.jpg"


def make_lsvid_tree(root: str, *, query_format: str = "mat",
                    splits: Mapping[str, Sequence[LsvidSpec]] | None = None,
                    query_rows: Sequence[int] = tuple(LSVID_QUERY_ROWS),
                    ) -> dict[str, list[ExpectedTracklet]]:
  """Writes `root/LS-VID` with its lists and the test query rows.

  Args:
    root: the manual dir.
    query_format: "mat" (test/data/info_test.mat, HDF5 key 'query') or
      "npy" (test/query.npy and test/info_test.npy).
    splits: {"train", "val", "test"} tracklet specs.
    query_rows: 1-based rows of list_seq_test.txt that are queries.

  Returns:
    {"train", "val", "query", "gallery"}: expected records in order.
  """
  splits = LSVID_SPLITS if splits is None else splits
  ls = os.path.join(root, "LS-VID")
  os.makedirs(os.path.join(ls, "list_sequence"), exist_ok=True)
  out = {}
  for split, spec in splits.items():
    lines, expected = [], []
    home = f"tracklet_{split}"
    os.makedirs(os.path.join(ls, home), exist_ok=True)
    for pid, trk, cam, frames in spec:
      prefix = f"{home}/{pid:04d}/{pid:04d}{trk:03d}"
      for fr in frames:
        write_image(os.path.join(ls, home, f"{pid:04d}",
                                 lsvid_frame_name(pid, trk, cam, fr)),
                    (120 + fr, 50 + cam))
      lines.append(f"{prefix} {pid}")
      expected.append(ExpectedTracklet(
          pid=pid, camid=cam, tracklet_id=int(f"{pid:04d}{trk:03d}"),
          frame_numbers=sorted(frames),
          path=os.path.join("LS-VID", home, f"{pid:04d}",
                            lsvid_frame_name(pid, trk, cam, min(frames)))))
    with open(os.path.join(ls, "list_sequence", f"list_seq_{split}.txt"),
              "w", newline="") as f:
      f.write("".join(line + "\r\n" for line in lines))
    out[split] = expected
  test = out.pop("test")
  out["query"] = [test[r - 1] for r in query_rows if 1 <= r <= len(test)]
  out["gallery"] = [t for i, t in enumerate(test) if i + 1 not in query_rows]
  rows = np.asarray(query_rows, np.float64)
  if query_format == "mat":
    import h5py  # pylint: disable=g-import-not-at-top
    path = os.path.join(ls, "test", "data", "info_test.mat")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
      f.create_dataset("query", data=rows[None, :])
    with open(path, "r+b") as f:  # The MATLAB 7.3 header in the userblock.
      f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: fake "
              b"HDF5 schema 1.00 .")
  elif query_format == "npy":
    os.makedirs(os.path.join(ls, "test"), exist_ok=True)
    np.save(os.path.join(ls, "test", "query.npy"), rows.astype(np.int64))
    info = np.asarray([[0, 0, t[0], t[2]] for t in splits["test"]], np.int64)
    np.save(os.path.join(ls, "test", "info_test.npy"), info)
  else:
    raise ValueError(query_format)
  return out


# --- building and reading -----------------------------------------------------
def build(builder_cls, manual_dir: str | None, data_dir: str, **kwargs):
  """Builds a dataset with `builder_cls` into data_dir; returns the builder."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = builder_cls(data_dir=data_dir, **kwargs)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
      file_format="array_record")
  return builder


def read_split(builder, split: str) -> list[dict[str, Any]]:
  """Every record of a built split, decoded to plain Python values."""
  source = builder.as_data_source(split=split)
  out = []
  for r in source:
    out.append({
        "frames": list(r["frames"]),
        "frame_numbers": [int(x) for x in r["frame_numbers"]],
        "pid": int(r["pid"]), "camid": int(r["camid"]),
        "tracklet_id": int(r["tracklet_id"]),
        "is_distractor": bool(r["is_distractor"]),
        "is_junk": bool(r["is_junk"]),
        "path": r["path"].decode() if isinstance(r["path"], bytes)
                else str(r["path"]),
    })
  return out


def summary(t) -> tuple:
  """Comparable view of an ExpectedTracklet or a record read by read_split."""
  if isinstance(t, ExpectedTracklet):
    return (t.pid, t.camid, t.tracklet_id, list(t.frame_numbers),
            t.is_distractor, t.is_junk, t.path)
  return (t["pid"], t["camid"], t["tracklet_id"], t["frame_numbers"],
          t["is_distractor"], t["is_junk"], t["path"])
