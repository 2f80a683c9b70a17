r"""Feature extraction speed: the JAX embedding path beside a PyTorch ResNet-50.

Eval-mode forward passes (no gradient) of the ResNet-50 frame model at
256x128, timed side by side in one process on the same uint8 clips:

* JAX: the `baseline` model as configs/common.py builds it (ResNet-50,
  width 64, last stride 1, no reduction, temporal average pooling), through
  the shared embedding path the evaluators use
  (`vreid_jax/evaluators/embedder.py`): uint8 batch -> `preprocess` ->
  `models.embed_fn(model)`, one jitted function, data parallel over the
  local devices (`parallel.make_mesh`, replicated variables, batches sharded
  on "data" with `parallel.global_batch`);
* PyTorch: torchvision's ResNet-50 (the script's own copy of it, same
  module names and arithmetic, when torchvision cannot be imported) with
  last stride 1 (layer4[0].conv2 and its downsample conv at stride 1), eval
  mode, `torch.inference_mode()`, channels_last, the same normalisation,
  spatial mean then mean over time: a 2048-d embedding per clip.

On a host with several accelerators JAX uses them all and torch one: the
ratio is then per host, not per device.

Each timed call starts from the host's uint8 (B, T, H, W, 3) batch and ends
with the (B, 2048) float32 embeddings back on the host, so both sides pay
their host-to-device copy, normalisation and fetch. The two frameworks take
turns call by call, so a change of load on a shared machine hits both.

  python benchmarks/extract_bench.py                           # 1,4 clips x 8
  python benchmarks/extract_bench.py --batch_sizes=1,2 --clip_len=4 \
      --iters=3                                                # quick, CPU
  python benchmarks/extract_bench.py --dtype=bfloat16 --device=cuda

Numerics: the JAX model gets the torch model's weights (its random
state dict, with BatchNorm statistics and affines perturbed so the import of
every field shows, written to a .pth and read by `baseline.load`, the
project's torchvision importer), and the embeddings of the first batch are
compared. The model is built with `neck_feat="before"`: its embedding is
then the temporally pooled backbone feature, which is what the torch side
computes (with the configs' `neck_feat="after"` it would be that feature
through the eval-mode BN-neck, a per-channel affine on 2048 numbers per
clip that costs nothing next to the backbone).

Threads: `torch.set_num_threads(--threads)`. XLA's CPU client has no
thread setting: its intra-op pool is sized from the CPUs the process may
run on. When --threads is below that number, the process is pinned to
--threads CPUs (`os.sched_setaffinity`) before JAX starts its backend, so
neither side computes on more than --threads cores at once.

Prints, per batch size, the JAX compile time and the torch first-call time,
frames/s of each (timed frames over the summed time of the timed calls; the
JSON keeps every call's time) and their ratio (JAX frames/s over torch
frames/s: above 1, JAX is faster); then the projected time to
embed the MARS test set at the best rate of each; the last line is one JSON
object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

from vreid_jax import config_utils
from vreid_jax import models
from vreid_jax import parallel
from vreid_jax import train
from vreid_jax.input_pipeline import preprocess

# The MARS test set (bbox_test; info/tracks_test_info.mat): 12,180 tracklets
# (the 1,980 queries and the 10,200 other gallery rows, distractors and junk
# included, as the `mars` builder stores them) holding 681,089 frames
# (Zheng et al., ECCV 2016: 1,191,003 boxes, 509,914 of them in training).
MARS_TEST_FRAMES = 681_089
MARS_TEST_TRACKLETS = 12_180

# Largest |JAX - torch| / max |torch| accepted by the numerics check.
TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_sizes", default="1,4",
                      help="clips per batch, comma-separated (rounded up to "
                      "a multiple of the local device count)")
  parser.add_argument("--clip_len", type=int, default=8)
  parser.add_argument("--height", type=int, default=256)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--warmup", type=int, default=2,
                      help="untimed calls after the first one")
  parser.add_argument("--iters", type=int, default=5, help="timed calls")
  parser.add_argument("--dtype", default="float32",
                      choices=("float32", "bfloat16"),
                      help="JAX compute dtype; torch autocasts to bfloat16 "
                      "when its device supports it")
  parser.add_argument("--device", default="auto",
                      choices=("auto", "cpu", "cuda"),
                      help="torch device (auto: cuda when available)")
  parser.add_argument("--compile", action="store_true",
                      help="torch.compile the torch forward (its first "
                      "call compiles)")
  parser.add_argument("--threads", type=int, default=os.cpu_count(),
                      help="CPU threads of both frameworks")
  parser.add_argument("--arch", default="resnet50",
                      help="ResNet of both sides (tests use a tiny one)")
  parser.add_argument("--base_width", type=int, default=64,
                      help="ResNet base channels (64 = torchvision)")
  parser.add_argument("--no_torch", action="store_true",
                      help="time the JAX side only")
  args = parser.parse_args(argv)
  try:
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
  except ValueError:
    parser.error(f"--batch_sizes must be integers, got {args.batch_sizes!r}")
  if not args.batch_sizes or min(args.batch_sizes) < 1:
    parser.error("--batch_sizes needs positive clip counts")
  for name in ("clip_len", "height", "width", "iters", "threads"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1")
  if args.warmup < 0:
    parser.error("--warmup must be >= 0")
  return args


def limit_cpus(threads: int) -> int:
  """Pins the process to `threads` CPUs when it may use more (before JAX
  starts a backend, so XLA's pool has that size). Returns the CPU count."""
  if not hasattr(os, "sched_getaffinity"):
    return os.cpu_count() or 1
  cpus = sorted(os.sched_getaffinity(0))
  if threads < len(cpus):
    os.sched_setaffinity(0, cpus[:threads])
    cpus = cpus[:threads]
  return len(cpus)


# ---------------------------------------------------------------------------
# The JAX side.


def jax_model(args):
  """(model, model config, InputSpec) of the baseline in configs/common.py."""
  config = config_utils.load_config(os.path.join(ROOT, "configs/common.py"))
  with config.unlocked():
    config.model.arch = args.arch
    config.model.width = args.base_width
    config.model.neck_feat = "before"   # embedding = pooled feature
    config.model.dtype = args.dtype
    config.input.height = args.height
    config.input.width = args.width
    config.input.clip_len = args.clip_len
  model = models.build_model(config.model_name, 0, config.model)
  return model, config.model, preprocess.InputSpec.from_config(config.input)


def jax_embedder(model, spec, mesh):
  """uint8 batch -> preprocess -> embed_fn, jitted as the evaluators do."""
  embed = models.embed_fn(model)

  def fn(variables, batch):
    return embed(variables, preprocess.preprocess(batch, spec))

  return jax.jit(fn, in_shardings=(parallel.replicated(mesh),
                                   parallel.data_sharded(mesh)),
                 out_shardings=parallel.data_sharded(mesh))


# ---------------------------------------------------------------------------
# The PyTorch side.


def import_torch():
  try:
    import torch
  except ImportError:
    return None
  return torch


def torch_resnet(torch, arch: str, width: int):
  """(model, where it came from): torchvision's when importable, else a
  copy of torchvision's layout (module names, arithmetic, init)."""
  if arch == "resnet50" and width == 64:
    try:
      from torchvision.models import resnet50
      return resnet50(weights=None), "torchvision.models.resnet50"
    except Exception as e:  # pylint: disable=broad-except
      # Absent, or a wheel built for another torch (its ops fail to load).
      why = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
  else:
    why = f"{arch} at width {width}"
  return (_own_resnet(torch, arch, width),
          f"torchvision-layout {arch} defined here ({why})")


def _own_resnet(torch, arch: str, width: int):
  """torchvision's ResNet (v1.5 Bottleneck / BasicBlock), written out."""
  nn = torch.nn
  stages = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3),
            "resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}[arch]
  bottleneck = arch in ("resnet50", "resnet101")
  expansion = 4 if bottleneck else 1

  class Block(nn.Module):

    def __init__(self, inplanes, planes, stride):
      super().__init__()
      out = planes * expansion
      if bottleneck:
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
      else:
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
      self.relu = nn.ReLU(inplace=True)
      self.downsample = None
      if stride != 1 or inplanes != out:
        self.downsample = nn.Sequential(
            nn.Conv2d(inplanes, out, 1, stride, bias=False),
            nn.BatchNorm2d(out))

    def forward(self, x):
      y = self.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      if bottleneck:
        y = self.bn3(self.conv3(self.relu(y)))
      shortcut = x if self.downsample is None else self.downsample(x)
      return self.relu(y + shortcut)

  class ResNet(nn.Module):

    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.relu = nn.ReLU(inplace=True)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      inplanes = width
      for i, n in enumerate(stages):
        planes = width * 2**i
        blocks = []
        for j in range(n):
          blocks.append(Block(inplanes, planes, 2 if i and not j else 1))
          inplanes = planes * expansion
        setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
      for m in self.modules():
        if isinstance(m, nn.Conv2d):
          nn.init.kaiming_normal_(m.weight, mode="fan_out",
                                  nonlinearity="relu")

  return ResNet()


def set_last_stride_1(model) -> None:
  """layer4 at 1/16 resolution (Luo et al.), as the JAX configs use it."""
  block = model.layer4[0]
  # The stride sits on conv2 of a Bottleneck, conv1 of a BasicBlock.
  (block.conv2 if hasattr(block, "conv3") else block.conv1).stride = (1, 1)
  if block.downsample is not None:
    block.downsample[0].stride = (1, 1)


def perturb_batchnorm(torch, model, seed: int = 0) -> None:
  """Random BN statistics and affines (torchvision initialises them to
  0 / 1, which would leave half the import untested)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
        m.running_var.copy_(0.5 + torch.rand(c, generator=g))
        m.weight.copy_(0.8 + 0.4 * torch.rand(c, generator=g))
        m.bias.copy_(0.1 * torch.randn(c, generator=g))


def torch_device(torch, name: str):
  if name == "auto":
    name = "cuda" if torch.cuda.is_available() else "cpu"
  if name == "cuda" and not torch.cuda.is_available():
    raise SystemExit("--device=cuda: torch sees no CUDA device")
  return torch.device(name)


def torch_bf16_supported(torch, device) -> bool:
  if device.type == "cuda":
    return torch.cuda.is_bf16_supported()
  # oneDNN's bf16 kernels (AVX512-BF16 / AMX, or AVX512 emulation).
  # pylint: disable-next=protected-access
  check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
  try:
    return bool(check()) if check is not None else False
  except (AttributeError, RuntimeError):
    return False


def torch_embedder(torch, model, device, mean, std, *, autocast: bool,
                   compile_: bool):
  """uint8 (B, T, H, W, 3) NumPy -> (B, C) float32 NumPy embeddings.

  With `compile_`, torch.compile compiles the whole device-side function
  (normalisation, trunk, pooling), so the first call pays its compile.
  """
  mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
  std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0

  def forward(x, b: int, t: int):
    # x: (B*T, 3, H, W) uint8 with NHWC memory, i.e. channels_last.
    x = ((x.float() - mean) / std).contiguous(
        memory_format=torch.channels_last)
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    f = x.float().mean(dim=(2, 3))                    # (B*T, C)
    return f.view(b, t, -1).mean(dim=1)               # (B, C)

  if compile_:
    forward = torch.compile(forward)
  ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)
         ) if autocast else contextlib.nullcontext

  def embed(clips: np.ndarray) -> np.ndarray:
    b, t, h, w, c = clips.shape
    with torch.inference_mode(), ctx():
      x = torch.from_numpy(clips).to(device)
      x = x.view(b * t, h, w, c).permute(0, 3, 1, 2)
      return forward(x, b, t).float().cpu().numpy()

  return embed


# ---------------------------------------------------------------------------
# The run.


def fmt_duration(seconds: float) -> str:
  m, s = divmod(int(round(seconds)), 60)
  h, m = divmod(m, 60)
  return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def device_names(torch, device) -> tuple[str, str]:
  dev = jax.devices()[0]
  jax_name = f"{jax.local_device_count()} x " + getattr(
      dev, "device_kind", dev.platform)
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  if dev.platform == "cpu":
    jax_name += f" ({cpu})"
  torch_name = ""
  if torch is not None:
    torch_name = (torch.cuda.get_device_name(device)
                  if device.type == "cuda" else f"cpu ({cpu})")
  return jax_name, torch_name


def main(argv=None) -> int:
  args = parse_args(argv)
  cpus = limit_cpus(args.threads)
  load_before = os.getloadavg()[0]
  torch = None if args.no_torch else import_torch()
  if torch is None and not args.no_torch:
    print("PyTorch is not installed: timing the JAX side only (pip install "
          "torch, the project's `torch` extra, for the comparison)")

  mesh = parallel.make_mesh(jax.local_devices())
  n_dev = mesh.devices.size
  model, model_config, spec = jax_model(args)
  variables = train.init_variables(
      model, jax.random.PRNGKey(0), preprocess.dummy_inputs(spec, 1, 1))
  variables = jax.device_get(variables)

  device = t_embed = None
  torch_note = torch_dtype = ""
  if torch is not None:
    torch.set_num_threads(args.threads)
    device = torch_device(torch, args.device)
    with torch.random.fork_rng(devices=[]):  # Leaves torch's RNG as it was.
      torch.manual_seed(0)
      net, torch_note = torch_resnet(torch, args.arch, args.base_width)
    set_last_stride_1(net)
    perturb_batchnorm(torch, net)
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, f"{args.arch}.pth")
      torch.save(net.state_dict(), path)
      variables = models.get_module("baseline").load(variables, path,
                                                     model_config)
    net = net.eval().to(device).to(memory_format=torch.channels_last)
    autocast = args.dtype == "bfloat16" and torch_bf16_supported(torch,
                                                                 device)
    if args.dtype == "bfloat16" and not autocast:
      print(f"torch: no bfloat16 support on {device}; its side runs float32")
    torch_dtype = "bfloat16" if autocast else "float32"
    t_embed = torch_embedder(torch, net, device, spec.mean, spec.std,
                             autocast=autocast, compile_=args.compile)
  variables = parallel.replicate(variables, mesh)
  j_embed = jax_embedder(model, spec, mesh)

  jax_name, torch_name = device_names(torch, device)
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
  print(f"JAX {jax.__version__}: baseline {args.arch} (width "
        f"{args.base_width}, last stride 1, temporal average pooling), "
        f"{args.dtype}, on {jax_name}; mesh of {n_dev} device(s)"
        + (f"; compilation cache {cache} (shapes compiled before load from "
           "it: the compile time is then the load time)" if cache else ""))
  if torch is not None:
    print(f"torch {torch.__version__}: {torch_note}, last stride 1, "
          f"{torch_dtype}{', torch.compile' if args.compile else ''}, on "
          f"{torch_name}, {torch.get_num_threads()} threads")
  print(f"threads: {args.threads} requested; the process may use {cpus} "
        f"CPU(s), XLA's CPU pool spans them; load average "
        f"{load_before:.2f} at the start; {args.height}x{args.width}, "
        f"{args.clip_len} frames per clip, {args.warmup} warm-up + "
        f"{args.iters} timed calls")
  print("frames/s: over all timed calls (in brackets: from the median call,"
        " steadier on a shared machine)")
  print("| clips x frames | JAX compile s | JAX frames/s | torch first call s "
        "| torch frames/s | JAX/torch |")
  print("|---|---|---|---|---|---|")

  rng = np.random.default_rng(0)
  rows, check = [], None
  for requested in args.batch_sizes:
    b = -(-requested // n_dev) * n_dev
    t = args.clip_len
    clips = rng.integers(0, 256, (b, t, args.height, args.width, 3), np.uint8)
    mask = np.ones((b, t), bool)

    def run_jax(fn, clips=clips, mask=mask):
      batch = parallel.global_batch({"clips": clips, "mask": mask}, mesh)
      return np.asarray(parallel.fetch(fn(variables, batch)))

    t0 = time.perf_counter()
    batch = parallel.global_batch({"clips": clips, "mask": mask}, mesh)
    compiled = j_embed.lower(variables, batch).compile()
    compile_s = time.perf_counter() - t0
    first_jax = run_jax(compiled)
    first_torch_s = None
    if t_embed is not None:
      t0 = time.perf_counter()
      first_torch = t_embed(clips)
      first_torch_s = time.perf_counter() - t0
      if check is None:
        diff = float(np.max(np.abs(first_jax - first_torch)))
        scale = float(np.max(np.abs(first_torch)))
        check = {"max_abs_diff": diff, "max_abs": scale,
                 "relative": diff / scale,
                 "ok": diff / scale <= TOLERANCE[args.dtype]}
    for _ in range(args.warmup):
      run_jax(compiled)
      if t_embed is not None:
        t_embed(clips)
    jax_calls, torch_calls = [], []
    for _ in range(args.iters):  # Interleaved: both see the same load.
      t0 = time.perf_counter()
      run_jax(compiled)
      jax_calls.append(time.perf_counter() - t0)
      if t_embed is not None:
        t0 = time.perf_counter()
        t_embed(clips)
        torch_calls.append(time.perf_counter() - t0)
    frames = args.iters * b * t
    jax_s, torch_s = sum(jax_calls), sum(torch_calls)
    row = {"batch": b, "clip_len": t, "jax_compile_s": round(compile_s, 2),
           "jax_fps": round(frames / jax_s, 2),
           "jax_fps_median": round(b * t / np.median(jax_calls), 2),
           "jax_call_s": [round(x, 3) for x in jax_calls]}
    if t_embed is not None:
      row.update(torch_first_call_s=round(first_torch_s, 2),
                 torch_fps=round(frames / torch_s, 2),
                 torch_fps_median=round(b * t / np.median(torch_calls), 2),
                 torch_call_s=[round(x, 3) for x in torch_calls],
                 ratio=round(torch_s / jax_s, 3),
                 ratio_median=round(float(np.median(torch_calls)
                                          / np.median(jax_calls)), 3))
    rows.append(row)
    tf = (f"{row['torch_first_call_s']:.1f} | {row['torch_fps']:,.1f} "
          f"({row['torch_fps_median']:,.1f}) | {row['ratio']:.2f} "
          f"({row['ratio_median']:.2f})" if t_embed is not None
          else "- | - | -")
    print(f"| {b} x {t} | {compile_s:.1f} | {row['jax_fps']:,.1f} "
          f"({row['jax_fps_median']:,.1f}) | {tf} |", flush=True)

  if check is not None:
    verdict = "agree" if check["ok"] else "DISAGREE"
    print(f"numerics ({args.dtype}, same weights via baseline.load of the "
          f"torch .pth, first batch): max |JAX - torch| = "
          f"{check['max_abs_diff']:.3g} of max |torch| = {check['max_abs']:.3g}"
          f" (relative {check['relative']:.2g}, tolerance "
          f"{TOLERANCE[args.dtype]:g}): {verdict}")

  sides = ("jax", "torch") if t_embed is not None else ("jax",)
  mars = {"frames": MARS_TEST_FRAMES, "tracklets": MARS_TEST_TRACKLETS}
  print(f"MARS test set ({MARS_TEST_TRACKLETS:,} tracklets, "
        f"{MARS_TEST_FRAMES:,} frames), model time only, at the best rate:")
  for suffix, what in (("", "over all timed calls"),
                       ("_median", "of the median call")):
    parts = []
    for side in sides:
      best = max(r[f"{side}_fps{suffix}"] for r in rows)
      mars[f"{side}_s{suffix}"] = round(MARS_TEST_FRAMES / best, 1)
      parts.append(f"{'JAX' if side == 'jax' else side} "
                   f"{fmt_duration(MARS_TEST_FRAMES / best)} at {best:,.1f} "
                   "frames/s")
    print(f"  {what}: " + ", ".join(parts))
  load_after = os.getloadavg()[0]
  print(f"load average (1 min): {load_before:.2f} before, {load_after:.2f} "
        "after")
  result = {
      "benchmark": "extract_bench", "arch": args.arch,
      "base_width": args.base_width, "height": args.height,
      "width": args.width, "clip_len": args.clip_len, "dtype": args.dtype,
      "warmup": args.warmup, "iters": args.iters, "results": rows,
      "mars_test": mars, "numerics": check, "jax_device": jax_name,
      "jax_devices": n_dev, "jax_version": jax.__version__,
      "torch_device": torch_name or None,
      "torch_version": torch.__version__ if torch is not None else None,
      "torch_model": torch_note or None, "torch_dtype": torch_dtype or None,
      "torch_compile": bool(args.compile and torch is not None),
      "threads": args.threads, "cpus": cpus,
      "load1_before": round(load_before, 2),
      "load1": round(load_after, 2)}
  print(json.dumps(result))
  return 0 if check is None or check["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
