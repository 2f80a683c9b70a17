r"""Every temporal model of the codebase under one protocol, synthetic data.

Each entry names a model by its config (a paper row) plus the fields that
select a variant; the benchmark keeps that model and takes everything else
from one protocol, `configs/motion_twins.py`: the same frame network
(ResNet-18, width 16, last stride 1, on 64 x 32 frames; Hara's 3D ResNet-18
at width 16 for the 3D CNN), the same data (`synthetic_video_reid/motion`,
where every identity has an appearance twin that walks at another cadence),
the same budget (800 steps of PK batches, 8 identities x 2 clips of 4
frames with twins in the same batch, Adam 3e-3 with a cosine decay), the
same losses (label-smoothed cross-entropy + batch-hard triplet) and head
(BN-neck), and the same evaluation (dense 4-frame test clips; the re-id,
motion-twin and attention-vs-occlusion evaluators). GLTR's frame features
keep their reduction (d = 64); the image baseline trains on single frames;
TRL keeps its GoogLeNet at a quarter of its width (`width` 16 of 64), and
its two-stream rows add the alignment stream's cross-entropy and draw
ST2N's boxes (`stn_boxes_<i>.png` in the entry's workdir); STAR runs on the
protocol's ResNet-18 with a 64-channel ConvLSTM and adds its pyramid
ranking regulariser.
Controls: average pooling, and the 3D CNN on frame-shuffled clips.

  python benchmarks/compare_temporal.py --seeds=0,1,2 \
      --workdir=/tmp/compare --out=/tmp/compare/out
  python benchmarks/compare_temporal.py --models=gltr,gao_c3d --steps=50
  python benchmarks/compare_temporal.py --tabulate --seeds=0,1,2 \
      --workdir=/tmp/compare      # the table of whatever has finished

Writes `<out>/compare_temporal.md` (mean +- sample std over the seeds of
mAP, R1, motion-twin mAP, twin-pair mAP (each twin query against only its
own and its twin's tracklets, 50 = chance) and, for models that weight
frames, the mean attention weight of occluded and of clean test frames
relative to uniform), `<out>/compare_temporal.json` and
`<out>/compare_temporal.png` (overall mAP against twin-pair mAP, one point
per model with error bars), and prints the table. A model's run is reused
when its workdir already has metrics.json for the same steps. Entries that
read optical flow run only when the dataset's flow store exists
(data_prep/flow.py) and are marked [flow].
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

# TRL's alignment-stream classifier and ST2N's boxes (two-stream entries):
# the protocol's losses read only `logits`.
TRL_CE_ALIGN = {"type": "softmax_cross_entropy", "weight": 1.0,
                "label_smoothing": 0.1, "inputs": {"logits": "logits_align"}}
TRL_STN_BOXES = {"type": "stn_boxes", "source": "reid", "every_steps": 0,
                 "num_tracklets": 4, "max_frames": 8}

# STAR's pyramid ranking regulariser (eq. 9-10, lambda = 0.1; the protocol's
# losses are CE + triplet) and a GSTA sized to the width-16 trunk (the
# paper's 512-channel ConvLSTM would be 9.4 M parameters on its 512-channel
# maps).
STAR_RPR = {"type": "pyramid_ranking", "weight": 0.1, "margin": 0.4,
            "levels": 3}
STAR_SMALL = {"gsta_hidden": 64, "attention_hidden": 32}

# key -> (label, config[:row], model fields selecting the variant[, other
# config overrides]).
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
    "gao_c3d_shuffled": ("control: Gao 3D ResNet-18, frame-shuffled clips",
                         "configs/gao_mars.py:c3d", {},
                         {"input.shuffle_frames": True}),
    "m3d_local": ("M3D: local layers", "configs/m3d_mars.py:local", {}),
    "m3d_global": ("M3D: global layer", "configs/m3d_mars.py:global", {}),
    "m3d": ("M3D: local + global layers", "configs/m3d_mars.py:m3d", {}),
    "i3d": ("M3D Table IV: I3D", "configs/m3d_mars.py:i3d", {}),
    "p3d_a": ("M3D Table IV: P3D-A", "configs/m3d_mars.py:p3d_a", {}),
    "p3d_b": ("M3D Table IV: P3D-B", "configs/m3d_mars.py:p3d_b", {}),
    "p3d_c": ("M3D Table IV: P3D-C", "configs/m3d_mars.py:p3d_c", {}),
    "m3d_flow_two_stream": ("M3D Table IV: RGB + flow two-stream [flow]",
                            "configs/m3d_mars.py:flow_two_stream", {}),
    "flow_avg": ("avg pooling + flow stem (STAR eq. 2) [flow]",
                 "configs/gltr_mars.py", {"temporal": "avg",
                                          "use_flow": True}),
    "trl_lstm_g": ("TRL Table I: GoogLeNet + LSTM_g",
                   "configs/trl_mars.py:lstm_g", {}),
    "trl_bilstm_g": ("TRL Table I: GoogLeNet + BiLSTM_g (Baseline)",
                     "configs/trl_mars.py:bilstm_g", {}),
    "trl_bilstm_s": ("TRL Table I: GoogLeNet + BiLSTM_s",
                     "configs/trl_mars.py:bilstm_s", {}),
    "trl": ("TRL: BiLSTM_g + BiLSTM_s (temporal residuals)",
            "configs/trl_mars.py:trl", {}),
    "trl_stn": ("TRL + per-frame STN (two streams)",
                "configs/trl_mars.py:trl_stn", {},
                {"losses.ce_align": TRL_CE_ALIGN,
                 "evals.stn_boxes": TRL_STN_BOXES}),
    "trl_st2n": ("TRL + ST2N (two streams, the paper's model)",
                 "configs/trl_mars.py:full", {},
                 {"losses.ce_align": TRL_CE_ALIGN,
                  "evals.stn_boxes": TRL_STN_BOXES}),
    "star": ("STAR: LSTA + GSTA + R_pr [flow]", "configs/star_mars.py:full",
             STAR_SMALL, {"losses.pyramid_ranking": STAR_RPR}),
    "star_noflow": ("STAR without flow (RGB)", "configs/star_mars.py:no_flow",
                    STAR_SMALL, {"losses.pyramid_ranking": STAR_RPR}),
    "star_lsta": ("STAR Table 3: LSTA, avg pooling [flow]",
                  "configs/star_mars.py:lsta", {}),
    "star_gsta": ("STAR: GSTA + R_pr, no LSTA [flow]",
                  "configs/star_mars.py:no_lsta", STAR_SMALL,
                  {"losses.pyramid_ranking": STAR_RPR}),
}

# Entries that read optical flow: run only where the dataset's flow store
# exists (data_prep/flow.py), marked in the table.
FLOW_ENTRIES = ("flow_avg", "m3d_flow_two_stream", "star", "star_lsta",
                "star_gsta")

# The shared frame network and head (fields a model has are overridden).
FRAME_NETWORK = dict(arch="resnet18", width=16, last_stride=1,
                     neck="bnneck")
GLTR_FRAME_DIM = 64
PROTOCOL = "configs/motion_twins.py"


def _apply_overrides(config, overrides) -> None:
  """`--set input.pair_motion_twins=True`-style overrides (Python literals)."""
  import ast
  for item in overrides:
    path, _, value = item.partition("=")
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
      node = node[p]
    try:
      node[leaf] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      node[leaf] = value


def make_config(key: str, *, steps: int, seed: int, data_dir: str,
                dataset_config: str, overrides=()) -> ml_collections.ConfigDict:
  """The protocol config of entry `key` (module docstring)."""
  _, source, fields, *rest = ENTRIES[key]
  entry_overrides = rest[0] if rest else {}
  paper = config_utils.load_config(os.path.join(ROOT, source))
  model = paper.model.to_dict()
  model.update(fields)
  for k, v in FRAME_NETWORK.items():
    if k in model:
      model[k] = v
  if model.get("frame_dim", 0) > 0:
    model["frame_dim"] = GLTR_FRAME_DIM
  config = config_utils.load_config(os.path.join(ROOT, PROTOCOL))
  with config.unlocked():
    config.seed = seed
    config.data_dir = data_dir
    config.dataset.config = dataset_config
    config.num_steps = steps
    config.log_every_steps = max(steps // 4, 1)
    config.model_name = paper.model_name
    config.model = ml_collections.ConfigDict(model)
    if paper.input.clip_len == 1:  # The image baseline trains on frames.
      config.input.clip_len = 1
    config.input.with_flow = key in FLOW_ENTRIES
    config.checkpoint.every_steps = steps
    _apply_overrides(config, [f"{k}={v!r}"
                              for k, v in entry_overrides.items()])
    _apply_overrides(config, overrides)
  return config


def _finished(key: str, seed: int, args) -> dict | None:
  """The metrics of a finished run of this protocol, else None."""
  metrics_path = os.path.join(args.workdir, f"{key}_seed{seed}",
                              "metrics.json")
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      res = json.load(f)
    if res.get("step") == args.steps:
      return res | {"seconds": None}
  return None


def _run(key: str, seed: int, args) -> dict:
  from vreid_jax import train
  workdir = os.path.join(args.workdir, f"{key}_seed{seed}")
  res = _finished(key, seed, args)
  if res is not None:
    print(f"{key} seed {seed}: reusing {workdir}/metrics.json", flush=True)
    return res
  config = make_config(key, steps=args.steps, seed=seed,
                       data_dir=args.data_dir,
                       dataset_config=args.dataset_config,
                       overrides=args.set)
  t0 = time.time()
  res = train.train_and_evaluate(config, workdir)
  return res | {"seconds": round(time.time() - t0, 1)}


def _row(res: dict) -> dict:
  twins = res.get("motion_twins", {})
  att = res.get("attention", {})
  return {"mAP": res["mAP"], "R1": res["cmc"]["1"],
          "twin_mAP": twins.get("mAP", float("nan")),
          "twin_pair_mAP": twins.get("pair_mAP", float("nan")),
          "occluded_weight": att.get("occluded_weight", float("nan")),
          "clean_weight": att.get("clean_weight", float("nan")),
          "seconds": res.get("seconds")}


def flow_available(data_dir: str, dataset_config: str) -> bool:
  """Whether the synthetic dataset's flow store has every split."""
  from vreid_jax.input_pipeline import flow as flow_lib
  try:
    for split in ("train", "query", "gallery"):
      flow_lib.FlowSource(data_dir or None,
                          f"synthetic_video_reid/{dataset_config}", split)
  except (FileNotFoundError, ValueError):
    return False
  return True


def _fmt(values, scale: float = 100, digits: int = 1) -> str:
  v = scale * np.asarray(values, float)
  if np.isnan(v).all():
    return "-"
  if len(v) == 1:
    return f"{v[0]:.{digits}f}"
  return f"{v.mean():.{digits}f} +- {v.std(ddof=1):.{digits}f}"


def write_outputs(rows: dict, args) -> str:
  """The markdown table, JSON and plot; returns the table."""
  os.makedirs(args.out, exist_ok=True)
  seeds = args.seeds
  lines = [f"synthetic_video_reid/{args.dataset_config}, {args.steps} steps,"
           f" seeds {', '.join(map(str, seeds))} "
           + ("(mean +- sample std)" if len(seeds) > 1 else ""),
           "",
           "| model | config | seeds | mAP | R1 | motion-twin mAP | "
           "twin-pair mAP | attention on occluded / clean frames |",
           "|---|---|---|---|---|---|---|---|"]
  for key, runs in rows.items():
    label, source, fields, *rest = ENTRIES[key]
    where = source + "".join(f" {k}={v}" for k, v in fields.items()) + (
        # A whole block (a loss, an evaluator) is named, not spelled out.
        "".join(f" +{k}" if isinstance(v, dict) else f" {k}={v}"
                for k, v in rest[0].items()) if rest else "")
    lines.append(
        f"| {label} | `{where}` | {len(runs)} | "
        f"{_fmt([r['mAP'] for r in runs])} | "
        f"{_fmt([r['R1'] for r in runs])} | "
        f"{_fmt([r['twin_mAP'] for r in runs])} | "
        f"{_fmt([r['twin_pair_mAP'] for r in runs])} | "
        + ("-" if np.isnan([r["occluded_weight"] for r in runs]).all() else
           f"{_fmt([r['occluded_weight'] for r in runs], 1, 2)} / "
           f"{_fmt([r['clean_weight'] for r in runs], 1, 2)}") + " |")
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
  parser.add_argument("--steps", type=int, default=800)
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--models", default="all",
                      help=f"comma-separated keys of {sorted(ENTRIES)}")
  parser.add_argument("--dataset_config", default="motion")
  parser.add_argument("--workdir", default="/tmp/vreid_compare")
  parser.add_argument("--out", default="")
  parser.add_argument("--set", action="append", default=[],
                      help="a config override for every run, e.g. "
                      "--set=input.pair_motion_twins=True (repeatable)")
  parser.add_argument("--tabulate", action="store_true",
                      help="train nothing: tabulate the finished runs in "
                      "--workdir (a row per model with at least one seed; "
                      "the seeds column says how many)")
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
  if any(k in FLOW_ENTRIES for k in keys) and not flow_available(
      args.data_dir, args.dataset_config):
    skipped = [k for k in keys if k in FLOW_ENTRIES]
    print(f"no optical flow for synthetic_video_reid/{args.dataset_config}: "
          f"skipping {skipped} (compute it with data_prep/flow.py)")
    keys = [k for k in keys if k not in FLOW_ENTRIES]
  rows = {}
  t0 = time.time()
  for key in keys:
    for seed in args.seeds:
      if args.tabulate:
        res = _finished(key, seed, args)
        if res is None:
          print(f"{key} seed {seed}: not run")
          continue
      else:
        res = _run(key, seed, args)
      rows.setdefault(key, []).append(_row(res))
  table = write_outputs(rows, args)
  print("\n" + table)
  print(f"\nwall time {time.time() - t0:.0f} s; outputs in {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
