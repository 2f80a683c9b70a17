r"""Training and inference throughput, JAX and (optionally) PyTorch side by side.

Random uint8 clips already on the device (the input pipeline is measured by
`pipeline_bench.py`), the config's jitted training step (forward, backward,
optimizer update; state donated) and its eval-mode embedding function, data
parallel over every local device. Every measurement runs in its own child
process, so compile caches, peak memory and allocator state never leak from
one into the next.

  # The GLTR config (ResNet-50 + DTP + TSA, 256x128, 10 clips x 16 frames),
  # fp32 and bf16, against the PyTorch reference (benchmarks/torch_reference.py)
  # on the same clips, batch, dtype policy and device:
  python benchmarks/train_throughput.py --compare_torch
  # The same on a 2-core CPU (small batch, short clips):
  python benchmarks/train_throughput.py --compare_torch --batch=2 \
      --clip_len=4 --steps=3
  # One line per model family (each config's own clip length, 256x128):
  python benchmarks/train_throughput.py --models=all --dtypes=bfloat16
  # Batch x clip-length sweep of one config (BxT pairs; OOM is reported):
  python benchmarks/train_throughput.py --sweep=10x16,20x16,40x16,20x32
  # Backbone rematerialisation, flax's own BatchNorm (the configs use the
  # fused one, vreid_jax/models/norm.py), XLA flags:
  python benchmarks/train_throughput.py --remat
  python benchmarks/train_throughput.py --norm_impl=flax
  python benchmarks/train_throughput.py --xla_flags="--xla_gpu_enable_triton_gemm=false"

Per run it prints compile time, steady-state train and inference frames/s
(the median of --repeats blocks of --steps steps, after --warmup steps),
peak device memory (bytes in use on GPU/TPU; the child's max RSS on CPU) and,
for JAX, model FLOPs utilisation: the step's convolution and matrix-product
FLOPs (`model_flops`, counted on its jaxpr; XLA's own cost analysis is
reported beside it but does not count cuDNN convolutions on GPUs) over the
measured step time, against the device's dense peak for the compute dtype
(`PEAK_TFLOPS`; bf16 tensor cores for bfloat16,
TF32 for float32, which is what XLA and cuDNN run float32 convolutions with
on NVIDIA GPUs by default; `--peak_tflops` for other devices). The last line
is one JSON object with every figure and, with --compare_torch, the
JAX/PyTorch ratios per dtype.

Dtype policy (both frameworks): float32 parameters, optimizer state and
BatchNorm statistics; "bfloat16" computes activations and convolutions in
bf16 (JAX: `config.model.dtype`; PyTorch: autocast), loss in float32.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

NUM_CLASSES = 625  # MARS training identities.

# Dense peak TFLOP/s per chip: (bfloat16, float32 as the compiler runs it).
# Substrings of `device.device_kind`, most specific first.
PEAK_TFLOPS = (
    ("H200", (989.4, 494.7)),
    ("H100 PCIe", (756.5, 378.0)),
    ("H100", (989.4, 494.7)),
    ("A100", (312.0, 156.0)),
    ("L4", (121.0, 60.0)),
    ("TPU v4", (275.0, 275.0)),
    ("TPU v5 lite", (197.0, 197.0)),
    ("TPU v5", (459.0, 459.0)),
    ("TPU v6", (918.0, 918.0)),
)

# One line per model family (`--models=all`): key -> (label, config[:row],
# model field overrides).
FAMILIES = {
    "baseline": ("ResNet-50 + avg pooling (baseline)", "configs/gltr_mars.py",
                 {"temporal": "avg"}),
    "gltr": ("GLTR: DTP + TSA", "configs/gltr_mars.py", {}),
    "gao_ta": ("Gao: temporal attention", "configs/gao_mars.py:ta", {}),
    "gao_rnn": ("Gao: RNN", "configs/gao_mars.py:rnn", {}),
    "gao_c3d": ("Gao: 3D ResNet", "configs/gao_mars.py:c3d", {}),
    "m3d": ("M3D: local + global", "configs/m3d_mars.py", {}),
    "i3d": ("M3D Table IV: I3D", "configs/m3d_mars.py:i3d", {}),
    "p3d_c": ("M3D Table IV: P3D-C", "configs/m3d_mars.py:p3d_c", {}),
    "trl": ("TRL + ST2N (GoogLeNet)", "configs/trl_mars.py", {}),
    "star": ("STAR: LSTA + GSTA (flow)", "configs/star_mars.py", {}),
}


# ---------------------------------------------------------------------------
# Shared by both frameworks.


def load_line() -> str:
  """The host's load averages (CPU timings depend on them)."""
  try:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"
  except OSError:
    return "load unavailable"


def load_config(job: dict):
  """The job's config with its overrides (dtype, clip, size, remat)."""
  from vreid_jax import config_utils  # pylint: disable=g-import-not-at-top
  config = config_utils.load_config(os.path.join(ROOT, job["config"]))
  with config.unlocked():
    config.model.dtype = job["dtype"]
    for k, v in job.get("model", {}).items():
      config.model[k] = v
    if job.get("clip_len"):
      config.input.clip_len = job["clip_len"]
    if job.get("height"):
      config.input.height, config.input.width = job["height"], job["width"]
    if job.get("model_width"):
      config.model.width = job["model_width"]
    if job.get("remat"):
      config.model.remat = True
    if job.get("norm_impl"):
      config.model.norm_impl = job["norm_impl"]
  return config


def random_batch(batch: int, clip_len: int, height: int, width: int, *,
                 with_flow: bool = False, seed: int = 0) -> dict:
  """The benchmark's clips: uint8, every frame real, random labels; the
  same arrays for both frameworks (NumPy, seeded)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  out = {"clips": rng.integers(0, 256, (batch, clip_len, height, width, 3),
                               np.uint8),
         "mask": np.ones((batch, clip_len), bool),
         "labels": rng.integers(0, NUM_CLASSES, batch).astype(np.int32)}
  if with_flow:
    out["flow"] = rng.integers(0, 256, (batch, clip_len, height, width, 2),
                               np.uint8)
  return out


def peak_tflops(device_kind: str, dtype: str, override: float = 0.0):
  if override:
    return override
  for key, (bf16, fp32) in PEAK_TFLOPS:
    if key.lower() in device_kind.lower():
      return bf16 if dtype == "bfloat16" else fp32
  return None


def _max_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------
# JAX.


def model_flops(closed_jaxpr) -> float:
  """FLOPs of the convolutions and matrix products of a jaxpr: 2 x their
  multiply-adds, nested jaxprs included (jit, remat, custom derivatives;
  a scan body counts `length` times, a while body once).

  This is the "model FLOPs" of MFU: the arithmetic the model asks for,
  independent of the backend (XLA's GPU cost analysis does not see inside
  cuDNN convolutions, so it cannot be used for a convolutional network).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  total = 0.0

  def walk(jaxpr, mult: float) -> None:
    nonlocal total
    for eqn in jaxpr.eqns:
      name = eqn.primitive.name
      out = eqn.outvars[0].aval.shape if eqn.outvars else ()
      if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        spec = eqn.params["dimension_numbers"].rhs_spec
        window = np.prod([rhs[d] for d in spec[2:]])
        total += mult * 2.0 * np.prod(out) * rhs[spec[1]] * window
      elif name == "dot_general":
        (contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        total += mult * 2.0 * np.prod(out) * np.prod(
            [lhs[d] for d in contract])
      inner = mult * (eqn.params.get("length", 1) if name == "scan" else 1)
      for value in eqn.params.values():
        for sub in (value if isinstance(value, (tuple, list)) else (value,)):
          if hasattr(sub, "eqns"):
            walk(sub, inner)
          elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
            walk(sub.jaxpr, inner)

  walk(closed_jaxpr.jaxpr, 1.0)
  return float(total)


def _xla_flops(*stages) -> float | None:
  """FLOPs from XLA's cost analysis (the lowered HLO, else the compiled
  program); for comparison only (see `model_flops`)."""
  for stage in stages:
    try:
      cost = stage.cost_analysis()
    except Exception:  # pylint: disable=broad-except
      continue
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else None
    if cost and float(cost.get("flops", 0)) > 0:
      return float(cost["flops"])
  return None


def _median_of_blocks(run_block, steps: int, repeats: int) -> float:
  """Seconds per step: the median over `repeats` blocks of `steps` steps
  (`run_block(steps)` runs and waits for one block). One slow block (a
  GPU clock ramp, a host hiccup) then cannot move the figure."""
  import statistics  # pylint: disable=g-import-not-at-top
  times = []
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    run_block(steps)
    times.append((time.perf_counter() - t0) / steps)
  return statistics.median(times)


def _timed(fn, steps: int, repeats: int = 1) -> float:
  """Seconds per call of `fn()` (which returns something to block on)."""
  import jax  # pylint: disable=g-import-not-at-top

  def block(n):
    out = None
    for _ in range(n):
      out = fn()
    jax.block_until_ready(out)
  return _median_of_blocks(block, steps, repeats)


def jax_job(job: dict) -> dict:
  """Compiles and times one config's train step and embedding function."""
  import jax  # pylint: disable=g-import-not-at-top
  from vreid_jax import losses as losses_lib  # pylint: disable=g-import-not-at-top
  from vreid_jax import models  # pylint: disable=g-import-not-at-top
  from vreid_jax import optim  # pylint: disable=g-import-not-at-top
  from vreid_jax import parallel  # pylint: disable=g-import-not-at-top
  from vreid_jax import train  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import preprocess  # pylint: disable=g-import-not-at-top

  config = load_config(job)
  model = models.build_model(config.model_name, NUM_CLASSES, config.model)
  mesh = parallel.make_mesh()
  n = jax.device_count()
  b = -(-job["batch"] // n) * n  # Data parallel: a multiple of the devices.
  t, h, w = config.input.clip_len, config.input.height, config.input.width
  schedule = optim.make_schedule(config.schedule, total_steps=1000,
                                 steps_per_epoch=100)
  tx = optim.make_optimizer(config.optimizer, schedule)
  spec = preprocess.InputSpec.from_config(config.input)
  variables = train.init_variables(model, jax.random.PRNGKey(0),
                                   preprocess.dummy_inputs(spec))
  state = train.create_train_state(variables, tx, jax.random.PRNGKey(1))
  sharding = train.state_sharding_like(state, mesh)
  state = jax.device_put(state, sharding)
  step_fn = train.jit_train_step(
      mesh, sharding, model=model, tx=tx,
      losses=losses_lib.resolve(config.losses.to_dict()), schedule=schedule,
      input_spec=spec)
  data = parallel.global_batch(
      random_batch(b, t, h, w, with_flow=spec.with_flow), mesh)
  dev = jax.devices()[0]
  res = {"framework": "jax", "jax": jax.__version__,
         "device": getattr(dev, "device_kind", dev.platform),
         "devices": jax.device_count(), "model": config.model_name,
         "dtype": job["dtype"], "batch": b, "clip_len": t,
         "frames_per_step": b * t, "remat": bool(job.get("remat")),
         "norm_impl": config.model.get("norm_impl", "flax")}
  t0 = time.perf_counter()
  traced = step_fn.trace(state, data)  # One trace: FLOPs and the program.
  lowered = traced.lower()
  compiled = lowered.compile()
  res["compile_s"] = time.perf_counter() - t0
  res["train_gflop_per_frame"] = model_flops(traced.jaxpr) / (b * t) / 1e9
  res["xla_train_gflop_per_frame"] = (
      _xla_flops(lowered, compiled) or 0) / (b * t) / 1e9
  holder = [state]

  def one_step():
    holder[0], m = compiled(holder[0], data)
    return m

  t0 = time.perf_counter()
  _timed(one_step, job["warmup"])
  res["warmup_s"] = time.perf_counter() - t0
  step_s = _timed(one_step, job["steps"], job.get("repeats", 1))
  res["train_step_ms"] = step_s * 1e3
  res["train_fps"] = b * t / step_s

  embed = models.embed_fn(model)
  infer = jax.jit(lambda v, x: embed(v, preprocess.preprocess(x, spec)))
  v = holder[0].variables()
  eval_batch = {k: data[k] for k in spec.keys}
  traced_i = infer.trace(v, eval_batch)
  compiled_i = traced_i.lower().compile()
  res["infer_gflop_per_frame"] = model_flops(traced_i.jaxpr) / (b * t) / 1e9
  _timed(lambda: compiled_i(v, eval_batch), job["warmup"])
  infer_s = _timed(lambda: compiled_i(v, eval_batch), job["steps"],
                   job.get("repeats", 1))
  res["infer_fps"] = b * t / infer_s
  stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    res["peak_mib"] = stats["peak_bytes_in_use"] / 2**20
    res["peak_kind"] = "device"
  else:
    res["peak_mib"] = _max_rss_mib()
    res["peak_kind"] = "process max RSS"
  peak = peak_tflops(res["device"], job["dtype"], job.get("peak_tflops", 0))
  if peak and res["train_gflop_per_frame"]:
    flops_s = res["train_gflop_per_frame"] * 1e9 * res["train_fps"]
    res["train_tflops"] = flops_s / 1e12
    res["mfu"] = flops_s / (peak * 1e12) / jax.device_count()
  res["peak_tflops"] = peak
  return res


# ---------------------------------------------------------------------------
# PyTorch (imported in the torch child only: CI and JAX users need no torch).


def torch_job(job: dict) -> dict:
  """The PyTorch reference's train step and embedding on the same clips."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_reference as ref  # pylint: disable=g-import-not-at-top
  config = load_config(job)
  torch.manual_seed(0)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  if device.type == "cpu":
    torch.set_num_threads(len(os.sched_getaffinity(0)))
  else:
    torch.backends.cudnn.benchmark = True
  amp = job["dtype"] == "bfloat16"
  model = ref.build_model(NUM_CLASSES, device=device, channels_last=True,
                          **ref.torch_kwargs(config))
  opt = ref.build_optimizer(model)
  b = job["batch"]
  t, h, w = config.input.clip_len, config.input.height, config.input.width
  data = random_batch(b, t, h, w)
  clips = torch.from_numpy(data["clips"])
  labels = torch.from_numpy(data["labels"]).long()
  if device.type == "cuda":
    clips = clips.pin_memory()
  clips = clips.to(device, non_blocking=True)
  labels = labels.to(device, non_blocking=True)
  compile_mode = job.get("torch_compile", False)
  run = torch.compile(model) if compile_mode else model

  def sync():
    if device.type == "cuda":
      torch.cuda.synchronize()

  def timed(fn, steps, repeats=1):
    def block(n):
      for _ in range(n):
        fn()
      sync()
    return _median_of_blocks(block, steps, repeats)

  loss_kwargs = {"amp": amp, "label_smoothing": float(
      config.losses.get("softmax_cross_entropy", {}).get(
          "label_smoothing", 0.0))}
  res = {"framework": "torch", "torch": torch.__version__,
         "device": (torch.cuda.get_device_name(device)
                    if device.type == "cuda" else "cpu"),
         "threads": torch.get_num_threads(), "dtype": job["dtype"],
         "amp_bf16": amp, "channels_last": True,
         "compile": bool(compile_mode), "batch": b, "clip_len": t,
         "frames_per_step": b * t}
  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  t0 = time.perf_counter()
  timed(lambda: ref.train_step(run, opt, clips, labels, **loss_kwargs),
        job["warmup"])
  res["compile_s"] = time.perf_counter() - t0  # Warm-up (+ compile).
  step_s = timed(lambda: ref.train_step(run, opt, clips, labels,
                                        **loss_kwargs), job["steps"],
                 job.get("repeats", 1))
  res["train_step_ms"] = step_s * 1e3
  res["train_fps"] = b * t / step_s
  timed(lambda: ref.embed(run, clips, amp=amp), job["warmup"])
  res["infer_fps"] = b * t / timed(lambda: ref.embed(run, clips, amp=amp),
                                   job["steps"], job.get("repeats", 1))
  if device.type == "cuda":
    res["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    res["peak_kind"] = "device"
  else:
    res["peak_mib"] = _max_rss_mib()
    res["peak_kind"] = "process max RSS"
  return res


# ---------------------------------------------------------------------------
# The parent: one child process per job.


def run_child(job: dict, timeout: float, env_extra: dict | None = None
              ) -> dict:
  """Runs `job` in a child process; its result, or {"error": ...}."""
  env = dict(os.environ, **(env_extra or {}))
  cmd = [sys.executable, os.path.abspath(__file__), "--_job", json.dumps(job)]
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return dict(job, error=f"timed out after {timeout:.0f} s")
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith("RESULT "):
      res = json.loads(line[len("RESULT "):])
      res["wall_s"] = time.perf_counter() - t0
      res["load"] = load_line()
      return res
  err = (proc.stderr or proc.stdout).strip().splitlines()
  oom = any("RESOURCE_EXHAUSTED" in l or "out of memory" in l.lower()
            for l in err)
  tail = [l for l in err if l.strip()][-3:]
  return dict(job, error="out of memory" if oom else " | ".join(tail),
              oom=oom)


def _fmt(res: dict) -> str:
  label = res.get("label", res.get("framework", "?"))
  if "error" in res:
    return (f"| {label} | {res['dtype']} | {res['batch']}x"
            f"{res.get('clip_len') or 'config'} | {res['error'][:80]} |||||")
  mfu = f"{100 * res['mfu']:.1f}%" if res.get("mfu") is not None else "n/a"
  return (f"| {label} | {res['dtype']} | {res['batch']}x{res['clip_len']} | "
          f"{res['compile_s']:.1f} | {res['train_fps']:,.1f} | "
          f"{res['infer_fps']:,.1f} | {res['peak_mib']:,.0f} | {mfu} |")


HEADER = ("| run | dtype | clips x frames | compile / warm-up s | "
          "train frames/s | inference frames/s | peak MiB | MFU |\n"
          "|---|---|---|---|---|---|---|---|")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/gltr_mars.py")
  parser.add_argument("--batch", type=int, default=0,
                      help="clips per step (default: the config's P*K, "
                      "rounded up to the device count)")
  parser.add_argument("--clip_len", type=int, default=0,
                      help="frames per clip (default: the config's)")
  parser.add_argument("--height", type=int, default=0)
  parser.add_argument("--width", type=int, default=0)
  parser.add_argument("--model_width", type=int, default=0,
                      help="ResNet base channels (default: the config's)")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=3,
                      help="time --steps steps this many times and report "
                      "the median block (both frameworks)")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--compare_torch", action="store_true",
                      help="also time benchmarks/torch_reference.py (needs "
                      "torch; GLTR configs with temporal gltr or avg)")
  parser.add_argument("--torch_compile", default="auto",
                      choices=("auto", "yes", "no"),
                      help="torch.compile the reference too (auto: on CUDA; "
                      "the faster of eager and compiled is compared)")
  parser.add_argument("--models", default="",
                      help="'all' or keys of FAMILIES: one line each, at its "
                      "config's clip length")
  parser.add_argument("--sweep", default="",
                      help="BxT pairs, e.g. 10x16,20x16,40x16 (JAX only)")
  parser.add_argument("--remat", action="store_true",
                      help="rematerialise the backbone's blocks "
                      "(config.model.remat)")
  parser.add_argument("--norm_impl", default="",
                      choices=("", "flax", "fused"),
                      help="override the config's model.norm_impl: flax "
                      "(flax.linen.BatchNorm) or fused (models/norm.py)")
  parser.add_argument("--xla_flags", default="",
                      help="XLA_FLAGS for the JAX children (appended)")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="the device's peak for MFU when PEAK_TFLOPS has "
                      "no entry (e.g. a CPU)")
  parser.add_argument("--timeout", type=float, default=900.0,
                      help="seconds per child process")
  parser.add_argument("--json_out", default="",
                      help="also write the final JSON object to this file")
  parser.add_argument("--_job", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args._job:  # pylint: disable=protected-access
    job = json.loads(args._job)  # pylint: disable=protected-access
    fn = torch_job if job["framework"] == "torch" else jax_job
    print("RESULT " + json.dumps(fn(job)), flush=True)
    return 0

  import importlib.util  # pylint: disable=g-import-not-at-top
  from vreid_jax import config_utils  # pylint: disable=g-import-not-at-top
  if args.compare_torch and importlib.util.find_spec("torch") is None:
    parser.error("--compare_torch needs PyTorch: pip install -e '.[torch]' "
                 "(CPU wheels: --index-url "
                 "https://download.pytorch.org/whl/cpu)")
  dtypes = [d for d in args.dtypes.split(",") if d]
  for d in dtypes:
    if d not in ("float32", "bfloat16"):
      parser.error(f"--dtypes: {d!r} is not float32 or bfloat16")
  env = {}
  if args.xla_flags:
    env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                        + args.xla_flags).strip()
  base = {"steps": args.steps, "warmup": args.warmup,
          "repeats": args.repeats,
          "height": args.height, "width": args.width,
          "model_width": args.model_width, "remat": args.remat,
          "norm_impl": args.norm_impl, "peak_tflops": args.peak_tflops}

  def batch_of(config_path: str) -> int:
    config = config_utils.load_config(os.path.join(ROOT, config_path))
    return args.batch or (config.input.num_ids_per_batch
                          * config.input.num_per_id)

  print(f"{load_line()} at start; {os.cpu_count()} CPUs", flush=True)
  print(HEADER, flush=True)
  out = {"config": args.config, "jax": {}, "torch": {}, "ratios": {}}

  def show(res, label):
    res["label"] = label
    print(_fmt(res), flush=True)
    return res

  if not args.models and not args.sweep or args.compare_torch:
    b = batch_of(args.config)
    job = dict(base, config=args.config, batch=b, clip_len=args.clip_len)
    for dtype in dtypes:
      out["jax"][dtype] = show(run_child(
          dict(job, framework="jax", dtype=dtype), args.timeout, env),
                               f"jax {args.config}")
      if not args.compare_torch:
        continue
      runs = [False]
      if args.torch_compile == "yes" or (
          args.torch_compile == "auto" and _torch_has_cuda()):
        runs.append(True)
      tried = []
      for comp in runs:
        tried.append(show(run_child(
            dict(job, framework="torch", dtype=dtype, torch_compile=comp),
            args.timeout), "torch" + (" compiled" if comp else " eager")))
      ok = [r for r in tried if "error" not in r]
      out["torch"][dtype] = {"runs": tried}
      jr = out["jax"][dtype]
      if ok and "error" not in jr:
        best = max(ok, key=lambda r: r["train_fps"])
        best_inf = max(ok, key=lambda r: r["infer_fps"])
        out["ratios"][dtype] = {
            "jax_train_fps": jr["train_fps"], "jax_infer_fps": jr["infer_fps"],
            "torch_train_fps": best["train_fps"],
            "torch_infer_fps": best_inf["infer_fps"],
            "train_jax_over_torch": jr["train_fps"] / best["train_fps"],
            "infer_jax_over_torch": jr["infer_fps"] / best_inf["infer_fps"],
            "torch_train_run": best["label"],
            "torch_infer_run": best_inf["label"]}
        print(f"{dtype}: JAX/PyTorch train "
              f"{out['ratios'][dtype]['train_jax_over_torch']:.2f}x, "
              f"inference {out['ratios'][dtype]['infer_jax_over_torch']:.2f}x",
              flush=True)

  if args.sweep:
    out["sweep"] = []
    for pair in args.sweep.split(","):
      try:
        b, t = (int(v) for v in pair.lower().split("x"))
      except ValueError:
        parser.error(f"--sweep: {pair!r} is not BxT (e.g. 10x16)")
      for dtype in dtypes:
        out["sweep"].append(show(run_child(
            dict(base, framework="jax", config=args.config, batch=b,
                 clip_len=t, dtype=dtype), args.timeout, env),
                                 f"sweep {b}x{t}"))

  if args.models:
    keys = list(FAMILIES) if args.models == "all" else args.models.split(",")
    unknown = [k for k in keys if k not in FAMILIES]
    if unknown:
      parser.error(f"--models: unknown {unknown}; known: {list(FAMILIES)}")
    out["models"] = {}
    for key in keys:
      label, path, fields = FAMILIES[key]
      for dtype in dtypes:
        res = run_child(dict(base, framework="jax", config=path,
                             batch=batch_of(path), clip_len=0, model=fields,
                             dtype=dtype), args.timeout, env)
        out["models"].setdefault(key, {})[dtype] = show(res, label)

  out["load_end"] = load_line()
  line = json.dumps(out)
  if args.json_out:
    with open(args.json_out, "w") as f:
      f.write(line + "\n")
  print(line)
  return 0


def _torch_has_cuda() -> bool:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return torch.cuda.is_available()


if __name__ == "__main__":
  sys.exit(main())
