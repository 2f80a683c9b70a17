"""Where does a spatial transformer look? Its per-frame boxes, drawn.

  config.evals.stn_boxes = dict(type="stn_boxes", source="reid",
                                every_steps=0, num_tracklets=4,
                                max_frames=8)

TRL's ST²N (and its per-frame STN ablation) predicts, for every frame, a
scale-and-translation warp θ_t = (sˣ, sʸ, τˣ, τʸ) (`aux["stn_theta"]`, eq.
5): the aligned map samples the box x ∈ [τˣ - sˣ, τˣ + sˣ], y ∈ [τʸ - sʸ,
τʸ + sʸ] of the frame in normalised coordinates ([-1, 1] across the map).
This evaluator reads θ for the test clips that the re-id evaluator
`source` embeds (the same pass) and reports, over every real test frame:

  scale_x, scale_y      mean sˣ, sʸ (1 = the whole frame; < 1 zooms in)
  shift_x, shift_y      mean τˣ, τʸ
  temporal_change       mean |θ_t - θ_{t-1}| over consecutive frames of a
                        clip (ST²N's BiLSTM is meant to keep it small)
  num_frames

After the final evaluation, `<name>_<i>.png` (`stn_boxes_0.png`, ...) in the
workdir shows up to
`max_frames` frames of the first `num_tracklets` query tracklets, each with
its box (the feature map spans the frame, so the box is drawn at the same
normalised place on the frame). A model without `stn_theta` is reported as
skipped.
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

KEY = "stn_theta"


def box_corners(theta: np.ndarray, height: int, width: int) -> np.ndarray:
  """θ (..., 4) -> boxes (..., 4) = (x0, y0, x1, y1) in image pixels.

  Normalised x ∈ [-1, 1] spans the image width: pixel = (x + 1) W / 2.
  """
  theta = np.asarray(theta, np.float64)
  sx, sy, tx, ty = np.moveaxis(theta, -1, 0)
  x0, x1 = (tx - sx + 1) * width / 2, (tx + sx + 1) * width / 2
  y0, y1 = (ty - sy + 1) * height / 2, (ty + sy + 1) * height / 2
  return np.stack([np.minimum(x0, x1), np.minimum(y0, y1),
                   np.maximum(x0, x1), np.maximum(y0, y1)], axis=-1)


def theta_statistics(clips: list[np.ndarray]) -> dict[str, float]:
  """The summary numbers of the module docstring over clips of θ (n, 4)."""
  frames = np.concatenate(clips)
  steps = [np.abs(np.diff(c, axis=0)).mean() for c in clips if len(c) > 1]
  return {"scale_x": float(frames[:, 0].mean()),
          "scale_y": float(frames[:, 1].mean()),
          "shift_x": float(frames[:, 2].mean()),
          "shift_y": float(frames[:, 3].mean()),
          "temporal_change": float(np.mean(steps)) if steps else 0.0,
          "num_frames": int(len(frames))}


class Evaluator(evaluators_lib.DerivedEvaluator):
  """θ statistics and box pictures (module docstring)."""

  title = "stn boxes"

  aux_keys = (KEY,)

  def __init__(self, name: str, cfg, *, context):
    super().__init__(name, cfg, context=context)
    self.spec = context.embedder.spec

  def run(self, round_: embedder_lib.EvalRound, *, final: bool = False,
          workdir: str | None = None) -> dict[str, Any]:
    src = self.source
    thetas: list[np.ndarray] = []
    per_query = []
    for role in ("query", "gallery"):
      for tracklet, clip_list in enumerate(round_.clip_aux(src.data, role,
                                                           src.plan)):
        for frames, aux in clip_list:
          if KEY not in aux:
            return {"skipped": "the model reports no spatial transformer "
                               f"parameters (aux['{KEY}'])"}
          thetas.append(np.asarray(aux[KEY], np.float64).reshape(-1, 4))
          if role == "query" and tracklet < self.cfg.num_tracklets:
            per_query.append((tracklet, np.asarray(frames), thetas[-1]))
    if not thetas:
      return {"skipped": "no test clip"}
    results = theta_statistics(thetas)
    if final and workdir and jax.process_index() == 0:
      self._pictures(per_query, workdir)
    return results

  def _pictures(self, per_query, workdir: str) -> None:
    data = self.source.data
    role = data.roles["query"]
    drawn = set()
    try:
      from vreid_jax.evaluation import plots  # pylint: disable=g-import-not-at-top
      for tracklet, frames, theta in per_query:
        if tracklet in drawn:       # The first clip of a tracklet is drawn.
          continue
        drawn.add(tracklet)
        k = min(len(frames), int(self.cfg.max_frames))
        pick = np.unique(np.linspace(0, len(frames) - 1, k).astype(int))
        record = data.source(role.split)[int(role.records[tracklet])]
        images = augment.decode_clip(record["frames"], frames[pick],
                                     self.spec.height, self.spec.width)
        boxes = box_corners(theta[pick], self.spec.height, self.spec.width)
        plots.plot_boxes(
            images, boxes,
            os.path.join(workdir, f"{self.name}_{tracklet}.png"),
            title=(f"query {tracklet} (pid {role.index['pid'][tracklet]}): "
                   "the sampled box of each frame, frames "
                   + ", ".join(map(str, frames[pick]))))
    except Exception as e:  # pylint: disable=broad-except
      # Pictures must never lose a finished run's metrics.
      logging.warning("could not write the %s pictures: %s", self.name, e)

  def _format(self, results: Mapping[str, Any]) -> str:
    return (f"stn boxes: scale {results['scale_x']:.3f} x "
            f"{results['scale_y']:.3f}, shift ({results['shift_x']:+.3f}, "
            f"{results['shift_y']:+.3f}), change/frame "
            f"{results['temporal_change']:.4f}")

  def _scalars(self, results: Mapping[str, Any]) -> dict[str, float]:
    return {k: results[k] for k in ("scale_x", "scale_y", "shift_x",
                                    "shift_y", "temporal_change")}
