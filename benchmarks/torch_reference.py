r"""GLTR's training step in PyTorch: the reference that issue #17 measures against.

Written here from the GLTR paper (Li et al., ICCV 2019) and our JAX model
(`vreid_jax/models/gltr.py`, `configs/gltr_common.py`). It is not a copy of
any public code. It is the step a careful PyTorch user would write:

    clips uint8 (B, T, H, W, 3)
      -> (x / 255 - mean) / std, NCHW (channels_last in memory on request)
      -> ResNet-50 (torchvision layout, last stride 1), spatial mean   (B*T, 2048)
      -> reduction: Linear (no bias) + BatchNorm1d + ReLU               (B, T, d=128)
      -> DTP: Conv1d k=3, dilations 1, 2, 4, 'same' zero padding, no bias,
         concatenated                                                   (B, T, 3d)
      -> TSA (eq. 7): B, C = ReLU(BN(1x1 conv)) (D/alpha channels, no bias),
         M = softmax over source frames of C B^T, F-bar = 1x1 conv (bias),
         F'' = W (F-bar M) + F' with W (and its bias) initialised to 0
      -> temporal mean                                                  (B, 3d)
      -> BN-neck (BatchNorm1d, bias frozen at 0) -> bias-free classifier
         (N(0, 0.001^2)); retrieval embedding after the BN
    loss: cross-entropy (label smoothing as the config: 0 for GLTR) [+ batch-hard
    triplet on the pre-neck feature, `triplet_weight` > 0; GLTR's config uses
    none, and its P=10, K=1 batches hold no positive pair]
    optimizer: SGD, lr 0.01, momentum 0.9, weight decay 5e-4 (L2 on every
    trainable parameter, PyTorch's coupled form: what optax
    add_decayed_weights + sgd in `vreid_jax.optim` computes).

Normalisation is the GLTR config's (`configs/gltr_common.py`): ImageNet mean,
std = 1/255 (mean subtraction only, as the paper). `build_model(...,
mean=..., std=...)` takes others (e.g. ImageNet std for the other configs).

Full clips only: the reference has no (B, T) padding mask; every frame of a
clip is real (the benchmark's clips are). Our JAX model takes the mask and
gives exactly these results when it is all True.

Best practice options: channels_last, bf16 autocast (CUDA with bf16, or
oneDNN CPUs that have it), `torch.compile` (`--compile`), cudnn.benchmark on
CUDA, fused SGD on CUDA.

Usage:
  # Numerics: our JAX GLTR's variables mapped into this model, eval-mode
  # embeddings (and the train-mode loss) compared on the same random clips
  # (tiny widths by default; --model_width=64 --height=256 --width=128 for
  # the full model). One JSON line.
  python benchmarks/torch_reference.py [--temporal=gltr|avg] [--print_table]
  # Speed, both frameworks side by side:
  python benchmarks/train_throughput.py --compare_torch
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
GLTR_STD = (1 / 255, 1 / 255, 1 / 255)   # configs/gltr_common.py
NUM_CLASSES = 625                        # MARS training identities.


# ---------------------------------------------------------------------------
# The model.


def _resnet(arch: str, width: int, last_stride: int) -> nn.Module:
  """torchvision-layout ResNet trunk (extract_bench's copy when torchvision
  is absent), layer4 stride set to `last_stride`."""
  from benchmarks import extract_bench  # Same torchvision layout + init.
  if arch == "resnet50" and width == 64:
    model, _ = extract_bench.torch_resnet(torch, arch, width)
  else:
    model = extract_bench._own_resnet(torch, arch, width)  # pylint: disable=protected-access
  if last_stride == 1:
    extract_bench.set_last_stride_1(model)
  # A trunk: no pooling or fc is ever called (forward below).
  for name in ("avgpool", "fc"):
    if hasattr(model, name):
      delattr(model, name)
  return model


def _trunk(resnet: nn.Module, x: torch.Tensor) -> torch.Tensor:
  x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
  for i in range(1, 5):
    x = getattr(resnet, f"layer{i}")(x)
  return x


class DTP(nn.Module):
  """Dilated temporal pyramid (eq. 5-6): one Conv1d per rate, concatenated."""

  def __init__(self, d: int, rates=(1, 2, 4), kernel_size: int = 3):
    super().__init__()
    half = (kernel_size - 1) // 2
    self.rates = tuple(rates)
    for r in self.rates:
      self.add_module(f"branch_r{r}", nn.Conv1d(
          d, d, kernel_size, dilation=r, padding=r * half, bias=False))

  def forward(self, x):                      # (B, T, d)
    x = x.transpose(1, 2)                    # (B, d, T)
    y = torch.cat([getattr(self, f"branch_r{r}")(x) for r in self.rates],
                  dim=1)
    return y.transpose(1, 2)                 # (B, T, N d)


class TSA(nn.Module):
  """Temporal self-attention (eq. 7); the 1-wide convs as Linear on (B, T, D)."""

  def __init__(self, d: int, alpha: int = 2):
    super().__init__()
    inner = d // alpha
    self.conv_b = nn.Linear(d, inner, bias=False)
    self.bn_b = nn.BatchNorm1d(inner)
    self.conv_c = nn.Linear(d, inner, bias=False)
    self.bn_c = nn.BatchNorm1d(inner)
    self.conv_f = nn.Linear(d, inner)
    self.conv_w = nn.Linear(inner, d)
    nn.init.zeros_(self.conv_w.weight)       # The paper: W starts at 0.
    nn.init.zeros_(self.conv_w.bias)

  @staticmethod
  def _bn_relu(bn, y):                       # BN over all B*T frames.
    b, t, c = y.shape
    return F.relu(bn(y.reshape(b * t, c)).reshape(b, t, c))

  def forward(self, x):                      # (B, T, D)
    mat_b = self._bn_relu(self.bn_b, self.conv_b(x))
    mat_c = self._bn_relu(self.bn_c, self.conv_c(x))
    logits = torch.bmm(mat_c.float(), mat_b.float().transpose(1, 2))  # [b,s,t]
    attn = torch.softmax(logits, dim=1)      # Over source frames s.
    f_bar = self.conv_f(x)                   # (B, T, D/alpha)
    context = torch.bmm(attn.transpose(1, 2).to(f_bar.dtype), f_bar)
    return self.conv_w(context) + x


class GLTR(nn.Module):
  """GLTR (DTP + TSA) with a BN-neck; `forward` takes uint8 clips.

  temporal="avg" is the baseline (GLTR Table 2's average pooling: the same
  frame network, reduction and BN-neck, no DTP or TSA).
  """

  def __init__(self, num_classes: int, *, arch: str = "resnet50",
               width: int = 64, last_stride: int = 1, frame_dim: int = 128,
               rates=(1, 2, 4), kernel_size: int = 3, alpha: int = 2,
               mean=IMAGENET_MEAN, std=GLTR_STD, channels_last: bool = False,
               temporal: str = "gltr"):
    super().__init__()
    if temporal not in ("gltr", "avg"):
      raise ValueError(f"temporal={temporal!r}: the reference has 'gltr' and "
                       "'avg' (the baseline) only")
    self.temporal = temporal
    self.channels_last = channels_last
    self.register_buffer("pix_mean", torch.tensor(mean).view(1, 3, 1, 1) * 255,
                         persistent=False)
    self.register_buffer("pix_std", torch.tensor(std).view(1, 3, 1, 1) * 255,
                         persistent=False)
    self.backbone = _resnet(arch, width, last_stride)
    channels = width * 8 * (4 if arch in ("resnet50", "resnet101") else 1)
    self.reduction = nn.Sequential(collections.OrderedDict(
        dense=nn.Linear(channels, frame_dim, bias=False),
        bn=nn.BatchNorm1d(frame_dim), relu=nn.ReLU(inplace=True)))
    nn.init.kaiming_normal_(self.reduction.dense.weight)  # fan_in, as ours.
    dim = frame_dim
    if temporal == "gltr":
      self.dtp = DTP(frame_dim, rates, kernel_size)
      dim = frame_dim * len(tuple(rates))
      self.tsa = TSA(dim, alpha)
    self.head = nn.Module()
    self.head.bn = nn.BatchNorm1d(dim)
    self.head.bn.bias.requires_grad_(False)  # BN-neck: shift frozen at 0.
    self.head.classifier = nn.Linear(dim, num_classes, bias=False)
    nn.init.normal_(self.head.classifier.weight, std=0.001)

  def forward(self, clips: torch.Tensor):
    """clips: (B, T, H, W, 3) uint8 -> (embedding, features, logits)."""
    b, t, h, w, c = clips.shape
    # (B*T, H, W, 3) -> NCHW view; its memory is already channels_last.
    x = clips.reshape(b * t, h, w, c).permute(0, 3, 1, 2).float()
    x = (x - self.pix_mean) / self.pix_std
    x = x.contiguous(memory_format=torch.channels_last if self.channels_last
                     else torch.contiguous_format)
    maps = _trunk(self.backbone, x)
    frames = self.reduction(maps.float().mean(dim=(2, 3)))
    h_seq = frames.reshape(b, t, -1)
    if self.temporal == "gltr":
      h_seq = self.tsa(self.dtp(h_seq))
    features = h_seq.float().mean(dim=1)     # Eq. 4 on full clips.
    f_i = self.head.bn(features)
    logits = self.head.classifier(f_i)
    return f_i, features, logits


def build_model(num_classes: int = NUM_CLASSES, *, device="cpu",
                channels_last: bool = True, **kwargs) -> GLTR:
  """The reference GLTR on `device` (kwargs: GLTR's, e.g. width, frame_dim)."""
  model = GLTR(num_classes, channels_last=channels_last, **kwargs)
  model = model.to(device)
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
  return model


def build_optimizer(model: nn.Module, *, lr: float = 0.01,
                    momentum: float = 0.9, weight_decay: float = 5e-4):
  """configs/gltr_mars.py's SGD (stage 2 base lr; no schedule in a bench)."""
  params = [p for p in model.parameters() if p.requires_grad]
  fused = next(model.parameters()).is_cuda
  return torch.optim.SGD(params, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, nesterov=False,
                         **({"fused": True} if fused else {}))


def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
  """torch.compile'd module (shares parameters with `model`), or `model`."""
  return torch.compile(model) if enabled else model


def _autocast(device: torch.device, enabled: bool):
  if not enabled:
    return contextlib.nullcontext()
  return torch.autocast(device.type, dtype=torch.bfloat16)


def batch_hard_triplet(features, labels, margin: float = 0.3):
  """Hermans et al.; anchors without a positive or negative are skipped."""
  sq = (features * features).sum(1)
  dist = (sq[:, None] + sq[None, :] - 2 * features @ features.t())
  dist = dist.clamp_min(1e-12).sqrt()
  same = labels[:, None] == labels[None, :]
  eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
  pos = dist.masked_fill(~same | eye, float("-inf")).amax(1)
  neg = dist.masked_fill(same, float("inf")).amin(1)
  valid = torch.isfinite(pos) & torch.isfinite(neg)
  per = F.relu(torch.where(valid, pos - neg, torch.zeros_like(pos)) + margin)
  return (per * valid).sum() / valid.sum().clamp_min(1)


def loss_fn(model, clips_uint8, labels, *, label_smoothing: float = 0.0,
            triplet_weight: float = 0.0, margin: float = 0.3,
            amp: bool = False):
  dev = clips_uint8.device
  with _autocast(dev, amp):
    _, features, logits = model(clips_uint8)
  loss = F.cross_entropy(logits.float(), labels,
                         label_smoothing=label_smoothing)
  if triplet_weight:
    loss = loss + triplet_weight * batch_hard_triplet(features.float(),
                                                      labels, margin)
  return loss


def train_step(model, opt, clips_uint8, labels, **loss_kwargs):
  """One SGD step on uint8 clips (B, T, H, W, 3); returns the loss tensor
  (not synchronised)."""
  model.train()
  loss = loss_fn(model, clips_uint8, labels, **loss_kwargs)
  opt.zero_grad(set_to_none=True)
  loss.backward()
  opt.step()
  return loss.detach()


def embed(model, clips_uint8, *, amp: bool = False) -> torch.Tensor:
  """Eval-mode embeddings (after the BN-neck), float32 (B, D)."""
  model.eval()
  with torch.inference_mode(), _autocast(clips_uint8.device, amp):
    embedding, _, _ = model(clips_uint8)
  return embedding.float()


# ---------------------------------------------------------------------------
# JAX variables -> torch state dict.


def _flax_path(torch_key: str) -> tuple[str, tuple[str, ...], str] | None:
  """torch key -> (collection, Flax path, layout), None if not a Flax leaf.

  layout: "conv2d" OIHW <- HWIO, "conv1d" (O, I, W) <- (W, I, O),
  "dense" (O, I) <- (I, O), "vector" as is.
  """
  *mods, field = torch_key.split(".")
  if field == "num_batches_tracked":
    return None
  # Module path -> Flax module path.
  if mods[0] == "backbone" and len(mods) >= 3 and mods[1].startswith("layer"):
    rest = mods[3:]
    layer = {("downsample", "0"): "downsample_conv",
             ("downsample", "1"): "downsample_bn"}.get(tuple(rest))
    path = ("backbone", f"{mods[1]}_{mods[2]}",
            layer or ".".join(rest))
  else:
    path = tuple(mods)
  leaf = path[-1]
  is_bn = leaf.startswith("bn") or leaf == "downsample_bn"
  if is_bn:
    coll, name = {"weight": ("params", "scale"), "bias": ("params", "bias"),
                  "running_mean": ("batch_stats", "mean"),
                  "running_var": ("batch_stats", "var")}[field]
    if path == ("head", "bn") and field == "bias":
      return None                            # Our BN-neck has no bias.
    return coll, path + (name,), "vector"
  if field == "bias":
    return "params", path + ("bias",), "vector"
  layout = ("conv2d" if path[0] == "backbone" else
            "conv1d" if path[0] == "dtp" else "dense")
  return "params", path + ("kernel",), layout


def mapping_table(model: GLTR) -> list[tuple[str, str, tuple, str]]:
  """[(torch key, collection, Flax path, layout)] for every torch tensor
  that has a Flax counterpart (the frozen head.bn.bias and BN counters
  have none)."""
  rows = []
  for key in model.state_dict():
    loc = _flax_path(key)
    if loc is not None:
      rows.append((key,) + loc)
  return rows


_LAYOUT = {"conv2d": (3, 2, 0, 1), "conv1d": (2, 1, 0), "dense": (1, 0),
           "vector": None}


def load_jax_variables(model: GLTR, variables) -> list[tuple[str, str]]:
  """Copies JAX variables {"params", "batch_stats"} into `model`.

  Every Flax leaf must be used exactly once and every mapped torch tensor
  filled with the same shape; raises otherwise. Returns the table as
  (torch key, "collection/flax/path") pairs.
  """
  flat = {}
  for coll in ("params", "batch_stats"):
    def walk(tree, prefix, coll=coll):
      for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
          walk(v, prefix + (k,))
        else:
          flat[(coll,) + prefix + (k,)] = np.asarray(v, np.float32)
    walk(variables.get(coll, {}), ())
  state = model.state_dict()
  used, table = set(), []
  for key, coll, path, layout in mapping_table(model):
    src = (coll,) + path
    if src not in flat:
      raise KeyError(f"{key}: no JAX variable {'/'.join(src)}")
    value = flat[src]
    if _LAYOUT[layout]:
      value = value.transpose(_LAYOUT[layout])
    if tuple(value.shape) != tuple(state[key].shape):
      raise ValueError(f"{key}: shape {tuple(state[key].shape)} vs "
                       f"{'/'.join(src)} {value.shape} ({layout})")
    state[key] = torch.from_numpy(np.ascontiguousarray(value))
    used.add(src)
    table.append((key, "/".join(src)))
  unused = sorted("/".join(k) for k in set(flat) - used)
  if unused:
    raise KeyError(f"JAX variables with no torch tensor: {unused}")
  if "head.bn.bias" in state:
    state["head.bn.bias"] = torch.zeros_like(state["head.bn.bias"])
  model.load_state_dict(state)
  return table


# ---------------------------------------------------------------------------
# Command line: the numerical check (the speed comparison is
# `benchmarks/train_throughput.py --compare_torch`, which builds this model
# with `build_model(**torch_kwargs(config))`).


def torch_kwargs(config) -> dict:
  """build_model's kwargs for a GLTR config (temporal 'gltr' or 'avg')."""
  m = config.model
  from vreid_jax.models import gltr  # pylint: disable=g-import-not-at-top
  rates = tuple(m.rates) if m.rates else gltr.default_rates(m.num_branches)
  temporal = m.get("temporal", "gltr")
  if m.get("identity_branch") or temporal not in ("gltr", "avg") or (
      m.get("attention_norm", "softmax") != "softmax"):
    raise ValueError("torch_reference implements temporal='gltr' (softmax "
                     "attention, no identity branch) and 'avg' only, got "
                     f"config.model.temporal={temporal!r}")
  return dict(arch=m.arch, width=m.width, last_stride=m.last_stride,
              frame_dim=m.frame_dim, rates=rates, kernel_size=m.kernel_size,
              alpha=m.alpha, mean=tuple(config.input.mean),
              std=tuple(config.input.std), temporal=temporal)


def check(config, batch: int = 2, num_classes: int = 16,
          seed: int = 0) -> dict:
  """Our JAX model's random variables mapped into the reference: eval
  embeddings and the train-mode loss on the same random uint8 clips."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vreid_jax import models  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import preprocess  # pylint: disable=g-import-not-at-top
  from vreid_jax.models import common  # pylint: disable=g-import-not-at-top
  model = models.build_model(config.model_name, num_classes, config.model)
  spec = preprocess.InputSpec.from_config(config.input)
  b, t = batch, config.input.clip_len
  h, w = config.input.height, config.input.width
  rng = np.random.default_rng(seed)
  clips = rng.integers(0, 256, (b, t, h, w, 3), np.uint8)
  labels = rng.integers(0, num_classes, b).astype(np.int64)
  inputs = preprocess.preprocess({"clips": clips,
                                  "mask": np.ones((b, t), bool)}, spec)
  # Random values everywhere (TSA's W too; BN statistics not 0/1).
  variables = common.random_variables(model, inputs, train=False)
  variables = jax.tree_util.tree_map(np.asarray, variables)
  emb_jax = np.asarray(jax.jit(models.embed_fn(model))(variables, inputs))

  def jax_loss(v):
    (_, aux), _ = model.apply(v, inputs, train=True,
                              mutable=["batch_stats"])
    logits = aux["logits"]
    return -jnp.mean(jnp.take_along_axis(
        jax.nn.log_softmax(logits), jnp.asarray(labels)[:, None], 1))

  loss_jax = float(jax.jit(jax_loss)(variables))
  tmodel = build_model(num_classes, channels_last=False,
                       **torch_kwargs(config))
  table = load_jax_variables(tmodel, variables)
  tclips = torch.from_numpy(clips)
  emb_t = embed(tmodel, tclips).numpy()
  tmodel.train()
  with torch.no_grad():
    loss_t = float(loss_fn(tmodel, tclips, torch.from_numpy(labels)))
  return {"temporal": config.model.get("temporal", "gltr"),
          "model_width": config.model.width, "clips": [b, t, h, w],
          "mapped_tensors": len(table), "table": table,
          "embedding_dim": int(emb_t.shape[1]),
          "max_rel_diff": float(np.abs(emb_jax - emb_t).max()
                                / np.abs(emb_t).max()),
          "loss_jax_train": loss_jax, "loss_torch_train": loss_t,
          "loss_rel_diff": abs(loss_jax - loss_t) / abs(loss_t)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/gltr_mars.py")
  parser.add_argument("--temporal", default="gltr", choices=("gltr", "avg"))
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--clip_len", type=int, default=4)
  parser.add_argument("--height", type=int, default=64)
  parser.add_argument("--width", type=int, default=32)
  parser.add_argument("--model_width", type=int, default=16,
                      help="ResNet base channels (64: the full model)")
  parser.add_argument("--print_table", action="store_true")
  args = parser.parse_args(argv)
  from vreid_jax import config_utils  # pylint: disable=g-import-not-at-top
  config = config_utils.load_config(os.path.join(ROOT, args.config))
  with config.unlocked():
    config.input.clip_len = args.clip_len
    config.input.height, config.input.width = args.height, args.width
    config.model.width = args.model_width
    config.model.temporal = args.temporal
  t0 = time.perf_counter()
  out = check(config, batch=args.batch)
  table = out.pop("table")
  if args.print_table:
    for k, v in table:
      print(f"{k:45s} <- {v}")
  out["seconds"] = round(time.perf_counter() - t0, 1)
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
