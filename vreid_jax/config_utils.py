"""Config helpers: variants, durations, checks and loading configs.

Variants. An experiment config reads what follows the colon of
`--config=configs/gao_mars.py:ta,runlocal` through one shared parser:

  VARIANTS = config_utils.Variants(rows=("stage2", "stage1"),
                                   flags=("runlocal",), trial=-1)

  def get_config(arg=None):
    v = VARIANTS.parse(arg)   # v.row == "stage2", v.runlocal, v.trial
    ...

A bare word names a paper row (the first row is the default) or switches a
flag on; `key=value` sets a typed argument (its type is its default's). Any
other word is an error listing what the config accepts. The test that loads
every config enumerates `VARIANTS.examples()`, so a new config file needs no
test edit.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections


@dataclasses.dataclass(frozen=True)
class Variants:
  """The variants a config file accepts after the colon.

  Attributes:
    rows: paper rows (bare words, at most one per arg); the first is the
      default; empty for configs without rows.
    flags: boolean switches (bare words), e.g. "runlocal".
    args: typed `key=value` arguments with their defaults.
  """
  rows: tuple[str, ...] = ()
  flags: tuple[str, ...] = ("runlocal",)
  args: tuple[tuple[str, Any], ...] = ()

  def __init__(self, rows: Sequence[str] = (),
               flags: Sequence[str] = ("runlocal",), **args: Any):
    object.__setattr__(self, "rows", tuple(rows))
    object.__setattr__(self, "flags", tuple(flags))
    object.__setattr__(self, "args", tuple(sorted(args.items())))
    names = list(self.rows) + list(self.flags) + list(args) + ["row"]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
      raise ValueError(f"Variants: names used twice: {twice}")

  def _accepts(self) -> str:
    parts = []
    if self.rows:
      parts.append("rows " + ", ".join(self.rows))
    if self.flags:
      parts.append("flags " + ", ".join(self.flags))
    if self.args:
      parts.append("arguments " + ", ".join(f"{k}=<{type(v).__name__}>"
                                            for k, v in self.args))
    return "; ".join(parts) or "no variants"

  def parse(self, arg: str | None, where: str = "config"
            ) -> ml_collections.ConfigDict:
    """Parses "ta,runlocal" / "stage=1" into a ConfigDict.

    Returns:
      A ConfigDict with `row` (the default row, or '' without rows), one
      bool per flag and one field per typed argument.

    Raises:
      ValueError: an unknown word, a second row or a badly typed value,
        naming what `where` accepts.
    """
    out = ml_collections.ConfigDict()
    out.row = self.rows[0] if self.rows else ""
    for flag in self.flags:
      out[flag] = False
    defaults = dict(self.args)
    for k, v in defaults.items():
      out[k] = v
    row_set = False
    for word in (w.strip() for w in (arg or "").split(",")):
      if not word:
        continue
      key, eq, value = word.partition("=")
      if eq:
        if key not in defaults:
          raise ValueError(f"{where}: unknown argument {key!r} in {arg!r}; "
                           f"it accepts {self._accepts()}")
        out[key] = _cast(value, defaults[key], f"{where}: {key}")
      elif word in self.rows:
        if row_set:
          raise ValueError(f"{where}: two rows in {arg!r}; pick one of "
                           f"{', '.join(self.rows)}")
        out.row, row_set = word, True
      elif word in self.flags:
        out[word] = True
      else:
        raise ValueError(f"{where}: unknown variant {word!r} in {arg!r}; it "
                         f"accepts {self._accepts()}")
    return out

  def examples(self) -> Iterator[str]:
    """Args that together exercise every row and flag (for tests)."""
    yield ""
    for row in self.rows:
      yield row
    for flag in self.flags:
      yield flag
      for row in self.rows[1:]:
        yield f"{row},{flag}"


def _cast(value: str, default: Any, where: str) -> Any:
  if isinstance(default, bool):
    if value.lower() in ("1", "true", "yes"):
      return True
    if value.lower() in ("0", "false", "no"):
      return False
    raise ValueError(f"{where}: expected true or false, got {value!r}")
  try:
    return type(default)(value)
  except (TypeError, ValueError):
    raise ValueError(f"{where}: expected a {type(default).__name__}, got "
                     f"{value!r}") from None


def import_named(package: str, name: str, field: str, attr: str):
  """The module `<package>.<name>`, which must define `attr`.

  How a config names code: by module path (no registry).

  Args:
    package: e.g. "vreid_jax.models".
    name: the module name the config gives (e.g. "gltr").
    field: the config field that gave it, for the message.
    attr: the attribute the module must define (e.g. "Model").

  Raises:
    ValueError: naming the field when there is no such module or attribute
      (an import error inside an existing module propagates as it is).
  """
  full = f"{package}.{name}"
  try:
    module = importlib.import_module(full)
  except ModuleNotFoundError as e:
    if e.name != full:
      raise
    raise ValueError(f"{field}={name!r}: no module {full}") from None
  if not hasattr(module, attr):
    raise ValueError(f"{field}={name!r}: {full} defines no {attr}")
  return module


def total_steps(config, steps_per_epoch: int) -> int:
  """The run's length: config.num_steps if > 0, else num_epochs epochs."""
  if config.num_steps > 0:
    return int(config.num_steps)
  if config.num_epochs > 0:
    return max(1, int(round(config.num_epochs * steps_per_epoch)))
  raise ValueError("set config.num_steps or config.num_epochs (> 0)")


def to_steps(epochs: float, steps_per_epoch: int) -> int:
  return int(round(epochs * steps_per_epoch))


def check_config(config) -> None:
  """Cross-field checks with messages that name the fields."""
  inp = config.input
  if inp.num_ids_per_batch < 2:
    raise ValueError("config.input.num_ids_per_batch must be >= 2 (the "
                     "triplet loss needs negatives)")
  if inp.num_per_id < 1:
    raise ValueError("config.input.num_per_id must be >= 1")
  if inp.clip_len < 1:
    raise ValueError("config.input.clip_len must be >= 1")
  if len(inp.mean) != 3 or len(inp.std) != 3:
    raise ValueError("config.input.mean and config.input.std need 3 values")
  from vreid_jax.input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  pipeline.check_on_bad_frame(inp.get("on_bad_frame", "error"))
  if not config.losses:
    raise ValueError("config.losses names no loss")
  if not config.get("evals"):
    raise ValueError("config.evals names no evaluator")


def load_config(path: str) -> ml_collections.ConfigDict:
  """Loads `configs/x.py[:arg]` like --config does (for notebooks, tests)."""
  path, _, arg = path.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no config file {path}")
  module = load_config_module(path)
  config = module.get_config(arg) if arg else module.get_config()
  config.lock()
  return config


def load_config_module(path: str):
  """Imports a config file as a module (its `configs` package importable)."""
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:
    sys.path.insert(0, root)
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"_vreid_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
