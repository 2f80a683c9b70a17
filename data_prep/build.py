r"""Builds one vreid_jax dataset into array_record files (no TensorFlow needed).

  python data_prep/build.py --dataset=mars --manual_dir=/data/reid \
      [--data_dir=~/tensorflow_datasets] [--skip_corrupt]
  python data_prep/build.py --dataset=synthetic_video_reid --config=tiny

The dataset's layout under --manual_dir is validated first: a missing file or
folder is named (with where it comes from) in one `error:` line and the
script exits with status 1, without a traceback (--debug, --traceback or
VREID_DEBUG=1 shows it). A corrupt or unreadable frame stops the build with
its path named; with --skip_corrupt it is skipped instead, and the skipped
frames are counted in the report printed at the end. The split sizes
(tracklets, ids, frames) are printed when done.
data_prep/README.md says where each download comes from.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

DEFAULT_DATA_DIR = os.path.join("~", "tensorflow_datasets")


def _parse(argv: Sequence[str] | None,
           datasets: Sequence[str]) -> argparse.Namespace:
  from vreid_jax import cli  # pylint: disable=g-import-not-at-top
  parser = cli.ArgumentParser(
      prog="python data_prep/build.py",
      description="Build a vreid_jax TFDS dataset (array_record files).")
  parser.add_argument("--dataset", required=True, choices=datasets,
                      help="registered builder name")
  parser.add_argument("--manual_dir", default=None,
                      help="where the official download is unpacked (every "
                      "dataset but synthetic_video_reid)")
  parser.add_argument("--data_dir", default=None,
                      help="output TFDS data dir (default: $TFDS_DATA_DIR, "
                      f"else {DEFAULT_DATA_DIR})")
  parser.add_argument("--config", default=None,
                      help="builder config (synthetic_video_reid: small, "
                      "tiny, ...)")
  parser.add_argument("--skip_corrupt", action="store_true",
                      help="skip and count corrupt frames instead of failing")
  parser.add_argument("--overwrite", action="store_true",
                      help="rebuild even when the dataset is already built")
  parser.add_argument("--traceback", action="store_true",
                      help="show the full traceback of an error (same as "
                      "--debug)")
  return parser.parse_args(argv)


def _fail(message: str, *, after_progress: bool = False) -> int:
  """Prints `error: MESSAGE` (one line); returns the exit status 1."""
  from vreid_jax import cli  # pylint: disable=g-import-not-at-top
  if after_progress:
    print(file=sys.stderr)  # End a progress bar's line.
  cli.print_error(message)
  return 1


def _import_package() -> None:
  try:
    import vreid_jax  # pylint: disable=g-import-not-at-top,unused-import
  except ModuleNotFoundError:  # Run from a checkout without installing.
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))


def split_summary(info) -> list[str]:
  """Lines describing the built splits (tracklets, ids, frames)."""
  index = (info.metadata or {}).get("index", {})
  lines = []
  for split, split_info in info.splits.items():
    line = f"  {split:<10} {split_info.num_examples:>7} tracklets"
    if split in index:
      pids = index[split]["pid"]
      frames = sum(index[split]["num_frames"])
      line += f"  {len(set(pids)):>6} ids  {frames:>9} frames"
    lines.append(line)
  trials = (info.metadata or {}).get("trials")
  if trials:
    lines.append(f"  {len(trials)} trials of {len(trials[0]['train'])} train "
                 f"/ {len(trials[0]['test'])} test ids (trial 0)")
  return lines


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the build; returns the exit status (an error: one line, 1)."""
  _import_package()
  from vreid_jax import cli  # pylint: disable=g-import-not-at-top
  if "--traceback" in (sys.argv[1:] if argv is None else argv):
    return _main(argv)
  return cli.run(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import vreid_jax.datasets  # pylint: disable=g-import-not-at-top
  from vreid_jax import cli  # pylint: disable=g-import-not-at-top
  from vreid_jax.datasets import base  # pylint: disable=g-import-not-at-top
  args = _parse(argv, vreid_jax.datasets.NAMES)
  debug = args.traceback or cli.debug_requested(argv)

  data_dir = os.path.expanduser(
      args.data_dir or os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR)
  name = args.dataset + (f"/{args.config}" if args.config else "")
  try:
    builder = tfds.builder(name, data_dir=data_dir,
                           skip_corrupt=args.skip_corrupt)
  except Exception as e:  # Unknown config and the like.
    if debug:
      raise
    return _fail(f"{name}: {e}")
  needs_manual = getattr(builder, "NEEDS_MANUAL_DIR", True)
  manual_dir = None
  if needs_manual:
    if not args.manual_dir:
      return _fail(f"{args.dataset} is built from its official download: "
                   "pass --manual_dir=<folder where it is unpacked>. "
                   + " ".join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split()))
    manual_dir = os.path.abspath(os.path.expanduser(args.manual_dir))
    if not os.path.isdir(manual_dir):
      return _fail(f"--manual_dir={manual_dir} is not a folder. "
                   + " ".join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split()))
    validate = getattr(builder, "validate_layout", None)
    if validate is not None:
      try:
        validate(manual_dir)
      except base.LayoutError as e:
        if debug:
          raise
        return _fail(str(e))

  builder.progress_bar = True
  download_config = tfds.download.DownloadConfig(
      manual_dir=manual_dir,
      download_mode=(tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
                     if args.overwrite else
                     tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  start = time.time()
  try:
    builder.download_and_prepare(download_config=download_config,
                                 file_format="array_record")
  except base.CorruptImageError as e:
    if debug:
      raise
    return _fail(f"{args.dataset}: corrupt or unreadable frame {e}",
                 after_progress=True)
  except (base.LayoutError, ValueError) as e:
    if debug:
      raise
    return _fail(f"{args.dataset}: {e} (rerun with --debug for the "
                 "traceback)", after_progress=True)
  elapsed = time.time() - start

  builder = tfds.builder(name, data_dir=data_dir)  # Reads what was written.
  metadata = builder.info.metadata or {}
  print(f"\n{name} in {builder.data_dir} ({elapsed:.1f} s):")
  print("\n".join(split_summary(builder.info)))
  report = metadata.get("build_report")
  if report:
    built = base.BuildReport(
        skipped_frames=[tuple(x) for x in report["skipped_frames"]],
        skipped_tracklets=[tuple(x) for x in report["skipped_tracklets"]])
    print("report: " + built.summary())
  persons = metadata.get("persons")
  if persons:  # E.g. PRID-2011's persons seen by one camera, not stored.
    print("persons: " + ", ".join(
        f"{k}={len(v) if isinstance(v, list) else v}"
        for k, v in persons.items()))
  notes = metadata.get("layout_notes") or []
  if notes:
    print(f"{len(notes)} notes on the layout (info.metadata['layout_notes']):")
    for note in notes[:20]:
      print("  " + note)
    if len(notes) > 20:
      print(f"  ... and {len(notes) - 20} more")
  return 0


if __name__ == "__main__":
  sys.exit(main())
