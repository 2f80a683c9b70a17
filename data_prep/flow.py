r"""Precomputes TV-L1 optical flow of a built dataset (for two-stream models).

  python data_prep/flow.py --dataset=mars [--data_dir=DIR] [--splits=train] \
      [--backend=opencv|jax] [--workers=16] [--batch_size=N] [--size=HxW] \
      [--tvl1=nscales=5,warps=5] [--chunk=64] [--overwrite]

Reads the built dataset with `tfds.data_source`, computes for every record
the flow of each frame to the next with TV-L1, and writes
`<builder data dir>/flow_tvl1/<split>.array_record` (record i = flow of
record i), which `vreid_jax.input_pipeline.flow.FlowSource` serves aligned
with the RGB frames. Storage convention (flow of frame t = t -> t+1, last
frame repeated, clipped to +-20 px, 2-channel uint8 PNG): see
vreid_jax/input_pipeline/flow.py.

Backends (the same scheme and parameters, OpenCV's defaults unless --tvl1
sets some: tau, lambda_, theta, nscales, warps, epsilon, inner_iterations,
outer_iterations, scale_step, gamma, median_filtering):
  * opencv (the default): OpenCV's DualTVL1OpticalFlow on the CPU, one
    pair at a time, in --workers processes. Needs `pip install
    'vreid_jax[flow]'`. The default because it needs no compilation and
    handles frames of any size at no extra cost (DukeMTMC-VideoReID,
    LS-VID and SDU-VID crops vary in size).
  * jax: `vreid_jax.flow` (the same scheme in JAX), batches of frame pairs
    sharded over every local device (`--batch_size` pairs per device and
    call; default 1 on CPU, 128 on an accelerator). One compilation per
    frame size (20-30 s on a CPU, 40-70 s on a GPU), so use it on datasets
    of one frame size (MARS, iLIDS-VID, PRID-2011, the synthetic benchmark)
    or give --size. Its flow agrees with OpenCV's to a few hundredths of a
    pixel (benchmarks/flow_bench.py).

--size=HxW computes (and stores) the flow at that size instead of each
frame's own; the input pipeline resizes flow to the clip size anyway.

Resuming: a split is computed in shards of --chunk records, each written
to `flow_tvl1/<split>.parts/<first record>.array_record` under a temporary
name and renamed once complete, next to a `meta.json` recording the backend,
parameters and frame counts. An interrupted run (Ctrl-C, a crash, a killed
job) is resumed by running the same command again without --overwrite
(which starts over): complete shards are skipped (the progress bar starts
at the frames they hold), and once all exist they are copied in order into
the split's store, byte for byte what an uninterrupted run writes, and the
parts folder is deleted. A resume with other settings is refused.
Assembling needs the store's size again in free disk space for a moment.

Cost depends on how soon TV-L1 converges on the frames. On the 256x128
pairs of benchmarks/flow_bench.py, on 2 cores of an idle Xeon: OpenCV 1.85 s
per pair on one thread, the JAX backend 0.40 s per pair; one H100 runs the
JAX backend at ~195 pairs/s, all of MARS (1.17M pairs) in ~1.7 hours. On
easy frames OpenCV takes ~0.1 s (128x64) to ~0.4 s (256x128) per pair.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

BACKENDS = ("opencv", "jax")
PARTS_SUFFIX = ".parts"
_STATE: dict = {}


class ResumeMismatchError(ValueError):
  """A partial run of the split was made with other settings."""


def _import_package() -> None:
  try:
    import vreid_jax  # pylint: disable=g-import-not-at-top,unused-import
  except ModuleNotFoundError:  # Run from a checkout without installing.
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))


def parse_tvl1(text: str | None):
  """"name=value,..." -> TVL1Params (OpenCV's defaults for the rest)."""
  _import_package()
  from vreid_jax.flow import tvl1  # pylint: disable=g-import-not-at-top
  kwargs: dict[str, Any] = {}
  fields = {f.name: f for f in dataclasses.fields(tvl1.TVL1Params)}
  for item in (text or "").split(","):
    if not item.strip():
      continue
    name, sep, value = item.partition("=")
    name = name.strip()
    name = "lambda_" if name == "lambda" else name
    if not sep or name not in fields or name == "use_initial_flow":
      raise ValueError(f"--tvl1: {item!r} is not name=value with a name "
                       f"among {sorted(set(fields) - {'use_initial_flow'})}")
    kind = type(fields[name].default)
    kwargs[name] = kind(float(value)) if kind is int else kind(value)
  return tvl1.TVL1Params(**kwargs)


def parse_size(text: str | None) -> tuple[int, int] | None:
  if not text:
    return None
  try:
    h, w = (int(v) for v in text.lower().split("x"))
  except ValueError as e:
    raise ValueError(f"--size must be HxW, e.g. 256x128, got {text!r}") from e
  if h < 3 or w < 3:
    raise ValueError(f"--size {text}: too small")
  return h, w


# --- the two backends ---------------------------------------------------------
def _init_worker(name: str, data_dir: str, split: str, params_json: str,
                 size: tuple[int, int] | None) -> None:
  _import_package()
  import cv2  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import vreid_jax.datasets  # pylint: disable=g-import-not-at-top,unused-import
  from vreid_jax.flow import tvl1  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import flow  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(1)
  _STATE["source"] = tfds.data_source(name, split=split, data_dir=data_dir)
  params = tvl1.TVL1Params(**json.loads(params_json))
  _STATE["tvl1"] = params.to_opencv(flow.tvl1_factory())
  _STATE["size"] = size


def _compute_opencv(record: int) -> list[bytes]:
  from vreid_jax.input_pipeline import flow  # pylint: disable=g-import-not-at-top
  frames = list(_STATE["source"][record]["frames"])
  return flow.tracklet_flow(frames, _STATE["tvl1"], size=_STATE["size"])


class _OpenCVBackend:
  """Records -> encoded flow with OpenCV, in `workers` processes."""

  def __init__(self, name, data_dir, split, params, size, workers):
    args = (name, data_dir, split, json.dumps(dataclasses.asdict(params)),
            size)
    self._pool = None
    if workers > 1:
      ctx = multiprocessing.get_context("spawn")
      self._pool = ctx.Pool(workers, initializer=_init_worker, initargs=args)
    else:
      _init_worker(*args)

  def start(self, records: Sequence[int], upcoming: Sequence[int] = ()):
    del upcoming  # The pool keeps every worker busy already.
    return records

  def finish(self, records: Sequence[int],
             progress: Callable[[int], Any]) -> Iterator[list[bytes]]:
    """Yields the flow of each record (progress counts frames)."""
    results = (map(_compute_opencv, records) if self._pool is None
               else self._pool.imap(_compute_opencv, records, chunksize=2))
    for frames in results:
      progress(len(frames))
      yield frames

  def close(self) -> None:
    if self._pool is not None:
      self._pool.terminate()
      self._pool.join()


class _JaxBackend:
  """Records -> encoded flow with vreid_jax.flow over every local device.

  `start` dispatches a chunk's pairs to the devices and returns at once;
  `finish` fetches and encodes them. A thread decodes the chunk after
  (`upcoming`) meanwhile, and compute_split starts chunk k + 1 before it
  finishes chunk k, so decoding, device work and PNG encoding overlap.
  """

  def __init__(self, name, data_dir, split, params, size, batch_size):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from vreid_jax.flow import batching  # pylint: disable=g-import-not-at-top
    self._source = tfds.data_source(name, split=split, data_dir=data_dir)
    self._flow = batching.PairFlow(params, per_device_batch=batch_size)
    self._size = size
    self._loader = concurrent.futures.ThreadPoolExecutor(1)
    self._next: tuple[tuple[int, ...], Any] | None = None
    self.shapes: set[tuple[int, int]] = set()

  def _load(self, records: Sequence[int]):
    from vreid_jax.input_pipeline import flow  # pylint: disable=g-import-not-at-top
    out = []
    for r in records:
      frames = list(self._source[r]["frames"])
      pairs, shape = flow.tracklet_pairs(frames, self._size)
      out.append((len(frames), pairs, shape))
    return out

  def start(self, records: Sequence[int], upcoming: Sequence[int] = ()):
    records = tuple(records)
    if self._next is not None and self._next[0] == records:
      loaded = self._next[1].result()
    else:
      loaded = self._load(records)
    self._next = None
    if upcoming:
      self._next = (tuple(upcoming),
                    self._loader.submit(self._load, tuple(upcoming)))
    pairs = [p for _, ps, _ in loaded for p in ps]
    self.shapes.update(p[0].shape for p in pairs)
    return loaded, self._flow.dispatch(pairs)

  def finish(self, started,
             progress: Callable[[int], Any]) -> Iterator[list[bytes]]:
    """Yields the flow of each record (progress counts frames: pairs as
    they arrive, then each record's repeated last frame)."""
    from vreid_jax.input_pipeline import flow  # pylint: disable=g-import-not-at-top
    loaded, handle = started
    flows = self._flow.collect(handle, progress)
    pos = 0
    for n, ps, shape in loaded:
      progress(n - len(ps))
      yield flow.assemble_tracklet(flows[pos:pos + len(ps)], n, shape)
      pos += len(ps)

  def close(self) -> None:
    self._loader.shutdown(wait=False, cancel_futures=True)


# --- resumable shards ---------------------------------------------------------
def parts_dir(folder: str, split: str) -> str:
  return os.path.join(folder, split + PARTS_SUFFIX)


def _shard_path(parts: str, first: int) -> str:
  return os.path.join(parts, f"{first:09d}.array_record")


def _write_shard(path: str, records: Sequence[list[bytes]]) -> None:
  """Writes one complete shard atomically (temporary name, then rename)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import flow  # pylint: disable=g-import-not-at-top
  tmp = path + ".incomplete"
  writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
  try:
    for frames in records:
      writer.write(flow.pack(frames))
  finally:
    writer.close()
  os.replace(tmp, path)


def _read_shard(path: str) -> Iterator[list[bytes]]:
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import flow  # pylint: disable=g-import-not-at-top
  reader = array_record_module.ArrayRecordReader(path,
                                                 "readahead_buffer_size:0")
  try:
    for i in range(reader.num_records()):
      yield flow.unpack(reader.read([i])[0])
  finally:
    reader.close()


def _method(backend: str) -> str:
  if backend == "opencv":
    return "TV-L1 (OpenCV DualTVL1OpticalFlow)"
  return ("TV-L1 (vreid_jax.flow: JAX, the scheme of OpenCV's "
          "DualTVL1OpticalFlow)")


def compute_split(name: str, data_dir: str, split: str, *,
                  backend: str = "opencv", params=None,
                  size: tuple[int, int] | None = None, workers: int = 1,
                  batch_size: int | None = None, chunk: int = 64,
                  overwrite: bool = False, progress: bool = True,
                  on_shard: Callable[[int], None] | None = None) -> str:
  """Computes and stores the flow of one split (resumable); returns the
  store's path.

  Args:
    name: the registered dataset name ("name[/config]").
    data_dir: the TFDS data dir.
    split: the split.
    backend: "opencv" or "jax".
    params: TVL1Params (default: OpenCV's defaults).
    size: compute at this (height, width) instead of each frame's size.
    workers: OpenCV processes.
    batch_size: JAX pairs per device and call (None: the device's default).
    chunk: records per shard (the unit of resuming).
    overwrite: start over: discard any partial run of the split.
    progress: show a progress bar.
    on_shard: called with the first record of each shard once written
      (tests interrupt here).

  Raises:
    ResumeMismatchError: a partial run with other settings exists.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  from vreid_jax.flow import tvl1  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import flow  # pylint: disable=g-import-not-at-top
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
  if chunk < 1:
    raise ValueError(f"chunk must be >= 1, got {chunk}")
  params = params if params is not None else tvl1.TVL1Params()
  builder = tfds.builder(name, data_dir=data_dir)
  num_frames = [int(n) for n in builder.info.metadata["index"][split]
                ["num_frames"]]
  n = len(num_frames)
  folder = flow.flow_dir(builder.data_dir)
  parts = parts_dir(folder, split)
  settings = {"backend": backend, "method": _method(backend),
              "tvl1": dataclasses.asdict(params),
              "size": list(size) if size else None, "chunk": chunk,
              "num_frames": num_frames}
  meta_path = os.path.join(parts, "meta.json")
  if overwrite and os.path.isdir(parts):
    shutil.rmtree(parts)
  if os.path.isdir(parts):
    try:
      with open(meta_path) as f:
        previous = json.load(f)
    except (OSError, ValueError):
      previous = None
    if previous != settings:
      what = ("unreadable settings" if previous is None else
              f"backend={previous.get('backend')}, "
              f"tvl1={previous.get('tvl1')}, size={previous.get('size')}, "
              f"chunk={previous.get('chunk')}")
      raise ResumeMismatchError(
          f"{parts} holds a partial run of split {split!r} with other "
          f"settings ({what}): rerun with those to resume, or add "
          "--overwrite to start over")
  os.makedirs(parts, exist_ok=True)
  with open(meta_path + ".tmp", "w") as f:
    json.dump(settings, f)
  os.replace(meta_path + ".tmp", meta_path)

  starts = list(range(0, n, chunk))
  todo = [s for s in starts if not os.path.exists(_shard_path(parts, s))]
  missing = set(todo)
  done_frames = sum(sum(num_frames[s:s + chunk]) for s in starts
                    if s not in missing)
  bar = tqdm.tqdm(total=sum(num_frames), initial=done_frames, unit="frame",
                  desc=f"flow {split} ({backend})", disable=not progress,
                  smoothing=0.1)
  engine = None
  try:
    if todo:
      if backend == "opencv":
        engine = _OpenCVBackend(name, data_dir, split, params, size, workers)
      else:
        engine = _JaxBackend(name, data_dir, split, params, size, batch_size)

    def records_of(k):
      return range(todo[k], min(todo[k] + chunk, n)) if k < len(todo) else ()

    started = engine.start(records_of(0), records_of(1)) if todo else None
    for k, first in enumerate(todo):
      current = started
      if k + 1 < len(todo):  # Keep the devices busy while we encode.
        started = engine.start(records_of(k + 1), records_of(k + 2))
      out = []
      for r, frames in zip(records_of(k), engine.finish(current, bar.update)):
        if len(frames) != num_frames[r]:
          raise ValueError(f"record {r}: {len(frames)} flow frames for "
                           f"{num_frames[r]} RGB frames")
        out.append(frames)
      _write_shard(_shard_path(parts, first), out)
      if on_shard is not None:
        on_shard(first)
    if backend == "jax" and engine is not None and len(engine.shapes) > 8:
      print(f"note: {len(engine.shapes)} frame sizes, one compilation "
            "each: --size=HxW computes all at one size", file=sys.stderr)
  finally:
    bar.close()
    if engine is not None:
      engine.close()

  def all_records() -> Iterator[list[bytes]]:
    for start in starts:
      yield from _read_shard(_shard_path(parts, start))

  path = flow.write_flow_store(
      builder.data_dir, split, all_records(), num_frames,
      method=_method(backend),
      extra={"backend": backend, "tvl1": dataclasses.asdict(params),
             "size": list(size) if size else None})
  shutil.rmtree(parts)
  return path


def _fail(message: str, *, after_progress: bool = False) -> int:
  """Prints `error: MESSAGE` (one line); returns the exit status 1."""
  from vreid_jax import cli  # pylint: disable=g-import-not-at-top
  if after_progress:
    print(file=sys.stderr)  # End a progress bar's line.
  cli.print_error(message)
  return 1


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the flow computation; returns the exit status (an error: one
  `error:` line, 1; --debug or VREID_DEBUG=1 shows the traceback)."""
  _import_package()
  from vreid_jax import cli  # pylint: disable=g-import-not-at-top
  return cli.run(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
  from vreid_jax import cli  # pylint: disable=g-import-not-at-top
  parser = cli.ArgumentParser(prog="python data_prep/flow.py",
                             description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", required=True, help="registered name")
  parser.add_argument("--config", default=None, help="builder config")
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data dir (default $TFDS_DATA_DIR, else "
                      "~/tensorflow_datasets)")
  parser.add_argument("--splits", default=None,
                      help="comma-separated splits (default: all)")
  parser.add_argument("--backend", choices=BACKENDS, default="opencv",
                      help="opencv (CPU processes) or jax (batched over "
                      "every local device)")
  parser.add_argument("--workers", type=int, default=1,
                      help="opencv: processes computing flow in parallel")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="jax: pairs per device and call (default 1 on "
                      "CPU, 128 on accelerators)")
  parser.add_argument("--size", default=None,
                      help="HxW: compute and store the flow at this size")
  parser.add_argument("--tvl1", default=None,
                      help="TV-L1 parameters, name=value,... (OpenCV's "
                      "defaults otherwise)")
  parser.add_argument("--chunk", type=int, default=64,
                      help="records per resumable shard")
  parser.add_argument("--overwrite", action="store_true",
                      help="recompute splits whose flow exists, discarding "
                      "any partial run (without it, a partial run resumes)")
  parser.add_argument("--no_progress", action="store_true",
                      help="no progress bar")
  args = parser.parse_args(argv)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import vreid_jax.datasets  # pylint: disable=g-import-not-at-top,unused-import
  from vreid_jax.input_pipeline import flow  # pylint: disable=g-import-not-at-top
  if args.dataset not in vreid_jax.datasets.NAMES:
    return _fail(f"--dataset={args.dataset}: no such dataset"
                 f"{cli.did_you_mean(args.dataset, vreid_jax.datasets.NAMES)}"
                 f"; vreid_jax datasets: {', '.join(vreid_jax.datasets.NAMES)}")

  try:
    params = parse_tvl1(args.tvl1)
    size = parse_size(args.size)
  except ValueError as e:
    return _fail(str(e))
  if args.backend == "opencv":
    try:
      flow.tvl1_factory()
    except ImportError as e:
      return _fail(f"{e} (or use --backend=jax)")
  data_dir = os.path.expanduser(
      args.data_dir or os.environ.get("TFDS_DATA_DIR")
      or os.path.join("~", "tensorflow_datasets"))
  name = args.dataset + (f"/{args.config}" if args.config else "")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    if cli.debug_requested(argv):
      raise
    return _fail(f"{name}: {e}")  # E.g. an unknown --config.
  if not os.path.exists(os.path.join(builder.data_dir, "dataset_info.json")):
    return _fail(f"{name} is not built in {data_dir}: build it first with "
                 f"python data_prep/build.py --dataset={args.dataset} ...")
  splits = (args.splits.split(",") if args.splits
            else list(builder.info.splits))
  unknown = [s for s in splits if s not in builder.info.splits]
  if unknown:
    return _fail(f"{name} has no split(s) {unknown}; it has "
                 f"{list(builder.info.splits)}")
  for split in splits:
    path = os.path.join(flow.flow_dir(builder.data_dir),
                        f"{split}.array_record")
    parts = parts_dir(flow.flow_dir(builder.data_dir), split)
    if (os.path.exists(path) and not args.overwrite
        and not os.path.isdir(parts)):
      print(f"{split}: flow exists ({path}); --overwrite recomputes it")
      continue
    start = time.time()
    try:
      path = compute_split(
          name, data_dir, split, backend=args.backend, params=params,
          size=size, workers=args.workers, batch_size=args.batch_size,
          chunk=args.chunk, overwrite=args.overwrite,
          progress=not args.no_progress)
    except ResumeMismatchError as e:
      return _fail(str(e))
    print(f"{split}: wrote {path} in {time.time() - start:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
