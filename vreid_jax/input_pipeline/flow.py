"""Precomputed optical flow of a built dataset, aligned with its RGB frames.

STAR and M3D's two-stream baseline read a flow clip next to each RGB clip.
Flow is computed once by `data_prep/flow.py` (TV-L1, OpenCV) and stored
beside the dataset's array_record files:

  <builder data dir>/flow_tvl1/<split>.array_record   record i = flow of
                                                      record i of the split
  <builder data dir>/flow_tvl1/<split>.json           how it was made

(`<builder data dir>` is e.g. ~/tensorflow_datasets/mars/1.0.0; rebuilding
the dataset deletes that folder and with it the now misaligned flow.)

Convention (the common two-stream one):
  * one flow image per RGB frame: frame t holds the flow from frame t to
    frame t+1 (computed on grey levels at frame t's size; frame t+1 is
    resized to it when the crops differ); the last frame repeats the flow
    of the one before, and a one-frame tracklet has zero flow;
  * displacements in pixels are clipped to [-BOUND, BOUND] (BOUND = 20) and
    quantised to uint8 as round((f + BOUND) * 255 / (2 * BOUND)), so 0 px is
    stored as 128 and decodes to +0.08 px;
  * each frame is a lossless 2-channel PNG (mode "LA"): channel 0 the
    horizontal (x) and channel 1 the vertical (y) displacement.

`FlowSource(data_dir, dataset, split)[record]` returns the list of PNG bytes
of one record, one per RGB frame; `decode_flow` turns one into float pixels.
The flow may be stored at another size than the frames (data_prep/flow.py
--size): readers resize it (`augment.decode_flow_clip` scales the vectors).

Two backends fill the store with the same TV-L1 scheme and parameters:
OpenCV's DualTVL1OpticalFlow (`tvl1_factory`) and `vreid_jax.flow` (JAX,
batched over devices); `tracklet_pairs` and `assemble_tracklet` are the
per-tracklet convention both share.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image

BOUND = 20.0
FLOW_DIR = "flow_tvl1"
METHOD = "TV-L1 (OpenCV DualTVL1OpticalFlow, default parameters)"
_MAGIC = b"VRF1"


class FlowNotComputedError(FileNotFoundError):
  """The flow store of a split does not exist (run data_prep/flow.py)."""


# --- encoding -----------------------------------------------------------------
def quantize(flow: np.ndarray, bound: float = BOUND) -> np.ndarray:
  """(H, W, 2) float pixels -> uint8 with 0 px at 128, clipped to +-bound."""
  flow = np.clip(np.asarray(flow, np.float32), -bound, bound)
  return np.round((flow + bound) * (255.0 / (2.0 * bound))).astype(np.uint8)


def dequantize(q: np.ndarray, bound: float = BOUND) -> np.ndarray:
  """Inverse of `quantize` (up to the quantisation step 2*bound/255)."""
  return q.astype(np.float32) * (2.0 * bound / 255.0) - bound


def encode_flow(flow: np.ndarray, bound: float = BOUND) -> bytes:
  """(H, W, 2) float pixels -> 2-channel PNG bytes."""
  if flow.ndim != 3 or flow.shape[-1] != 2:
    raise ValueError(f"flow must be (H, W, 2), got {flow.shape}")
  buf = io.BytesIO()
  Image.fromarray(quantize(flow, bound), mode="LA").save(buf, format="PNG")
  return buf.getvalue()


def decode_flow(data: bytes, bound: float = BOUND) -> np.ndarray:
  """2-channel PNG bytes -> (H, W, 2) float32 pixels."""
  with Image.open(io.BytesIO(data)) as img:
    arr = np.asarray(img.convert("LA"))
  return dequantize(arr, bound)


def pack(items: Sequence[bytes]) -> bytes:
  """Serialises a list of byte strings into one record."""
  header = _MAGIC + struct.pack(f"<I{len(items)}I", len(items),
                                *(len(b) for b in items))
  return header + b"".join(items)


def unpack(record: bytes) -> list[bytes]:
  """Inverse of `pack`."""
  if record[:4] != _MAGIC:
    raise ValueError("not a vreid_jax flow record")
  (n,) = struct.unpack_from("<I", record, 4)
  sizes = struct.unpack_from(f"<{n}I", record, 8)
  out, pos = [], 8 + 4 * n
  for size in sizes:
    out.append(record[pos:pos + size])
    pos += size
  return out


# --- computing ----------------------------------------------------------------
def tvl1_factory() -> Callable[[], Any]:
  """Returns a constructor of OpenCV's TV-L1 flow object.

  Raises:
    ImportError: OpenCV (with the contrib modules) is not installed.
  """
  try:
    import cv2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "optical flow needs OpenCV with the contrib modules: pip install "
        "'vreid_jax[flow]' (i.e. opencv-contrib-python-headless)") from e
  if hasattr(cv2, "optflow") and hasattr(cv2.optflow,
                                         "DualTVL1OpticalFlow_create"):
    return cv2.optflow.DualTVL1OpticalFlow_create
  if hasattr(cv2, "DualTVL1OpticalFlow_create"):  # OpenCV 3.x.
    return cv2.DualTVL1OpticalFlow_create
  raise ImportError(
      f"OpenCV {cv2.__version__} has no TV-L1 flow: install the contrib "
      "build, pip install 'vreid_jax[flow]' (opencv-contrib-python-headless)")


def _grey(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as img:
    return np.asarray(img.convert("L"))


def _resized(grey: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  if grey.shape == shape:
    return grey
  img = Image.fromarray(grey).resize((shape[1], shape[0]), Image.BILINEAR)
  return np.asarray(img)


def tracklet_pairs(frames: Sequence[bytes],
                   size: tuple[int, int] | None = None
                   ) -> tuple[list[tuple[np.ndarray, np.ndarray]],
                              tuple[int, int]]:
  """The grey (frame t, frame t+1) pairs whose flow a tracklet stores.

  Frame t+1 is resized to frame t's size (both to `size` if given).

  Returns:
    (the len(frames) - 1 uint8 pairs, the first frame's flow size).
  """
  if not frames:
    return [], tuple(size) if size is not None else (0, 0)
  greys = [_grey(f) for f in frames]
  if size is not None:
    greys = [_resized(g, tuple(size)) for g in greys]
  pairs = [(greys[t], _resized(greys[t + 1], greys[t].shape))
           for t in range(len(greys) - 1)]
  return pairs, greys[0].shape


def assemble_tracklet(flows: Sequence[np.ndarray], num_frames: int,
                      shape: tuple[int, int],
                      bound: float = BOUND) -> list[bytes]:
  """Encoded flow frames of a tracklet from the flow of its pairs.

  The last frame repeats the flow before it; a one-frame tracklet gets
  zero flow of `shape`.
  """
  if num_frames == 0:
    return []
  if len(flows) != num_frames - 1:
    raise ValueError(f"{len(flows)} flows for {num_frames} frames")
  out = [encode_flow(f, bound) for f in flows]
  if out:
    out.append(out[-1])
  else:
    out.append(encode_flow(np.zeros(tuple(shape) + (2,), np.float32), bound))
  return out


def tracklet_flow(frames: Sequence[bytes], tvl1: Any = None,
                  bound: float = BOUND,
                  size: tuple[int, int] | None = None) -> list[bytes]:
  """Encoded flow of each frame of a tracklet (see the module docstring).

  Args:
    frames: encoded RGB frames.
    tvl1: an object with OpenCV's `calc(I0, I1, flow)` (default: OpenCV's
      DualTVL1OpticalFlow; `vreid_jax.flow.DualTVL1` is the JAX one).
    bound: quantisation bound (pixels).
    size: compute (and store) the flow at this (height, width) instead of
      each frame's own size.
  """
  if not frames:
    return []
  tvl1 = tvl1 if tvl1 is not None else tvl1_factory()()
  pairs, shape = tracklet_pairs(frames, size)
  flows = [tvl1.calc(a, b, None) for a, b in pairs]
  return assemble_tracklet(flows, len(frames), shape, bound)


def flow_dir(builder_data_dir: str) -> str:
  return os.path.join(builder_data_dir, FLOW_DIR)


def write_flow_store(builder_data_dir: str, split: str,
                     records: Iterable[list[bytes]],
                     num_frames: Sequence[int], method: str = METHOD,
                     extra: dict[str, Any] | None = None) -> str:
  """Writes the flow of a split (records in order); returns its path.

  Written to a temporary name and renamed when complete, so an interrupted
  run leaves no half store behind.

  Args:
    builder_data_dir: the built dataset's folder.
    split: the split.
    records: the encoded flow frames of each record, in record order.
    num_frames: RGB frames per record (checked).
    method: how the flow was computed (stored in the JSON).
    extra: more JSON fields (e.g. the parameters).
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  folder = flow_dir(builder_data_dir)
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f"{split}.array_record")
  tmp = path + ".incomplete"
  writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
  count = 0
  try:
    for i, frames in enumerate(records):
      if len(frames) != num_frames[i]:
        raise ValueError(f"record {i}: {len(frames)} flow frames for "
                         f"{num_frames[i]} RGB frames")
      writer.write(pack(frames))
      count += 1
  finally:
    writer.close()
  if count != len(num_frames):
    os.remove(tmp)
    raise ValueError(f"{split}: wrote {count} of {len(num_frames)} records")
  with open(os.path.join(folder, f"{split}.json"), "w") as f:
    json.dump({"method": method, "bound": BOUND,
               "encoding": "2-channel PNG (LA): x then y displacement, "
                           "uint8 = round((f + bound) * 255 / (2 * bound))",
               "alignment": "frame t: flow t -> t+1; last frame repeats",
               **(extra or {}),
               "num_frames": [int(n) for n in num_frames]}, f)
  os.replace(tmp, path)
  return path


# --- reading ------------------------------------------------------------------
class FlowSource:
  """Random access to the precomputed flow of one split of a built dataset.

  `source[i]` is the list of encoded flow frames of record i, one per RGB
  frame of that record (aligned: element t is the flow from frame t to t+1).
  Picklable (the file is reopened in each process).

  Attributes:
    path: the array_record file.
    num_frames: RGB frames per record, checked against the dataset's index.
    bound: the clipping bound used to quantise (pixels).
  """

  def __init__(self, data_dir: str | None, dataset: str, split: str):
    """Opens the flow of `split` of `dataset` (a "name[/config]").

    Args:
      data_dir: the TFDS data dir (None: $TFDS_DATA_DIR or
        ~/tensorflow_datasets).
      dataset: the registered builder name, optionally with its config.
      split: the TFDS split.

    Raises:
      FlowNotComputedError: the flow of this split was not computed.
      ValueError: the flow does not match the built dataset any more.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    import vreid_jax.datasets  # pylint: disable=g-import-not-at-top,unused-import
    data_dir = os.path.expanduser(
        data_dir or os.environ.get("TFDS_DATA_DIR")
        or os.path.join("~", "tensorflow_datasets"))
    builder = tfds.builder(dataset, data_dir=data_dir)
    folder = flow_dir(builder.data_dir)
    self.path = os.path.join(folder, f"{split}.array_record")
    meta_path = os.path.join(folder, f"{split}.json")
    if not (os.path.isfile(self.path) and os.path.isfile(meta_path)):
      raise FlowNotComputedError(
          f"no optical flow for {dataset} split {split!r} in {folder}: "
          f"compute it with python data_prep/flow.py --dataset={dataset} "
          f"--data_dir={data_dir} --splits={split}")
    with open(meta_path) as f:
      meta = json.load(f)
    self.num_frames = [int(n) for n in meta["num_frames"]]
    self.bound = float(meta["bound"])
    index = (builder.info.metadata or {}).get("index", {}).get(split)
    if index is not None and list(index["num_frames"]) != self.num_frames:
      raise ValueError(
          f"the flow in {folder} does not match {dataset} split {split!r} "
          "(different frame counts): the dataset was rebuilt; recompute the "
          "flow with data_prep/flow.py --overwrite")
    self._reader = None

  def _open(self):
    if self._reader is None:
      from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
      self._reader = array_record_module.ArrayRecordReader(
          self.path, "readahead_buffer_size:0")
    return self._reader

  def __len__(self) -> int:
    return len(self.num_frames)

  def __getitem__(self, record: int) -> list[bytes]:
    record = int(record)
    if not 0 <= record < len(self):
      raise IndexError(f"record {record} out of range (0..{len(self) - 1})")
    return unpack(self._open().read([record])[0])

  def decoded(self, record: int) -> list[np.ndarray]:
    """Flow of a record as (H, W, 2) float32 pixel displacements."""
    return [decode_flow(b, self.bound) for b in self[record]]

  def __getstate__(self) -> dict[str, Any]:
    state = dict(self.__dict__)
    state["_reader"] = None
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
