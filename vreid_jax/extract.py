r"""Embeds tracklets with a trained workdir or an export folder.

A dataset's test sets, the way the training run evaluated them:

  python -m vreid_jax.extract --workdir=/tmp/vreid_demo --output=/tmp/feats
  python -m vreid_jax.extract --export=/tmp/demo_export --dataset=mars \
      --data_dir=~/tensorflow_datasets --output=/tmp/feats

writes `<output>/query.npz` and `<output>/gallery.npz` in the format
`python -m vreid_jax.evaluate_features` reads (features, pids, camids,
tracklet_ids, records, the gallery's junk flags, and the protocol, AP,
metric and normalisation the run used), so that

  python -m vreid_jax.evaluate_features --query=/tmp/feats/query.npz \
      --gallery=/tmp/feats/gallery.npz

reproduces the run's metrics.json. The gallery file holds the protocol's
gallery (`--protocol`, default the run's: under `with_queries` and `matlab`
the queries are in it too). Other roles (`--splits=train`) are written as
they are, one file each. `<output>/extract.json` records the source, the
dataset, the test-time plan, the counts and the speed.

Your own footage (`--frames_dir`): one sub-folder of frame images (.jpg,
.jpeg, .png, .bmp; any size, resized as the model expects) per tracklet,
frames in file-name order, optional labels in a CSV with the header
`tracklet,pid,camid` (`--labels`, default `<frames_dir>/labels.csv` when it
exists):

  python -m vreid_jax.extract --export=/tmp/demo_export \
      --frames_dir=footage/ --output=/tmp/footage_feats

writes `<output>/features.npz` (features, pids, camids, tracklet_ids = the
folder names, frame_dirs). Every frame is decoded once before embedding: an
unreadable frame is named, skipped and counted in extract.json (never
embedded as a black frame); a tracklet left with no readable frame is
named and left out.

The test-time plan is the run's (`--mode`, `--clip_len`, `--batch_size`
override it): "all" (the whole tracklet in one pass), "dense"
(non-overlapping clips, their embeddings averaged), "every_frame",
"evenly". Every local device is used (batches sharded over the mesh); a
progress bar shows frames/s on a terminal and the last line gives the rate.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from vreid_jax import cli

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
LABELS_FILE = "labels.csv"


class ExtractError(ValueError):
  """Bad extraction input (the message names the flag, file or field)."""


# ---------------------------------------------------------------------------
# What embeds: a workdir's checkpoint or an export folder.


@dataclasses.dataclass
class Source:
  """An embedding model with its input spec and test-time settings.

  Attributes:
    kind: "workdir" or "export".
    path: the workdir or export folder.
    step: the checkpoint step.
    model_name: the model's name.
    spec: the `preprocess.InputSpec`.
    variables: {"params", "batch_stats"}.
    embed: `embed(variables, inputs) -> (B, D)` (unjitted).
    evaluation: the run's re-id evaluation settings (mode, clip_len,
      batch_size, max_frames_per_device, protocol, ap, metric, normalize,
      dataset).
    train_dataset: {"name", "config", "trial"} of the training run.
    data_dir: the run's data dir ('' when unknown).
    shard_map: wrap `embed` in a per-device map (an exported function is
      lowered for one device).
  """
  kind: str
  path: str
  step: int
  model_name: str
  spec: Any
  variables: Any
  embed: Callable[..., Any]
  evaluation: dict[str, Any]
  train_dataset: dict[str, Any]
  data_dir: str = ""
  shard_map: bool = False


def open_source(*, workdir: str | None = None, export: str | None = None,
                step: int | None = None) -> Source:
  """The model of a workdir (latest or `step` checkpoint) or export folder.

  Raises:
    ExtractError: neither or both given.
  """
  if bool(workdir) == bool(export):
    raise ExtractError("give exactly one of --workdir (a training workdir) "
                       "and --export (a folder written by python -m "
                       "vreid_jax.export)")
  from vreid_jax import export as export_lib  # pylint: disable=g-import-not-at-top
  if export:
    if step is not None:
      raise ExtractError("--step applies to --workdir only (an export holds "
                         "one checkpoint)")
    art = export_lib.load(export)
    card = art.card
    ev = dict(card["evaluation"])
    return Source(kind="export", path=art.path,
                  step=int(card["checkpoint_step"]),
                  model_name=card["model_name"], spec=art.input_spec,
                  variables=art.variables, embed=art.embed_fn(),
                  evaluation=ev, train_dataset=dict(card["train_dataset"]),
                  data_dir=card["train_dataset"].get("data_dir", ""),
                  shard_map=True)
  from vreid_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from vreid_jax import models  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import preprocess  # pylint: disable=g-import-not-at-top
  model, variables, config = checkpoint.restore_for_inference(workdir,
                                                              step=step)
  step_dir = checkpoint.step_dir(workdir, step)
  ev = export_lib.reid_eval_config(config)
  evaluation = {k: ev[k] for k in ("mode", "clip_len", "batch_size",
                                   "protocol", "ap", "metric", "normalize")}
  evaluation["max_frames_per_device"] = int(
      ev.get("max_frames_per_device", 0))
  if ev.get("max_rank") is not None:
    evaluation["max_rank"] = int(ev.max_rank)
  evaluation["dataset"] = (ev.dataset.to_dict() if ev.dataset.get("name")
                           else None)
  return Source(kind="workdir", path=os.path.abspath(workdir),
                step=int(os.path.basename(step_dir)),
                model_name=config.model_name,
                spec=preprocess.InputSpec.from_config(config.input),
                variables={k: v for k, v in variables.items() if v},
                embed=models.embed_fn(model), evaluation=evaluation,
                train_dataset={"name": config.dataset.name,
                               "config": config.dataset.get("config", ""),
                               "trial": int(config.dataset.get("trial", -1))},
                data_dir=config.get("data_dir", "") or "")


def make_embedder(source: Source, *, num_workers: int = 0,
                  num_threads: int = 2):
  """An `Embedder` of the source over every local device."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from vreid_jax import parallel  # pylint: disable=g-import-not-at-top
  from vreid_jax.evaluators import embedder as embedder_lib  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh()
  embed = source.embed
  if source.shard_map and mesh.devices.size > 1:
    # The exported function runs once per device on its slice of the batch.
    embed = jax.shard_map(source.embed, mesh=mesh,
                          in_specs=(P(), P(parallel.DATA)),
                          out_specs=P(parallel.DATA))
  return embedder_lib.Embedder(embed, source.spec, mesh,
                               num_workers=num_workers,
                               num_threads=num_threads)


def make_plan(source: Source, *, mode: str | None = None,
              clip_len: int | None = None, batch_size: int | None = None):
  """The run's test-time plan with the flags' overrides."""
  from vreid_jax.evaluators import embedder as embedder_lib  # pylint: disable=g-import-not-at-top
  ev = dict(source.evaluation)
  for key, value in (("mode", mode), ("clip_len", clip_len),
                     ("batch_size", batch_size)):
    if value is not None:
      ev[key] = value
  if ev["mode"] not in embedder_lib.MODES:
    raise ExtractError(f"--mode must be one of {embedder_lib.MODES}, got "
                       f"{ev['mode']!r}")
  if int(ev["clip_len"]) < 1 or int(ev["batch_size"]) < 1:
    raise ExtractError("--clip_len and --batch_size must be >= 1")
  return embedder_lib.EmbedPlan.from_config(ev)


class _Progress:
  """Counts embedded frames; a tqdm bar (frames/s) on a terminal."""

  def __init__(self, total: int, desc: str):
    from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
    self.frames = 0
    self.t0 = time.perf_counter()
    self.bar = tqdm.tqdm(total=total, desc=desc, unit="frame",
                         unit_scale=True, disable=None, leave=False)

  def __call__(self, n: int) -> None:
    self.frames += n
    self.bar.update(n)

  def close(self) -> dict[str, Any]:
    self.bar.close()
    seconds = time.perf_counter() - self.t0
    return {"frames": self.frames, "seconds": round(seconds, 3),
            "frames_per_s": round(self.frames / max(seconds, 1e-9), 1)}


def embed_role(embedder, source: Source, data, role: str, plan
               ) -> tuple[np.ndarray, dict[str, Any]]:
  """(N, D) embeddings of a role and its speed figures."""
  batches = embedder.batches(data, role, plan)
  total = sum(int(it.mask.sum()) for b in batches.plan for it in b.items
              if it.position >= 0)
  progress = _Progress(total, f"{data.name}/{role}")
  features = embedder.embed(source.variables, data, role, plan,
                            progress=progress)
  speed = progress.close()
  print(f"{data.name}/{role}: {len(features)} tracklets, {speed['frames']} "
        f"frames in {speed['seconds']:.1f} s ({speed['frames_per_s']:.0f} "
        "frames/s)", flush=True)
  return features, speed


# ---------------------------------------------------------------------------
# A dataset's roles.


def dataset_config(source: Source, name: str | None, trial: int | None):
  """The dataset block to open: `--dataset` (NAME or NAME/CONFIG), else
  the run's evaluation dataset, else its training dataset."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  if name:
    ds_name, _, ds_config = name.partition("/")
    cfg = {"name": ds_name, "config": ds_config, "trial": -1}
  else:
    cfg = dict(source.evaluation.get("dataset") or source.train_dataset)
    cfg.pop("data_dir", None)
  if trial is not None:
    cfg["trial"] = trial
  cfg.setdefault("config", "")
  cfg.setdefault("trial", -1)
  cfg["auto_build"] = False
  return ml_collections.ConfigDict(cfg)


def extract_dataset(source: Source, output: str, *,
                    dataset: str | None = None, data_dir: str | None = None,
                    trial: int | None = None,
                    splits: Sequence[str] = ("query", "gallery"),
                    protocol: str | None = None, plan=None,
                    num_workers: int = 0, num_threads: int = 2
                    ) -> dict[str, Any]:
  """Writes `<output>/<role>.npz` for each role; returns the record.

  Raises:
    ExtractError: a role or protocol the dataset does not have.
  """
  from vreid_jax.evaluators import reid  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  ds_cfg = dataset_config(source, dataset, trial)
  data_dir = data_dir or source.data_dir or None
  data = pipeline.open_dataset(ds_cfg, data_dir)
  missing = [s for s in splits if s not in data.roles]
  if missing or not splits:
    raise ExtractError(f"--splits: {data.name} has no role(s) {missing}; it "
                       f"has {sorted(data.roles)}")
  protocol = protocol or source.evaluation["protocol"]
  if protocol not in reid.PROTOCOLS:
    raise ExtractError(f"--protocol must be one of {reid.PROTOCOLS}, got "
                       f"{protocol!r}")
  plan = plan or make_plan(source)
  embedder = make_embedder(source, num_workers=num_workers,
                           num_threads=num_threads)
  features, speeds = {}, {}
  for role in splits:
    features[role], speeds[role] = embed_role(embedder, source, data, role,
                                              plan)
  os.makedirs(output, exist_ok=True)
  files: dict[str, dict[str, np.ndarray]] = {}
  record: dict[str, Any] = {}
  if "query" in splits and "gallery" in splits:
    test, split = reid.protocol_split(data, protocol)
    settings = {"protocol": protocol, **{k: source.evaluation[k] for k in
                                         ("ap", "metric", "normalize")},
                "max_rank": source.evaluation.get("max_rank")}
    files.update(reid.feature_files(
        np.concatenate([features["query"], features["gallery"]]), test,
        split, settings=settings))
    record["protocol"] = {"name": split.name, **settings,
                          "num_query": int(len(split.query)),
                          "num_gallery": int(len(split.gallery)),
                          "num_gallery_junk": int(split.gallery_junk.sum())}
  for role in splits:
    if role in files:
      continue
    t = data.roles[role]
    files[role] = {"features": features[role], "pids": t.index["pid"],
                   "camids": t.index["camid"],
                   "records": t.records.astype(np.int64),
                   "splits": np.asarray([t.split] * len(t))}
    if "tracklet_id" in t.index:
      files[role]["tracklet_ids"] = t.index["tracklet_id"]
  for role, arrays in files.items():
    arrays = dict(arrays)
    arrays["dataset"] = np.asarray(data.name)
    arrays["data_dir"] = np.asarray(data.data_dir)
    np.savez(os.path.join(output, f"{role}.npz"), **arrays)
  record.update({
      "source": {"kind": source.kind, "path": source.path,
                 "step": source.step, "model_name": source.model_name},
      "dataset": {"name": data.name, "data_dir": data.data_dir,
                  "trial": int(ds_cfg.trial)},
      "plan": dataclasses.asdict(plan),
      "files": {role: {"path": os.path.join(output, f"{role}.npz"),
                       "rows": int(len(a["features"]))}
                for role, a in files.items()},
      "speed": speeds,
  })
  with open(os.path.join(output, "extract.json"), "w") as f:
    json.dump(record, f, indent=2)
  return record


# ---------------------------------------------------------------------------
# A user's folders of frames.


class FolderFrames:
  """Record i -> {"frames": tracklet i's frame files (read on access)}.

  Picklable (paths only), so input worker processes can read it.
  """

  def __init__(self, tracklets: Sequence[Sequence[str]]):
    self.tracklets = [list(t) for t in tracklets]

  def __len__(self) -> int:
    return len(self.tracklets)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {"frames": _Files(self.tracklets[int(i)])}


class _Files:
  """A tracklet's frame files as a sequence of their bytes."""

  def __init__(self, paths: Sequence[str]):
    self.paths = paths

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, i: int) -> bytes:
    with open(self.paths[int(i)], "rb") as f:
      return f.read()


@dataclasses.dataclass
class Footage:
  """The tracklets of a frames folder, after every frame was checked.

  Attributes:
    root: the folder.
    names: tracklet (sub-folder) names, sorted.
    frames: per tracklet, its readable frame files in name order.
    pids, camids: from the labels CSV (-1 where a tracklet has no row).
    bad_frames: [{"tracklet", "file", "error"}] of unreadable frames.
    empty: tracklets with no readable frame (left out).
    unlabelled: tracklets without a labels row.
  """
  root: str
  names: list[str]
  frames: list[list[str]]
  pids: np.ndarray
  camids: np.ndarray
  bad_frames: list[dict[str, str]]
  empty: list[str]
  unlabelled: list[str]

  def report(self) -> dict[str, Any]:
    return {"frames_dir": self.root, "num_tracklets": len(self.names),
            "num_frames": int(sum(len(f) for f in self.frames)),
            "num_bad_frames": len(self.bad_frames),
            "bad_frames": self.bad_frames,
            "empty_tracklets": self.empty,
            "unlabelled_tracklets": self.unlabelled}

  def as_data(self):
    """A `pipeline.ReidData` with one role, "all", of these tracklets."""
    from vreid_jax.input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
    n = len(self.names)
    index = {"pid": self.pids, "camid": self.camids,
             "num_frames": np.asarray([len(f) for f in self.frames],
                                      np.int64)}
    role = pipeline.TrackletSet(role="all", split="frames",
                                records=np.arange(n, dtype=np.int64),
                                index=index)
    return pipeline.ReidData(name=os.path.basename(self.root) or self.root,
                             data_dir=self.root, metadata={},
                             roles={"all": role},
                             frame_sources={"frames": FolderFrames(
                                 self.frames)})


def _check_frame(path: str) -> str | None:
  """None if the image decodes fully, else the error."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as img:
      img.convert("RGB").load()
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {e}"
  return None


def frame_files(folder: str) -> list[str]:
  """A tracklet folder's frame image names, in name order."""
  return sorted(f for f in os.listdir(folder)
                if f.lower().endswith(IMAGE_EXTENSIONS))


def read_labels(path: str) -> dict[str, tuple[int, int]]:
  """tracklet -> (pid, camid) from a CSV with header tracklet,pid,camid.

  Raises:
    ExtractError: a missing column, a non-integer value or a repeated
      tracklet, with the file and line.
  """
  out: dict[str, tuple[int, int]] = {}
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    need = {"tracklet", "pid", "camid"}
    if not reader.fieldnames or not need <= set(reader.fieldnames):
      raise ExtractError(f"{path}: the header must name the columns "
                         f"tracklet,pid,camid; got {reader.fieldnames}")
    for row in reader:
      line = reader.line_num
      name = (row["tracklet"] or "").strip()
      try:
        pid, camid = int(row["pid"]), int(row["camid"])
      except (TypeError, ValueError):
        raise ExtractError(f"{path}:{line}: pid and camid must be integers, "
                           f"got {row['pid']!r}, {row['camid']!r}") from None
      if name in out:
        raise ExtractError(f"{path}:{line}: tracklet {name!r} is listed "
                           "twice")
      out[name] = (pid, camid)
  return out


def scan_frames_dir(root: str, labels: str | None = None, *,
                    num_threads: int = 4) -> Footage:
  """Lists and checks the tracklet folders under `root`.

  Raises:
    ExtractError: `root` is not a folder or holds no tracklet folder with
      images, or the labels name folders that do not exist.
  """
  from concurrent import futures  # pylint: disable=g-import-not-at-top
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise ExtractError(f"--frames_dir={root}: not a folder")
  if labels is None and os.path.isfile(os.path.join(root, LABELS_FILE)):
    labels = os.path.join(root, LABELS_FILE)
  rows = read_labels(labels) if labels else {}
  names = sorted(d for d in os.listdir(root)
                 if os.path.isdir(os.path.join(root, d)))
  unknown = sorted(set(rows) - set(names))
  if unknown:
    raise ExtractError(f"{labels}: names tracklet folder(s) that are not in "
                       f"{root}: {unknown[:10]}")
  files = {n: frame_files(os.path.join(root, n)) for n in names}
  names = [n for n in names if files[n]]
  if not names:
    raise ExtractError(f"--frames_dir={root}: no sub-folder holds frame "
                       f"images ({', '.join(IMAGE_EXTENSIONS)}); expected "
                       "one sub-folder per tracklet")
  paths = [os.path.join(root, n, f) for n in names for f in files[n]]
  with futures.ThreadPoolExecutor(num_threads) as pool:
    errors = dict(zip(paths, pool.map(_check_frame, paths)))
  bad, frames, kept, empty = [], [], [], []
  for n in names:
    good = []
    for f in files[n]:
      p = os.path.join(root, n, f)
      if errors[p] is None:
        good.append(p)
      else:
        bad.append({"tracklet": n, "file": p, "error": errors[p]})
    if good:
      kept.append(n)
      frames.append(good)
    else:
      empty.append(n)
  if not kept:
    raise ExtractError(f"--frames_dir={root}: no readable frame in any "
                       f"tracklet ({len(bad)} unreadable)")
  unlabelled = [n for n in kept if n not in rows] if rows else []
  pids = np.asarray([rows.get(n, (-1, -1))[0] for n in kept], np.int64)
  camids = np.asarray([rows.get(n, (-1, -1))[1] for n in kept], np.int64)
  return Footage(root=root, names=kept, frames=frames, pids=pids,
                 camids=camids, bad_frames=bad, empty=empty,
                 unlabelled=unlabelled)


def say_footage(footage: Footage) -> None:
  """Prints what a frames folder holds and what was left out."""
  r = footage.report()
  print(f"{footage.root}: {r['num_tracklets']} tracklets, "
        f"{r['num_frames']} readable frames", flush=True)
  for b in footage.bad_frames[:20]:
    print(f"skipped unreadable frame {b['file']} ({b['error']})",
          file=sys.stderr)
  if len(footage.bad_frames) > 20:
    print(f"... and {len(footage.bad_frames) - 20} more unreadable frames "
          "(all listed in extract.json)", file=sys.stderr)
  if footage.bad_frames:
    print(f"skipped {len(footage.bad_frames)} unreadable frame(s) in "
          f"{len({b['tracklet'] for b in footage.bad_frames})} tracklet(s)",
          file=sys.stderr)
  if footage.empty:
    print(f"left out {len(footage.empty)} tracklet(s) with no readable "
          f"frame: {footage.empty[:10]}", file=sys.stderr)
  if footage.unlabelled:
    print(f"{len(footage.unlabelled)} tracklet(s) have no labels row (pid "
          f"and camid -1): {footage.unlabelled[:10]}", file=sys.stderr)


def embed_footage(source: Source, footage: Footage, plan=None, *,
                  num_workers: int = 0, num_threads: int = 2
                  ) -> tuple[np.ndarray, dict[str, Any]]:
  """(N, D) embeddings of a frames folder's tracklets and the speed.

  Raises:
    ExtractError: the model reads optical flow (not computed for footage).
  """
  if source.spec.with_flow:
    raise ExtractError(
        f"model {source.model_name} reads optical flow, which --frames_dir "
        "does not compute; embed footage with an RGB-only model")
  embedder = make_embedder(source, num_workers=num_workers,
                           num_threads=num_threads)
  return embed_role(embedder, source, footage.as_data(), "all",
                    plan or make_plan(source))


def extract_frames(source: Source, frames_dir: str, output: str, *,
                   labels: str | None = None, plan=None,
                   num_workers: int = 0, num_threads: int = 2
                   ) -> dict[str, Any]:
  """Writes `<output>/features.npz` and extract.json; returns the record."""
  footage = scan_frames_dir(frames_dir, labels)
  say_footage(footage)
  plan = plan or make_plan(source)
  features, speed = embed_footage(source, footage, plan,
                                  num_workers=num_workers,
                                  num_threads=num_threads)
  os.makedirs(output, exist_ok=True)
  np.savez(os.path.join(output, "features.npz"), features=features,
           pids=footage.pids, camids=footage.camids,
           tracklet_ids=np.asarray(footage.names),
           frame_dirs=np.asarray([os.path.join(footage.root, n)
                                  for n in footage.names]),
           metric=np.asarray(str(source.evaluation["metric"])),
           normalize=np.asarray(bool(source.evaluation["normalize"])))
  record = {"source": {"kind": source.kind, "path": source.path,
                       "step": source.step, "model_name": source.model_name},
            "plan": dataclasses.asdict(plan), "speed": {"all": speed},
            "files": {"features": os.path.join(output, "features.npz")},
            **footage.report()}
  with open(os.path.join(output, "extract.json"), "w") as f:
    json.dump(record, f, indent=2)
  return record


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = cli.ArgumentParser(
      prog="python -m vreid_jax.extract",
      description="Embed tracklets (a dataset's roles, or folders of frames)"
      " with a trained workdir or an export folder.")
  src = p.add_argument_group("model (one of)")
  src.add_argument("--workdir", help="a training workdir")
  src.add_argument("--step", type=int, default=None,
                   help="checkpoint step of --workdir (default latest)")
  src.add_argument("--export", help="a folder written by vreid_jax.export")
  p.add_argument("--output", required=True, help="output folder")
  p.add_argument("--dataset", default=None,
                 help="NAME or NAME/CONFIG (default: the run's evaluation "
                 "dataset)")
  p.add_argument("--data_dir", default=None,
                 help="TFDS data dir (default: the run's, else "
                 "$TFDS_DATA_DIR, else ~/tensorflow_datasets)")
  p.add_argument("--trial", type=int, default=None,
                 help="split trial of a multi-trial dataset")
  p.add_argument("--splits", default="query,gallery",
                 help="comma-separated roles to embed")
  p.add_argument("--protocol", default=None,
                 help="gallery protocol of query.npz/gallery.npz (default "
                 "the run's)")
  p.add_argument("--frames_dir", default=None,
                 help="embed your own footage: one sub-folder of frames per "
                 "tracklet")
  p.add_argument("--labels", default=None,
                 help="CSV tracklet,pid,camid for --frames_dir (default "
                 "<frames_dir>/labels.csv when present)")
  p.add_argument("--mode", default=None,
                 help="test-time clips: all, dense, every_frame, evenly "
                 "(default the run's)")
  p.add_argument("--clip_len", type=int, default=None)
  p.add_argument("--batch_size", type=int, default=None,
                 help="clips per global batch")
  p.add_argument("--num_workers", type=int, default=0,
                 help="input worker processes (0: threads only)")
  p.add_argument("--num_threads", type=int, default=4,
                 help="decoding threads")
  return p.parse_args(argv)


def _errors() -> tuple[type[BaseException], ...]:
  from vreid_jax import export as export_lib  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  return (ExtractError, export_lib.ExportError, FileNotFoundError,
          pipeline.DatasetNotBuiltError, pipeline.DataFaultError)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the extraction; a bad input is one `error:` line (exit 2)."""
  return cli.run(_main, argv, errors=_errors, exit_code=2)


def _main(argv: Sequence[str] | None) -> int:
  args = parse_args(argv)
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.ERROR)
  source = open_source(workdir=args.workdir, export=args.export,
                       step=args.step)
  plan = make_plan(source, mode=args.mode, clip_len=args.clip_len,
                   batch_size=args.batch_size)
  if args.frames_dir:
    record = extract_frames(source, args.frames_dir, args.output,
                            labels=args.labels, plan=plan,
                            num_workers=args.num_workers,
                            num_threads=args.num_threads)
  else:
    record = extract_dataset(
        source, args.output, dataset=args.dataset, data_dir=args.data_dir,
        trial=args.trial,
        splits=[s for s in args.splits.split(",") if s],
        protocol=args.protocol, plan=plan, num_workers=args.num_workers,
        num_threads=args.num_threads)
  print("wrote " + ", ".join(f["path"] if isinstance(f, Mapping) else f
                             for f in record["files"].values()), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
