r"""Precomputes TV-L1 optical flow of a built dataset (for two-stream models).

  python data_prep/flow.py --dataset=ilids_vid [--data_dir=DIR] \
      [--splits=tracklets] [--workers=16] [--overwrite]

Reads the built dataset with `tfds.data_source`, computes for every record
the flow of each frame to the next with OpenCV's TV-L1 (default parameters),
and writes `<builder data dir>/flow_tvl1/<split>.array_record` (record i =
flow of record i), which `vreid_jax.input_pipeline.flow.FlowSource` serves
aligned with the RGB frames. Storage convention (flow of frame t = t -> t+1,
last frame repeated, clipped to +-20 px, 2-channel uint8 PNG): see
vreid_jax/input_pipeline/flow.py. Needs `pip install 'vreid_jax[flow]'`.

Cost: one TV-L1 call per frame, ~0.1 s for a 128x64 pair and ~0.4 s for a
256x128 pair on one CPU core (measured here), so MARS (1.19M frames at
256x128) takes about 5.5 core-days: use --workers and run splits separately.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import textwrap
import time
from collections.abc import Sequence

_STATE: dict = {}


def _import_package() -> None:
  try:
    import vreid_jax  # pylint: disable=g-import-not-at-top,unused-import
  except ModuleNotFoundError:  # Run from a checkout without installing.
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))


def _init_worker(name: str, data_dir: str, split: str) -> None:
  _import_package()
  import cv2  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import vreid_jax.datasets  # pylint: disable=g-import-not-at-top,unused-import
  from vreid_jax.input_pipeline import flow  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(1)
  _STATE["source"] = tfds.data_source(name, split=split, data_dir=data_dir)
  _STATE["tvl1"] = flow.tvl1_factory()()


def _compute(record: int) -> list[bytes]:
  from vreid_jax.input_pipeline import flow  # pylint: disable=g-import-not-at-top
  frames = list(_STATE["source"][record]["frames"])
  return flow.tracklet_flow(frames, _STATE["tvl1"])


def compute_split(name: str, data_dir: str, split: str, *,
                  workers: int = 1, progress: bool = True) -> str:
  """Computes and stores the flow of one split; returns the store's path."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import flow  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir)
  index = builder.info.metadata["index"][split]
  num_frames = list(index["num_frames"])
  n = len(num_frames)
  bar = tqdm.tqdm(total=sum(num_frames), unit="frame",
                  desc=f"flow {split}", disable=not progress)

  def counted(results):
    for i, frames in enumerate(results):
      bar.update(num_frames[i])
      yield frames

  try:
    if workers <= 1:
      _init_worker(name, data_dir, split)
      return flow.write_flow_store(
          builder.data_dir, split, counted(_compute(i) for i in range(n)),
          num_frames)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker,
                  initargs=(name, data_dir, split)) as pool:
      return flow.write_flow_store(
          builder.data_dir, split,
          counted(pool.imap(_compute, range(n), chunksize=4)), num_frames)
  finally:
    bar.close()


def _fail(message: str) -> int:
  print("\n" + textwrap.fill(" ".join(str(message).split()), width=79),
        file=sys.stderr)
  return 1


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the flow computation; returns the exit status."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", required=True, help="registered name")
  parser.add_argument("--config", default=None, help="builder config")
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data dir (default $TFDS_DATA_DIR, else "
                      "~/tensorflow_datasets)")
  parser.add_argument("--splits", default=None,
                      help="comma-separated splits (default: all)")
  parser.add_argument("--workers", type=int, default=1,
                      help="processes computing flow in parallel")
  parser.add_argument("--overwrite", action="store_true",
                      help="recompute splits whose flow exists")
  args = parser.parse_args(argv)
  _import_package()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import vreid_jax.datasets  # pylint: disable=g-import-not-at-top,unused-import
  from vreid_jax.input_pipeline import flow  # pylint: disable=g-import-not-at-top

  try:
    flow.tvl1_factory()
  except ImportError as e:
    return _fail(str(e))
  data_dir = os.path.expanduser(
      args.data_dir or os.environ.get("TFDS_DATA_DIR")
      or os.path.join("~", "tensorflow_datasets"))
  name = args.dataset + (f"/{args.config}" if args.config else "")
  builder = tfds.builder(name, data_dir=data_dir)
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
    if os.path.exists(path) and not args.overwrite:
      print(f"{split}: flow exists ({path}); --overwrite recomputes it")
      continue
    start = time.time()
    path = compute_split(name, data_dir, split, workers=args.workers)
    print(f"{split}: wrote {path} in {time.time() - start:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
