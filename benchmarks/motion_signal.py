r"""Is the motion-twin signal in the pixels? Non-learned descriptors.

Motion twins of `synthetic_video_reid` share their appearance and differ in
gait period, hence in walking speed. The crop follows the person, so the
background scrolls past at the walking speed. Two descriptors, computed from
the decoded frames with no learning at all:

* scroll speed: for every pair of consecutive frames, the horizontal shift
  (integer pixels, |dx| <= 12) that best aligns the background in the side
  bands of the crop (the 8 left and right columns, where the person rarely
  is), the tracklet's median |dx|; needs 2 frames;
* gait frequency: the dominant temporal frequency (FFT, cycles per frame)
  of the lower-body band (rows 60-95%, central half) after removing its
  mean, with the background shift compensated; needs 8 frames.

Each is scored as an embedding with the benchmark's twin-pair mAP (each twin
query against only its own and its twin's gallery tracklets; 50 = chance),
next to the same metric for a frame-order-free descriptor (the tracklet's
mean frame: what averaging sees) as a control.

With `--workdir=W` (a trained run), the same question is asked of the
model's per-frame features F (aux "frame_features", after the spatial
pooling, before any temporal layer), embedded whole-tracklet: a non-learned
temporal statistic of F, the mean feature velocity mean_t ||F_{t+1} - F_t||
(over the mean norm), tells whether the frame features still carry the
motion that the pixels do; their mean over time is the order-free control.

  python benchmarks/motion_signal.py --config=small [--data_dir=DIR] \
      [--workdir=W]
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from vreid_jax.evaluators import motion_twins
from vreid_jax.evaluators import reid
from vreid_jax.input_pipeline import augment
from vreid_jax.input_pipeline import pipeline

MAX_SHIFT = 12
BAND = 8


def _grey(clip: np.ndarray) -> np.ndarray:
  return clip.astype(np.float32).mean(-1)


def frame_shifts(frames: np.ndarray) -> np.ndarray:
  """(T,) frames (T, H, W) -> (T-1,) background shift dx per pair."""
  t, _, w = frames.shape
  out = []
  cols = np.r_[0:BAND, w - BAND:w]
  for a, b in zip(frames[:-1], frames[1:]):
    best, best_dx = np.inf, 0
    for dx in range(-MAX_SHIFT, MAX_SHIFT + 1):
      src = cols + dx
      ok = (src >= 0) & (src < w)
      err = np.abs(b[:, cols[ok]] - a[:, src[ok]]).mean()
      if err < best:
        best, best_dx = err, dx
    out.append(best_dx)
  return np.asarray(out, np.float32) if out else np.zeros(0, np.float32)


def scroll_speed(frames: np.ndarray) -> float:
  shifts = frame_shifts(frames)
  return float(np.median(np.abs(shifts))) if len(shifts) else 0.0


def gait_frequency(frames: np.ndarray) -> float:
  """Dominant temporal frequency of the lower-body band (cycles/frame)."""
  t, h, w = frames.shape
  if t < 8:
    return float("nan")
  band = frames[:, int(0.6 * h):int(0.95 * h), w // 4:3 * w // 4]
  signal = band.reshape(t, -1)
  signal = signal - signal.mean(0, keepdims=True)
  spectrum = np.abs(np.fft.rfft(signal, axis=0)).sum(-1)
  freqs = np.fft.rfftfreq(t)
  spectrum[0] = 0.0
  return float(freqs[int(np.argmax(spectrum))])


def descriptors(data, role: str, height: int, width: int):
  tracklets = data.roles[role]
  source = data.source(tracklets.split)
  speed, freq, mean_frame = [], [], []
  for record in tracklets.records:
    frames = source[int(record)]["frames"]
    clip = augment.decode_clip(frames, np.arange(len(frames)), height, width)
    grey = _grey(clip)
    speed.append(scroll_speed(grey))
    freq.append(gait_frequency(grey))
    mean_frame.append(clip.astype(np.float32).mean(0).ravel() / 255.0)
  return (np.asarray(speed), np.asarray(freq), np.stack(mean_frame))


def frame_feature_descriptors(workdir: str, data, role: str):
  """Per tracklet: (feature velocity, mean frame feature) of a trained model.
  """
  import jax
  from vreid_jax import checkpoint
  from vreid_jax import models
  from vreid_jax import parallel
  from vreid_jax.evaluators import embedder as embedder_lib
  from vreid_jax.input_pipeline import preprocess
  model, variables, config = checkpoint.restore_for_inference(workdir)
  embedder = embedder_lib.Embedder(
      models.embed_fn(model), preprocess.InputSpec.from_config(config.input),
      parallel.make_mesh(jax.devices()[:1]),
      predict_fn=lambda keys: models.predict_fn(model, keys))
  plan = embedder_lib.EmbedPlan(mode="all", clip_len=8, batch_size=16)
  _, clips = embedder.embed(variables, data, role, plan,
                            aux_keys=("frame_features",))
  velocity, mean = [], []
  for tracklet in clips:
    (frames, aux), = tracklet                       # One clip: all frames.
    f = aux["frame_features"][np.argsort(frames)]   # In temporal order.
    scale = np.linalg.norm(f, axis=1).mean() + 1e-9
    step = np.linalg.norm(np.diff(f, axis=0), axis=1)
    velocity.append(step.mean() / scale if len(step) else 0.0)
    mean.append(f.mean(0))
  return np.asarray(velocity), np.stack(mean)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="small",
                      help="synthetic_video_reid builder config")
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--workdir", default="",
                      help="a trained run: also test its frame features")
  args = parser.parse_args(argv)
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(
      name="synthetic_video_reid", config=args.config, trial=-1,
      auto_build=True))
  t0 = time.time()
  data = pipeline.open_dataset(cfg, args.data_dir)
  spec = data.metadata["synthetic"]["spec"]
  h, w = spec["image_size"]
  q = descriptors(data, "query", h, w)
  g = descriptors(data, "gallery", h, w)
  test, split = reid.protocol_split(data, "given")
  kwargs = dict(metric="euclidean", normalize=False, ap="step", max_rank=20)
  twins = test["motion_twin"] >= 0
  speed = np.concatenate([q[0], g[0]])
  freq = np.concatenate([q[1], g[1]])
  print(f"synthetic_video_reid/{args.config}: {twins[split.query].sum()} twin"
        f" queries, {len(speed)} test tracklets ({time.time() - t0:.0f} s)")
  # Speed of fast vs slow twins (each pair: fast = the higher median).
  rows = []
  pids = test["pid"]
  for pid in np.unique(pids[twins]):
    twin = test["motion_twin"][pids == pid][0]
    if pid < twin:
      a, b = speed[pids == pid], speed[pids == twin]
      rows.append((np.median(a), np.median(b)))
  fast = np.array([max(r) for r in rows])
  slow = np.array([min(r) for r in rows])
  print(f"scroll speed (px/frame, median per identity): fast twins "
        f"{fast.mean():.2f} +- {fast.std():.2f}, slow twins "
        f"{slow.mean():.2f} +- {slow.std():.2f}")
  results = {}
  extra = []
  if args.workdir:
    fq, fg = (frame_feature_descriptors(args.workdir, data, r)
              for r in ("query", "gallery"))
    extra = [("frame-feature velocity (trained model)",
              np.concatenate([fq[0], fg[0]])[:, None]),
             ("mean frame feature (trained model; control)",
              np.concatenate([fq[1], fg[1]]))]
  for name, feat in (*extra, ("scroll speed", speed[:, None]),
                     ("gait frequency",
                      np.nan_to_num(freq, nan=0.25)[:, None]),
                     ("speed + frequency",
                      np.stack([speed / 4.0,
                                np.nan_to_num(freq, nan=0.25) * 10], -1)),
                     ("mean frame (control)",
                      np.concatenate([q[2], g[2]]))):
    results[name] = motion_twins.twin_pair_map(feat, test, split, kwargs)
  valid_freq = np.isfinite(freq)
  print(f"gait frequency defined (>= 8 frames) for {valid_freq.sum()} of "
        f"{len(freq)} tracklets")
  print("| descriptor | twin-pair mAP |")
  print("|---|---|")
  for name, value in results.items():
    print(f"| {name} | {100 * value:.1f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
