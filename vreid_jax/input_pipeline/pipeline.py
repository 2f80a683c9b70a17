"""The input pipeline: grain over `tfds.data_source`, one for every dataset.

Training batches are a pure function of (seed, step): batch `s` is built from
the PK plan of its epoch (`sampling.pk_epoch_plan` seeded by (seed, epoch))
and every clip's frames and augmentation are drawn from a generator seeded by
(seed, step, slot). The grain iterator over steps is therefore deterministic,
its state (the next step) is saved with each checkpoint, and a resumed run
sees exactly the batches an uninterrupted one sees. Each JAX process builds
only its rows of the global batch (`process_index`-th slice).

Evaluation streams fixed-size batches of clips with a frame mask and the
position of the tracklet each clip belongs to; the embeddings of a
tracklet's clips are averaged by the evaluator.

Data faults (`config.input.on_bad_frame`): a frame that fails to decode or
a record that fails to read raises `DataFaultError`, naming the dataset,
split, record, tracklet and frame, by default ("error"). With "skip", a bad
frame is replaced by the nearest readable frame of its tracklet (the
earlier one on a tie) and, in training only, an unreadable record by the
nearest readable tracklet of the same identity; every replacement is named
in the batch's host-side keys "num_bad_frames" and "bad_frames" (see
`decode_frames`). Which frames are bad is a property of the files, so
batches stay a pure function of (seed, step).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from absl import logging
import grain
import numpy as np

from vreid_jax.input_pipeline import augment
from vreid_jax.input_pipeline import sampling

DEFAULT_DATA_DIR = os.path.join("~", "tensorflow_datasets")


class DatasetNotBuiltError(FileNotFoundError):
  """The TFDS dataset a config names is not in its data dir."""


# `config.input.on_bad_frame`: what a frame that fails to decode does.
ON_BAD_FRAME = ("error", "skip")
# The host-side keys a batch carries with on_bad_frame="skip": pop them
# before `parallel.global_batch`.
FAULT_KEYS = ("num_bad_frames", "bad_frames")


def check_on_bad_frame(value: str) -> str:
  if value not in ON_BAD_FRAME:
    raise ValueError(
        f"config.input.on_bad_frame must be one of {ON_BAD_FRAME}, got "
        f"{value!r}: 'error' stops at a frame that fails to decode, 'skip' "
        "replaces it by the nearest readable frame of its tracklet and "
        "counts it")
  return value


class DataFaultError(ValueError):
  """A frame that fails to decode or a record that fails to read.

  Attributes:
    dataset: the TFDS builder name ("mars", "synthetic_video_reid/tiny").
    split: the TFDS split.
    record: the record index in the split.
    frame: the frame's index in the record's `frames` (0-based); None when
      the whole record fails to read.
    tracklet: what is known of the tracklet ("pid 3, camid 1, ...").
  """

  def __init__(self, message: str, *, dataset: str = "", split: str = "",
               record: int = -1, frame: int | None = None,
               tracklet: str = ""):
    super().__init__(message)
    self.dataset, self.split, self.record = dataset, split, record
    self.frame, self.tracklet = frame, tracklet

  def __reduce__(self):  # Keeps the fields across grain worker processes.
    return (functools.partial(type(self), dataset=self.dataset,
                              split=self.split, record=self.record,
                              frame=self.frame, tracklet=self.tracklet),
            (str(self),))

  @classmethod
  def at(cls, where: FaultSite, frame: int | None, problem: str,
         cause: BaseException | None = None, *,
         skippable: bool = True) -> DataFaultError:
    """The error of `frame` (None: the whole record) at `where`.

    `skippable`: the message offers on_bad_frame=skip (not when skipping
    is what failed).
    """
    what = (f"record {where.record}" if frame is None else
            f"frame {frame}{where.frame_number(frame)} of record "
            f"{where.record}")
    msg = (f"{where.dataset} split {where.split!r}: {what}"
           + (f" ({where.tracklet})" if where.tracklet else "")
           + f" {problem}")
    if cause is not None:
      msg += f": {type(cause).__name__}: {cause}"
    msg += ". " + where.how_to_go_on(
        None if not skippable else "record" if frame is None else "frame")
    return cls(msg, dataset=where.dataset, split=where.split,
               record=where.record, frame=frame, tracklet=where.tracklet)


@dataclasses.dataclass(frozen=True)
class FaultSite:
  """Where frames come from, to name them in errors and skip lists."""
  dataset: str
  split: str
  record: int
  data_dir: str = ""
  tracklet: str = ""
  frame_numbers: tuple[int, ...] = ()
  custom_source: bool = False

  def frame_name(self, frame: int | None) -> str:
    """`dataset/split/record:frame` (frame `*`: the whole record)."""
    return (f"{self.dataset}/{self.split}/{self.record}:"
            f"{'*' if frame is None else frame}")

  def frame_number(self, frame: int) -> str:
    if 0 <= frame < len(self.frame_numbers):
      return f" (published frame number {self.frame_numbers[frame]})"
    return ""

  def how_to_go_on(self, kind: str | None) -> str:
    """What to do: rebuild; `kind` "frame" or "record" adds what skip does."""
    if self.custom_source:
      fix = "Replace the unreadable file(s) of that tracklet"
    else:
      name, _, config = self.dataset.partition("/")
      fix = ("The dataset's files are damaged: rebuild them with `python "
             f"data_prep/build.py --dataset={name}"
             + (f" --config={config}" if config else "")
             + (f" --data_dir={self.data_dir}" if self.data_dir else "")
             + " --overwrite` (plus --manual_dir=<download> for a real "
               "dataset)")
    if kind is None:
      return fix
    if kind == "record":
      return fix + ("; with --config.input.on_bad_frame=skip, training "
                    "replaces an unreadable tracklet by another of the same "
                    "identity (evaluation cannot, and stops)")
    return fix + ("; or set --config.input.on_bad_frame=skip to replace "
                  "each bad frame by the nearest readable frame of its "
                  "tracklet, counted in the logs and metrics.json")


def _site(dataset: str, split: str, record: int, data_dir: str,
          example: Mapping[str, Any] | None = None, *,
          custom_source: bool = False, **known) -> FaultSite:
  """A FaultSite naming the tracklet from its record, else from `known`."""
  info = dict(known)
  frame_numbers = ()
  if example is not None:
    for key in ("pid", "camid", "tracklet_id", "path"):
      if key in example:
        value = example[key]
        if isinstance(value, bytes):
          value = value.decode("utf-8", "replace")
        info[key] = value.item() if hasattr(value, "item") else value
    if "frame_numbers" in example:
      frame_numbers = tuple(int(x) for x in example["frame_numbers"])
  tracklet = ", ".join(f"{k} {v}" for k, v in info.items())
  return FaultSite(dataset, split, int(record), data_dir, tracklet,
                   frame_numbers, custom_source)


def read_record(source, where: FaultSite) -> Mapping[str, Any]:
  """`source[record]`, tried twice; a read failure raises DataFaultError.

  The second try keeps a transient I/O error from being taken for a damaged
  file (which would make "skip" substitutions depend on luck).
  """
  try:
    return source[where.record]
  except Exception:  # pylint: disable=broad-except
    pass
  try:
    return source[where.record]
  except Exception as e:  # pylint: disable=broad-except
    raise DataFaultError.at(where, None, "cannot be read", e) from e


def decode_frames(frames: Sequence[bytes], indices: np.ndarray, height: int,
                  width: int, *, where: FaultSite, on_bad_frame: str = "error"
                  ) -> tuple[np.ndarray, list[str]]:
  """`augment.decode_clip` that names, or replaces, frames that fail.

  With on_bad_frame="skip", a frame that fails to decode is replaced by the
  nearest readable frame of the tracklet (by frame index, the earlier one
  on a tie): the closest stand-in in time, never a black frame. A tracklet
  with no readable frame raises in either mode.

  Returns:
    ((T, H, W, 3) uint8 clip, names `dataset/split/record:frame` of the
    clip's distinct replaced frames, in order of first use).

  Raises:
    DataFaultError: a frame fails with on_bad_frame="error", or no frame of
      the tracklet is readable.
  """
  cache: dict[int, np.ndarray] = {}
  errors: dict[int, Exception] = {}

  def load(i: int) -> np.ndarray | None:
    if i not in cache and i not in errors:
      try:
        cache[i] = augment.decode_resize(frames[i], height, width)
      except Exception as e:  # pylint: disable=broad-except
        errors[i] = e
    return cache.get(i)

  out = np.empty((len(indices), height, width, 3), np.uint8)
  skipped: list[str] = []
  for t, i in enumerate(indices):
    i = int(i)
    image = load(i)
    if image is None:
      if on_bad_frame != "skip":
        raise DataFaultError.at(where, i, "cannot be decoded",
                                errors[i])
      name = where.frame_name(i)
      if name not in skipped:
        skipped.append(name)
      n = len(frames)
      nearest = sorted((j for j in range(n) if j != i),
                       key=lambda j, i=i: (abs(j - i), j))
      image = next((load(j) for j in nearest if load(j) is not None), None)
      if image is None:
        raise DataFaultError.at(
            where, i, f"cannot be decoded, nor can any other of the "
            f"tracklet's {n} frames (nothing to replace it with)",
            errors[i], skippable=False)
    out[t] = image
  return out, skipped


def fault_keys(skipped: Sequence[str]) -> dict[str, np.ndarray]:
  """The batch keys that report replaced frames (host-side only)."""
  return {"num_bad_frames": np.asarray(len(skipped), np.int32),
          "bad_frames": np.asarray(list(skipped), dtype=np.str_)}


@dataclasses.dataclass
class TrackletSet:
  """One role (train, query, gallery, ...) of a dataset.

  Attributes:
    role: "train", "query", "gallery" or "val".
    split: the TFDS split the records live in.
    records: (N,) record indices into that split.
    index: per-tracklet arrays (pid, camid, num_frames, ...) of the records,
      in the same order.
  """
  role: str
  split: str
  records: np.ndarray
  index: dict[str, np.ndarray]

  def __len__(self) -> int:
    return len(self.records)


@dataclasses.dataclass
class ReidData:
  """An opened dataset: where it lives and its roles.

  Attributes:
    frame_sources: None for a TFDS dataset (records are read from its data
      source); else {split: a picklable mapping record -> {"frames":
      sequence of encoded frames}} (e.g. a user's folders of frames,
      `vreid_jax.extract`).
  """
  name: str
  data_dir: str
  metadata: Mapping[str, Any]
  roles: dict[str, TrackletSet]
  frame_sources: Mapping[str, Any] | None = None

  def source(self, split: str):
    if self.frame_sources is not None:
      return self.frame_sources[split]
    return _data_source(self.name, self.data_dir, split)


def resolve_data_dir(data_dir: str | None) -> str:
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR
  return os.path.abspath(os.path.expanduser(data_dir))


def _builder_name(cfg) -> str:
  return f"{cfg.name}/{cfg.config}" if cfg.get("config") else cfg.name


def open_dataset(cfg, data_dir: str | None = None, *,
                 build_if_missing: bool | None = None) -> ReidData:
  """Opens the dataset that `config.dataset` names.

  Args:
    cfg: `config.dataset` with fields name, config (builder config, may be
      empty), trial (-1 when the dataset has fixed splits) and auto_build
      (build procedurally generated datasets when missing).
    data_dir: the TFDS data dir (`config.data_dir`); '' or None means
      $TFDS_DATA_DIR, else ~/tensorflow_datasets.
    build_if_missing: overrides cfg.auto_build.

  Raises:
    DatasetNotBuiltError: the dataset is not built; the message says how to
      build it.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import vreid_jax.datasets  # pylint: disable=g-import-not-at-top,unused-import
  from vreid_jax.input_pipeline import splits  # pylint: disable=g-import-not-at-top

  data_dir = resolve_data_dir(data_dir)
  name = _builder_name(cfg)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(
        f"config.dataset.name={cfg.name!r}: no such dataset; vreid_jax "
        f"datasets: {', '.join(vreid_jax.datasets.NAMES)}") from None
  if not _is_built(builder):
    build = cfg.get("auto_build", False) if build_if_missing is None else (
        build_if_missing)
    if not build:
      raise DatasetNotBuiltError(
          f"dataset {name!r} is not built in data_dir {data_dir} (set by "
          "--config.data_dir, else $TFDS_DATA_DIR, else "
          f"{DEFAULT_DATA_DIR}). Build it with:\n  python data_prep/build.py "
          f"--dataset={cfg.name}"
          + (f" --config={cfg.config}" if cfg.get("config") else "")
          + f" --manual_dir=<unpacked download> --data_dir={data_dir}\n"
          "(data_prep/README.md says where each download comes from).")
    _build_once(builder)
    builder = tfds.builder(name, data_dir=data_dir)
  metadata = builder.info.metadata or {}
  if "index" not in metadata:
    raise ValueError(
        f"dataset {name!r} in {data_dir} has no per-split index in its "
        "metadata: it was not built by a vreid_jax builder, or by an older "
        "version. Rebuild it with data_prep/build.py.")
  trial = cfg.get("trial", -1)
  roles = splits.select_roles(cfg.name, metadata,
                              trial=None if trial is None or trial < 0
                              else trial)
  sets = {}
  for role, (split, records) in roles.items():
    split_index = metadata["index"][split]
    records = np.asarray(records, np.int64)
    sets[role] = TrackletSet(
        role=role, split=split, records=records,
        index={k: np.asarray(v)[records] for k, v in split_index.items()})
  return ReidData(name=name, data_dir=data_dir, metadata=metadata, roles=sets)


def _is_built(builder) -> bool:
  return os.path.exists(os.path.join(builder.data_dir, "dataset_info.json"))


def _build_once(builder) -> None:
  """Builds a procedural dataset; in multi-process runs only process 0."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    logging.info("Building %s into %s (first use).", builder.name,
                 builder.data_dir)
    builder.download_and_prepare(file_format="array_record")
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("vreid_jax_dataset_built")


_SOURCES: dict[tuple[str, str, str], Any] = {}
_SOURCES_LOCK = threading.Lock()


def _flow_source(name: str, data_dir: str, split: str):
  """A per-process cache of precomputed-flow sources (data_prep/flow.py)."""
  key = ("flow", name, data_dir, split)
  with _SOURCES_LOCK:
    if key not in _SOURCES:
      from vreid_jax.input_pipeline import flow  # pylint: disable=g-import-not-at-top
      _SOURCES[key] = flow.FlowSource(data_dir, name, split)
    return _SOURCES[key]


def _data_source(name: str, data_dir: str, split: str):
  """A per-process cache of random-access data sources."""
  key = (name, data_dir, split)
  with _SOURCES_LOCK:
    if key not in _SOURCES:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      import vreid_jax.datasets  # pylint: disable=g-import-not-at-top,unused-import
      _SOURCES[key] = tfds.data_source(name, split=split, data_dir=data_dir)
    return _SOURCES[key]


# ---------------------------------------------------------------------------
# Training.


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """Everything a worker needs to build training batch `step`."""
  name: str
  data_dir: str
  split: str
  records: tuple[int, ...]
  num_frames: tuple[int, ...]
  pids: tuple[int, ...]
  labels: tuple[int, ...]
  camids: tuple[int, ...]
  num_ids_per_batch: int
  num_per_id: int
  clip_len: int
  clip_sampling: str
  augment: augment.AugmentConfig
  seed: int
  epoch_repeats: int = 1
  pk_epoch: str = "tracklets"
  shuffle_frames: bool = False
  partners: tuple[int, ...] | None = None
  with_flow: bool = False
  process_index: int = 0
  process_count: int = 1
  on_bad_frame: str = "error"

  @property
  def global_batch_size(self) -> int:
    return self.num_ids_per_batch * self.num_per_id

  @property
  def local_batch_size(self) -> int:
    return self.global_batch_size // self.process_count


class TrainBatches:
  """Maps a step number to that step's local training batch (picklable)."""

  def __init__(self, spec: TrainSpec):
    if spec.global_batch_size % spec.process_count:
      raise ValueError(
          f"the global batch P*K = {spec.global_batch_size} is not divisible "
          f"by the {spec.process_count} processes")
    self.spec = spec
    self._plans: list[np.ndarray] = []
    self._starts: list[int] = [0]
    self._lock = threading.Lock()

  def __getstate__(self):
    return {"spec": self.spec}

  def __setstate__(self, state):
    self.__init__(state["spec"])

  def plan(self, epoch: int) -> np.ndarray:
    """The PK plan of `epoch`: (batches, P*K) positions into the train set.

    An epoch is `epoch_repeats` PK passes over the training tracklets (1 for
    clip training; the mean tracklet length for frame-level training, so
    that an epoch sees about as many samples as there are frames).
    """
    s = self.spec
    if s.pk_epoch not in sampling.PK_EPOCHS:
      raise ValueError(f"config.input.pk_epoch must be one of "
                       f"{sampling.PK_EPOCHS}, got {s.pk_epoch!r}")
    if s.pk_epoch == "ids":
      plan_fn = sampling.pk_epoch_plan_ids
    else:
      plan_fn = functools.partial(
          sampling.pk_epoch_plan,
          partners=None if s.partners is None else np.asarray(s.partners))
    return np.concatenate([
        plan_fn(np.asarray(s.pids), s.num_ids_per_batch, s.num_per_id,
                np.random.default_rng([s.seed, 7, epoch, r]))
        for r in range(s.epoch_repeats)])

  @property
  def steps_per_epoch(self) -> int:
    """The number of batches of epoch 0 (epochs differ by a batch or so)."""
    return len(self._epoch_plan(0))

  def _epoch_plan(self, epoch: int) -> np.ndarray:
    with self._lock:
      while len(self._plans) <= epoch:
        self._plans.append(self.plan(len(self._plans)))
        self._starts.append(self._starts[-1] + len(self._plans[-1]))
      return self._plans[epoch]

  def locate(self, step: int) -> tuple[int, np.ndarray]:
    """Returns (epoch, row of positions) of global batch `step`."""
    while self._starts[-1] <= step:  # Plans are made lazily, in order.
      self._epoch_plan(len(self._plans))
    epoch = bisect.bisect_right(self._starts, step) - 1
    return epoch, self._plans[epoch][step - self._starts[epoch]]

  def _site(self, pos: int, example=None) -> FaultSite:
    s = self.spec
    return _site(s.name, s.split, s.records[pos], s.data_dir, example,
                 pid=s.pids[pos], camid=s.camids[pos])

  def _read(self, source, pos: int, skipped: list[str]
            ) -> tuple[Mapping[str, Any], int]:
    """(record, position) of training tracklet `pos`.

    With on_bad_frame="skip", an unreadable record is replaced by the
    nearest (in the train set's order) readable tracklet of the same
    identity: labels and the PK structure of the batch stay right, and the
    choice depends only on the files, so batches stay a pure function of
    (seed, step). It is named `dataset/split/record:*` in `skipped`.
    """
    s = self.spec
    where = self._site(pos)
    try:
      return read_record(source, where), pos
    except DataFaultError as e:
      if s.on_bad_frame != "skip":
        raise
      cause = e.__cause__
    pid = s.pids[pos]
    others = sorted((p for p, q in enumerate(s.pids) if q == pid and p != pos),
                    key=lambda p: (abs(p - pos), p))
    for p in others:
      try:
        example = source[s.records[p]]
      except Exception:  # pylint: disable=broad-except
        continue
      skipped.append(where.frame_name(None))
      return example, p
    raise DataFaultError.at(
        where, None, f"cannot be read, nor can any other training tracklet "
        f"of identity {pid} (nothing to replace it with)", cause,
        skippable=False)

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    """Training batch `step`, with `FAULT_KEYS` when on_bad_frame="skip"."""
    s = self.spec
    _, row = self.locate(int(step))
    lo = s.process_index * s.local_batch_size
    source = _data_source(s.name, s.data_dir, s.split)
    flow_source = _flow_source(s.name, s.data_dir, s.split) if (
        s.with_flow) else None
    clips, flows, labels, pids, camids = [], [], [], [], []
    skipped: list[str] = []
    for slot in range(lo, lo + s.local_batch_size):
      example, pos = self._read(source, int(row[slot]), skipped)
      rng = np.random.default_rng([s.seed, 11, int(step), slot])
      idx = sampling.sample_clip(s.num_frames[pos], s.clip_len,
                                 s.clip_sampling, rng)
      if s.shuffle_frames:
        idx = sampling.shuffled_clip(
            s.num_frames[pos], s.clip_len,
            np.random.default_rng([s.seed, 13, int(step), slot]))
      clip, bad = decode_frames(example["frames"], idx, s.augment.height,
                                s.augment.width, where=self._site(pos, example),
                                on_bad_frame=s.on_bad_frame)
      skipped += bad
      if flow_source is None:
        clips.append(augment.augment_clip(clip, s.augment, rng))
      else:
        flow = augment.decode_flow_clip(flow_source[s.records[pos]], idx,
                                        s.augment.height, s.augment.width)
        clip, flow = augment.augment_clip(clip, s.augment, rng, flow=flow)
        clips.append(clip)
        flows.append(flow)
      labels.append(s.labels[pos])
      pids.append(s.pids[pos])
      camids.append(s.camids[pos])
    batch = {
        "clips": np.stack(clips),
        "mask": np.ones((s.local_batch_size, s.clip_len), np.bool_),
        "labels": np.asarray(labels, np.int32),
        "pids": np.asarray(pids, np.int32),
        "camids": np.asarray(camids, np.int32),
    }
    if flows:
      batch["flow"] = np.stack(flows)
    if s.on_bad_frame == "skip":
      batch.update(fault_keys(skipped))
    return batch


def make_train_spec(data: ReidData, config, *, process_index: int = 0,
                    process_count: int = 1) -> TrainSpec:
  """Builds the TrainSpec of `config.input` over the data's train role."""
  train = data.roles["train"]
  labels, _ = sampling.contiguous_labels(train.index["pid"])
  inp = config.input
  partners = None
  if inp.get("pair_motion_twins", False):
    if "motion_twin" not in train.index:
      raise ValueError(
          f"config.input.pair_motion_twins=True: dataset {data.name} has no "
          "motion twins (only synthetic_video_reid has them)")
    partners = tuple(int(x) for x in train.index["motion_twin"])
  aug = augment.AugmentConfig(
      height=inp.height, width=inp.width, flip=inp.flip_prob,
      pad=inp.pad, erasing=inp.erasing_prob, mean=tuple(inp.mean),
      translate=inp.get("translate_prob", 0.0),
      per_frame=inp.get("augment_per_frame", False))
  return TrainSpec(
      name=data.name, data_dir=data.data_dir, split=train.split,
      records=tuple(int(r) for r in train.records),
      num_frames=tuple(int(n) for n in train.index["num_frames"]),
      pids=tuple(int(p) for p in train.index["pid"]),
      labels=tuple(int(x) for x in labels),
      camids=tuple(int(c) for c in train.index["camid"]),
      num_ids_per_batch=inp.num_ids_per_batch, num_per_id=inp.num_per_id,
      clip_len=inp.clip_len, clip_sampling=inp.clip_sampling, augment=aug,
      seed=config.seed, epoch_repeats=inp.epoch_repeats,
      pk_epoch=inp.get("pk_epoch", "tracklets"),
      shuffle_frames=inp.get("shuffle_frames", False),
      partners=partners,
      with_flow=inp.with_flow,
      process_index=process_index,
      process_count=process_count,
      on_bad_frame=check_on_bad_frame(inp.get("on_bad_frame", "error")))


def _flags_parsed_for_workers() -> None:
  """grain worker processes read absl flags: parse them if nobody has.

  `python -m vreid_jax.main` parses them through absl.app; notebooks and
  argparse scripts have not, and grain would fail in its workers.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def train_iterator(batches: TrainBatches, num_steps: int, *,
                   num_workers: int = 0, num_threads: int = 2,
                   prefetch: int = 4) -> grain.DatasetIterator:
  """A checkpointable grain iterator over steps 0..num_steps-1.

  Restore a run's position with `it.set_state(saved_state)`.
  """
  ds = grain.MapDataset.range(num_steps).map(batches)
  it_ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=prefetch))
  if num_workers > 0:
    _flags_parsed_for_workers()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=2))
  return iter(it_ds)


# ---------------------------------------------------------------------------
# Evaluation.


@dataclasses.dataclass(frozen=True)
class EvalItem:
  """One clip of one tracklet: its frames (indices) and frame mask."""
  position: int
  indices: np.ndarray
  mask: np.ndarray


def clip_plan(num_frames: int, mode: str, clip_len: int) -> list[tuple[
    np.ndarray, np.ndarray]]:
  """Test-time clips of a tracklet: list of (frame indices, frame mask).

  Modes (the evaluator averages a tracklet's clip embeddings; index logic in
  `vreid_jax.evaluation.aggregation`):
    all: the whole tracklet in one pass, padded to a power-of-two length
      bucket of at least `clip_len` and masked, so varied lengths compile a
      few times only.
    dense: non-overlapping T-frame clips covering the tracklet; the last one
      loop-padded from the tracklet's start (Gao & Nevatia's code).
    every_frame: a T-frame clip starting at every frame (M3D's protocol),
      wrapping around at the end of the tracklet.
    evenly: one clip of T frames at the centres of T equal segments.
  """
  from vreid_jax.evaluation import aggregation as agg  # pylint: disable=g-import-not-at-top
  if mode == "all":
    idx, mask = agg.all_frames_indices(
        num_frames, agg.length_bucket(num_frames, min_length=clip_len))
    return [(idx, mask)]
  if mode == "dense":
    idx, mask = agg.dense_clip_indices(num_frames, clip_len, pad="loop")
  elif mode == "every_frame":
    idx = agg.every_frame_clip_indices(num_frames, clip_len)
    mask = np.ones(idx.shape, bool)
  elif mode == "evenly":
    idx = agg.evenly_sampled_indices(num_frames, clip_len)[None]
    mask = np.ones(idx.shape, bool)
  else:
    raise ValueError("eval mode must be all, dense, every_frame or "
                     f"evenly, got {mode!r}")
  return list(zip(idx, mask))


@dataclasses.dataclass(frozen=True)
class EvalBatch:
  """Plan of one eval batch: items padded to `batch_size` (position -1)."""
  items: tuple[EvalItem, ...]
  clip_len: int


def eval_batches_plan(num_frames: Sequence[int], mode: str, clip_len: int,
                      batch_size: int, *, max_frames_per_device: int = 0,
                      num_devices: int = 1) -> list[EvalBatch]:
  """Groups the clips of every tracklet into fixed-shape batches.

  Clips of equal length share batches. A batch holds `per_device` clips on
  each of the `num_devices` devices (the global batch is a multiple of the
  device count, padded with position -1): `per_device` is batch_size /
  num_devices rounded up, lowered for long clips so that per_device * length
  stays under `max_frames_per_device` (at least one clip per device: a
  whole tracklet longer than the cap is still one item).
  """
  if num_devices < 1:
    raise ValueError(f"num_devices must be >= 1, got {num_devices}")
  by_len: dict[int, list[EvalItem]] = {}
  for pos, n in enumerate(num_frames):
    for idx, mask in clip_plan(int(n), mode, clip_len):
      by_len.setdefault(len(idx), []).append(EvalItem(pos, idx, mask))
  batches = []
  for length in sorted(by_len):
    items = by_len[length]
    per_device = -(-batch_size // num_devices)
    if max_frames_per_device:
      per_device = min(per_device, max(1, max_frames_per_device // length))
    bs = per_device * num_devices
    for i in range(0, len(items), bs):
      chunk = items[i:i + bs]
      pad = EvalItem(-1, np.zeros(length, np.int64), np.zeros(length, bool))
      chunk = chunk + [pad] * (bs - len(chunk))
      batches.append(EvalBatch(tuple(chunk), length))
  return batches


class EvalBatches:
  """Maps an eval batch number to its decoded local batch (picklable)."""

  def __init__(self, name: str, data_dir: str, split: str,
               records: Sequence[int], plan: Sequence[EvalBatch], height: int,
               width: int, process_index: int = 0, process_count: int = 1,
               with_flow: bool = False, shuffle_frames: bool = False,
               num_frames: Sequence[int] = (), source: Any = None,
               on_bad_frame: str = "error"):
    """`source`: the split's records (`ReidData.source`) when they are not
    the TFDS dataset's (must be picklable for worker processes).
    `on_bad_frame`: "error" or "skip" (`decode_frames`; an unreadable
    record raises in both: no other tracklet may stand in for a query or
    gallery tracklet)."""
    self.name, self.data_dir, self.split = name, data_dir, split
    self.source = source
    self.records = tuple(int(r) for r in records)
    self.plan = tuple(plan)
    self.height, self.width = height, width
    self.process_index, self.process_count = process_index, process_count
    self.with_flow = with_flow
    self.shuffle_frames = shuffle_frames
    self.num_frames = tuple(int(n) for n in num_frames)
    self.on_bad_frame = check_on_bad_frame(on_bad_frame)
    if shuffle_frames and len(self.num_frames) != len(self.records):
      raise ValueError("shuffle_frames needs every record's num_frames")

  def __len__(self) -> int:
    return len(self.plan)

  def frame_indices(self, item: EvalItem) -> np.ndarray:
    """The frames decoded for an item's real positions, in order.

    With `shuffle_frames` (the control), the tracklet's frames are first
    put in a random order (fixed per tracklet) and the clip takes its
    positions from that order: random frames from anywhere in the
    tracklet, in random order.
    """
    idx = item.indices[item.mask]
    if self.shuffle_frames:
      num_frames = self.num_frames[item.position]
      perm = np.random.default_rng([17, item.position, num_frames]
                                   ).permutation(num_frames)
      idx = perm[idx]
    return idx

  def __call__(self, i: int) -> dict[str, np.ndarray]:
    """Eval batch `i`, with `FAULT_KEYS` when on_bad_frame="skip"."""
    batch = self.plan[int(i)]
    n = len(batch.items) // self.process_count
    items = batch.items[self.process_index * n:(self.process_index + 1) * n]
    source = (self.source if self.source is not None else
              _data_source(self.name, self.data_dir, self.split))
    clips = np.zeros((n, batch.clip_len, self.height, self.width, 3),
                     np.uint8)
    flows = np.full((n, batch.clip_len, self.height, self.width, 2), 128,
                    np.uint8) if self.with_flow else None
    skipped: list[str] = []
    custom = self.source is not None
    for j, item in enumerate(items):
      if item.position < 0:
        continue
      record = self.records[item.position]
      example = read_record(source, _site(
          self.name, self.split, record, self.data_dir, custom_source=custom))
      idx = self.frame_indices(item)
      clips[j, item.mask], bad = decode_frames(
          example["frames"], idx, self.height, self.width,
          where=_site(self.name, self.split, record, self.data_dir, example,
                      custom_source=custom),
          on_bad_frame=self.on_bad_frame)
      skipped += bad
      if flows is not None:
        flows[j, item.mask] = augment.decode_flow_clip(
            _flow_source(self.name, self.data_dir, self.split)[record],
            idx, self.height, self.width)
    out = {
        "clips": clips,
        "mask": np.stack([it.mask for it in items]),
        "position": np.asarray([it.position for it in items], np.int32),
    }
    if flows is not None:
      out["flow"] = flows
    if self.on_bad_frame == "skip":
      out.update(fault_keys(skipped))
    return out


def eval_iterator(batches: EvalBatches, *, num_workers: int = 0,
                  num_threads: int = 2) -> Iterator[dict[str, np.ndarray]]:
  ds = grain.MapDataset.range(len(batches)).map(batches)
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                               prefetch_buffer_size=4))
  if num_workers > 0:
    _flags_parsed_for_workers()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers))
  return iter(it_ds)
