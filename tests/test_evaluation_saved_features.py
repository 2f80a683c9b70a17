"""Saved features reproduce metrics.json under every protocol.

The `reid` evaluator runs in-process on hand-built test sets (junk ids,
builder junk flags, distractors, same-camera entries, exact ties, a query
with no positive) with stand-in embeddings, writes query/gallery_features.npz
(`eval.save_features=True`), and `python -m vreid_jax.evaluate_features`
(its `main`, in-process) must give metrics.json's numbers exactly with no
flag: the protocol's gallery and junk flags, its AP definition, metric,
normalisation and CMC length are read from the files. The 10-trial case runs
on a built fake iLIDS-VID tree, one workdir per trial, and ends with
`vreid_jax.aggregate_trials` over them. No training run.
"""

from __future__ import annotations

import json
import os
import types

import ml_collections
import numpy as np
import pytest

from vreid_jax import aggregate_trials
from vreid_jax import evaluate_features
from vreid_jax.evaluators import reid
from vreid_jax.input_pipeline import pipeline

# Every number evaluate_features recomputes from the files.
METRIC_KEYS = ("mAP", "mINP", "cmc", "cmc_curve", "mAP_step",
               "mAP_trapezoid", "ap", "metric", "normalize", "num_queries",
               "num_valid_queries", "num_excluded_queries",
               "excluded_queries")


def reid_config(**overrides) -> ml_collections.ConfigDict:
  """configs/common.py's reid evaluator block with overrides."""
  from configs import common  # pylint: disable=g-import-not-at-top
  cfg = common.reid_eval(save_features=True, plots=False)
  cfg.update(overrides)
  return cfg


def tracklet_set(role: str, pid, camid, is_junk=None) -> pipeline.TrackletSet:
  pid = np.asarray(pid, np.int64)
  n = pid.size
  index = {"pid": pid, "camid": np.asarray(camid, np.int64),
           "is_junk": (np.zeros(n, bool) if is_junk is None
                       else np.asarray(is_junk, bool)),
           "tracklet_id": np.arange(n, dtype=np.int64) + 100,
           "num_frames": np.full(n, 2, np.int64)}
  return pipeline.TrackletSet(role=role, split=role,
                              records=np.arange(n, dtype=np.int64),
                              index=index)


def mars_like_data(frame_sources=None) -> pipeline.ReidData:
  """A tiny MARS-like test set.

  Queries: pids 1..6 (one per camera 1..6 cycling) and pid 9, whose only
  gallery entry is in its own camera (no positive under any protocol).
  Gallery: each query pid in two or three cameras (one entry in the query's
  own camera: junk for it), distractors (pid 0), pid -1 junk, a pid-5 entry
  the builder flags is_junk, and a pid-7 identity with no query.
  """
  q_pid = [1, 2, 3, 4, 5, 6, 9]
  q_cam = [1, 2, 3, 4, 5, 6, 1]
  g_pid = [1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 5, 5, 6, 6, 9, 7, 7, 0, 0, 0,
           -1, -1, 2]
  g_cam = [1, 2, 3, 2, 3, 3, 1, 4, 4, 5, 5, 6, 1, 6, 2, 1, 1, 2, 1, 3, 5,
           2, 4, 1]
  junk = np.zeros(len(g_pid), bool)
  junk[12] = True                      # pid 5, cam 1: flagged by the builder.
  return pipeline.ReidData(
      name="mars", data_dir="/nonexistent", metadata={},
      roles={"query": tracklet_set("query", q_pid, q_cam),
             "gallery": tracklet_set("gallery", g_pid, g_cam, junk)},
      frame_sources=frame_sources)


class StandInRound:
  """An EvalRound whose embeddings are given (no model)."""

  def __init__(self, features):
    self.features_of = features

  def features(self, data, role, plan):
    del data, plan
    return self.features_of[role]


def stand_in_features(data: pipeline.ReidData, seed: int = 0, dim: int = 6,
                      dtype=np.float32) -> dict[str, np.ndarray]:
  """Features near a per-pid centre, noisy enough that ranks vary; the last
  gallery row duplicates the third (an exact tie)."""
  rng = np.random.default_rng(seed)
  centres = {}
  out = {}
  for role in ("query", "gallery"):
    pids = data.roles[role].index["pid"]
    rows = []
    for p in pids:
      if int(p) not in centres:
        centres[int(p)] = rng.normal(size=dim)
      rows.append(centres[int(p)] + 0.9 * rng.normal(size=dim))
    out[role] = np.asarray(rows, dtype)
  g = out["gallery"]
  if len(g) > 3:
    g[-1] = g[2]
  return out


def evaluator_for(data, cfg) -> reid.Evaluator:
  context = types.SimpleNamespace(
      dataset=lambda _: data,
      embedder=types.SimpleNamespace(
          spec=types.SimpleNamespace(height=16, width=8)))
  return reid.Evaluator("reid", cfg, context=context)


def run_and_save(data, cfg, workdir, features):
  """The evaluator's final run: metrics.json's content, as written."""
  ev = evaluator_for(data, cfg)
  os.makedirs(workdir, exist_ok=True)
  results = ev.run(StandInRound(features), final=True, workdir=str(workdir))
  with open(os.path.join(workdir, "metrics.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, "metrics.json")) as f:
    return ev, json.load(f)


def evaluate_saved(workdir, capsys, *flags):
  capsys.readouterr()
  rc = evaluate_features.main([
      f"--query={os.path.join(workdir, 'query_features.npz')}",
      f"--gallery={os.path.join(workdir, 'gallery_features.npz')}", *flags])
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  return json.loads(captured.out)


def assert_reproduces(metrics, result):
  for key in METRIC_KEYS:
    assert result[key] == metrics[key], key


PROTOCOL_CASES = {
    # protocol: (evaluator overrides, gallery size, junk entries in it)
    "given": (dict(ap="step"), 24, 3),              # 2 pid -1 + is_junk.
    # standard / with_queries drop pid -1 (and the queries); the builder's
    # flag stays junk.
    "standard": (dict(ap="step", metric="cosine"), 22, 1),
    "with_queries": (dict(ap="step", normalize=True, max_rank=10), 29, 1),
    "matlab": (dict(ap="trapezoid"), 31, 3),
}


@pytest.mark.parametrize("protocol", sorted(PROTOCOL_CASES))
def test_saved_features_reproduce_metrics(protocol, tmp_path, capsys):
  overrides, num_gallery, num_junk = PROTOCOL_CASES[protocol]
  data = mars_like_data()
  cfg = reid_config(protocol=protocol, **overrides)
  features = stand_in_features(data)
  ev, metrics = run_and_save(data, cfg, tmp_path, features)
  split_name = ev.split.name
  assert metrics["protocol"]["name"] == split_name
  assert metrics["protocol"]["num_gallery"] == num_gallery
  # Query 9 has no positive in another camera: excluded and counted.
  assert metrics["num_excluded_queries"] >= 1
  with np.load(tmp_path / "gallery_features.npz") as g, \
      np.load(tmp_path / "query_features.npz") as q:
    assert len(g["features"]) == num_gallery
    assert int(g["junk"].sum()) == num_junk
    # The builder's is_junk flag travels in the file (given, matlab).
    flagged = g["test_rows"] == len(q["features"]) + 12
    assert g["junk"][flagged].all() or not flagged.any()
    for f in (q, g):
      assert str(f["protocol"]) == protocol
      assert str(f["protocol_name"]) == split_name
      assert str(f["ap"]) == cfg.ap and str(f["metric"]) == cfg.metric
      assert bool(f["normalize"]) == cfg.normalize
      assert int(f["max_rank"]) == cfg.max_rank
      assert str(f["dataset"]) == "mars"
  result = evaluate_saved(tmp_path, capsys)
  assert_reproduces(metrics, result)
  settings = result["settings"]
  assert set(settings["sources"].values()) == {"file"}
  assert settings["protocol"] == protocol
  assert settings["protocol_name"] == split_name
  assert settings["max_rank"] == cfg.max_rank
  assert len(result["cmc_curve"]) == cfg.max_rank
  # The recorded settings matter: the other AP definition gives other
  # numbers, and a flag still wins over the file.
  other = "trapezoid" if cfg.ap == "step" else "step"
  flipped = evaluate_saved(tmp_path, capsys, f"--ap={other}")
  assert flipped["settings"]["sources"]["ap"] == "flag"
  assert flipped["mAP"] == metrics[f"mAP_{other}"] != metrics["mAP"]


def test_saved_junk_flags_are_needed(tmp_path, capsys):
  """Without the file's junk flags (default rule pid == -1 only), the
  given protocol's builder-flagged entry would count: the saved flags are
  what makes the numbers agree."""
  data = mars_like_data()
  cfg = reid_config(protocol="given")
  features = stand_in_features(data)
  # Put the flagged pid-5 entry right on its query so that it would be a hit.
  features["gallery"][12] = features["query"][4]
  _, metrics = run_and_save(data, cfg, tmp_path, features)
  assert_reproduces(metrics, evaluate_saved(tmp_path, capsys))
  with np.load(tmp_path / "gallery_features.npz") as g:
    arrays = {k: g[k] for k in g.files if k != "junk"}
  np.savez(tmp_path / "gallery_features.npz", **arrays)
  without = evaluate_saved(tmp_path, capsys)
  assert without["mAP"] != metrics["mAP"]


def test_float64_features_and_evaluator_settings_recorded(tmp_path, capsys):
  data = mars_like_data()
  cfg = reid_config(protocol="standard", metric="sqeuclidean", max_rank=5)
  _, metrics = run_and_save(data, cfg, tmp_path,
                            stand_in_features(data, seed=3,
                                              dtype=np.float64))
  result = evaluate_saved(tmp_path, capsys)
  assert_reproduces(metrics, result)
  assert set(result["cmc"]) == {"1", "5"}


# ------------------------------- 10 trials ----------------------------------
@pytest.fixture(scope="module")
def ilids_data_dir(tmp_path_factory):
  """A built fake iLIDS-VID (8 persons, 10 trials of 4 test ids)."""
  import fake_trees  # pylint: disable=g-import-not-at-top
  from vreid_jax.datasets.ilids_vid import IlidsVid  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("ilids")
  fake_trees.make_ilids_tree(str(root / "manual"))
  fake_trees.build(IlidsVid, str(root / "manual"), str(root / "data"))
  return str(root / "data")


def test_ten_trials_reproduce_and_aggregate(ilids_data_dir, tmp_path,
                                            capsys):
  workdirs = []
  for trial in range(10):
    data = pipeline.open_dataset(ml_collections.ConfigDict(
        dict(name="ilids_vid", config="", trial=trial)), ilids_data_dir)
    cfg = reid_config(protocol="given", ap="trapezoid")
    workdir = tmp_path / f"t{trial}"
    ev, metrics = run_and_save(data, cfg, workdir,
                               stand_in_features(data, seed=trial))
    assert metrics["protocol"]["name"] == "ilids_vid/given"
    q, g = ev.split.query, ev.split.gallery
    assert set(ev.test["camid"][q]) == {1} and set(ev.test["camid"][g]) == {2}
    result = evaluate_saved(workdir, capsys)
    assert_reproduces(metrics, result)
    assert result["settings"]["ap"] == "trapezoid"
    (workdir / "config.json").write_text(json.dumps(
        {"dataset": {"name": "ilids_vid", "trial": trial},
         "main_eval": "reid", "evals": {"reid": cfg.to_dict()}}))
    workdirs.append(str(workdir))
  # All ten: one line per metric, no warning.
  capsys.readouterr()
  assert aggregate_trials.main(workdirs) == 0
  out, err = capsys.readouterr()
  assert err == ""
  lines = out.strip().splitlines()
  assert lines[0].startswith("ilids_vid, protocol ilids_vid/given, "
                             "trapezoid AP, trials 0-9; std = population")
  assert lines[-1].endswith("over 10 trials") and lines[-1].startswith("R")
  per_trial = [json.loads(open(os.path.join(w, "metrics.json")).read())
               for w in workdirs]
  r1 = 100 * np.asarray([m["cmc"]["1"] for m in per_trial])
  assert f"R1 {r1.mean():.1f} +- {r1.std():.1f} over 10 trials" in lines
  # Two of them: one warning line naming what is missing.
  assert aggregate_trials.main(workdirs[:2]) == 0
  out, err = capsys.readouterr()
  assert err.strip().splitlines() == [
      "warning: 2 of 10 trials (missing trial 2-9): the mean and std are "
      "over 2 trials, not the protocol's 10"]
  assert out.strip().splitlines()[-1].endswith("over 2 trials")


def test_mars_gallery_variants_are_refused_on_other_datasets():
  """extract and library callers get the check the trainer's config gets."""
  import types  # pylint: disable=g-import-not-at-top
  from vreid_jax.evaluators import reid  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="MARS gallery variant"):
    reid.protocol_split(types.SimpleNamespace(name="ilids_vid"), "standard")
