r"""Every temporal model of the codebase under one protocol, synthetic data.

Each entry names a model by its config (a paper row) plus the fields that
select a variant; the benchmark keeps that model and replaces everything
else by one protocol: the same frame network (ResNet-18, width 16, last
stride 1, on 64 x 32 frames), the same data (`synthetic_video_reid/small`
by default), the same budget (steps, Adam 1e-3 with a cosine decay,
P = 8 x K = 2, 8-frame consecutive clips; the image baseline trains on
single frames), the same losses (label-smoothed cross-entropy + batch-hard
triplet) and the same evaluation (dense 8-frame test clips, the re-id and
motion-twin evaluators). GLTR's frame features keep their reduction
(d = 64), Gao's family the raw pooled feature, and each paper keeps its own
head.

  python benchmarks/compare_temporal.py --steps=400 --seeds=0 \
      --workdir=/tmp/compare --out=/tmp/compare/out
  python benchmarks/compare_temporal.py --models=gltr,gao_ta --steps=50

Writes `<out>/compare_temporal.md` (mean +- std over the seeds of mAP, R1,
motion-twin mAP and twin-pair mAP: each twin query against only its own and
its twin's tracklets, 50 = chance), `<out>/compare_temporal.json` and
`<out>/compare_temporal.png` (overall mAP against twin-pair mAP, one point
per model with error bars), and prints the table. A model's run is reused
when its workdir already has metrics.json for the same steps.
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
import numpy as np

from vreid_jax import config_utils

# key -> (label, config[:row], model fields selecting the variant).
ENTRIES = {
    "avg": ("avg pooling (baseline)", "configs/gltr_mars.py",
            {"temporal": "avg"}),
    "dtp": ("GLTR: DTP only", "configs/gltr_mars.py", {"temporal": "dtp"}),
    "tsa": ("GLTR: TSA only", "configs/gltr_mars.py", {"temporal": "tsa"}),
    "gltr": ("GLTR: DTP + TSA", "configs/gltr_mars.py", {"temporal": "gltr"}),
    "pyramid_nodilation": ("GLTR: pyramid without dilation",
                           "configs/gltr_mars.py",
                           {"temporal": "pyramid_nodilation"}),
    "tpp": ("GLTR: temporal pyramid pooling", "configs/gltr_mars.py",
            {"temporal": "tpp"}),
    "gao_image": ("Gao: image baseline (T=1)", "configs/gao_mars.py:image",
                  {}),
    "gao_tp_avg": ("Gao: temporal avg pooling", "configs/gao_mars.py:tp_avg",
                   {}),
    "gao_tp_max": ("Gao: temporal max pooling", "configs/gao_mars.py:tp_max",
                   {}),
    "gao_ta": ("Gao: attention, spatial + temporal conv",
               "configs/gao_mars.py:ta", {}),
    "gao_ta_fc": ("Gao: attention, spatial conv + FC",
                  "configs/gao_mars.py:ta_fc", {}),
    "gao_ta_sigmoid": ("Gao: attention, FC + sigmoid",
                       "configs/gao_mars.py:ta_sigmoid", {}),
    "gao_rnn": ("Gao: LSTM, output mean", "configs/gao_mars.py:rnn", {}),
    "gao_rnn_final": ("Gao: LSTM, final state",
                      "configs/gao_mars.py:rnn_final", {}),
    "gao_gru": ("Gao: GRU, output mean", "configs/gao_mars.py:gru", {}),
    "gao_c3d": ("Gao: 3D ResNet-18", "configs/gao_mars.py:c3d", {}),
}

# The shared frame network (fields a model has are overridden).
FRAME_NETWORK = dict(arch="resnet18", width=16, last_stride=1)
GLTR_FRAME_DIM = 64
CLIP_LEN = 8


def make_config(key: str, *, steps: int, seed: int, data_dir: str,
                dataset_config: str) -> ml_collections.ConfigDict:
  """The protocol config of entry `key` (module docstring)."""
  _, source, fields = ENTRIES[key]
  paper = config_utils.load_config(os.path.join(ROOT, source))
  model = paper.model.to_dict()
  model.update(fields)
  for k, v in FRAME_NETWORK.items():
    if k in model:
      model[k] = v
  if model.get("frame_dim", 0) > 0:
    model["frame_dim"] = GLTR_FRAME_DIM
  config = config_utils.load_config(os.path.join(ROOT, "configs/demo.py"))
  with config.unlocked():
    config.seed = seed
    config.data_dir = data_dir
    config.dataset.config = dataset_config
    config.num_steps = steps
    config.log_every_steps = max(steps // 4, 1)
    config.model_name = paper.model_name
    config.model = ml_collections.ConfigDict(model)
    config.input.clip_len = 1 if paper.input.clip_len == 1 else CLIP_LEN
    config.input.num_ids_per_batch = 8
    config.input.num_per_id = 2
    config.evals.reid.mode = "dense"
    config.evals.reid.clip_len = CLIP_LEN
    config.evals.reid.plots = False
    config.checkpoint.every_steps = steps
  return config


def _run(key: str, seed: int, args) -> dict:
  from vreid_jax import train
  workdir = os.path.join(args.workdir, f"{key}_seed{seed}")
  metrics_path = os.path.join(workdir, "metrics.json")
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      res = json.load(f)
    if res.get("step") == args.steps:
      print(f"{key} seed {seed}: reusing {metrics_path}", flush=True)
      return res | {"seconds": None}
  config = make_config(key, steps=args.steps, seed=seed,
                       data_dir=args.data_dir,
                       dataset_config=args.dataset_config)
  t0 = time.time()
  res = train.train_and_evaluate(config, workdir)
  return res | {"seconds": round(time.time() - t0, 1)}


def _row(res: dict) -> dict:
  twins = res.get("motion_twins", {})
  return {"mAP": res["mAP"], "R1": res["cmc"]["1"],
          "twin_mAP": twins.get("mAP", float("nan")),
          "twin_pair_mAP": twins.get("pair_mAP", float("nan")),
          "seconds": res.get("seconds")}


def _fmt(values) -> str:
  v = 100 * np.asarray(values, float)
  if len(v) == 1:
    return f"{v[0]:.1f}"
  return f"{v.mean():.1f} +- {v.std(ddof=1):.1f}"


def write_outputs(rows: dict, args) -> str:
  """The markdown table, JSON and plot; returns the table."""
  os.makedirs(args.out, exist_ok=True)
  seeds = args.seeds
  lines = [f"synthetic_video_reid/{args.dataset_config}, {args.steps} steps,"
           f" seeds {', '.join(map(str, seeds))} "
           + ("(mean +- sample std)" if len(seeds) > 1 else ""),
           "",
           "| model | config | mAP | R1 | motion-twin mAP | twin-pair mAP |",
           "|---|---|---|---|---|---|"]
  for key, runs in rows.items():
    label, source, fields = ENTRIES[key]
    where = source + "".join(f" {k}={v}" for k, v in fields.items())
    lines.append(
        f"| {label} | `{where}` | {_fmt([r['mAP'] for r in runs])} | "
        f"{_fmt([r['R1'] for r in runs])} | "
        f"{_fmt([r['twin_mAP'] for r in runs])} | "
        f"{_fmt([r['twin_pair_mAP'] for r in runs])} |")
  table = "\n".join(lines)
  with open(os.path.join(args.out, "compare_temporal.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(args.out, "compare_temporal.json"), "w") as f:
    json.dump({"args": {k: v for k, v in vars(args).items()},
               "rows": rows}, f, indent=2)
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 5))
    for key, runs in rows.items():
      x = 100 * np.array([r["mAP"] for r in runs])
      y = 100 * np.array([r["twin_pair_mAP"] for r in runs])
      ax.errorbar(x.mean(), y.mean(),
                  xerr=x.std(ddof=1) if len(x) > 1 else None,
                  yerr=y.std(ddof=1) if len(y) > 1 else None, fmt="o",
                  capsize=3)
      ax.annotate(key, (x.mean(), y.mean()), textcoords="offset points",
                  xytext=(4, 4), fontsize=7)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("overall mAP (%)")
    ax.set_ylabel("twin-pair mAP (%), 50 = chance")
    ax.set_title(f"Temporal models on synthetic_video_reid/"
                 f"{args.dataset_config}, {args.steps} steps")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "compare_temporal.png"), dpi=120)
    plt.close(fig)
  except Exception as e:  # pylint: disable=broad-except
    print(f"could not draw the plot: {e}", file=sys.stderr)
  return table


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--models", default="all",
                      help=f"comma-separated keys of {sorted(ENTRIES)}")
  parser.add_argument("--dataset_config", default="small")
  parser.add_argument("--workdir", default="/tmp/vreid_compare")
  parser.add_argument("--out", default="")
  parser.add_argument("--data_dir", default="",
                      help="TFDS data dir (the synthetic dataset is built "
                      "there on first use)")
  args = parser.parse_args(argv)
  args.seeds = [int(s) for s in args.seeds.split(",")]
  args.out = args.out or os.path.join(args.workdir, "out")
  keys = list(ENTRIES) if args.models == "all" else args.models.split(",")
  unknown = sorted(set(keys) - set(ENTRIES))
  if unknown:
    parser.error(f"unknown models {unknown}; known: {sorted(ENTRIES)}")
  rows = {}
  t0 = time.time()
  for key in keys:
    for seed in args.seeds:
      rows.setdefault(key, []).append(_row(_run(key, seed, args)))
  table = write_outputs(rows, args)
  print("\n" + table)
  print(f"\nwall time {time.time() - t0:.0f} s; outputs in {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
