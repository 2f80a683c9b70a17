"""Import of ImageNet ResNet weights (torchvision layout) into the backbone.

Supported files (downloaded by the user; nothing is fetched here):

* `.pth` / `.pt`: a torchvision state dict, read with
  `torch.load(path, map_location="cpu", weights_only=True)`, i.e. without
  executing pickled code. Needs torch; without it, convert the file once
  elsewhere to .safetensors or .npz.
* `.safetensors`: read with `safetensors.numpy` when installed, else by the
  small reader below (8-byte little-endian header length, JSON header, raw
  little-endian buffers).
* `.npz`: either torchvision state-dict keys (`layer1.0.conv1.weight`) or the
  converted Flax backbone tree written by `python -m vreid_jax.import_weights`
  (keys `params/layer1_0/conv1/kernel`, `batch_stats/bn1/mean`, ...).

Conversion (torchvision -> Flax `backbone` subtree, see `resnet.py`):

  conv1.weight (O, I, kh, kw)            -> params/conv1/kernel (kh, kw, I, O)
  bn1.weight / bias                      -> params/bn1/scale / bias
  bn1.running_mean / running_var         -> batch_stats/bn1/mean / var
  layer{i}.{j}.conv{k}.*, .bn{k}.*       -> layer{i}_{j}/conv{k}, bn{k}
  layer{i}.{j}.downsample.0.* / .1.*     -> layer{i}_{j}/downsample_conv / _bn
  fc.*, *.num_batches_tracked            -> skipped

Missing, unexpected and shape-mismatched keys are all reported together, by
name, in a `WeightImportError`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from vreid_jax.models import resnet

_SKIPPED = re.compile(r"^(fc\..*|.*num_batches_tracked)$")
_BN_FIELDS = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
_COLLECTIONS = ("params", "batch_stats")


class WeightImportError(ValueError):
  """Weights do not fit the backbone; the message names every bad key."""


# ------------------------------------------------------------------ reading


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a .safetensors file with NumPy only (no `safetensors` package).

  Format: an 8-byte little-endian unsigned header length n, n bytes of JSON
  {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
  {...}}, then the little-endian tensor buffers (offsets relative to the end
  of the header).

  Args:
    path: file path.

  Returns:
    name -> array (native byte order).
  """
  with open(path, "rb") as f:
    raw = f.read()
  if len(raw) < 8:
    raise ValueError(f"{path}: not a safetensors file (too short).")
  n = int.from_bytes(raw[:8], "little")
  if n > len(raw) - 8:
    raise ValueError(f"{path}: corrupt safetensors header length {n}.")
  header = json.loads(raw[8:8 + n].decode("utf-8"))
  data = memoryview(raw)[8 + n:]
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
    except KeyError:
      raise ValueError(
          f"{path}: tensor {name!r} has unsupported dtype {info['dtype']!r}."
      ) from None
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end - begin != int(np.prod(shape)) * dtype.itemsize or end > len(data):
      raise ValueError(f"{path}: tensor {name!r} has inconsistent offsets.")
    arr = np.frombuffer(data[begin:end], dtype=dtype.newbyteorder("<"))
    out[name] = arr.astype(dtype).reshape(shape)
  return out


def _read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(
        f"Reading {path} needs PyTorch (pip install torch). Alternatively, "
        "convert it once where torch is available, e.g. with "
        "safetensors.torch.save_file(torch.load(path), 'resnet50.safetensors')"
        " or numpy.savez('resnet50.npz', **{k: v.numpy() for k, v in "
        "torch.load(path).items()}), and pass the .safetensors/.npz file."
    ) from None
  obj = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(obj, Mapping) and "state_dict" in obj:
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: expected a state dict, got {type(obj)}.")
  out = {}
  for k, v in obj.items():
    if isinstance(v, torch.Tensor):
      v = v.detach().cpu()
      if v.dtype == torch.bfloat16:
        v = v.float()
      out[k] = v.numpy()
  return out


def load_torchvision_resnet(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Loads a flat weight dict from .pth/.pt, .safetensors or .npz.

  The result has torchvision state-dict keys (or, for an .npz written by
  `python -m vreid_jax.import_weights`, '/'-joined Flax keys); a leading
  "module." (DataParallel) is removed. Pass it to `merge_backbone`.

  Args:
    path: local file.

  Returns:
    key -> np.ndarray.
  """
  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  if ext in (".pth", ".pt"):
    weights = _read_pth(path)
  elif ext == ".safetensors":
    try:
      # pylint: disable-next=g-import-not-at-top
      from safetensors import numpy as st_numpy
      weights = dict(st_numpy.load_file(path))
    except ImportError:
      weights = read_safetensors(path)
  elif ext == ".npz":
    with np.load(path, allow_pickle=False) as f:
      weights = {k: f[k] for k in f.files}
  else:
    raise ValueError(f"{path}: unknown weight format {ext!r}; expected "
                     ".pth, .pt, .safetensors or .npz.")
  return {k.removeprefix("module."): np.asarray(v) for k, v in weights.items()}


# ------------------------------------------------------------- name mapping


def _block_names(arch: str) -> list[str]:
  stage_sizes, _ = resnet.arch_spec(arch)
  return [f"layer{i + 1}.{j}" for i, n in enumerate(stage_sizes)
          for j in range(n)]


def torchvision_keys(arch: str) -> list[str]:
  """Every torchvision state-dict key the backbone needs (no fc, no counts)."""
  _, block = resnet.arch_spec(arch)
  num_convs = 3 if block is resnet.Bottleneck else 2
  bn = list(_BN_FIELDS)

  keys = ["conv1.weight"] + [f"bn1.{f}" for f in bn]
  for i, name in enumerate(_block_names(arch)):
    for k in range(1, num_convs + 1):
      keys.append(f"{name}.conv{k}.weight")
      keys += [f"{name}.bn{k}.{f}" for f in bn]
    if name.endswith(".0") and (block is resnet.Bottleneck or
                                not name.startswith("layer1.")):
      keys.append(f"{name}.downsample.0.weight")
      keys += [f"{name}.downsample.1.{f}" for f in bn]
  return keys


def _flax_location(key: str) -> tuple[str, tuple[str, ...]] | None:
  """torchvision key -> (collection, path in the backbone tree), or None."""
  parts = key.split(".")
  field = parts[-1]
  mod = parts[:-1]
  if len(mod) >= 2 and mod[0].startswith("layer"):
    block = f"{mod[0]}_{mod[1]}"
    rest = mod[2:]
    if rest == ["downsample", "0"]:
      layer = "downsample_conv"
    elif rest == ["downsample", "1"]:
      layer = "downsample_bn"
    elif len(rest) == 1:
      layer = rest[0]
    else:
      return None
    path = (block, layer)
  elif len(mod) == 1:
    layer = mod[0]
    path = (layer,)
  else:
    return None
  if layer.startswith("conv") or layer == "downsample_conv":
    return ("params", path + ("kernel",)) if field == "weight" else None
  if layer.startswith("bn") or layer == "downsample_bn":
    if field not in _BN_FIELDS:
      return None
    collection, leaf = _BN_FIELDS[field]
    return collection, path + (leaf,)
  return None


def torchvision_to_flax(state_dict: Mapping[str, Any], *,
                        arch: str) -> dict[str, dict[str, np.ndarray]]:
  """Converts a torchvision ResNet state dict to flat Flax backbone weights.

  Args:
    state_dict: torchvision keys -> arrays.
    arch: "resnet18", "resnet34", "resnet50" or "resnet101".

  Returns:
    {"params": {"layer1_0/conv1/kernel": ...}, "batch_stats": {...}} with
    '/'-joined paths relative to the backbone and Flax layouts (HWIO).

  Raises:
    WeightImportError: keys the arch needs are missing or unknown keys are
      present (every one named).
  """
  expected = set(torchvision_keys(arch))
  given = {k for k in state_dict if not _SKIPPED.match(k)}
  missing = sorted(expected - given)
  unexpected = sorted(given - expected)
  if missing or unexpected:
    raise WeightImportError(_report(
        f"torchvision {arch} state dict", missing, unexpected, []))
  out = {c: {} for c in _COLLECTIONS}
  for key in sorted(given):
    collection, path = _flax_location(key)
    value = np.asarray(state_dict[key])
    if path[-1] == "kernel":
      if value.ndim != 4:
        raise WeightImportError(
            f"{key}: expected a 4-d conv weight (O, I, kh, kw), got shape "
            f"{value.shape}.")
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
    out[collection]["/".join(path)] = value
  return out


def _report(what: str, missing: Iterable[str], unexpected: Iterable[str],
            mismatched: Iterable[str]) -> str:
  lines = [f"Cannot load {what}:"]
  for title, items in (("missing", missing), ("unexpected", unexpected),
                       ("shape mismatch", mismatched)):
    items = list(items)
    if items:
      lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
  return "\n".join(lines)


def _is_flax_flat(weights: Mapping[str, Any]) -> bool:
  return any(k.split("/", 1)[0] in _COLLECTIONS for k in weights)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[prefix + k] = v
  return out


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for k, v in flat.items():
    node = out
    *parents, leaf = k.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def flax_backbone_weights(weights: Mapping[str, Any], *,
                          arch: str) -> dict[str, dict[str, np.ndarray]]:
  """Returns {"params": flat, "batch_stats": flat} from either format."""
  if _is_flax_flat(weights):
    out = {c: {} for c in _COLLECTIONS}
    unexpected = []
    for k, v in weights.items():
      collection, _, rest = k.partition("/")
      if collection in out and rest:
        out[collection][rest] = np.asarray(v)
      else:
        unexpected.append(k)
    if unexpected:
      raise WeightImportError(_report("Flax backbone weights", [],
                                      sorted(unexpected), []))
    return out
  return torchvision_to_flax(weights, arch=arch)


def merge_backbone(variables: Mapping[str, Any],
                   weights: str | os.PathLike | Mapping[str, Any], *,
                   arch: str) -> dict[str, Any]:
  """Returns `variables` with the backbone's params and batch_stats replaced.

  Args:
    variables: model variables with "params"/"backbone" and
      "batch_stats"/"backbone" subtrees (e.g. from `Model.init`).
    weights: a path (.pth/.pt/.safetensors/.npz) or a flat dict, either a
      torchvision state dict or '/'-joined Flax keys ("params/conv1/kernel").
    arch: ResNet arch of the model ("resnet50", ...).

  Returns:
    New variables (plain dicts; the input is not modified), every leaf cast
    to the dtype of the leaf it replaces.

  Raises:
    WeightImportError: naming every missing, unexpected or shape-mismatched
      key (in Flax names, relative to the backbone).
  """
  if isinstance(weights, (str, os.PathLike)):
    weights = load_torchvision_resnet(weights)
  weights = {k.removeprefix("module."): v for k, v in weights.items()}
  new = flax_backbone_weights(weights, arch=arch)
  variables = _to_dict(variables)  # A copy: the input is left untouched.
  missing, unexpected, mismatched = [], [], []
  merged = {}
  for collection in _COLLECTIONS:
    try:
      current = _flatten(variables[collection]["backbone"])
    except KeyError:
      raise WeightImportError(
          f"variables have no {collection}/backbone subtree.") from None
    given = new[collection]
    missing += [f"{collection}/{k}" for k in sorted(set(current) - set(given))]
    unexpected += [f"{collection}/{k}"
                   for k in sorted(set(given) - set(current))]
    for k in sorted(set(current) & set(given)):
      want, got = np.shape(current[k]), np.shape(given[k])
      if want != got:
        mismatched.append(f"{collection}/{k} (model {want}, file {got})")
    merged[collection] = {
        k: jnp.asarray(given[k], dtype=current[k].dtype)
        for k in current if k in given}
  if missing or unexpected or mismatched:
    raise WeightImportError(_report(f"{arch} weights into the backbone",
                                    missing, unexpected, mismatched))
  for collection in _COLLECTIONS:
    variables[collection] = dict(variables[collection])
    variables[collection]["backbone"] = _unflatten(merged[collection])
  return variables


def _to_dict(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree


def backbone_shapes(arch: str, width: int) -> dict[str, dict[str, Any]]:
  """Flat shapes of the backbone variables of `arch` at `width` (no compute)."""
  model = resnet.ResNet(arch=arch, width=width)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                         train=False))
  return {c: {k: tuple(v.shape) for k, v in _flatten(shapes[c]).items()}
          for c in _COLLECTIONS}


def convert_file(path: str | os.PathLike, *,
                 arch: str) -> dict[str, np.ndarray]:
  """Reads a weight file and returns the checked, '/'-flattened Flax tree.

  The width is read from `conv1.weight` (64 for torchvision's models) and
  every shape is checked against the backbone `resnet.ResNet(arch, width)`.

  Returns:
    {"params/conv1/kernel": ..., "batch_stats/bn1/mean": ..., ...}.
  """
  new = flax_backbone_weights(load_torchvision_resnet(path), arch=arch)
  stem = new["params"].get("conv1/kernel")
  if stem is None:
    raise WeightImportError(_report(str(path), ["params/conv1/kernel"], [], []))
  expected = backbone_shapes(arch, int(stem.shape[-1]))
  missing, unexpected, mismatched = [], [], []
  for c in _COLLECTIONS:
    missing += [f"{c}/{k}" for k in sorted(set(expected[c]) - set(new[c]))]
    unexpected += [f"{c}/{k}" for k in sorted(set(new[c]) - set(expected[c]))]
    mismatched += [
        f"{c}/{k} (expected {expected[c][k]}, file {new[c][k].shape})"
        for k in sorted(set(expected[c]) & set(new[c]))
        if tuple(new[c][k].shape) != expected[c][k]]
  if missing or unexpected or mismatched:
    raise WeightImportError(_report(str(path), missing, unexpected,
                                    mismatched))
  return {f"{c}/{k}": np.asarray(v, np.float32)
          for c in _COLLECTIONS for k, v in new[c].items()}
