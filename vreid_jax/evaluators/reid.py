"""The re-identification evaluator: query vs gallery under a named protocol.

  config.evals.reid = dict(
      type="reid", every_steps=0,
      dataset=dict(name="", config="", trial=-1, auto_build=False),  # '' = train
      mode="dense", clip_len=8, batch_size=32, max_frames_per_device=1024,
      protocol="given", metric="euclidean", normalize=False, ap="step",
      max_rank=20, rerank=False, save_features=False, plots=True,
      plot_queries=4, plot_top_k=8)

Embeds the dataset's query and gallery tracklets with the shared embedding
function (`embedder.EvalRound`), applies the protocol (`given`: the
dataset's query set against its gallery set; `standard`, `with_queries`,
`matlab`: the MARS gallery variants of `vreid_jax.evaluation.protocols`)
and scores CMC, mAP (step or trapezoid AP) and mINP, with k-reciprocal
re-ranking at the end when asked. The metric maths lives in
`vreid_jax.evaluation`; this module only feeds it.

After the final evaluation it can write `query_features.npz` /
`gallery_features.npz` (`feature_files`: the protocol's query and gallery,
junk flags and settings, so that `python -m vreid_jax.evaluate_features
--query=... --gallery=...` reproduces metrics.json) and the pictures
`cmc.png` (titled with the dataset, protocol and AP definition) and
`ranked_list_<i>.png` (ranks numbered as the CMC counts them: junk shown,
marked, not counted).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from absl import logging
import jax
import numpy as np

from vreid_jax import evaluation
from vreid_jax.evaluation import protocols
from vreid_jax.evaluators import embedder as embedder_lib
from vreid_jax.input_pipeline import augment
from vreid_jax.input_pipeline import pipeline

PROTOCOLS = ("given",) + tuple(protocols.MARS_GALLERY_VARIANTS)


def test_set(data: pipeline.ReidData
             ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """The query-then-gallery tracklet arrays and the is-query mask."""
  for role in ("query", "gallery"):
    if role not in data.roles:
      raise ValueError(f"dataset {data.name} has no {role} role to evaluate "
                       "on")
  q, g = data.roles["query"], data.roles["gallery"]
  test = {k: np.concatenate([q.index[k], g.index[k]])
          for k in ("pid", "camid", "is_junk")}
  for k in ("motion_twin", "tracklet_id"):
    if k in q.index and k in g.index:
      test[k] = np.concatenate([q.index[k], g.index[k]])
  # Where each row's frames live: its TFDS split and record index.
  test["record"] = np.concatenate([q.records, g.records]).astype(np.int64)
  test["split"] = np.asarray([q.split] * len(q) + [g.split] * len(g))
  return test, np.arange(len(q) + len(g)) < len(q)


def dataset_protocols(dataset_name: str) -> tuple[str, ...]:
  """The protocols a dataset has: "given" (its query set against its
  gallery set) everywhere; the MARS gallery variants
  (`protocols.MARS_GALLERY_VARIANTS`: standard, with_queries, matlab) only
  on MARS, whose test set defines them (`protocols.mars_split` labels its
  results mars/<variant>)."""
  if dataset_name.split("/")[0] == "mars":
    return tuple(PROTOCOLS)
  return tuple(p for p in PROTOCOLS
               if p not in protocols.MARS_GALLERY_VARIANTS)


def protocol_split(data: pipeline.ReidData, protocol: str
                   ) -> tuple[dict[str, np.ndarray], evaluation.Split]:
  """The test set (query then gallery tracklets) and its protocol split.

  given: the dataset's query set against its gallery set (junk: pid -1 and
    tracklets flagged is_junk).
  standard | with_queries | matlab: the MARS gallery variants
    (`vreid_jax.evaluation.protocols.mars_split`), applied to the query and
    gallery sets together: gallery minus queries minus junk (9,330 on MARS),
    queries kept (11,310) or everything with the junk rules (12,180; the
    official MATLAB code); MARS only.
  """
  if (protocol in protocols.MARS_GALLERY_VARIANTS
      and protocol not in dataset_protocols(data.name)):
    raise ValueError(
        f"eval protocol {protocol!r} is a MARS gallery variant; dataset "
        f"{data.name} has the protocol 'given' only (its query set against "
        "its gallery set)")
  test, is_query = test_set(data)
  if protocol == "given":
    split = protocols.given_split(test["pid"], is_query,
                                  name=f"{data.name}/given")
  elif protocol in protocols.MARS_GALLERY_VARIANTS:
    split = protocols.mars_split(test["pid"], test["camid"], is_query,
                                 variant=protocol)
  else:
    raise ValueError(f"eval protocol must be one of {PROTOCOLS}, got "
                     f"{protocol!r}")
  split = split._replace(gallery_junk=split.gallery_junk
                         | test["is_junk"][split.gallery])
  return test, split


def feature_files(features: np.ndarray, test: Mapping[str, np.ndarray],
                  split: evaluation.Split, *, settings: Mapping[str, Any],
                  data: pipeline.ReidData | None = None
                  ) -> dict[str, dict[str, np.ndarray]]:
  """The query and gallery .npz contents that reproduce an evaluation.

  `python -m vreid_jax.evaluate_features --query=Q --gallery=G` on them
  gives the metrics `evaluate_split(features, ..., split, **settings)`
  gives: the query file holds the protocol's queries, the gallery file the
  protocol's gallery (the queries too under `with_queries` and `matlab`)
  with its junk flags (pid -1, the builder's is_junk, and whatever the
  protocol adds), and both record the settings (protocol, ap, metric,
  normalize, and max_rank when given), which evaluate_features uses unless
  its flags say otherwise.

  Args:
    features: (N, D) embeddings of the test set's rows (query then gallery
      tracklets, `test_set`).
    test: the test set's per-row arrays (pid, camid, is_junk[,
      tracklet_id, record, split]).
    split: the protocol split of those rows.
    settings: {"protocol", "ap", "metric", "normalize"[, "max_rank"]}.
    data: the dataset, recorded as `dataset` and `data_dir` (so that
      `vreid_jax.search` can show the gallery's frames).
  """
  recorded = {"protocol": np.asarray(str(settings["protocol"])),
              "protocol_name": np.asarray(str(split.name)),
              "ap": np.asarray(str(settings["ap"])),
              "metric": np.asarray(str(settings["metric"])),
              "normalize": np.asarray(bool(settings["normalize"]))}
  if settings.get("max_rank") is not None:
    recorded["max_rank"] = np.asarray(int(settings["max_rank"]), np.int64)
  if data is not None:
    recorded["dataset"] = np.asarray(str(data.name))
    recorded["data_dir"] = np.asarray(str(data.data_dir))
  out = {}
  for role, rows in (("query", split.query), ("gallery", split.gallery)):
    f = {"features": np.asarray(features)[rows],
         "pids": test["pid"][rows], "camids": test["camid"][rows],
         "test_rows": np.asarray(rows, np.int64)}
    if "tracklet_id" in test:
      f["tracklet_ids"] = test["tracklet_id"][rows]
    if "record" in test:
      f["records"], f["splits"] = test["record"][rows], test["split"][rows]
    f.update(recorded)
    out[role] = f
  out["gallery"]["junk"] = np.asarray(split.gallery_junk, bool)
  return out


class Evaluator:
  """Re-id metrics of one dataset's query and gallery (module docstring)."""

  def __init__(self, name: str, cfg, *, context):
    self.name = name
    self.cfg = cfg
    self.every_steps = int(cfg.every_steps)
    self.data = context.dataset(cfg.dataset)
    self.plan = embedder_lib.EmbedPlan.from_config(cfg)
    self.spec = context.embedder.spec
    if cfg.ap not in evaluation.AP_DEFINITIONS:
      raise ValueError(f"config.evals.{name}.ap must be one of "
                       f"{evaluation.AP_DEFINITIONS}, got {cfg.ap!r}")
    self.test, self.split = protocol_split(self.data, cfg.protocol)
    self._check_positives()

  def _check_positives(self) -> None:
    """Fails before training if no query could ever be scored."""
    test, split = self.test, self.split
    qp, qc = test["pid"][split.query], test["camid"][split.query]
    gp, gc = test["pid"][split.gallery], test["camid"][split.gallery]
    ok = ~split.gallery_junk
    has_positive = ((qp[:, None] == gp[None]) & (qc[:, None] != gc[None])
                    & ok[None]).any(axis=1)
    if not has_positive.any():
      raise ValueError(
          f"{self.data.name}: none of the {len(qp)} queries has a gallery "
          f"positive in another camera under protocol {split.name} "
          f"(config.evals.{self.name}.protocol): nothing can be evaluated")
    if not has_positive.all():
      logging.info("%d of %d queries have no positive under %s; they will "
                   "be excluded from the averages and reported.",
                   (~has_positive).sum(), len(qp), split.name)

  def metric_kwargs(self) -> dict[str, Any]:
    cfg = self.cfg
    return dict(metric=cfg.metric, normalize=cfg.normalize, ap=cfg.ap,
                max_rank=cfg.max_rank)

  def settings(self) -> dict[str, Any]:
    """What a saved features file records (`feature_files`)."""
    cfg = self.cfg
    return {"protocol": cfg.protocol, "ap": cfg.ap, "metric": cfg.metric,
            "normalize": bool(cfg.normalize), "max_rank": int(cfg.max_rank)}

  def features(self, round_: embedder_lib.EvalRound) -> np.ndarray:
    """Query then gallery embeddings (rows of `self.test`)."""
    return np.concatenate([
        round_.features(self.data, "query", self.plan),
        round_.features(self.data, "gallery", self.plan)])

  def run(self, round_: embedder_lib.EvalRound, *, final: bool = False,
          workdir: str | None = None) -> dict[str, Any]:
    """Embeds query and gallery and returns the metrics dict."""
    features = self.features(round_)
    test, split, cfg = self.test, self.split, self.cfg
    kwargs = self.metric_kwargs()
    results = evaluation.evaluate_split(features, test["pid"], test["camid"],
                                        split, **kwargs)
    results["protocol"] = {"name": split.name, "ap": cfg.ap,
                           "metric": cfg.metric,
                           "normalize": bool(cfg.normalize),
                           "mode": cfg.mode, "clip_len": cfg.clip_len,
                           "num_gallery": int(len(split.gallery))}
    if final and cfg.rerank:
      rr = evaluation.evaluate_split(features, test["pid"], test["camid"],
                                     split, rerank=True, **kwargs)
      results["reranked"] = {k: rr[k] for k in ("mAP", "mINP", "cmc")}
    if results["num_excluded_queries"]:
      logging.info("%d of %d queries have no positive in the gallery under "
                   "%s and are excluded from the averages.",
                   results["num_excluded_queries"], results["num_queries"],
                   split.name)
    if final and workdir and jax.process_index() == 0:
      if cfg.save_features:
        files = feature_files(features, test, split,
                              settings=self.settings(), data=self.data)
        for role, arrays in files.items():
          np.savez(os.path.join(workdir, f"{role}_features.npz"), **arrays)
      if cfg.plots:
        self._plots(results, features, workdir)
    return results

  @staticmethod
  def format(results: Mapping[str, Any]) -> str:
    cmc = results["cmc"]
    return (f"mAP={100 * results['mAP']:.2f}% "
            + " ".join(f"R{k}={100 * v:.2f}%" for k, v in cmc.items())
            + f" ({results['num_valid_queries']}/{results['num_queries']} "
            "queries with a positive"
            + (f", {results['protocol']['name']}" if "protocol" in results
               else "") + ")")

  @staticmethod
  def scalars(results: Mapping[str, Any]) -> dict[str, float]:
    out = {"mAP": results["mAP"]}
    out.update({f"R{k}": v for k, v in results["cmc"].items()})
    return out

  def cmc_title(self) -> str:
    """The CMC picture's title: dataset, protocol and AP definition."""
    from vreid_jax.evaluation import plots  # pylint: disable=g-import-not-at-top
    return plots.cmc_title(self.data.name, self.split.name, self.cfg.ap)

  def ranked_lists(self, features: np.ndarray, num: int, top_k: int
                   ) -> list[tuple[int, Any]]:
    """(query test row, `plots.RankedList`) of the first `num` queries:
    the gallery ranked and numbered as the CMC does (junk shown, not
    counted; `plots.ranked_list`)."""
    from vreid_jax.evaluation import distances, plots  # pylint: disable=g-import-not-at-top
    test, split, cfg = self.test, self.split, self.cfg
    q_rows = split.query[:num]
    if not len(q_rows):
      return []
    dist = distances.pairwise_distances(
        features[q_rows], features[split.gallery], metric=cfg.metric,
        normalize=cfg.normalize)
    g = split.gallery
    return [(int(row), plots.ranked_list(
        dist[i], test["pid"][g], test["camid"][g], int(test["pid"][row]),
        int(test["camid"][row]), top_k=top_k,
        gallery_junk=split.gallery_junk)) for i, row in enumerate(q_rows)]

  def _plots(self, results, features, workdir: str) -> None:
    """cmc.png and ranked_list_<i>.png (the papers' Fig. 7 style)."""
    test, split = self.test, self.split
    try:
      from vreid_jax.evaluation import plots  # pylint: disable=g-import-not-at-top
      plots.plot_cmc(results["cmc_curve"], os.path.join(workdir, "cmc.png"),
                     title=self.cmc_title())
      num = self.cfg.plot_queries
      if not num:
        return
      for i, (row, ranked) in enumerate(self.ranked_lists(
          features, num, self.cfg.plot_top_k)):
        g_rows = split.gallery[ranked.positions]
        hidden = (f"; {ranked.hidden_junk} more junk not shown"
                  if ranked.hidden_junk else "")
        plots.plot_ranked_lists(
            self._frames(row), [self._frames(g) for g in g_rows],
            is_match=ranked.is_match, is_junk=ranked.is_junk,
            ranks=ranked.ranks,
            path=os.path.join(workdir, f"ranked_list_{i}.png"),
            title=(f"query pid {test['pid'][row]} cam {test['camid'][row]}"
                   f" ({split.name}{hidden})"),
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
    return augment.decode_clip(frames, idx, self.spec.height,
                               self.spec.width)
