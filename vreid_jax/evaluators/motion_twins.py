"""The motion-twin evaluator of the synthetic benchmark.

  config.evals.motion_twins = dict(type="motion_twins", source="reid",
                                   every_steps=0)

`synthetic_video_reid` has pairs of identities with identical appearance
that differ only in how they move (`motion_twin` in its index). This
evaluator reads the dataset, protocol and embeddings of the re-id evaluator
named by `source` (one embedding pass serves both) and reports, over the
queries whose identity has a twin:

* mAP and CMC against the whole gallery;
* pair_mAP: each twin query ranked against only its own and its twin's
  gallery tracklets. A model that ignores motion ranks them at chance (AP
  around 0.5); one that reads the gait gets close to 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from absl import logging
import numpy as np

from vreid_jax import evaluation
from vreid_jax import evaluators as evaluators_lib
from vreid_jax.evaluators import embedder as embedder_lib


def twin_pair_map(features, test, split, kwargs) -> float:
  """Mean AP of twin queries against their own and their twin's tracklets.

  Queries without a cross-camera positive among the pair are excluded.
  """
  aps = []
  for row in split.query[test["motion_twin"][split.query] >= 0]:
    pair = (test["pid"][row], test["motion_twin"][row])
    gallery = split.gallery[np.isin(test["pid"][split.gallery], pair)]
    sub = evaluation.Split(name="twin_pair", query=np.array([row]),
                           gallery=gallery,
                           gallery_junk=np.zeros(len(gallery), bool))
    try:
      aps.append(evaluation.evaluate_split(
          features, test["pid"], test["camid"], sub, **kwargs)["mAP"])
    except ValueError:  # No cross-camera positive: excluded.
      continue
  return float(np.mean(aps)) if aps else float("nan")


class Evaluator(evaluators_lib.DerivedEvaluator):
  """Motion-twin metrics over the test set of a re-id evaluator."""

  title = "motion twins"

  def __init__(self, name: str, cfg, *, context):
    super().__init__(name, cfg, context=context)
    source = self.source
    # Nothing to measure (e.g. a cross-dataset run on MARS): said in the
    # log and in the results, never silently dropped.
    self.skipped = None
    if "motion_twin" not in source.test:
      self.skipped = (f"{source.data.name} has no motion-twin annotations "
                      "(only synthetic_video_reid has them)")
    elif not (source.test["motion_twin"][source.split.query] >= 0).any():
      self.skipped = f"{source.data.name} has no query with a motion twin"
    if self.skipped:
      logging.warning("config.evals.%s: skipped: %s", name, self.skipped)

  def run(self, round_: embedder_lib.EvalRound, *, final: bool = False,
          workdir: str | None = None) -> dict[str, Any]:
    del final, workdir
    if self.skipped:
      return {"skipped": self.skipped}
    src = self.source
    features = src.features(round_)
    test, split, kwargs = src.test, src.split, src.metric_kwargs()
    twins = test["motion_twin"][split.query] >= 0
    sub = evaluation.evaluate_split(
        features, test["pid"], test["camid"],
        split._replace(query=split.query[twins]), **kwargs)
    results = {k: sub[k] for k in ("mAP", "cmc", "num_queries",
                                   "num_valid_queries")}
    results["pair_mAP"] = twin_pair_map(features, test, split, kwargs)
    return results

  def _format(self, results: Mapping[str, Any]) -> str:
    return (f"motion twins: mAP={100 * results['mAP']:.2f}% "
            f"R1={100 * results['cmc']['1']:.2f}% "
            f"pair mAP={100 * results['pair_mAP']:.2f}%")

  def _scalars(self, results: Mapping[str, Any]) -> dict[str, float]:
    return {"mAP": results["mAP"], "R1": results["cmc"]["1"],
            "pair_mAP": results["pair_mAP"]}
