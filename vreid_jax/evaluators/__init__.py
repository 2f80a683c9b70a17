"""Evaluators, configured as named instances under `config.evals`.

  config.evals = {
      "reid": {"type": "reid", "every_steps": 0, "protocol": "given", ...},
      "motion_twins": {"type": "motion_twins", "source": "reid"},
  }

An instance's `type` names the module `vreid_jax.evaluators.<type>` (no
registry: a new evaluator is a new module with an `Evaluator` class) and
defaults to the instance name. Each evaluator receives its own config block
and a context holding the shared `Embedder` (the one jitted embedding
function of the model, `vreid_jax.models.embed_fn`), the datasets and the
evaluators built before it: never the model and never the whole config.

An evaluator has `every_steps` (0: only at the end of training), `run(round,
*, final, workdir) -> results`, `format(results) -> str` and
`scalars(results) -> {name: float}`, and may list model aux outputs it
reads per clip in `aux_keys` (the round then keeps them from its one
embedding pass). An evaluator that builds on another
names it in its `source` field and is built after it. The results of the
main evaluator (`config.main_eval`) are the run's headline metrics (the top
level of metrics.json, `eval/...` in TensorBoard, first in the printed
line); the others go under their names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from vreid_jax import config_utils
from vreid_jax.evaluators import embedder as embedder_lib
from vreid_jax.input_pipeline import pipeline


@dataclasses.dataclass
class Context:
  """What an evaluator may use besides its own config block."""
  embedder: embedder_lib.Embedder
  train_data: pipeline.ReidData
  data_dir: str | None
  evaluators: dict[str, Any] = dataclasses.field(default_factory=dict)
  _datasets: dict[tuple, pipeline.ReidData] = dataclasses.field(
      default_factory=dict)

  def dataset(self, cfg) -> pipeline.ReidData:
    """The dataset an evaluator's `dataset` block names ('' = train's)."""
    if cfg is None or not cfg.get("name"):
      return self.train_data
    key = (cfg["name"], cfg.get("config", ""), cfg.get("trial", -1))
    if key not in self._datasets:
      self._datasets[key] = pipeline.open_dataset(cfg, self.data_dir)
    return self._datasets[key]


class DerivedEvaluator:
  """Base of the evaluators that build on a re-id evaluator's test set and
  embedding round, named in their `source` field (motion_twins,
  attention_occlusion, stn_boxes, star_attention).

  A subclass sets `title` (the name in the printed line) and implements
  `run`, `_format(results)` and `_scalars(results)`; results with a
  "skipped" reason (nothing to measure: said, never dropped) print as such
  and write no scalars.
  """

  title = ""
  aux_keys: tuple[str, ...] = ()

  def __init__(self, name: str, cfg, *, context: Context):
    self.name = name
    self.cfg = cfg
    self.every_steps = int(cfg.every_steps)
    source = context.evaluators.get(cfg.source)
    if source is None:
      raise ValueError(
          f"config.evals.{name}.source={cfg.source!r}: no re-id evaluator of "
          f"that name is configured before it ({sorted(context.evaluators)})")
    self.source = source

  def format(self, results: Mapping[str, Any]) -> str:
    if "skipped" in results:
      return f"{self.title}: skipped ({results['skipped']})"
    return self._format(results)

  def scalars(self, results: Mapping[str, Any]) -> dict[str, float]:
    if "skipped" in results:
      return {}
    return self._scalars(results)

  def _format(self, results: Mapping[str, Any]) -> str:
    raise NotImplementedError

  def _scalars(self, results: Mapping[str, Any]) -> dict[str, float]:
    raise NotImplementedError


def get_class(name: str, cfg) -> type:
  """`vreid_jax.evaluators.<type>.Evaluator` of an instance."""
  return config_utils.import_named("vreid_jax.evaluators",
                                   cfg.get("type") or name,
                                   f"config.evals.{name}.type",
                                   "Evaluator").Evaluator


def build_order(evals_cfg: Mapping[str, Any], main: str) -> list[str]:
  """Evaluator names, the main one first, each after its `source`."""
  names = sorted(evals_cfg)
  if main not in evals_cfg:
    raise ValueError(f"config.main_eval={main!r} is not an evaluator of "
                     f"config.evals ({names})")
  order: list[str] = []
  pending = [main] + [n for n in names if n != main]
  while pending:
    ready = [n for n in pending
             if evals_cfg[n].get("source") in (None, "", *order)]
    if not ready:
      raise ValueError(
          "config.evals: these evaluators name a source that is not "
          "configured (or each other): " + ", ".join(
              f"{n}.source={evals_cfg[n].get('source')!r}" for n in pending))
    order.append(ready[0])
    pending.remove(ready[0])
  return order


class Evaluations:
  """The configured evaluators, run together on one set of variables."""

  def __init__(self, evals_cfg: Mapping[str, Any], context: Context, *,
               main: str = "reid"):
    if not evals_cfg:
      raise ValueError("config.evals names no evaluator")
    self.context = context
    self.evaluators: dict[str, Any] = {}
    for name in build_order(evals_cfg, main):
      cfg = evals_cfg[name]
      evaluator = get_class(name, cfg)(name, cfg, context=context)
      self.evaluators[name] = evaluator
      context.evaluators[name] = evaluator
    self.first = main

  def due(self, step: int) -> list[str]:
    """Evaluators whose period divides `step`."""
    return [n for n, e in self.evaluators.items()
            if e.every_steps and step % e.every_steps == 0]

  def run(self, variables, names=None, *, final: bool = False,
          workdir: str | None = None) -> dict[str, Any]:
    """Runs the named evaluators (default all), in build order."""
    names = [n for n in self.evaluators if names is None or n in names]
    aux_keys = tuple(k for n in names
                     for k in getattr(self.evaluators[n], "aux_keys", ()))
    round_ = embedder_lib.EvalRound(self.context.embedder, variables,
                                    aux_keys)
    results = {}
    for name in names:
      results[name] = self.evaluators[name].run(round_, final=final,
                                                 workdir=workdir)
    return results

  def merged(self, results: Mapping[str, Any]) -> dict[str, Any]:
    """metrics.json layout: the first evaluator's results at the top level,
    the others under their names."""
    out = dict(results.get(self.first, {}))
    out.update({n: r for n, r in results.items() if n != self.first})
    return out

  def format(self, results: Mapping[str, Any]) -> str:
    return " | ".join(self.evaluators[n].format(r)
                      for n, r in results.items())

  def scalars(self, results: Mapping[str, Any], prefix: str = "eval/"
              ) -> dict[str, float]:
    out = {}
    for name, r in results.items():
      sub = prefix if name == self.first else f"{prefix}{name}/"
      out.update({sub + k: v
                  for k, v in self.evaluators[name].scalars(r).items()})
    return out
