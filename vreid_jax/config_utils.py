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
import functools
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


class ConfigError(ValueError):
  """A config field holds a value its consumer cannot use (one line, naming
  the field and what it accepts)."""


def check_one_of(field: str, value: Any, allowed: Sequence[str],
                 note: str = "") -> None:
  """Raises ConfigError unless `value` is one of `allowed`.

  The message names the field, the value and every allowed value, e.g.
  `config.evals.reid.mode='every' is not one of all|dense|every_frame|evenly
  (did you mean 'every_frame'?)`; `note` is appended in parentheses.
  """
  if value in allowed:
    return
  import difflib  # pylint: disable=g-import-not-at-top
  hints = []
  names = [str(a) for a in allowed]
  close = [a for a in names if str(value) and a.startswith(str(value))][:1]
  close = close or difflib.get_close_matches(str(value), names, n=3,
                                             cutoff=0.6)
  if close:
    hints.append(f"did you mean {' or '.join(repr(c) for c in close)}?")
  if note:
    hints.append(note)
  raise ConfigError(f"config.{field}={value!r} is not one of "
                    f"{'|'.join(str(a) for a in allowed)}"
                    + (f" ({'; '.join(hints)})" if hints else ""))


def eval_protocols(dataset_name: str) -> tuple[str, ...]:
  """The `evals.<name>.protocol` values a dataset supports
  (`reid.dataset_protocols`, the rule `reid.protocol_split` applies)."""
  from vreid_jax.evaluators import reid  # pylint: disable=g-import-not-at-top
  return reid.dataset_protocols(dataset_name)


@functools.lru_cache(maxsize=None)
def optimizer_names() -> tuple[str, ...]:
  """The values `config.optimizer.name` may take: the optax functions that
  `optim.make_optimizer` can call with a `learning_rate` (sgd, adam, ...)."""
  import inspect  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  out = []
  for name in dir(optax):
    fn = getattr(optax, name)
    if name.startswith("_") or inspect.isclass(fn) or not callable(fn):
      continue
    try:
      params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
      continue
    if "learning_rate" in params:
      out.append(name)
  return tuple(out)


def schedule_names() -> tuple[str, ...]:
  """The values `config.schedule.name` may take: the `<name>_schedule`
  functions of `vreid_jax.optim` (what `optim.make_schedule` looks up)."""
  import inspect  # pylint: disable=g-import-not-at-top
  from vreid_jax import optim  # pylint: disable=g-import-not-at-top

  def keyword_only(fn) -> bool:  # Not make_schedule(cfg, ...) itself.
    return all(p.kind == p.KEYWORD_ONLY
               for p in inspect.signature(fn).parameters.values())

  return tuple(name[:-len("_schedule")] for name, fn in
               inspect.getmembers(optim, inspect.isfunction)
               if name.endswith("_schedule")
               and fn.__module__ == optim.__name__ and keyword_only(fn))


def _options(fn, skip: Sequence[str] = ()) -> str:
  import inspect  # pylint: disable=g-import-not-at-top
  return ", ".join(n for n in inspect.signature(fn).parameters
                   if n not in skip)


def _check_dataset(field: str, cfg) -> None:
  """`config.<field>` names a vreid_jax dataset, with a trial iff the
  dataset is evaluated over trials."""
  import vreid_jax.datasets  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import splits  # pylint: disable=g-import-not-at-top
  check_one_of(f"{field}.name", cfg.name, vreid_jax.datasets.NAMES)
  trial = cfg.get("trial", -1)
  if cfg.name in splits.TRIAL_DATASETS and (trial is None or trial < 0):
    raise ConfigError(f"config.{field}.trial={trial!r}: {cfg.name} is "
                      "evaluated over trials: choose one with "
                      f"--config.{field}.trial=0, 1, ...")
  if cfg.name not in splits.TRIAL_DATASETS and trial is not None and (
      trial >= 0):
    raise ConfigError(f"config.{field}.trial={trial!r}: {cfg.name} has fixed "
                      "train/query/gallery splits and no trials: leave it -1")


def _check_evals(config) -> None:
  """Every evaluator: its type, source, and the enum-like fields of a
  re-id evaluation (mode, protocol for its dataset, metric, AP)."""
  from vreid_jax import evaluation  # pylint: disable=g-import-not-at-top
  from vreid_jax import evaluators  # pylint: disable=g-import-not-at-top
  from vreid_jax.evaluation import distances  # pylint: disable=g-import-not-at-top
  from vreid_jax.evaluators import embedder  # pylint: disable=g-import-not-at-top
  evals = config.get("evals")
  if not evals:
    raise ConfigError("config.evals names no evaluator")
  try:
    evaluators.build_order(evals, config.get("main_eval", "reid"))
    for name in evals:
      evaluators.get_class(name, evals[name])
  except ValueError as e:
    raise ConfigError(str(e)) from None
  for name, cfg in evals.items():
    where = f"evals.{name}"
    if "mode" in cfg:
      check_one_of(f"{where}.mode", cfg.mode, embedder.MODES)
    if "metric" in cfg:
      check_one_of(f"{where}.metric", cfg.metric, distances.METRICS)
    if "ap" in cfg:
      check_one_of(f"{where}.ap", cfg.ap, evaluation.AP_DEFINITIONS)
    dataset = config.dataset.name
    if cfg.get("dataset") is not None and cfg.dataset.get("name"):
      _check_dataset(f"{where}.dataset", cfg.dataset)
      dataset = cfg.dataset.name
    if "protocol" in cfg:
      allowed = eval_protocols(dataset)
      if cfg.protocol not in allowed:
        check_one_of(f"{where}.protocol", cfg.protocol, allowed,
                     note=f"the protocols of dataset {dataset}")


def _check_optimizer(config) -> None:
  """The optimizer and schedule by name, then their options, by building
  the optimizer (no parameters needed) and binding the schedule's
  arguments (its steps are only known once the dataset is open)."""
  import inspect  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from vreid_jax import optim  # pylint: disable=g-import-not-at-top
  name = config.optimizer.name
  check_one_of("optimizer.name", name, optimizer_names(),
               note="the optax optimizers that take a learning_rate")
  try:
    optim.make_optimizer(config.optimizer, optax.constant_schedule(0.0))
  except TypeError as e:
    raise ConfigError(
        f"config.optimizer (optax.{name}): {e}; its options: "
        f"{_options(getattr(optax, name), ('learning_rate',))}") from None
  except ValueError as e:
    raise ConfigError(str(e)) from None
  kwargs = dict(config.schedule)
  name = kwargs.pop("name", None)
  check_one_of("schedule.name", name, schedule_names())
  fn = getattr(optim, f"{name}_schedule")
  try:
    inspect.signature(fn).bind(total_steps=1, steps_per_epoch=1, **kwargs)
  except TypeError as e:
    raise ConfigError(
        f"config.schedule (name={name!r}): {e}; its options: "
        f"{_options(fn, ('total_steps', 'steps_per_epoch'))}") from None


def check_config(config) -> None:
  """Checks the whole config before any work; messages name the fields.

  Cross-field rules, and every enum-like field against the values the code
  that consumes it accepts (that code's own list: eval modes, protocols of
  the evaluated dataset, metrics, AP definitions, clip sampling, PK epochs,
  on_bad_frame, model.norm_impl, loss types and options, optimizer and schedule names and
  options, evaluator types and sources, the model and dataset names).

  Raises:
    ConfigError (a ValueError): one line naming the field, its value and
      what it accepts.
  """
  inp = config.input
  if inp.num_ids_per_batch < 2:
    raise ConfigError("config.input.num_ids_per_batch must be >= 2 (the "
                      "triplet loss needs negatives)")
  if inp.num_per_id < 1:
    raise ConfigError("config.input.num_per_id must be >= 1")
  if inp.clip_len < 1:
    raise ConfigError("config.input.clip_len must be >= 1")
  if len(inp.mean) != 3 or len(inp.std) != 3:
    raise ConfigError("config.input.mean and config.input.std need 3 values")
  from vreid_jax import losses as losses_lib  # pylint: disable=g-import-not-at-top
  from vreid_jax import models  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import sampling  # pylint: disable=g-import-not-at-top
  check_one_of("input.clip_sampling", inp.clip_sampling, sampling.CLIP_MODES)
  check_one_of("input.pk_epoch", inp.get("pk_epoch", "tracklets"),
               sampling.PK_EPOCHS)
  check_one_of("input.on_bad_frame", inp.get("on_bad_frame", "error"),
               pipeline.ON_BAD_FRAME,
               note="error stops at a frame that fails to decode, skip "
               "replaces it by the nearest readable frame and counts it")
  if not config.losses:
    raise ConfigError("config.losses names no loss")
  try:
    losses_lib.resolve(config.losses.to_dict())
    models.build_model(config.model_name, 2, config.model)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if "norm_impl" in config.model:
    from vreid_jax.models import common  # pylint: disable=g-import-not-at-top
    check_one_of("model.norm_impl", config.model.norm_impl, common.NORM_IMPLS,
                 note="the same model either way; fused trains faster")
  _check_optimizer(config)
  _check_dataset("dataset", config.dataset)
  _check_evals(config)


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
