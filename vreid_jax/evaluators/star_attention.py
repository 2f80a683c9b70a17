"""Where does STAR look, and which frames does it weight? Its attention, drawn.

  config.evals.star_attention = dict(type="star_attention", source="reid",
                                     every_steps=0, num_tracklets=4,
                                     max_frames=8)

STAR (`vreid_jax/models/star.py`) reports, per frame, the spatial weights of
its last attention gate (`aux["spatial_attention"]`, (h, w) in (0, 1): the
LSTA block after layer4, or CBAM's in the last bottleneck) and, with GSTA,
the temporal weights K of eq. 7 (`aux["frame_weights"]`, summing to 1 over
a clip's real frames). This evaluator reads them for the test clips that
the re-id evaluator `source` embeds (the same pass) and reports, over every
real test frame / clip:

  spatial_peak          mean over frames of max / mean of the spatial map
                        (1 = flat; larger = more focused)
  spatial_mean          mean spatial weight
  temporal_peak         mean over clips of max_t K_t x (real frames)
                        (1 = uniform)
  temporal_entropy      mean normalised entropy of K (1 = uniform)
  num_frames, num_clips

After the final evaluation, `<name>_<i>.png` (`star_attention_0.png`, ...)
in the workdir shows up to `max_frames` frames of the first clip of each of
the first `num_tracklets` query tracklets with the spatial map overlaid
(stretched over the frame) and, below, the K of every frame of that clip.
A model reporting neither is skipped; one reporting only one of them gets
the numbers and pictures of that one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from absl import logging
import jax
import numpy as np

from vreid_jax import evaluators as evaluators_lib
from vreid_jax.evaluators import embedder as embedder_lib
from vreid_jax.input_pipeline import augment

SPATIAL = "spatial_attention"
TEMPORAL = "frame_weights"


def attention_statistics(spatial: list[np.ndarray], temporal: list[np.ndarray]
                         ) -> dict[str, float]:
  """The numbers of the module docstring.

  Args:
    spatial: per clip, (n, h, w) spatial maps of its real frames.
    temporal: per clip, (n,) weights of its real frames.
  """
  out: dict[str, float] = {}
  if spatial:
    maps = np.concatenate([s.reshape(len(s), -1) for s in spatial])
    out["spatial_peak"] = float(np.mean(
        maps.max(axis=1) / np.maximum(maps.mean(axis=1), 1e-12)))
    out["spatial_mean"] = float(maps.mean())
    out["num_frames"] = int(len(maps))
  if temporal:
    peaks, entropies = [], []
    for k in temporal:
      n = len(k)
      peaks.append(float(k.max() * n))
      p = k[k > 0]
      entropies.append(float(-(p * np.log(p)).sum() / np.log(n))
                       if n > 1 else 1.0)
    out["temporal_peak"] = float(np.mean(peaks))
    out["temporal_entropy"] = float(np.mean(entropies))
    out["num_clips"] = int(len(temporal))
    out.setdefault("num_frames", int(sum(len(k) for k in temporal)))
  return out


class Evaluator(evaluators_lib.DerivedEvaluator):
  """Attention statistics and pictures (module docstring)."""

  title = "star attention"

  aux_keys = (SPATIAL, TEMPORAL)

  def __init__(self, name: str, cfg, *, context):
    super().__init__(name, cfg, context=context)
    self.spec = context.embedder.spec

  def run(self, round_: embedder_lib.EvalRound, *, final: bool = False,
          workdir: str | None = None) -> dict[str, Any]:
    src = self.source
    spatial, temporal, per_query = [], [], []
    for role in ("query", "gallery"):
      for tracklet, clip_list in enumerate(round_.clip_aux(src.data, role,
                                                           src.plan)):
        for index, (frames, aux) in enumerate(clip_list):
          if SPATIAL not in aux and TEMPORAL not in aux:
            return {"skipped": "the model reports no attention "
                               f"(aux['{SPATIAL}'] or aux['{TEMPORAL}'])"}
          s = aux.get(SPATIAL)
          k = aux.get(TEMPORAL)
          if s is not None:
            spatial.append(np.asarray(s, np.float64))
          if k is not None:
            temporal.append(np.asarray(k, np.float64).reshape(-1))
          if (role == "query" and index == 0
              and tracklet < int(self.cfg.num_tracklets)):
            per_query.append((tracklet, np.asarray(frames), s, k))
    if not spatial and not temporal:
      return {"skipped": "no test clip"}
    results = attention_statistics(spatial, temporal)
    if final and workdir and jax.process_index() == 0:
      self._pictures(per_query, workdir)
    return results

  def _pictures(self, per_query, workdir: str) -> None:
    data = self.source.data
    role = data.roles["query"]
    try:
      from vreid_jax.evaluation import plots  # pylint: disable=g-import-not-at-top
      for tracklet, frames, spatial, weights in per_query:
        n = min(len(frames), int(self.cfg.max_frames))
        pick = np.unique(np.linspace(0, len(frames) - 1, n).astype(int))
        record = data.source(role.split)[int(role.records[tracklet])]
        images = augment.decode_clip(record["frames"], frames[pick],
                                     self.spec.height, self.spec.width)
        plots.plot_attention(
            images, None if spatial is None else np.asarray(spatial)[pick],
            weights, os.path.join(workdir, f"{self.name}_{tracklet}.png"),
            frame_ids=pick,
            title=(f"query {tracklet} (pid {role.index['pid'][tracklet]}): "
                   "spatial attention of the last gate (colour 0 to 1); "
                   "temporal weights K (eq. 7) of the clip's frames, dashed "
                   "= uniform"))
    except Exception as e:  # pylint: disable=broad-except
      # Pictures must never lose a finished run's metrics.
      logging.warning("could not write the %s pictures: %s", self.name, e)

  def _format(self, results: Mapping[str, Any]) -> str:
    parts = []
    if "spatial_peak" in results:
      parts.append(f"spatial peak/mean {results['spatial_peak']:.3f}")
    if "temporal_peak" in results:
      parts.append(f"temporal peak x n {results['temporal_peak']:.3f}, "
                   f"entropy {results['temporal_entropy']:.3f}")
    return "star attention: " + ", ".join(parts)

  def _scalars(self, results: Mapping[str, Any]) -> dict[str, float]:
    return {k: results[k] for k in ("spatial_peak", "spatial_mean",
                                    "temporal_peak", "temporal_entropy")
            if k in results}
