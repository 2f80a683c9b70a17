"""Base class of every vreid_jax TFDS builder.

A subclass describes its tracklets (`Tracklet` records: where each frame comes
from, pid, camera, ...) split by split; this base class turns them into the
shared feature spec (`features.py`), checks every frame's encoded header
(format and, where the dataset declares one, size), writes array_record files
in generation order and stores the per-split index in the dataset metadata.

Build from Python (no TensorFlow needed):

  builder = vreid_jax.datasets.mars.Mars(data_dir=..., config=None)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=...),
      file_format="array_record")

or with `python data_prep/build.py --dataset=mars --manual_dir=...`.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
import tqdm

from vreid_jax.datasets import features as features_lib

FrameSource = str | bytes | Callable[[], bytes]


def dataset_root(manual_dir: str, folder: str, marker: str) -> str:
  """Where a dataset's published folder is, given the manual dir.

  The manual dir may hold the unpacked folder (`manual_dir/<folder>`) or be
  that folder itself, recognised by a `marker` entry inside it. Any other
  case returns `manual_dir/<folder>`, whose absence the layout check names.
  """
  root = os.path.join(manual_dir, folder)
  if not os.path.isdir(root) and os.path.isdir(
      os.path.join(manual_dir, marker)):
    return manual_dir
  return root


class CorruptImageError(ValueError):
  """A frame could not be read, is not JPEG/PNG, or has the wrong size."""

  def __init__(self, source: str, reason: str):
    super().__init__(f"{source}: {reason}")
    self.source = source
    self.reason = reason


class LayoutError(FileNotFoundError):
  """The manual dir does not hold a dataset in its published layout.

  The message names every missing file or folder and where it comes from;
  `data_prep/build.py` prints it as one paragraph, without a traceback.
  """


def check_layout(dataset: str, manual_dir: str,
                 required: Sequence[tuple[str, str]],
                 instructions: str = "") -> None:
  """Raises `LayoutError` naming each missing path of `required`.

  Args:
    dataset: the dataset's name, for the message.
    manual_dir: the directory the user filled.
    required: (path, where it comes from) pairs; a path ending in "/" must
      be a folder, any other a file.
    instructions: appended to the message (e.g. where to download).
  """
  missing = []
  for path, origin in required:
    want_dir = path.endswith("/")
    clean = path.rstrip("/")
    ok = os.path.isdir(clean) if want_dir else os.path.isfile(clean)
    if not ok:
      kind = "folder" if want_dir else "file"
      missing.append(f"{kind} {clean} ({origin})")
  if missing:
    raise LayoutError(
        f"{dataset}: {manual_dir} does not hold the dataset in its published "
        f"layout; missing {len(missing)}: " + "; ".join(missing) + "."
        + (f" {instructions}" if instructions else ""))


@dataclasses.dataclass
class Tracklet:
  """One tracklet as a builder describes it.

  Attributes:
    frames: one entry per frame in temporal order: a file path, the encoded
      bytes, or a zero-argument callable returning the encoded bytes.
    frame_numbers: the published frame number of each frame.
    pid: person id as published.
    camid: 1-based camera id.
    tracklet_id: tracklet number as published.
    path: the source path shown in visualisations.
    is_distractor: pid is a distractor identity.
    is_junk: pid is junk.
    extra: values of the builder's extra features.
  """
  frames: Sequence[FrameSource]
  frame_numbers: Sequence[int]
  pid: int
  camid: int
  tracklet_id: int
  path: str
  is_distractor: bool = False
  is_junk: bool = False
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def read_frame(source: FrameSource, *, name: str | None = None,
               expected_size: tuple[int, int] | None = None) -> bytes:
  """Returns the encoded bytes of a frame after checking its header.

  Args:
    source: a path, bytes or a callable returning bytes.
    name: how to name the frame in errors (defaults to the path).
    expected_size: (height, width) every frame must have, or None.

  Raises:
    CorruptImageError: unreadable, not JPEG/PNG, or of the wrong size.
  """
  label = name or (source if isinstance(source, str) else "<frame bytes>")
  try:
    if isinstance(source, str):
      with open(source, "rb") as f:
        data = f.read()
    elif callable(source):
      data = source()
    else:
      data = bytes(source)
  except OSError as e:
    raise CorruptImageError(label, f"cannot read file ({e})") from e
  if not data:
    raise CorruptImageError(label, "empty file")
  try:
    with Image.open(io.BytesIO(data)) as img:
      fmt = img.format
      width, height = img.size
      img.verify()
  except Exception as e:  # PIL raises many types for broken data.
    raise CorruptImageError(label, f"not a readable image ({e})") from e
  if fmt not in ("JPEG", "PNG"):
    raise CorruptImageError(label, f"format {fmt} is not JPEG or PNG")
  if expected_size is not None and (height, width) != tuple(expected_size):
    raise CorruptImageError(
        label, f"image is {height}x{width}, the dataset's frames are "
        f"{expected_size[0]}x{expected_size[1]} (height x width)")
  return data


@dataclasses.dataclass
class BuildReport:
  """What a build skipped, so nothing is lost silently."""
  skipped_frames: list[tuple[str, str]] = dataclasses.field(
      default_factory=list)
  skipped_tracklets: list[tuple[str, str]] = dataclasses.field(
      default_factory=list)

  def summary(self) -> str:
    lines = [f"skipped {len(self.skipped_frames)} corrupt frames and "
             f"{len(self.skipped_tracklets)} tracklets left with no frame"]
    for src, why in self.skipped_frames[:20]:
      lines.append(f"  frame {src}: {why}")
    if len(self.skipped_frames) > 20:
      lines.append(f"  ... and {len(self.skipped_frames) - 20} more frames")
    for src, why in self.skipped_tracklets[:20]:
      lines.append(f"  tracklet {src}: {why}")
    return "\n".join(lines)


class ReidBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared machinery of the video ReID builders.

  Subclasses set `VERSION`, `RELEASE_NOTES`, `MANUAL_DOWNLOAD_INSTRUCTIONS`,
  optionally `IMAGE_SIZE` (height, width) and `EXTRA_FEATURES`, and implement
  `_tracklets(manual_dir) -> {split: [Tracklet, ...]}` (after validating the
  layout with a clear error).

  Attributes:
    skip_corrupt: skip (and count in `report`) corrupt frames instead of
      failing. Set by `data_prep/build.py --skip_corrupt`.
  """

  IMAGE_SIZE: tuple[int, int] | None = None
  # False for builders that make their data themselves (the synthetic
  # benchmark): `_tracklets` then receives "" and no manual dir is needed.
  NEEDS_MANUAL_DIR: bool = True
  # Show a tqdm bar while frames are read (data_prep/build.py turns it on).
  progress_bar: bool = False
  EXTRA_FEATURES: Mapping[str, tfds.features.FeatureConnector] = {}
  HOMEPAGE: str = ""
  CITATION: str = ""

  def __init__(self, *args, skip_corrupt: bool = False, **kwargs):
    super().__init__(*args, **kwargs)
    self.skip_corrupt = skip_corrupt
    self.report = BuildReport()

  # --- to implement -------------------------------------------------------
  def _tracklets(self, manual_dir: str) -> Mapping[str, Sequence[Tracklet]]:
    raise NotImplementedError

  # --- TFDS plumbing ------------------------------------------------------
  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=features_lib.reid_features(self.EXTRA_FEATURES),
        homepage=self.HOMEPAGE or None,
        citation=self.CITATION or None,
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    manual_dir = (os.fspath(dl_manager.manual_dir) if self.NEEDS_MANUAL_DIR
                  else "")
    splits = self._tracklets(manual_dir)
    index = {}
    generators = {}
    for split, tracklets in splits.items():
      tracklets = self._checked(split, tracklets)
      index[split] = self._index(tracklets)
      generators[split] = self._generate_examples(tracklets)
    self.info.metadata["index"] = index
    if self.report.skipped_frames or self.report.skipped_tracklets:
      self.info.metadata["build_report"] = {
          "skipped_frames": [list(x) for x in self.report.skipped_frames],
          "skipped_tracklets": [list(x) for x in self.report.skipped_tracklets],
      }
    return generators

  def _checked(self, split: str,
               tracklets: Sequence[Tracklet]) -> list[Tracklet]:
    """Reads every frame's header once; drops (and reports) corrupt ones."""
    out = []
    for t in tqdm.tqdm(tracklets, desc=f"reading {split} frames",
                       unit="tracklet", disable=not self.progress_bar):
      frames, numbers = [], []
      for i, (src, num) in enumerate(zip(t.frames, t.frame_numbers,
                                         strict=True)):
        name = src if isinstance(src, str) else f"{t.path}[{i}]"
        try:
          data = read_frame(src, name=name, expected_size=self.IMAGE_SIZE)
          # A checked path is read again when its record is written, so a
          # build never holds a whole dataset (MARS: 1.19M frames) in memory.
          frames.append(src if isinstance(src, str) else data)
        except CorruptImageError as e:
          if not self.skip_corrupt:
            raise CorruptImageError(
                e.source, e.reason + " (split " + split + "; rerun with "
                "--skip_corrupt to skip and count corrupt frames)") from e
          self.report.skipped_frames.append((e.source, e.reason))
          continue
        numbers.append(int(num))
      if not frames:
        self.report.skipped_tracklets.append((t.path, "no readable frame"))
        continue
      out.append(dataclasses.replace(t, frames=frames, frame_numbers=numbers))
    return out

  def _index(self, tracklets: Sequence[Tracklet]) -> dict[str, list]:
    index = {
        "pid": [int(t.pid) for t in tracklets],
        "camid": [int(t.camid) for t in tracklets],
        "tracklet_id": [int(t.tracklet_id) for t in tracklets],
        "num_frames": [len(t.frames) for t in tracklets],
        "is_distractor": [bool(t.is_distractor) for t in tracklets],
        "is_junk": [bool(t.is_junk) for t in tracklets],
    }
    # Per-tracklet scalars only: per-frame extras (e.g. the synthetic
    # benchmark's occlusion flags) stay in the records.
    for key, feature in self.EXTRA_FEATURES.items():
      if isinstance(feature, tfds.features.Scalar):
        index[key] = [_plain(t.extra[key]) for t in tracklets]
    return index

  def _generate_examples(
      self, tracklets: Sequence[Tracklet]) -> Iterator[tuple[int, dict]]:
    for key, t in enumerate(tracklets):
      example = {
          "frames": [_frame_bytes(f) for f in t.frames],
          "frame_numbers": np.asarray(t.frame_numbers, np.int32),
          "pid": t.pid,
          "camid": t.camid,
          "tracklet_id": t.tracklet_id,
          "is_distractor": bool(t.is_distractor),
          "is_junk": bool(t.is_junk),
          "path": t.path,
      }
      for k in self.EXTRA_FEATURES:
        example[k] = t.extra[k]
      yield key, example


def _frame_bytes(frame: str | bytes) -> bytes:
  """A checked frame's bytes: read from its path, or already in memory."""
  if isinstance(frame, str):
    with open(frame, "rb") as f:
      return f.read()
  return frame


def _plain(value: Any) -> Any:
  if isinstance(value, np.generic):
    return value.item()
  return value
