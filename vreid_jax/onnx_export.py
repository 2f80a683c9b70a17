"""ONNX export of a model's embedding function (optional: the `onnx` extra).

  pip install -e '.[onnx]' && pip install --no-deps 'jax2onnx>=0.17.1'

(jax2onnx's metadata pins orbax-checkpoint<0.11.37; with --no-deps it runs
next to ours: conversion imports only jax, flax, numpy, onnx, onnx-ir and
onnxruntime. Without equinox and dm-pix it logs "Skipping import" warnings
for its plugins of those libraries: harmless.)

`to_onnx` converts `inputs -> embed(variables, inputs)` with jax2onnx: the
variables become ONNX initializers, the graph inputs are `clips` (B, T, H, W,
3) float32, `mask` (B, T) bool and, for models that read it, `flow` (B, T, H,
W, 2) float32 (the preprocessed `inputs` of `vreid_jax.input_pipeline.
preprocess`), and the output is `embedding` (B, D) float32. Batch and clip
length are symbolic ("B", "T") where the model's trace allows it; otherwise
the export falls back to a fixed T, then to fixed B and T, and says so in the
report it returns. `check_onnx` runs the file with onnxruntime and compares
it with the JAX embeddings.

  from vreid_jax import models, onnx_export
  embed = models.embed_fn(model)
  report = onnx_export.to_onnx(embed, variables, example_inputs,
                               "/tmp/model.onnx", model_name="gltr")
  onnx_export.check_onnx("/tmp/model.onnx", [inputs], [np.asarray(
      embed(variables, inputs))])

By default the embedding is traced to a jaxpr here and jax2onnx converts
that jaxpr's lax primitives: jax2onnx's own tracing monkeypatches flax.linen
(Conv, BatchNorm, max_pool, ...) with rewrites whose signatures do not
cover every call (its `max_pool` takes the window only by keyword and
string padding only); `library_patches=True` uses them anyway.

jax2onnx and onnxruntime are imported only when called: the rest of the
package never needs them.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

INSTALL_HINT = ("pip install -e '.[onnx]' && pip install --no-deps "
                "'jax2onnx>=0.17.1'")
# Graph input order; "flow" only for models that read it.
INPUT_KEYS = ("clips", "mask", "flow")
OUTPUT_NAME = "embedding"
BATCH_DIM, TIME_DIM = "B", "T"
# Innermost jax2onnx frames that hold the equation being lowered.
_LOWERING_FRAMES = ("lower_equation_with_plugin", "lower_jaxpr_with_plugins")
_PRIMITIVE_RE = re.compile(r"primitive '([^']+)'")


class OnnxConversionError(RuntimeError):
  """jax2onnx could not convert a model.

  Attributes:
    model_name: the model that failed.
    primitive: the JAX primitive whose lowering failed, or None when the
      failure came before lowering (tracing) or could not be attributed.
    where: the user source line of the failing equation, when known.
  """

  def __init__(self, model_name: str, primitive: str | None,
               cause: BaseException, where: str | None = None,
               attempts: Sequence[str] = ()):
    self.model_name = model_name
    self.primitive = primitive
    self.where = where
    what = (f"JAX primitive {primitive!r}" if primitive
            else "tracing/lowering (no single primitive)")
    msg = (f"ONNX export of model {model_name!r} failed at {what}"
           + (f" (from {where})" if where else "")
           + f": {type(cause).__name__}: {_first_line(cause)}")
    if attempts:
      msg += "\nattempts: " + "; ".join(attempts)
    super().__init__(msg)


def _first_line(e: BaseException, limit: int = 300) -> str:
  text = str(e).strip().splitlines()
  line = text[0] if text else ""
  return line if len(line) <= limit else line[:limit] + "..."


def _failing_primitive(e: BaseException) -> tuple[str | None, str | None]:
  """(primitive name, source line) of the equation jax2onnx failed on."""
  primitive, where = None, None
  # The innermost lowering frame knows the equation (a plugin's own error).
  chain, seen = [], set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    chain.append(e)
    e = e.__cause__ or e.__context__
  for exc in chain:
    tb = exc.__traceback__
    while tb is not None:
      frame = tb.tb_frame
      if frame.f_code.co_name in _LOWERING_FRAMES:
        name = frame.f_locals.get("primitive_name")
        if isinstance(name, str):
          primitive = name
          eqn = frame.f_locals.get("eqn")
          where = _eqn_source(eqn) or where
      tb = tb.tb_next
    if primitive:
      return primitive, where
  # "No plugins registered for primitive 'x'" and similar messages.
  for exc in chain:
    m = _PRIMITIVE_RE.search(str(exc))
    if m:
      return m.group(1), where
  return None, where


def _eqn_source(eqn) -> str | None:
  if eqn is None:
    return None
  try:
    from jax._src import source_info_util  # pylint: disable=g-import-not-at-top
    return source_info_util.summarize(eqn.source_info)
  except Exception:  # pylint: disable=broad-except
    return None


# Primitives whose sub-jaxpr is inlined by `_eval_for_onnx` (so a max pool
# inside a jitted helper or a remat is rewritten too).
_INLINE_PARAMS = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr",
                  "core_call": "call_jaxpr", "checkpoint": "jaxpr",
                  "remat": "jaxpr"}


def _eval_for_onnx(jaxpr, consts, *args):
  """`jax.core.eval_jaxpr` with what jax2onnx 0.17.1 mis-converts rewritten.

  Rewrites (each exact): `reduce_window_max` (below), `pad` of an array with
  a symbolic dim (`_pad`), and a reverse `scan` (`_forward_scan`). Only the
  top-level jaxpr and inlined jit/remat bodies are rewritten, not the
  bodies of scan/while/cond.

  jax2onnx 0.17.1 lowers `reduce_window_max` on an (N, H, W, C) array to an
  ONNX MaxPool with all four dims spatial (kernel (1, 3, 3, 1)), which
  onnxruntime's CPU MaxPool rejects at run time ("Unsupported pooling
  size": it pools 1 to 3 spatial dims). `_max_pool_by_slices` computes the
  same max from strided slices of the -inf padded input (exact). Source
  info is kept, so conversion errors still point at the model's code.
  """
  from jax._src import source_info_util  # pylint: disable=g-import-not-at-top
  from jax.extend import core as jex_core  # pylint: disable=g-import-not-at-top
  env = {}

  def read(v):
    return v.val if isinstance(v, jex_core.Literal) else env[v]

  def write(v, val):
    if not isinstance(v, jex_core.DropVar):
      env[v] = val

  for v, val in zip(jaxpr.constvars, consts):
    write(v, val)
  for v, val in zip(jaxpr.invars, args):
    write(v, val)
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    with (source_info_util.user_context(
        eqn.source_info.traceback,
        name_stack=(source_info_util.current_name_stack()
                    + eqn.source_info.name_stack)), eqn.ctx.manager):
      if name == "reduce_window_max":
        outs = [_max_pool_by_slices(invals[0], **eqn.params)]
      elif name == "pad":
        outs = [_pad(*invals, **eqn.params)]
      elif name == "scan" and eqn.params.get("reverse"):
        outs = _forward_scan(eqn.primitive, invals, eqn.params)
      elif name in _INLINE_PARAMS and _INLINE_PARAMS[name] in eqn.params:
        sub = eqn.params[_INLINE_PARAMS[name]]
        if isinstance(sub, jex_core.ClosedJaxpr):
          outs = _eval_for_onnx(sub.jaxpr, sub.consts, *invals)
        else:
          outs = _eval_for_onnx(sub, (), *invals)
      else:
        ans = eqn.primitive.bind(*invals,
                                 **eqn.primitive.get_bind_params(eqn.params))
        outs = ans if eqn.primitive.multiple_results else [ans]
    for v, val in zip(eqn.outvars, outs):
      write(v, val)
  return [read(v) for v in jaxpr.outvars]


def _forward_scan(scan_p, invals, params):
  """A reverse `scan` as a forward one over time-reversed xs, its ys
  reversed back (jax2onnx 0.17.1: "Reverse scan is not supported")."""
  from jax import lax  # pylint: disable=g-import-not-at-top
  n_in = params["num_consts"] + params["num_carry"]
  xs = [lax.rev(x, (0,)) for x in invals[n_in:]]
  outs = scan_p.bind(*invals[:n_in], *xs,
                     **scan_p.get_bind_params(dict(params, reverse=False)))
  n_carry = params["num_carry"]
  return list(outs[:n_carry]) + [lax.rev(y, (0,)) for y in outs[n_carry:]]


def _max_pool_by_slices(x, *, window_dimensions, window_strides, padding,
                        base_dilation, window_dilation):
  """`lax.reduce_window_max` as the max of one strided slice per window
  offset (dims with a window of 1 are sliced whole)."""
  import itertools  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  if any(d != 1 for d in base_dilation):
    raise NotImplementedError("reduce_window_max with base_dilation != 1")
  x = _pad(x, np.array(-np.inf, x.dtype),
           padding_config=[(lo, hi, 0) for lo, hi in padding])
  out = [(n - (w - 1) * d - 1) // s + 1 for n, w, d, s in zip(
      x.shape, window_dimensions, window_dilation, window_strides)]
  result = None
  for offset in itertools.product(*[range(w) for w in window_dimensions]):
    start = [o * d for o, d in zip(offset, window_dilation)]
    limit = [b + (m - 1) * s + 1
             for b, m, s in zip(start, out, window_strides)]
    piece = lax.slice(x, start, limit, window_strides)
    result = piece if result is None else lax.max(result, piece)
  return result


def _pad(x, padding_value, *, padding_config):
  """`lax.pad`, as concatenated constant blocks when `x` has a symbolic dim.

  jax2onnx 0.17.1's `pad` lowering builds its output shape with int() of
  every dim and fails on a symbolic one ("Symbolic dimension 'B*T' used in
  a context that requires a constant").
  """
  from jax import lax  # pylint: disable=g-import-not-at-top
  if all(isinstance(n, (int, np.integer)) for n in x.shape) or any(
      interior for _, _, interior in padding_config):
    return lax.pad(x, padding_value, padding_config)
  for axis, (lo, hi, _) in enumerate(padding_config):
    if lo < 0 or hi < 0:  # negative padding crops
      start = [0] * x.ndim
      limit = list(x.shape)
      start[axis] = max(-lo, 0)
      limit[axis] = x.shape[axis] - max(-hi, 0)
      x = lax.slice(x, start, limit)
    parts = []
    for n in (max(lo, 0), None, max(hi, 0)):
      if n is None:
        parts.append(x)
      elif n:
        shape = x.shape[:axis] + (n,) + x.shape[axis + 1:]
        parts.append(lax.broadcast_in_dim(padding_value, shape, ()))
    if len(parts) > 1:
      x = lax.concatenate(parts, axis)
  return x


def _import_jax2onnx():
  try:
    import jax2onnx  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "ONNX export needs jax2onnx, onnx and onnxruntime: "
        f"{INSTALL_HINT}") from e
  return jax2onnx


def _input_keys(example_inputs: Mapping[str, Any]) -> tuple[str, ...]:
  unknown = set(example_inputs) - set(INPUT_KEYS)
  if unknown or "clips" not in example_inputs or "mask" not in (
      example_inputs):
    raise ValueError(
        f"example_inputs has keys {sorted(example_inputs)}; expected "
        "'clips', 'mask' and optionally 'flow'")
  return tuple(k for k in INPUT_KEYS if k in example_inputs)


def _specs(example_inputs: Mapping[str, Any], keys: Sequence[str],
           dynamic_batch: bool, dynamic_time: bool):
  """ShapeDtypeStructs with symbolic leading dims where asked."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax import export as jax_export  # pylint: disable=g-import-not-at-top
  b, t = np.shape(example_inputs["mask"])
  names = [n for n, on in ((BATCH_DIM, dynamic_batch),
                           (TIME_DIM, dynamic_time)) if on]
  syms = dict(zip(names, jax_export.symbolic_shape(", ".join(names))
                  )) if names else {}
  lead = (syms.get(BATCH_DIM, b), syms.get(TIME_DIM, t))
  specs = []
  for k in keys:
    x = example_inputs[k]
    shape = tuple(np.shape(x))
    if shape[:2] != (b, t):
      raise ValueError(f"example_inputs[{k!r}] has shape {shape}; expected "
                       f"(B, T, ...) = ({b}, {t}, ...) like 'mask'")
    specs.append(jax.ShapeDtypeStruct(lead + shape[2:], np.dtype(x.dtype)))
  return specs


def to_onnx(embed: Callable[[Any, Mapping[str, Any]], Any], variables: Any,
            example_inputs: Mapping[str, Any], path: str, *, model_name: str,
            dynamic_batch: bool = True, dynamic_time: bool = True,
            opset: int | None = None, library_patches: bool = False
            ) -> dict[str, Any]:
  """Writes `inputs -> embed(variables, inputs)` to `path` as ONNX.

  Args:
    embed: `embed(variables, inputs) -> (B, D) float32`
      (`vreid_jax.models.embed_fn(model)`).
    variables: the model's variables; baked into the graph as initializers.
    example_inputs: {"clips", "mask"[, "flow"]} arrays (or
      ShapeDtypeStructs) giving the input dtypes, the frame size, and the
      B and T used for whichever dim cannot be symbolic.
    path: the .onnx file (initializers over 1 MB go to `path + ".data"`).
    model_name: names the ONNX graph and error messages.
    dynamic_batch: try a symbolic batch dim "B".
    dynamic_time: try a symbolic clip length "T".
    opset: ONNX opset; jax2onnx's default when None.
    library_patches: trace `embed` under jax2onnx's rewrites of flax.linen
      and jnp calls (Conv, BatchNorm, max_pool, ...) instead of converting
      the plain jaxpr. Off by default: the max_pool rewrite (jax2onnx
      0.17.1) rejects `nn.max_pool(x, (3, 3), ...)` (window positional) and
      stringifies explicit padding, which every ResNet stem here uses.

  Returns:
    {"path", "opset", "dynamic_batch", "dynamic_time", "seconds",
    "fallbacks"}: the dims that came out symbolic, and why the others did
    not ("fallbacks": one line per failed attempt).

  Raises:
    ImportError: jax2onnx is missing (message: the install command).
    OnnxConversionError: no attempt converted; names the JAX primitive.
  """
  jax2onnx = _import_jax2onnx()
  import jax  # pylint: disable=g-import-not-at-top
  keys = _input_keys(example_inputs)
  if opset is None:
    import inspect  # pylint: disable=g-import-not-at-top
    opset = inspect.signature(jax2onnx.to_onnx).parameters["opset"].default

  def fn(*arrays):
    return embed(variables, dict(zip(keys, arrays)))

  def convert(specs):
    if library_patches:
      target = fn
    else:
      # Trace here, outside jax2onnx's rewrites of flax/jnp calls, and let it
      # lower plain lax primitives (module docstring: the max_pool patch).
      closed = jax.make_jaxpr(fn)(*specs)

      def target(*arrays):
        (out,) = _eval_for_onnx(closed.jaxpr, closed.consts, *arrays)
        return out
    jax2onnx.to_onnx(
        target, specs, model_name=model_name, opset=opset,
        return_mode="file", output_path=path, input_names=list(keys),
        output_names=[OUTPUT_NAME])

  attempts = [(dynamic_batch, dynamic_time)]
  if dynamic_time:
    attempts.append((dynamic_batch, False))
  if dynamic_batch:
    attempts.append((False, False))
  failures, errors = [], []
  start = time.perf_counter()
  for dyn_b, dyn_t in attempts:
    try:
      convert(_specs(example_inputs, keys, dyn_b, dyn_t))
    except Exception as e:  # pylint: disable=broad-except
      primitive, where = _failing_primitive(e)
      label = f"dynamic_batch={dyn_b} dynamic_time={dyn_t}"
      failures.append(f"{label}: {primitive or '-'}: {type(e).__name__}: "
                      f"{_first_line(e, 160)}")
      errors.append((e, primitive, where))
      continue
    return {"path": path, "opset": opset, "dynamic_batch": dyn_b,
            "dynamic_time": dyn_t,
            "seconds": round(time.perf_counter() - start, 3),
            "fallbacks": failures}
  # Report the failure of the most static attempt: the one no dim caused.
  e, primitive, where = errors[-1]
  raise OnnxConversionError(model_name, primitive, e, where,
                            attempts=failures) from e


def _session(path: str):
  try:
    import onnxruntime  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"check_onnx needs onnxruntime: {INSTALL_HINT}") from e
  return onnxruntime.InferenceSession(path,
                                      providers=["CPUExecutionProvider"])


def check_onnx(path: str, inputs_list: Sequence[Mapping[str, Any]],
               expected_list: Sequence[np.ndarray], atol: float = 1e-4
               ) -> dict[str, Any]:
  """Runs the ONNX file on each inputs dict and compares with `expected`.

  Args:
    path: an `to_onnx` file.
    inputs_list: {"clips", "mask"[, "flow"]} per case (extra keys the graph
      does not take are ignored).
    expected_list: the JAX embeddings, one (B, D) array per case.
    atol: the largest allowed absolute difference.

  Returns:
    {"max_abs_err": [per case], "shapes": [(B, T) per case], "atol"}.

  Raises:
    AssertionError: a case's shape differs or its error exceeds atol.
  """
  if len(inputs_list) != len(expected_list):
    raise ValueError(f"{len(inputs_list)} inputs but {len(expected_list)} "
                     "expected outputs")
  sess = _session(path)
  names = [i.name for i in sess.get_inputs()]
  errs, shapes, bad = [], [], []
  for i, (inputs, expected) in enumerate(zip(inputs_list, expected_list)):
    missing = [n for n in names if n not in inputs]
    if missing:
      raise ValueError(f"case {i}: the ONNX graph needs inputs {missing}")
    feed = {n: np.asarray(inputs[n]) for n in names}
    feed = {n: (v.astype(np.float32) if v.dtype.kind == "f" else v)
            for n, v in feed.items()}
    (got,) = sess.run([OUTPUT_NAME], feed)
    expected = np.asarray(expected, np.float32)
    shapes.append(tuple(np.shape(inputs["mask"])))
    if got.shape != expected.shape:
      bad.append(f"case {i} (B, T)={shapes[-1]}: shape {got.shape} != "
                 f"{expected.shape}")
      errs.append(float("inf"))
      continue
    err = float(np.max(np.abs(got - expected))) if got.size else 0.0
    errs.append(err)
    if not err <= atol:
      bad.append(f"case {i} (B, T)={shapes[-1]}: max abs error {err:.3g} > "
                 f"atol {atol:g}")
  if bad:
    raise AssertionError(f"onnxruntime vs JAX for {path}: " + "; ".join(bad))
  return {"max_abs_err": errs, "shapes": shapes, "atol": atol}
