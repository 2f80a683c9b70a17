"""Tracklet embeddings with the shared `embed_fn`, over the device mesh.

`Embedder` owns the one jitted function every evaluator uses:

    batch (uint8 clips, mask[, flow]) -> preprocess -> embed_fn -> (B, D)

Test-time clips come from `pipeline.eval_batches_plan` (`EmbedPlan.mode`:
the whole tracklet, dense clips, a clip at every frame or evenly sampled
frames); the embeddings of a tracklet's clips are averaged.

`EvalRound` embeds lazily and remembers, for one set of variables, what it
embedded: evaluators that need the same tracklets with the same plan (e.g.
the re-id metrics and the motion-twin metrics of one test set) share one
embedding pass. When an evaluator of the round asks for aux outputs (e.g.
the per-frame attention weights, `aux_keys`), that same pass runs the
model's `predict_fn` instead and also keeps, for every clip, its frame
indices and those aux values at its real frames.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging
import jax
import numpy as np

from vreid_jax import parallel
from vreid_jax.input_pipeline import pipeline
from vreid_jax.input_pipeline import preprocess as preprocess_lib

MODES = ("all", "dense", "every_frame", "evenly")


@dataclasses.dataclass(frozen=True)
class EmbedPlan:
  """How test-time clips are cut and batched.

  Attributes:
    mode: "all", "dense", "every_frame" or "evenly"
      (`pipeline.clip_plan`).
    clip_len: T of the test clips (the minimum length bucket in "all").
    batch_size: clips per global batch.
    max_frames_per_device: frames one device embeds in one call (0 = no
      cap). A whole tracklet ("all") longer than the cap is still one item:
      the model needs it in one pass; such tracklets are counted in the log.
  """
  mode: str
  clip_len: int
  batch_size: int
  max_frames_per_device: int = 0

  @classmethod
  def from_config(cls, cfg) -> EmbedPlan:
    if cfg["mode"] not in MODES:
      raise ValueError(f"eval mode must be one of {MODES}, got "
                       f"{cfg['mode']!r}")
    return cls(mode=cfg["mode"], clip_len=int(cfg["clip_len"]),
               batch_size=int(cfg["batch_size"]),
               max_frames_per_device=int(cfg.get("max_frames_per_device", 0)))


def _embed_batch(variables, batch, *, embed_fn, spec):
  return embed_fn(variables, preprocess_lib.preprocess(batch, spec))


# Per tracklet, its clips: (frame indices, {aux key: values at those frames}).
ClipAux = list[list[tuple[np.ndarray, dict[str, np.ndarray]]]]


class Embedder:
  """Embeds the tracklets of a dataset role with `embed_fn` (jitted once).

  Attributes:
    spec: the InputSpec (frame size, normalisation, flow).
    mesh: the device mesh (batches sharded on "data").
    on_bad_frame: "error" or "skip" (`pipeline.decode_frames`).
    last_bad_frames: the frames the last `embed` call replaced
      (`dataset/split/record:frame`, once per clip that used one, this
      process's batches only); `bad_frames`: those of every call.
  """

  def __init__(self, embed_fn: Callable[[Any, Mapping[str, Any]], Any],
               spec: preprocess_lib.InputSpec, mesh, *, num_workers: int = 0,
               num_threads: int = 2,
               predict_fn: Callable[[tuple[str, ...]], Callable[..., Any]]
               | None = None, on_bad_frame: str = "error"):
    """Args: the embedding function; the InputSpec; the mesh; the input
    workers; `predict_fn(aux_keys)` giving `(variables, inputs) ->
    (embedding, {key: aux})` for evaluators that read aux outputs."""
    self.spec = spec
    self.mesh = mesh
    self.num_workers = num_workers
    self.num_threads = num_threads
    self.on_bad_frame = pipeline.check_on_bad_frame(on_bad_frame)
    self.last_bad_frames: list[str] = []
    self.bad_frames: list[str] = []
    self._predict_fn = predict_fn
    self._predict: dict[tuple[str, ...], Any] = {}
    self._fn = self._jit(functools.partial(_embed_batch, embed_fn=embed_fn,
                                           spec=spec))

  def _jit(self, fn):
    return jax.jit(
        fn, in_shardings=(parallel.replicated(self.mesh),
                          parallel.data_sharded(self.mesh)),
        out_shardings=parallel.data_sharded(self.mesh))

  def _predict_batch(self, aux_keys: tuple[str, ...]):
    if aux_keys not in self._predict:
      if self._predict_fn is None:
        raise ValueError("this Embedder has no predict_fn for aux outputs")
      self._predict[aux_keys] = self._jit(functools.partial(
          _embed_batch, embed_fn=self._predict_fn(aux_keys), spec=self.spec))
    return self._predict[aux_keys]

  def batches(self, data: pipeline.ReidData, role: str,
              plan: EmbedPlan) -> pipeline.EvalBatches:
    """The eval batches of a role under `plan` (for this process)."""
    tracklets = data.roles[role]
    num_devices = self.mesh.devices.size
    num_frames = tracklets.index["num_frames"]
    batch_plan = pipeline.eval_batches_plan(
        num_frames, plan.mode, plan.clip_len, plan.batch_size,
        max_frames_per_device=plan.max_frames_per_device,
        num_devices=num_devices)
    if plan.max_frames_per_device and plan.mode == "all":
      longest = max((b.clip_len for b in batch_plan), default=0)
      over = int(np.sum(np.asarray(num_frames) > plan.max_frames_per_device))
      if over:
        logging.warning(
            "%s/%s: %d tracklets are longer than max_frames_per_device=%d "
            "and are embedded whole (up to %d frames per device)", data.name,
            role, over, plan.max_frames_per_device, longest)
    return pipeline.EvalBatches(
        data.name, data.data_dir, tracklets.split, tracklets.records,
        batch_plan, self.spec.height, self.spec.width,
        process_index=jax.process_index(),
        process_count=jax.process_count(), with_flow=self.spec.with_flow,
        shuffle_frames=self.spec.shuffle_frames, num_frames=num_frames,
        source=(data.source(tracklets.split) if data.frame_sources
                is not None else None), on_bad_frame=self.on_bad_frame)

  def embed(self, variables, data: pipeline.ReidData, role: str,
            plan: EmbedPlan, aux_keys: tuple[str, ...] = (),
            progress: Callable[[int], Any] | None = None):
    """Embeds the role's tracklets.

    `progress(n)` is called after each batch with the number of real frames
    this process embedded in it.

    Returns:
      (N, D) float32 embeddings in record order; with `aux_keys`, the pair
      (embeddings, ClipAux) where ClipAux[n] lists tracklet n's clips as
      (frame indices, {key: values at those frames}) for the keys the model
      reports.
    """
    tracklets = data.roles[role]
    batches = self.batches(data, role, plan)
    sums = None
    counts = np.zeros(len(tracklets), np.int64)
    clip_aux: ClipAux = [[] for _ in range(len(tracklets))]
    fn = self._predict_batch(tuple(aux_keys)) if aux_keys else self._fn
    self.last_bad_frames = []
    for i, local in enumerate(pipeline.eval_iterator(
        batches, num_workers=self.num_workers,
        num_threads=self.num_threads)):
      position = local.pop("position")
      local.pop("num_bad_frames", None)
      self.last_bad_frames += [str(x) for x in local.pop("bad_frames", ())]
      num_real = int(np.sum(local["mask"]))
      batch = parallel.global_batch(local, self.mesh)
      out = fn(variables, batch)
      if aux_keys:
        out, aux = out
        aux = parallel.fetch(aux)
        for j, item in enumerate(batches.plan[i].items):
          if item.position >= 0:
            clip_aux[item.position].append(
                (batches.frame_indices(item),
                 {k: np.asarray(v[j])[item.mask] for k, v in aux.items()}))
      emb = parallel.fetch(out)
      position = parallel.fetch(
          parallel.global_batch({"p": position}, self.mesh))["p"]
      if sums is None:
        sums = np.zeros((len(tracklets), emb.shape[-1]), np.float64)
      keep = position >= 0
      np.add.at(sums, position[keep], emb[keep])
      np.add.at(counts, position[keep], 1)
      if progress is not None:
        progress(num_real)
    if sums is None or (counts == 0).any():
      raise RuntimeError(f"{data.name}/{role}: some tracklets received no "
                         "clip")
    if self.last_bad_frames:
      logging.warning("%s/%s: %d bad frames replaced by their nearest "
                      "readable frame (on_bad_frame=skip): %s", data.name,
                      role, len(self.last_bad_frames),
                      ", ".join(sorted(set(self.last_bad_frames))[:20]))
      self.bad_frames += self.last_bad_frames
    features = (sums / counts[:, None]).astype(np.float32)
    return (features, clip_aux) if aux_keys else features


class EvalRound:
  """One evaluation of one set of variables; embeddings are shared.

  Attributes:
    aux_keys: aux outputs kept per clip in the same pass (the union of what
      the round's evaluators ask for).
  """

  def __init__(self, embedder: Embedder, variables,
               aux_keys: tuple[str, ...] = ()):
    self.embedder = embedder
    self.variables = variables
    self.aux_keys = tuple(sorted(set(aux_keys)))
    self._memo: dict[tuple, Any] = {}

  def _get(self, data: pipeline.ReidData, role: str, plan: EmbedPlan):
    records = data.roles[role].records
    key = (data.name, data.data_dir, data.roles[role].split,
           hashlib.sha1(np.ascontiguousarray(records).tobytes()).hexdigest(),
           plan)
    if key not in self._memo:
      out = self.embedder.embed(self.variables, data, role, plan,
                                aux_keys=self.aux_keys)
      self._memo[key] = out if self.aux_keys else (out, None)
    return self._memo[key]

  def features(self, data: pipeline.ReidData, role: str,
               plan: EmbedPlan) -> np.ndarray:
    """(N, D) embeddings of the role's tracklets."""
    return self._get(data, role, plan)[0]

  def clip_aux(self, data: pipeline.ReidData, role: str,
               plan: EmbedPlan) -> ClipAux:
    """Per tracklet, its clips' frame indices and aux values."""
    clip_aux = self._get(data, role, plan)[1]
    if clip_aux is None:
      raise ValueError("this evaluation round keeps no aux outputs")
    return clip_aux
