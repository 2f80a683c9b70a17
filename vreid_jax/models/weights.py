"""Reading pretrained weight files and merging them into model variables.

Architecture-free: each backbone module maps a file's names to its own
(`resnet.load_torchvision`), and each model module's `load(variables, path,
model_config)` decides which backbone receives what. Files are downloaded
by the user; nothing is fetched here.

Supported files:

* `.pth` / `.pt`: a PyTorch state dict, read with
  `torch.load(path, map_location="cpu", weights_only=True)`, i.e. without
  executing pickled code. Needs torch; without it, convert the file once
  elsewhere to .safetensors or .npz.
* `.safetensors`: read with `safetensors.numpy` when installed, else by the
  small reader below (8-byte little-endian header length, JSON header, raw
  little-endian buffers).
* `.npz`: PyTorch state-dict keys, or a converted Flax tree with '/'-joined
  keys starting with the collection (`params/layer1_0/conv1/kernel`,
  `batch_stats/bn1/mean`, ...) as `python -m vreid_jax.import_weights`
  writes.

Missing, unexpected and shape-mismatched keys are all reported together, by
name, in a `WeightImportError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np

COLLECTIONS = ("params", "batch_stats")


class WeightImportError(ValueError):
  """Weights do not fit the model; the message names every bad key."""


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


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Loads a flat weight dict from .pth/.pt, .safetensors or .npz.

  The keys are the file's own (a PyTorch state dict's, or '/'-joined Flax
  keys); a leading "module." (DataParallel) is removed.

  Args:
    path: local file.

  Returns:
    key -> np.ndarray.

  Raises:
    FileNotFoundError: no such file.
    ValueError: an unknown extension or a corrupt file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such weight file.")
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


# ----------------------------------------------------------------- merging


def report(what: str, missing: Iterable[str], unexpected: Iterable[str],
           mismatched: Iterable[str]) -> str:
  """The WeightImportError message: every bad key, grouped."""
  lines = [f"Cannot load {what}:"]
  for title, items in (("missing", missing), ("unexpected", unexpected),
                       ("shape mismatch", mismatched)):
    items = list(items)
    if items:
      lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
  return "\n".join(lines)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": x}} -> {"a/b": x}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, f"{prefix}{k}/"))
    else:
      out[prefix + k] = v
  return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{"a/b": x} -> {"a": {"b": x}}."""
  out: dict[str, Any] = {}
  for k, v in flat.items():
    node = out
    *parents, leaf = k.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def to_dict(tree: Any) -> Any:
  """A plain-dict copy of a (possibly frozen) nested mapping."""
  if isinstance(tree, Mapping):
    return {k: to_dict(v) for k, v in tree.items()}
  return tree


def is_flax_flat(weights: Mapping[str, Any]) -> bool:
  """Keys like "params/conv1/kernel" (a converted Flax tree)."""
  return any(k.split("/", 1)[0] in COLLECTIONS for k in weights)


def split_collections(weights: Mapping[str, Any], what: str
                      ) -> dict[str, dict[str, np.ndarray]]:
  """{"params/a/b": x, "batch_stats/c": y} -> {"params": {"a/b": x}, ...}."""
  out = {c: {} for c in COLLECTIONS}
  unexpected = []
  for k, v in weights.items():
    collection, _, rest = k.partition("/")
    if collection in out and rest:
      out[collection][rest] = np.asarray(v)
    else:
      unexpected.append(k)
  if unexpected:
    raise WeightImportError(report(what, [], sorted(unexpected), []))
  return out


def check_against(what: str, new: Mapping[str, Mapping[str, Any]],
                  expected: Mapping[str, Mapping[str, tuple[int, ...]]]
                  ) -> None:
  """Raises WeightImportError unless `new` has exactly `expected`'s shapes."""
  missing, unexpected, mismatched = [], [], []
  for c in COLLECTIONS:
    have, want = new.get(c, {}), expected.get(c, {})
    missing += [f"{c}/{k}" for k in sorted(set(want) - set(have))]
    unexpected += [f"{c}/{k}" for k in sorted(set(have) - set(want))]
    mismatched += [
        f"{c}/{k} (expected {tuple(want[k])}, file {np.shape(have[k])})"
        for k in sorted(set(want) & set(have))
        if tuple(np.shape(have[k])) != tuple(want[k])]
  if missing or unexpected or mismatched:
    raise WeightImportError(report(what, missing, unexpected, mismatched))


def get_subtree(tree: Mapping[str, Any], path: str) -> Mapping[str, Any]:
  """tree["a"]["b"] for path "a/b" ({} where absent)."""
  node = tree
  for part in path.split("/"):
    node = node.get(part, {}) if isinstance(node, Mapping) else {}
  return node


def _set_subtree(tree: dict[str, Any], path: str, value: Any) -> None:
  *parents, leaf = path.split("/")
  node = tree
  for part in parents:
    node[part] = dict(node.get(part, {}))
    node = node[part]
  node[leaf] = value


def merge_subtree(variables: Mapping[str, Any], subtree: str,
                  new: Mapping[str, Mapping[str, Any]], *,
                  what: str) -> dict[str, Any]:
  """Replaces `variables[c][subtree]` by `new[c]` for params and batch_stats.

  Args:
    variables: model variables (not modified).
    subtree: the module whose variables are replaced: a top-level name
      ("backbone") or a '/'-path ("temporal/backbone").
    new: {"params": flat, "batch_stats": flat} with '/'-joined keys relative
      to the subtree.
    what: what is loaded, for the message.

  Returns:
    New plain-dict variables, every leaf cast to the dtype of the leaf it
    replaces.

  Raises:
    WeightImportError: naming every missing, unexpected or shape-mismatched
      key; the subtree must be covered exactly.
  """
  variables = to_dict(variables)
  missing, unexpected, mismatched = [], [], []
  merged = {}
  for collection in COLLECTIONS:
    current = flatten(get_subtree(variables.get(collection, {}), subtree))
    if not current and collection == "params":
      raise WeightImportError(
          f"Cannot load {what}: the model has no {collection}/{subtree} "
          "subtree.")
    given = new.get(collection, {})
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
    raise WeightImportError(report(what, missing, unexpected, mismatched))
  for collection in COLLECTIONS:
    if merged[collection]:
      variables[collection] = dict(variables[collection])
      _set_subtree(variables[collection], subtree,
                   unflatten(merged[collection]))
  return variables
