r"""Temporal modules under one budget on the synthetic benchmark (GLTR Fig. 6).

Trains the same small frame network with four temporal heads: average
pooling (the baseline), DTP only, TSA only, and GLTR (DTP + TSA), with the
same data, steps, optimizer and seed, and prints mAP / R1 on the whole
synthetic test set and on the motion-twin queries (identities whose
appearance twin differs only in gait), where frame averaging cannot work;
"twin-pair mAP" ranks each twin query against only its own and its twin's
gallery tracklets (chance is about 50, reading the gait perfectly 100).

  python benchmarks/temporal_ablation.py --steps=400 --seeds=0,1 \
      --workdir=/tmp/ablation

Results go to stdout as a Markdown table and to <workdir>/ablation.json.
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections

from vreid_jax import config_utils
from vreid_jax import train

VARIANTS = ("avg", "dtp", "tsa", "gltr")


def make_config(variant: str, *, steps: int, seed: int, clip_len: int,
                data_dir: str) -> ml_collections.ConfigDict:
  config = config_utils.load_config(os.path.join(ROOT, "configs/demo.py"))
  with config.unlocked():
    config.seed = seed
    config.data_dir = data_dir
    config.num_steps = steps
    config.log_every_steps = max(steps // 4, 1)
    config.model_name = "gltr"
    config.model = ml_collections.ConfigDict(dict(
        arch="resnet18", width=16, last_stride=1, frame_dim=64,
        reduction_relu=True, temporal=variant, num_branches=3,
        identity_branch=False, alpha=2, neck_feat="after",
        dtype="float32"))
    config.input.clip_len = clip_len
    config.input.num_ids_per_batch = 8
    config.input.num_per_id = 2
    config.evals.reid.mode = "dense"
    config.evals.reid.clip_len = clip_len
    config.evals.reid.plots = False
    config.checkpoint.every_steps = steps
  return config


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--clip_len", type=int, default=8)
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--workdir", default="/tmp/vreid_ablation")
  parser.add_argument("--data_dir", default="",
                      help="TFDS data dir (synthetic_video_reid/small is "
                      "built there on first use)")
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  variants = args.variants.split(",")
  rows = {}
  for variant in variants:
    for seed in seeds:
      workdir = os.path.join(args.workdir, f"{variant}_seed{seed}")
      config = make_config(variant, steps=args.steps, seed=seed,
                           clip_len=args.clip_len, data_dir=args.data_dir)
      t0 = time.time()
      res = train.train_and_evaluate(config, workdir)
      rows.setdefault(variant, []).append({
          "seed": seed, "mAP": res["mAP"], "R1": res["cmc"]["1"],
          "twins_mAP": res["motion_twins"]["mAP"],
          "twins_R1": res["motion_twins"]["cmc"]["1"],
          "twins_pair_mAP": res["motion_twins"]["pair_mAP"],
          "twin_queries": res["motion_twins"]["num_queries"],
          "seconds": round(time.time() - t0, 1)})
  with open(os.path.join(args.workdir, "ablation.json"), "w") as f:
    json.dump({"args": vars(args), "rows": rows}, f, indent=2)

  def mean(variant, key):
    vals = [r[key] for r in rows[variant]]
    return 100 * sum(vals) / len(vals)

  print(f"\nsynthetic_video_reid/small, {args.steps} steps, clips of "
        f"{args.clip_len} frames, seeds {seeds} (mean):")
  print("| temporal model | mAP | R1 | motion-twin mAP | motion-twin R1 | "
        "twin-pair mAP |")
  print("|---|---|---|---|---|---|")
  for variant in variants:
    print(f"| {variant} | {mean(variant, 'mAP'):.1f} | {mean(variant, 'R1'):.1f}"
          f" | {mean(variant, 'twins_mAP'):.1f} | "
          f"{mean(variant, 'twins_R1'):.1f} | "
          f"{mean(variant, 'twins_pair_mAP'):.1f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
