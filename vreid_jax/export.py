r"""Exports a trained model as a self-contained artifact folder.

  python -m vreid_jax.export --workdir=/tmp/vreid_demo --output=/tmp/demo_export \
      [--step=N] [--platforms=cpu,cuda,tpu] [--onnx=auto|no] [--overwrite]

writes

  model.jax          `jax.export` serialisation of the eval-mode embedding
                     function `embed(variables, inputs) -> (B, D) float32`
                     (`vreid_jax.models.embed_fn`, the one the evaluators
                     jit), with symbolic batch and time dimensions, lowered
                     for every platform asked for;
  variables.msgpack  `flax.serialization.msgpack_serialize` of
                     {"params": ..., "batch_stats": ...};
  model.json         the model card: model and config, the inputs with their
                     shapes, dtypes and normalisation, the embedding, the
                     checkpoint step, the training data and final metrics, how
                     the training code's evaluation forms a tracklet's
                     embedding, versions, and the call that runs it;
  model.onnx         when `jax2onnx` is installed (`pip install -e '.[onnx]'`)
                     and the model converts; checked with onnxruntime against
                     the JAX output. Otherwise model.json says why not.

Running it needs JAX, Flax and NumPy only (no vreid_jax):

  import flax.serialization, jax
  exported = jax.export.deserialize(open("E/model.jax", "rb").read())
  variables = flax.serialization.msgpack_restore(
      open("E/variables.msgpack", "rb").read())
  embedding = exported.call(variables, {"clips": clips, "mask": mask})

with `clips` float32 (B, T, H, W, 3) = (rgb / 255 - mean) / std (rgb the
0-255 frames resized to H x W, mean/std from model.json), `mask` bool
(B, T) (True = real frame) and, for models that read optical flow, `flow`
float32 (B, T, H, W, 2) as model.json describes. A tracklet longer than a
clip is embedded the way model.json's "evaluation" says (the training
code's default: the mean of its clips' embeddings).

The export checks itself before it returns: the deserialised artifact
equals the training code's jitted embedding function on several batch sizes
and clip lengths (the differences are in model.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from vreid_jax import cli

PLATFORMS = ("cpu", "cuda", "tpu")
MODEL_FILE = "model.jax"
VARIABLES_FILE = "variables.msgpack"
CARD_FILE = "model.json"
ONNX_FILE = "model.onnx"
CARD_VERSION = 1
# The deserialised artifact must equal the jitted embedding within this.
VERIFY_ATOL = 1e-5


class ExportError(ValueError):
  """An export cannot be written or read (the message names the file)."""


CALL_TEMPLATE = """\
import flax.serialization, jax, numpy as np
exported = jax.export.deserialize(open("{d}/model.jax", "rb").read())
variables = flax.serialization.msgpack_restore(open("{d}/variables.msgpack", "rb").read())
# clips: float32 (B, T, {h}, {w}, 3) = (rgb / 255 - mean) / std, mask: bool (B, T){flow}
embedding = exported.call(variables, {{{keys}}})  # (B, {dim}) float32"""


def input_avals(spec, keys: Sequence[str], batch, time_) -> dict[str, Any]:
  """ShapeDtypeStructs of a model's inputs (batch/time may be symbolic)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  hw = (spec.height, spec.width)
  out = {"clips": jax.ShapeDtypeStruct((batch, time_) + hw + (3,),
                                       jnp.float32),
         "mask": jax.ShapeDtypeStruct((batch, time_), jnp.bool_)}
  if "flow" in keys:
    out["flow"] = jax.ShapeDtypeStruct((batch, time_) + hw + (2,),
                                       jnp.float32)
  return out


def serialize_embed(embed, variables, spec, keys: Sequence[str], *,
                    platforms: Sequence[str] = PLATFORMS,
                    fixed_time: int | None = None):
  """`jax.export` of `embed` with symbolic batch (and time) dims.

  Tries a symbolic time dimension first; a model whose lowering needs a
  concrete clip length falls back to `fixed_time` (the evaluation's clip
  length).

  Returns:
    (Exported, {"batch": "symbolic", "time": "symbolic" | int, "notes"}).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax import export  # pylint: disable=g-import-not-at-top
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                          variables)
  fn = jax.jit(embed)
  b, t = export.symbolic_shape("B, T")
  try:
    exp = export.export(fn, platforms=tuple(platforms))(
        abstract, input_avals(spec, keys, b, t))
    return exp, {"batch": "symbolic", "time": "symbolic"}
  except Exception as e:  # pylint: disable=broad-except
    if fixed_time is None:
      raise
    note = (f"a symbolic clip length did not lower ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300]}); exported for T={fixed_time}")
  (b,) = export.symbolic_shape("B")
  exp = export.export(fn, platforms=tuple(platforms))(
      abstract, input_avals(spec, keys, b, fixed_time))
  return exp, {"batch": "symbolic", "time": int(fixed_time), "notes": note}


def example_inputs(spec, keys: Sequence[str], batch: int, time_: int,
                   seed: int = 0) -> dict[str, Any]:
  """Random normalised inputs with the last frame of every other clip
  padded (mask False), for checks."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  hw = (spec.height, spec.width)
  mask = np.ones((batch, time_), bool)
  if time_ > 1:
    mask[1::2, -1] = False
  out = {"clips": rng.normal(size=(batch, time_) + hw + (3,)).astype(
      np.float32), "mask": mask}
  if "flow" in keys:
    out["flow"] = rng.uniform(-1, 1, (batch, time_) + hw + (2,)).astype(
        np.float32)
  return out


def verify(exported, embed, variables, spec, keys: Sequence[str],
           cases: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
  """Max |exported.call - jit(embed)| on random inputs of each (B, T).

  Raises:
    ExportError: a difference above VERIFY_ATOL.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  jitted = jax.jit(embed)
  out = []
  for i, (b, t) in enumerate(cases):
    x = example_inputs(spec, keys, b, t, seed=i)
    got = np.asarray(exported.call(variables, x))
    want = np.asarray(jitted(variables, x))
    diff = float(np.abs(got - want).max())
    out.append({"batch": b, "time": t, "max_abs_diff": diff})
    if not np.isfinite(diff) or diff > VERIFY_ATOL:
      raise ExportError(
          f"the exported embedding differs from the training code's by "
          f"{diff:g} at B={b}, T={t} (tolerance {VERIFY_ATOL:g})")
  return out


def _host_tree(tree):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return jax.tree.map(np.asarray, jax.device_get(tree))


def reid_eval_config(config) -> Mapping[str, Any]:
  """The run's main re-id evaluator block (how its test embeddings were
  made), or the first re-id evaluator."""
  evals = config.evals
  main = config.get("main_eval", "reid")
  names = [main] + [n for n in evals if n != main]
  for name in names:
    if name in evals and evals[name].get("type", name) == "reid":
      return evals[name]
  raise ExportError("the run's config has no re-id evaluator (config.evals "
                    "has no block of type 'reid')")


def _metrics(workdir: str, step: int) -> dict[str, Any] | None:
  path = os.path.join(workdir, "metrics.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    m = json.load(f)
  out = {k: m[k] for k in ("mAP", "mINP", "cmc", "step", "protocol")
         if k in m}
  out["checkpoint_step_matches"] = m.get("step") == step
  return out


def model_card(*, config, spec, keys, step: int, embedding_dim: int,
               num_classes: int, dims: Mapping[str, Any], platforms,
               verified, workdir: str, variables) -> dict[str, Any]:
  """The model.json contents (module docstring)."""
  from vreid_jax import provenance  # pylint: disable=g-import-not-at-top
  ev = reid_eval_config(config)
  hw = [spec.height, spec.width]
  t = None if dims["time"] == "symbolic" else dims["time"]
  inputs = {
      "clips": {"shape": [None, t] + hw + [3], "dtype": "float32",
                "meaning": "frames resized to height x width (bilinear), "
                           "(rgb / 255 - mean) / std with rgb in 0..255"},
      "mask": {"shape": [None, t], "dtype": "bool",
               "meaning": "True = real frame; padded frames change nothing"},
  }
  if "flow" in keys:
    inputs["flow"] = {
        "shape": [None, t] + hw + [2], "dtype": "float32",
        "meaning": "TV-L1 optical flow from each frame to the next (x, y) "
                   "in pixels of the height x width frame, clipped to "
                   f"+-{spec.flow_bound:g} px, times flow_scale"}
  call = CALL_TEMPLATE.format(
      d="E", h=spec.height, w=spec.width, dim=embedding_dim,
      flow=", flow: float32 (B, T, H, W, 2)" if "flow" in keys else "",
      keys=", ".join(f'"{k}": {k}' for k in keys))
  return {
      "format": "vreid_jax export", "card_version": CARD_VERSION,
      "model_name": config.model_name,
      "model_config": config.model.to_dict(),
      "num_classes": num_classes,
      "checkpoint_step": step,
      "workdir": workdir,
      "input": {
          "height": spec.height, "width": spec.width,
          "mean": list(spec.mean), "std": list(spec.std),
          "pixel_range": "0-255 (divide by 255 before mean/std; mean and "
                         "std are in 0-1 units)",
          "channels": "RGB", "clip_len": spec.clip_len,
          "with_flow": spec.with_flow, "flow_scale": spec.flow_scale,
          "flow_bound": spec.flow_bound,
          "shuffle_frames": spec.shuffle_frames,
      },
      "inputs": inputs,
      "input_keys": list(keys),
      "dims": dict(dims),
      "embedding": {"dim": embedding_dim, "dtype": "float32"},
      "variables": sorted(variables),
      "evaluation": {
          "mode": ev.mode, "clip_len": int(ev.clip_len),
          "batch_size": int(ev.batch_size),
          "max_frames_per_device": int(ev.get("max_frames_per_device", 0)),
          "combine": "mean of the tracklet's clip embeddings",
          "protocol": ev.protocol, "metric": ev.metric,
          "normalize": bool(ev.normalize), "ap": ev.ap,
          "dataset": (ev.dataset.to_dict() if ev.dataset.get("name")
                      else None),
      },
      "train_dataset": {"name": config.dataset.name,
                        "config": config.dataset.get("config", ""),
                        "trial": int(config.dataset.get("trial", -1)),
                        "data_dir": config.get("data_dir", "") or ""},
      "final_metrics": _metrics(workdir, step),
      "platforms": list(platforms),
      "verified": verified,
      "call": call.splitlines(),
      "call_note": "E is this folder",
      "versions": provenance.versions(),
      "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }


def export_workdir(workdir: str, output: str, *, step: int | None = None,
                   platforms: Sequence[str] = PLATFORMS, onnx: str = "auto",
                   overwrite: bool = False,
                   log=print) -> dict[str, Any]:
  """Writes the artifact folder of a workdir's checkpoint; returns the card.

  The folder is written under a temporary name and renamed at the end, so
  an interrupted export never leaves a half-written artifact.

  Raises:
    ExportError: bad platforms, an existing output without `overwrite`, or
      an artifact that does not match the training code's embedding.
    FileNotFoundError: no checkpoint in `workdir`.
  """
  unknown = [p for p in platforms if p not in PLATFORMS]
  if unknown or not platforms:
    raise ExportError(f"--platforms: unknown {unknown} (choose from "
                      f"{','.join(PLATFORMS)})")
  output = os.path.abspath(os.path.expanduser(output))
  if os.path.exists(output) and not overwrite:
    raise ExportError(f"--output={output} exists; pass --overwrite or "
                      "choose another folder")
  from flax import serialization  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from vreid_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from vreid_jax import models  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import preprocess  # pylint: disable=g-import-not-at-top

  t0 = time.time()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  model, variables, config = checkpoint.restore_for_inference(
      workdir, step=step)
  step_dir = checkpoint.step_dir(workdir, step)
  step = int(os.path.basename(step_dir))
  variables = _host_tree({k: v for k, v in variables.items() if v})
  spec = preprocess.InputSpec.from_config(config.input)
  keys = models.input_keys(model)
  embed = models.embed_fn(model)
  ev = reid_eval_config(config)
  log(f"Exporting {config.model_name} (step {step} of {workdir}) for "
      f"{','.join(platforms)}")
  exported, dims = serialize_embed(embed, variables, spec, keys,
                                   platforms=platforms,
                                   fixed_time=int(ev.clip_len))
  if dims.get("notes"):
    log("note: " + dims["notes"])
  blob = exported.serialize()
  # Check what a user will load: the deserialised bytes and variables.
  loaded = jax.export.deserialize(blob)
  var_bytes = serialization.msgpack_serialize(variables)
  restored = serialization.msgpack_restore(var_bytes)
  t_fixed = dims["time"] if dims["time"] != "symbolic" else None
  cases = ([(1, t_fixed), (3, t_fixed)] if t_fixed else
           [(1, spec.clip_len), (3, int(ev.clip_len) + 1)])
  verified = verify(loaded, embed, restored, spec, keys, cases)
  embedding_dim = int(exported.out_avals[0].shape[-1])
  log("Verified against the training code's embedding: " + ", ".join(
      f"B={v['batch']} T={v['time']} max|diff|={v['max_abs_diff']:.2g}"
      for v in verified))

  tmp = tempfile.mkdtemp(prefix=os.path.basename(output) + ".tmp-",
                         dir=os.path.dirname(output))
  try:
    with open(os.path.join(tmp, MODEL_FILE), "wb") as f:
      f.write(blob)
    with open(os.path.join(tmp, VARIABLES_FILE), "wb") as f:
      f.write(var_bytes)
    card = model_card(config=config, spec=spec, keys=keys, step=step,
                      embedding_dim=embedding_dim,
                      num_classes=int(model.num_classes), dims=dims,
                      platforms=platforms, verified=verified,
                      workdir=workdir, variables=variables)
    card["onnx"] = _export_onnx(onnx, embed, variables, spec, keys, tmp,
                                model_name=config.model_name, cases=cases,
                                log=log)
    card["export_seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(tmp, CARD_FILE), "w") as f:
      json.dump(card, f, indent=2)
    if os.path.exists(output):
      shutil.rmtree(output)
    os.replace(tmp, output)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(output, 0o777 & ~umask)  # mkdtemp made it private.
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  log(f"Wrote {output}: {MODEL_FILE} ({len(blob) / 1e6:.1f} MB), "
      f"{VARIABLES_FILE} ({len(var_bytes) / 1e6:.1f} MB), {CARD_FILE}"
      + (f", {ONNX_FILE}" if card["onnx"].get("status") == "ok" else "")
      + f" in {card['export_seconds']:.0f} s")
  return card


def _export_onnx(mode: str, embed, variables, spec, keys, folder: str, *,
                 model_name: str, cases, log) -> dict[str, Any]:
  """model.onnx when jax2onnx is installed and the model converts; the
  status for the card either way (never fails the export)."""
  if mode == "no":
    return {"status": "skipped", "reason": "--onnx=no"}
  try:
    from vreid_jax import onnx_export  # pylint: disable=g-import-not-at-top
    report = onnx_export.to_onnx(
        embed, variables, example_inputs(spec, keys, *cases[0]),
        os.path.join(folder, ONNX_FILE), model_name=model_name)
  except ImportError as e:
    log(f"ONNX: skipped ({e})")
    return {"status": "skipped", "reason": str(e)}
  except Exception as e:  # pylint: disable=broad-except
    log(f"ONNX: {model_name} does not convert: {e}")
    path = os.path.join(folder, ONNX_FILE)
    if os.path.exists(path):
      os.remove(path)
    return {"status": "failed", "error": str(e)}
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  jitted = jax.jit(embed)
  check_cases = [c for c in cases
                 if (report.get("dynamic_time") or c[1] == cases[0][1])
                 and (report.get("dynamic_batch") or c[0] == cases[0][0])]
  inputs = [example_inputs(spec, keys, b, t, seed=i)
            for i, (b, t) in enumerate(check_cases)]
  expected = [np.asarray(jitted(variables, x)) for x in inputs]
  try:
    check = onnx_export.check_onnx(os.path.join(folder, ONNX_FILE), inputs,
                                   expected)
  except Exception as e:  # pylint: disable=broad-except
    log(f"ONNX: written but does not match JAX: {e}")
    os.remove(os.path.join(folder, ONNX_FILE))
    return {"status": "failed", "error": f"onnxruntime check: {e}"}
  log(f"ONNX: {ONNX_FILE} checked with onnxruntime ({check})")
  return {"status": "ok", **{k: v for k, v in report.items() if k != "path"},
          "check": check}


# ---------------------------------------------------------------------------
# Reading an artifact (with vreid_jax installed: extraction and search).


@dataclasses.dataclass
class Artifact:
  """A loaded export folder.

  Attributes:
    path: the folder.
    card: model.json.
    exported: the deserialised `jax.export.Exported`.
    variables: {"params": ..., "batch_stats": ...} as NumPy arrays.
  """
  path: str
  card: dict[str, Any]
  exported: Any
  variables: dict[str, Any]

  @property
  def input_spec(self):
    """The `preprocess.InputSpec` the model was trained with."""
    from vreid_jax.input_pipeline import preprocess  # pylint: disable=g-import-not-at-top
    inp = self.card["input"]
    return preprocess.InputSpec(
        height=int(inp["height"]), width=int(inp["width"]),
        clip_len=int(inp["clip_len"]), mean=tuple(inp["mean"]),
        std=tuple(inp["std"]), with_flow=bool(inp["with_flow"]),
        flow_scale=float(inp["flow_scale"]),
        flow_bound=float(inp["flow_bound"]),
        shuffle_frames=bool(inp.get("shuffle_frames", False)))

  @property
  def input_keys(self) -> tuple[str, ...]:
    return tuple(self.card["input_keys"])

  def embed_fn(self):
    """`embed(variables, inputs) -> (B, D)`, like `models.embed_fn`."""
    exported = self.exported

    def embed(variables, inputs):
      return exported.call(variables, {k: inputs[k]
                                       for k in self.input_keys})

    return embed


def load(path: str) -> Artifact:
  """Reads an export folder (model.jax, variables.msgpack, model.json).

  Raises:
    ExportError: a missing or unreadable file, named.
  """
  from flax import serialization  # pylint: disable=g-import-not-at-top
  from jax import export  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(os.path.expanduser(path))
  files = {}
  for name in (MODEL_FILE, VARIABLES_FILE, CARD_FILE):
    p = os.path.join(path, name)
    if not os.path.isfile(p):
      raise ExportError(f"--export={path}: no {name} (write the folder with "
                        "python -m vreid_jax.export)")
    with open(p, "rb") as f:
      files[name] = f.read()
  try:
    card = json.loads(files[CARD_FILE])
  except ValueError as e:
    raise ExportError(f"{os.path.join(path, CARD_FILE)}: not JSON ({e})"
                      ) from e
  try:
    exported = export.deserialize(bytearray(files[MODEL_FILE]))
  except Exception as e:  # pylint: disable=broad-except
    raise ExportError(f"{os.path.join(path, MODEL_FILE)}: cannot deserialise"
                      f" ({e})") from e
  try:
    variables = serialization.msgpack_restore(files[VARIABLES_FILE])
  except Exception as e:  # pylint: disable=broad-except
    raise ExportError(f"{os.path.join(path, VARIABLES_FILE)}: cannot read "
                      f"({e})") from e
  return Artifact(path=path, card=card, exported=exported,
                  variables=variables)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = cli.ArgumentParser(
      prog="python -m vreid_jax.export",
      description="Export a trained workdir's embedding model (jax.export, "
      "msgpack variables, model card, optional ONNX).")
  p.add_argument("--workdir", required=True, help="the training workdir")
  p.add_argument("--step", type=int, default=None,
                 help="checkpoint step (default: the latest)")
  p.add_argument("--output", required=True, help="the artifact folder")
  p.add_argument("--platforms", default=",".join(PLATFORMS),
                 help="comma-separated: cpu,cuda,tpu (default all three)")
  p.add_argument("--onnx", default="auto", choices=("auto", "no"),
                 help="auto: also write model.onnx when jax2onnx is "
                 "installed and the model converts")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an existing --output folder")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the export; a bad input is one `error:` line (exit 2)."""
  return cli.run(_main, argv, errors=(ExportError, FileNotFoundError),
                 exit_code=2)


def _main(argv: Sequence[str] | None) -> int:
  args = parse_args(argv)
  export_workdir(args.workdir, args.output, step=args.step,
                 platforms=[p for p in args.platforms.split(",") if p],
                 onnx=args.onnx, overwrite=args.overwrite)
  return 0


if __name__ == "__main__":
  sys.exit(main())
