"""Evaluation of a model on a dataset's query and gallery roles (JAX).

Not imported by `vreid_jax.evaluation` (which stays NumPy-only); the trainer
imports it directly.

Embeddings are computed under jit over the device mesh with a frame mask
(`config.eval.mode` says which test-time clips: the whole tracklet, dense
clips, a clip at every frame or evenly sampled frames); the embeddings of a
tracklet's clips are averaged. The metric maths (CMC, mAP, mINP, protocols,
re-ranking) lives in `vreid_jax.evaluation`.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Mapping
from typing import Any

from absl import logging
import jax
import numpy as np

from vreid_jax import evaluation
from vreid_jax.evaluation import protocols
from vreid_jax import parallel
from vreid_jax.input_pipeline import augment
from vreid_jax.input_pipeline import pipeline


def _embed(variables, clips, mask, *, model, mean, std):
  embedding, _ = model.apply(variables, augment.normalize(clips, mean, std),
                             mask, train=False)
  return embedding.astype(np.float32)


class ModelEvaluator:
  """Embeds query and gallery with a model and scores the ranking."""

  def __init__(self, config, data: pipeline.ReidData, model, mesh):
    self.config = config
    self.cfg = config.eval
    self.data = data
    self.mesh = mesh
    for role in ("query", "gallery"):
      if role not in data.roles:
        raise ValueError(f"dataset {data.name} has no {role} role to "
                         "evaluate on")
    self._check_positives()
    self._embed = jax.jit(
        functools.partial(_embed, model=model, mean=tuple(config.input.mean),
                          std=tuple(config.input.std)),
        in_shardings=(parallel.replicated(mesh), parallel.data_sharded(mesh),
                      parallel.data_sharded(mesh)),
        out_shardings=parallel.data_sharded(mesh))

  def embed(self, variables, role: str) -> np.ndarray:
    """(N, D) float32 embeddings of the role's tracklets, in record order."""
    tracklets = self.data.roles[role]
    cfg = self.cfg
    num_devices = self.mesh.devices.size
    plan = pipeline.eval_batches_plan(
        tracklets.index["num_frames"], cfg.mode, cfg.clip_len,
        cfg.batch_size, max_frames_per_batch=cfg.max_frames_per_batch,
        multiple_of=num_devices * jax.process_count() // jax.process_count())
    batches = pipeline.EvalBatches(
        self.data.name, self.data.data_dir, tracklets.split,
        tracklets.records, plan, self.config.input.height,
        self.config.input.width, process_index=jax.process_index(),
        process_count=jax.process_count())
    sums = None
    counts = np.zeros(len(tracklets), np.int64)
    for local in pipeline.eval_iterator(
        batches, num_workers=self.config.input.num_workers,
        num_threads=self.config.input.num_threads):
      position = local.pop("position")
      batch = parallel.global_batch(local, self.mesh)
      emb = parallel.fetch(self._embed(variables, batch["clips"],
                                       batch["mask"]))
      position = parallel.fetch(
          parallel.global_batch({"p": position}, self.mesh))["p"]
      if sums is None:
        sums = np.zeros((len(tracklets), emb.shape[-1]), np.float64)
      keep = position >= 0
      np.add.at(sums, position[keep], emb[keep])
      np.add.at(counts, position[keep], 1)
    if sums is None or (counts == 0).any():
      raise RuntimeError(f"{role}: some tracklets received no clip")
    return (sums / counts[:, None]).astype(np.float32)

  def _check_positives(self) -> None:
    """Fails before training if no query could ever be scored."""
    test, split = self.split()
    qp, qc = test["pid"][split.query], test["camid"][split.query]
    gp, gc = test["pid"][split.gallery], test["camid"][split.gallery]
    ok = ~split.gallery_junk
    has_positive = ((qp[:, None] == gp[None]) & (qc[:, None] != gc[None])
                    & ok[None]).any(axis=1)
    if not has_positive.any():
      raise ValueError(
          f"{self.data.name}: none of the {len(qp)} queries has a gallery "
          f"positive in another camera under protocol {split.name} "
          "(config.eval.protocol): nothing can be evaluated")
    if not has_positive.all():
      logging.info("%d of %d queries have no positive under %s; they will "
                   "be excluded from the averages and reported.",
                   (~has_positive).sum(), len(qp), split.name)

  def split(self) -> tuple[dict[str, np.ndarray], evaluation.Split]:
    """The test set (query then gallery tracklets) and its protocol split.

    `config.eval.protocol`:
      given: the dataset's query set against its gallery set (junk: pid -1
        and tracklets flagged is_junk).
      standard | with_queries | matlab: the MARS gallery variants
        (`vreid_jax.evaluation.protocols.mars_split`), applied to the query
        and gallery sets together: gallery minus queries minus junk (9,330
        on MARS), queries kept (11,310) or everything with the junk rules
        (12,180; the official MATLAB code).
    """
    q = self.data.roles["query"]
    g = self.data.roles["gallery"]
    test = {k: np.concatenate([q.index[k], g.index[k]])
            for k in ("pid", "camid", "is_junk")}
    for k in ("motion_twin",):
      if k in q.index and k in g.index:
        test[k] = np.concatenate([q.index[k], g.index[k]])
    is_query = np.arange(len(q) + len(g)) < len(q)
    protocol = self.cfg.protocol
    if protocol == "given":
      split = protocols.given_split(test["pid"], is_query,
                                    name=f"{self.data.name}/given")
    elif protocol in protocols.MARS_GALLERY_VARIANTS:
      split = protocols.mars_split(test["pid"], test["camid"], is_query,
                                   variant=protocol)
    else:
      raise ValueError(
          "config.eval.protocol must be 'given' or one of "
          f"{protocols.MARS_GALLERY_VARIANTS}, got {protocol!r}")
    split = split._replace(gallery_junk=split.gallery_junk
                           | test["is_junk"][split.gallery])
    return test, split

  def evaluate(self, variables, *, final: bool = False,
               workdir: str | None = None) -> dict[str, Any]:
    """Embeds query and gallery and returns the metrics dict."""
    t0 = time.time()
    features = np.concatenate([self.embed(variables, "query"),
                               self.embed(variables, "gallery")])
    t_embed = time.time() - t0
    test, split = self.split()
    cfg = self.cfg
    kwargs = dict(metric=cfg.metric, normalize=cfg.normalize, ap=cfg.ap,
                  max_rank=cfg.max_rank)
    results = evaluation.evaluate_split(features, test["pid"], test["camid"],
                                        split, **kwargs)
    results["protocol"] = {"name": split.name, "ap": cfg.ap,
                           "metric": cfg.metric,
                           "normalize": bool(cfg.normalize),
                           "mode": cfg.mode, "clip_len": cfg.clip_len,
                           "num_gallery": int(len(split.gallery))}
    if "motion_twin" in test:
      twins = test["motion_twin"][split.query] >= 0
      if twins.any():
        sub = evaluation.evaluate_split(
            features, test["pid"], test["camid"],
            split._replace(query=split.query[twins]), **kwargs)
        results["motion_twins"] = {k: sub[k] for k in (
            "mAP", "cmc", "num_queries", "num_valid_queries")}
        results["motion_twins"]["pair_mAP"] = self._twin_pair_map(
            features, test, split, kwargs)
    if final and cfg.rerank:
      rr = evaluation.evaluate_split(features, test["pid"], test["camid"],
                                     split, rerank=True, **kwargs)
      results["reranked"] = {k: rr[k] for k in ("mAP", "mINP", "cmc")}
    if results["num_excluded_queries"]:
      logging.info("%d of %d queries have no positive in the gallery under "
                   "%s and are excluded from the averages.",
                   results["num_excluded_queries"], results["num_queries"],
                   split.name)
    logging.info("Evaluation: embeddings %.1fs, total %.1fs", t_embed,
                 time.time() - t0)
    if final and workdir and jax.process_index() == 0:
      nq = int((np.arange(len(features)) < len(self.data.roles["query"]))
               .sum())
      if cfg.save_features:
        for name, rows in (("query", np.arange(nq)),
                           ("gallery", np.arange(nq, len(features)))):
          np.savez(os.path.join(workdir, f"{name}_features.npz"),
                   features=features[rows], pids=test["pid"][rows],
                   camids=test["camid"][rows])
      if cfg.plots:
        self._plots(results, features, test, split, workdir)
    return results

  @staticmethod
  def _twin_pair_map(features, test, split, kwargs) -> float:
    """Mean AP of twin queries against their own and their twin's tracklets.

    With two identities of identical appearance, a model that ignores
    motion ranks them at chance (AP around 0.5); one that reads the gait
    gets close to 1.
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

  def _plots(self, results, features, test, split, workdir: str) -> None:
    """cmc.png and ranked_list_<i>.png (the papers' Fig. 7 style)."""
    try:
      from vreid_jax.evaluation import distances, plots  # pylint: disable=g-import-not-at-top
      plots.plot_cmc(results["cmc_curve"], os.path.join(workdir, "cmc.png"))
      num = self.cfg.plot_queries
      if not num:
        return
      q_rows = split.query[:num]
      dist = distances.pairwise_distances(
          features[q_rows], features[split.gallery], metric=self.cfg.metric,
          normalize=self.cfg.normalize)
      for i, row in enumerate(q_rows):
        order = np.argsort(dist[i], kind="stable")[:self.cfg.plot_top_k]
        g_rows = split.gallery[order]
        same = test["pid"][g_rows] == test["pid"][row]
        same_cam = test["camid"][g_rows] == test["camid"][row]
        junk = split.gallery_junk[order] | (same & same_cam)
        plots.plot_ranked_lists(
            self._frames(row), [self._frames(g) for g in g_rows],
            is_match=same & ~junk, is_junk=junk,
            path=os.path.join(workdir, f"ranked_list_{i}.png"),
            title=(f"query pid {test['pid'][row]} cam {test['camid'][row]}"
                   f" ({split.name})"),
            labels=[f"pid {test['pid'][g]} cam {test['camid'][g]}"
                    for g in g_rows])
    except Exception as e:  # pylint: disable=broad-except
      # Pictures must never lose a finished run's metrics.
      logging.warning("could not write the evaluation pictures: %s", e)

  def _frames(self, test_row: int, max_frames: int = 6) -> np.ndarray:
    """Up to `max_frames` evenly spaced frames of a test-set tracklet."""
    nq = len(self.data.roles["query"])
    role = self.data.roles["query" if test_row < nq else "gallery"]
    pos = test_row if test_row < nq else test_row - nq
    frames = self.data.source(role.split)[int(role.records[pos])]["frames"]
    idx = np.unique(np.linspace(0, len(frames) - 1, max_frames).astype(int))
    return augment.decode_clip(frames, idx, self.config.input.height,
                               self.config.input.width)


def summary_scalars(results: Mapping[str, Any], prefix: str = "eval/"
                    ) -> dict[str, float]:
  out = {f"{prefix}mAP": results["mAP"]}
  for k, v in results["cmc"].items():
    out[f"{prefix}R{k}"] = v
  if "motion_twins" in results:
    out[f"{prefix}motion_twins/mAP"] = results["motion_twins"]["mAP"]
    out[f"{prefix}motion_twins/R1"] = results["motion_twins"]["cmc"]["1"]
    out[f"{prefix}motion_twins/pair_mAP"] = results["motion_twins"][
        "pair_mAP"]
  return out


def format_results(results: Mapping[str, Any]) -> str:
  cmc = results["cmc"]
  text = (f"mAP={100 * results['mAP']:.2f}% "
          + " ".join(f"R{k}={100 * v:.2f}%" for k, v in cmc.items())
          + f" ({results['num_valid_queries']}/{results['num_queries']} "
          "queries with a positive"
          + (f", {results['protocol']['name']}" if "protocol" in results
             else "") + ")")
  if "motion_twins" in results:
    mt = results["motion_twins"]
    text += (f" | motion twins: mAP={100 * mt['mAP']:.2f}% "
             f"R1={100 * mt['cmc']['1']:.2f}% "
             f"pair mAP={100 * mt['pair_mAP']:.2f}%")
  return text
