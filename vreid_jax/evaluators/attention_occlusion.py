"""Does attention read occlusion? Weights of occluded against clean frames.

  config.evals.attention = dict(type="attention_occlusion", source="reid",
                                every_steps=0)

GLTR claims (Sec. 3.3, Fig. 3) that temporal self-attention gives occluded
frames less weight; temporal attention in general (Gao & Nevatia, STAR) is
meant to. `synthetic_video_reid` (version >= 1.1) marks, for every frame,
whether an occluder covers the figure (`occluded`). This evaluator reads the
per-frame attention weights a model reports (`aux["frame_weights"]`,
summing to 1 over a clip's real frames) for the test clips that the re-id
evaluator `source` embeds (the same pass), and reports, over the clips that
have both occluded and clean frames, the mean weight of an occluded frame
and of a clean frame, each relative to uniform (weight x the clip's real
frames: 1 = uniform, < 1 = down-weighted):

  occluded_weight, clean_weight, ratio = occluded / clean, num_clips,
  num_occluded_frames.

A model without frame weights, or a dataset without occlusion flags, is
reported as skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from absl import logging
import numpy as np

from vreid_jax import evaluators as evaluators_lib
from vreid_jax.evaluators import embedder as embedder_lib

KEY = "frame_weights"


class Evaluator(evaluators_lib.DerivedEvaluator):
  """Mean attention weight of occluded vs clean frames (module docstring)."""

  title = "attention vs occlusion"

  aux_keys = (KEY,)

  def __init__(self, name: str, cfg, *, context):
    super().__init__(name, cfg, context=context)
    source = self.source
    self.skipped = None
    features = source.data.source(source.data.roles["query"].split)
    try:
      has_flags = "occluded" in features[0]
    except (IndexError, KeyError):
      has_flags = False
    if not has_flags:
      self.skipped = (f"{source.data.name} has no per-frame occlusion flags "
                      "(synthetic_video_reid >= 1.1 has them)")
      logging.warning("config.evals.%s: skipped: %s", name, self.skipped)

  def _flags(self, role: str) -> list[np.ndarray]:
    data = self.source.data
    tracklets = data.roles[role]
    source = data.source(tracklets.split)
    return [np.asarray(source[int(r)]["occluded"], bool)
            for r in tracklets.records]

  def run(self, round_: embedder_lib.EvalRound, *, final: bool = False,
          workdir: str | None = None) -> dict[str, Any]:
    del final, workdir
    if self.skipped:
      return {"skipped": self.skipped}
    src = self.source
    occluded_w, clean_w, clips = [], [], 0
    for role in ("query", "gallery"):
      flags = self._flags(role)
      for tracklet, clip_list in enumerate(round_.clip_aux(src.data, role,
                                                           src.plan)):
        for frames, aux in clip_list:
          if KEY not in aux:
            return {"skipped": "the model reports no per-frame attention "
                               f"weights (aux['{KEY}'])"}
          occ = flags[tracklet][frames]
          if occ.all() or not occ.any():
            continue
          relative = aux[KEY] * len(frames)
          occluded_w.append(relative[occ])
          clean_w.append(relative[~occ])
          clips += 1
    if not clips:
      return {"skipped": "no test clip has both occluded and clean frames"}
    occ = float(np.concatenate(occluded_w).mean())
    clean = float(np.concatenate(clean_w).mean())
    return {"occluded_weight": occ, "clean_weight": clean,
            "ratio": occ / clean, "num_clips": clips,
            "num_occluded_frames": int(sum(len(w) for w in occluded_w))}

  def _format(self, results: Mapping[str, Any]) -> str:
    return (f"attention vs occlusion: occluded frames "
            f"x{results['occluded_weight']:.3f}, clean "
            f"x{results['clean_weight']:.3f} of uniform "
            f"({results['num_clips']} clips)")

  def _scalars(self, results: Mapping[str, Any]) -> dict[str, float]:
    return {"occluded_weight": results["occluded_weight"],
            "clean_weight": results["clean_weight"]}
