r"""Input pipeline throughput: frames decoded and augmented per second.

Builds a MARS-layout tree of textured 256x128 JPEGs (quality 90, ~8 KB like
MARS frames), builds it with the real `mars` builder, then measures the
training pipeline (record read, JPEG decode, clip-consistent flip / pad-crop /
erasing) at 256x128:
  * per worker: one thread calling the batch function directly;
  * grain with 1..N worker processes (`input.num_workers`).

  python benchmarks/pipeline_bench.py [--workers=1,2] [--tracklets=200]

Target: >= 1,000 frames/s per CPU core, scaling with workers.
"""

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

# pylint: disable=g-import-not-at-top,wrong-import-position
import io

import numpy as np
from PIL import Image


def textured_jpeg(rng: np.random.Generator) -> bytes:
  """A 256x128 frame with smooth structure and noise (MARS-like size)."""
  y, x = np.mgrid[0:256, 0:128]
  base = rng.uniform(0, 255, size=3)
  img = (base + 40 * np.sin(y[..., None] / rng.uniform(5, 20))
         + 30 * np.cos(x[..., None] / rng.uniform(5, 20))
         + rng.normal(0, 12, size=(256, 128, 3)))
  buf = io.BytesIO()
  Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
      buf, "JPEG", quality=90)
  return buf.getvalue()


def make_tree(root: str, num_tracklets: int, frames: int) -> None:
  import fake_trees  # tests/fake_trees.py: the MARS layout writer.
  rng = np.random.default_rng(0)
  pool = [textured_jpeg(rng) for _ in range(64)]
  num_ids = max(num_tracklets // 2, 4)
  train = [(pid, 1 + (i % 2), 1 + i // 2, list(range(1, frames + 1)))
           for i, pid in enumerate(np.repeat(np.arange(1, num_ids + 1), 2)
                                   [:num_tracklets].tolist())]
  test = [(pid, cam, 1, [1, 2]) for pid in (num_ids + 1, num_ids + 2)
          for cam in (1, 2)]
  query = [(num_ids + 1, 1, 1), (num_ids + 2, 1, 1)]
  fake_trees.make_mars_tree(root, train=train, test=test, query=query)
  # Replace the flat frames by textured JPEGs of realistic size.
  k = 0
  for d, _, files in os.walk(os.path.join(root, "MARS", "bbox_train")):
    for f in files:
      with open(os.path.join(d, f), "wb") as out:
        out.write(pool[k % len(pool)])
      k += 1


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tracklets", type=int, default=128)
  parser.add_argument("--frames", type=int, default=60)
  parser.add_argument("--clip_len", type=int, default=8)
  parser.add_argument("--batches", type=int, default=12)
  parser.add_argument("--workers", default="1,2")
  args = parser.parse_args(argv)

  from vreid_jax import config_utils
  from vreid_jax.datasets.mars import mars
  from vreid_jax.input_pipeline import pipeline

  tmp = tempfile.mkdtemp(prefix="vreid_pipeline_bench_")
  make_tree(os.path.join(tmp, "manual"), args.tracklets, args.frames)
  import tensorflow_datasets as tfds
  builder = mars.Mars(data_dir=os.path.join(tmp, "tfds"))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=os.path.join(tmp, "manual")),
      file_format="array_record")

  config = config_utils.load_config(os.path.join(ROOT, "configs/common.py"))
  with config.unlocked():
    config.dataset.name = "mars"
    config.data_dir = os.path.join(tmp, "tfds")
    config.input.clip_len = args.clip_len
    config.input.num_ids_per_batch = 8
    config.input.num_per_id = 4
  data = pipeline.open_dataset(config.dataset, config.data_dir)
  batches = pipeline.TrainBatches(pipeline.make_train_spec(data, config))
  frames_per_batch = 32 * args.clip_len
  jpeg_kb = np.mean([len(b) for b in pipeline._data_source(  # pylint: disable=protected-access
      data.name, data.data_dir, "train")[0]["frames"]]) / 1024
  print(f"{args.tracklets} tracklets x {args.frames} frames of 256x128 JPEG "
        f"(mean {jpeg_kb:.1f} KB); batches of 32 clips x {args.clip_len} "
        f"frames; decode + flip + pad-crop + erasing; {os.cpu_count()} CPUs")

  batches(0)  # Warm up (opens the data source).
  t0 = time.perf_counter()
  for step in range(1, args.batches + 1):
    batches(step)
  dt = time.perf_counter() - t0
  one = args.batches * frames_per_batch / dt
  print(f"one worker (in-process, one thread): {one:,.0f} frames/s")

  for w in [int(x) for x in args.workers.split(",")]:
    it = pipeline.train_iterator(batches, 10_000, num_workers=w,
                                 num_threads=1)
    next(it)  # Worker start-up.
    t0 = time.perf_counter()
    n = args.batches * max(w, 1)
    for _ in range(n):
      next(it)
    dt = time.perf_counter() - t0
    print(f"grain, {w} worker process(es): {n * frames_per_batch / dt:,.0f} "
          f"frames/s ({n * frames_per_batch / dt / w:,.0f} per worker)")
    del it
  return 0


if __name__ == "__main__":
  sys.exit(main())
