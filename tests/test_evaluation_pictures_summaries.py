"""Pictures and summaries agree with the numbers.

* Ranked-list pictures (the `reid` evaluator's and `vreid_jax.search`'s)
  number ranks as the CMC does: junk entries shown, marked, not counted.
* cmc.png is titled with the dataset, protocol and AP definition.
* `python -m vreid_jax.aggregate_trials` refuses mixed protocols or AP
  definitions, warns on missing trials, states its std convention, prints
  one line per metric, and its errors are one `error: ...` line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fake_trees
import test_evaluation_saved_features as saved
from vreid_jax import aggregate_trials
from vreid_jax import search
from vreid_jax.evaluation import metrics as metrics_lib
from vreid_jax.evaluation import plots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(name="figures")
def _figures(monkeypatch):
  """Every matplotlib Figure the plots module makes, in order."""
  made = []
  original = plots._figure  # pylint: disable=protected-access

  def record(**kwargs):
    fig = original(**kwargs)
    made.append(fig)
    return fig

  monkeypatch.setattr(plots, "_figure", record)
  return made


def row_labels(fig) -> list[str]:
  """The rank label of each gallery row of a ranked-list figure."""
  return [ax.get_ylabel().split("\n")[0] for ax in fig.axes[1:]]


# ------------------------------ ranked lists --------------------------------
def test_cmc_ranks_skip_junk():
  assert plots.cmc_ranks([False, True, False, True, True, False]) == [
      1, None, 2, None, None, 3]


def test_ranked_list_numbers_as_the_cmc():
  # Gallery by distance: g0 (junk flag), g1 (same pid, same cam: junk),
  # g2 (wrong), g3 (match), g4 and g5 tie (g4 first: gallery order).
  d = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.9])
  gp = np.array([7, 1, 2, 1, 3, 1, 1])
  gc = np.array([2, 1, 2, 2, 3, 3, 4])
  flags = np.array([1, 0, 0, 0, 0, 0, 0], bool)
  lst = plots.ranked_list(d, gp, gc, 1, 1, top_k=3, gallery_junk=flags)
  assert list(lst.positions) == [0, 1, 2, 3, 4]
  assert lst.ranks == [None, None, 1, 2, 3]
  assert list(lst.is_match) == [False, False, False, True, False]
  assert lst.hidden_junk == 0
  # The CMC puts this query's first positive at rank 2 too.
  pq = metrics_lib.evaluate_distances(d[None], [1], [1], gp, gc,
                                      gallery_junk=flags, max_rank=3)
  assert pq["cmc_curve"] == [0.0, 1.0, 1.0]
  # At most max_junk junk rows are drawn; the others are counted as hidden.
  lst = plots.ranked_list(d, gp, gc, 1, 1, top_k=2, gallery_junk=flags,
                          max_junk=1)
  assert lst.ranks == [None, 1, 2] and lst.hidden_junk == 1
  # An unlabelled query (pid -1): no same-camera rule, nothing matches.
  lst = plots.ranked_list(d, gp, gc, -1, 1, top_k=3)
  assert lst.ranks == [1, 2, 3] and not lst.is_match.any()


def test_ranked_list_first_match_is_the_cmc_first_rank():
  """Random galleries with junk, same-camera entries and ties: the rank
  of the first match in the list is metrics.py's first positive rank."""
  rng = np.random.default_rng(0)
  for _ in range(30):
    n = int(rng.integers(5, 40))
    gp = rng.integers(-1, 5, n)
    gc = rng.integers(1, 4, n)
    junk = (gp == -1) | (rng.random(n) < 0.1)
    qp, qc = int(rng.integers(1, 5)), int(rng.integers(1, 4))
    d = np.round(rng.random(n), 1).astype(np.float32)      # many ties
    per_query = metrics_lib.per_query_from_distances(
        d[None].copy(), np.array([qp]), np.array([qc]),
        metrics_lib.make_gallery_index(gp, gc, junk))
    lst = plots.ranked_list(d, gp, gc, qp, qc, top_k=n, gallery_junk=junk,
                            max_junk=n)
    hits = [r for r, m in zip(lst.ranks, lst.is_match) if m]
    if per_query.num_good[0] == 0:
      assert not hits
    else:
      assert hits[0] == int(per_query.first_rank[0])
      assert len(hits) == int(per_query.num_good[0])


def test_plot_ranked_lists_labels_cmc_ranks(tmp_path, figures):
  rng = np.random.default_rng(0)
  frames = lambda: rng.integers(0, 255, (3, 16, 8, 3), dtype=np.uint8)
  plots.plot_ranked_lists(frames(), [frames() for _ in range(4)],
                          is_match=[False, False, True, False],
                          is_junk=[True, False, False, True],
                          path=tmp_path / "r.png")
  assert row_labels(figures[-1]) == ["junk, not ranked", "rank 1", "rank 2",
                                     "junk, not ranked"]
  with pytest.raises(ValueError, match="ranks"):
    plots.plot_ranked_lists(frames(), [frames()], [True], [False],
                            tmp_path / "bad.png", ranks=[1, 2])


def test_cmc_title():
  assert plots.cmc_title("mars", "mars/matlab", "trapezoid") == (
      "CMC: mars, protocol matlab, trapezoid AP")
  assert plots.cmc_title("ilids_vid", "ilids_vid/given", "step") == (
      "CMC: ilids_vid, protocol given, step AP")
  assert plots.cmc_title() == "CMC"


def _frame_sources(data):
  """Encoded flat-colour frames for every record of every role."""
  out = {}
  for role in ("query", "gallery"):
    t = data.roles[role]
    out[t.split] = {
        int(r): {"frames": [fake_trees.image_bytes(
            (16, 8), (40 * (p % 6), 30 * c % 255, 90), "PNG")] * 2}
        for r, p, c in zip(t.records, t.index["pid"], t.index["camid"])}
  return out


@pytest.mark.parametrize("protocol,ap", [("matlab", "trapezoid"),
                                         ("given", "step")])
def test_evaluator_pictures_agree_with_metrics(protocol, ap, tmp_path,
                                               figures):
  """The reid evaluator's pictures: cmc.png is titled with the dataset,
  protocol and AP; drawing every query, the ranked lists' first-match
  ranks rebuild metrics.json's CMC curve (to rank 5, the ranks drawn)."""
  data = saved.mars_like_data()
  data.frame_sources = _frame_sources(data)
  num_queries = len(data.roles["query"])
  cfg = saved.reid_config(protocol=protocol, ap=ap, plots=True,
                          save_features=False, plot_queries=num_queries,
                          plot_top_k=5, max_rank=5)
  ev, metrics = saved.run_and_save(data, cfg, tmp_path,
                                   saved.stand_in_features(data))
  assert (tmp_path / "cmc.png").stat().st_size > 1000
  short = protocol
  assert figures[0].axes[0].get_title() == (
      f"CMC: mars, protocol {short}, {ap} AP")
  ranked = figures[1:]
  assert len(ranked) == num_queries
  first = []
  for i, fig in enumerate(ranked):
    assert (tmp_path / f"ranked_list_{i}.png").exists()
    labels = row_labels(fig)
    colours = [ax.get_ylabel() and ax.yaxis.label.get_color()
               for ax in fig.axes[1:]]
    hits = [int(lab.split()[1]) for lab, c in zip(labels, colours)
            if c == plots.MATCH_COLOR]
    counted = [lab for lab in labels if lab.startswith("rank")]
    assert counted == [f"rank {k}" for k in range(1, len(counted) + 1)]
    first.append(hits[0] if hits else None)
  valid = [i for i in range(num_queries)
           if i not in metrics["excluded_queries"]]
  curve = [float(np.mean([first[i] is not None and first[i] <= k
                          for i in valid])) for k in range(1, 6)]
  np.testing.assert_allclose(curve, metrics["cmc_curve"], atol=1e-12)
  # The junk rows are drawn: under matlab every query meets itself (the
  # queries are in the gallery), marked junk.
  if protocol == "matlab":
    assert all("junk, not ranked" in row_labels(f) for f in ranked)
  del ev


def test_search_ranks_skip_junk_like_the_cmc():
  gallery = {"features": np.zeros((6, 2), np.float32),
             "pids": np.array([4, 4, 5, 4, -1, 6]),
             "camids": np.array([1, 2, 1, 3, 2, 2]),
             "junk": np.array([0, 0, 0, 0, 1, 0], bool),
             "tracklet_ids": np.arange(6) + 10}
  dist = np.array([0.1, 0.5, 0.2, 0.6, 0.3, 0.9])
  ranked, junk, lst = search.ranked_entries(gallery, dist, 4, 1, top_k=3)
  # Order: row0 (pid 4 cam 1 = the query's camera: junk), row2, row4
  # (flagged junk), row1 (match), row3 (match, other camera).
  assert [(e["rank"], e["position"], e["gallery_row"]) for e in ranked] == [
      (1, 2, 2), (2, 4, 1), (3, 5, 3)]
  assert [(e["position"], e["gallery_row"]) for e in junk] == [(1, 0),
                                                              (3, 4)]
  assert lst.ranks == [None, 1, None, 2, 3]
  assert list(lst.is_match) == [False, False, False, True, True]
  # --plain_ranks: every entry numbered, nothing junk.
  ranked, junk, lst = search.ranked_entries(gallery, dist, 4, 1, top_k=3,
                                            plain=True)
  assert [e["gallery_row"] for e in ranked] == [0, 2, 4] and not junk
  assert list(lst.is_match) == [True, False, False]     # still drawn green
  # An unlabelled query: only the file's junk flags apply.
  ranked, junk, _ = search.ranked_entries(gallery, dist, -1, -1, top_k=2)
  assert [e["gallery_row"] for e in ranked] == [0, 2]
  assert [e["gallery_row"] for e in junk] == []
  ranked, junk, _ = search.ranked_entries(gallery, dist, -1, -1, top_k=3)
  assert [e["gallery_row"] for e in junk] == [4]


# ---------------------------- aggregate_trials ------------------------------
def _trial(root, name, trial, *, r1, protocol="prid2011/given",
           ap="trapezoid", dataset="prid2011", config=True):
  d = root / name
  d.mkdir()
  metrics = {"mAP": r1 - 0.1, "mINP": r1 - 0.2,
             "cmc": {"1": r1, "5": 1.0}, "cmc_curve": [r1, 1.0]}
  if protocol is not None:
    metrics["protocol"] = {"name": protocol, "ap": ap}
  (d / "metrics.json").write_text(json.dumps(metrics))
  if config:
    (d / "config.json").write_text(json.dumps(
        {"dataset": {"name": dataset, "trial": trial}, "main_eval": "reid",
         "evals": {"reid": {"protocol": "given", "ap": ap,
                            "dataset": {"name": "", "trial": -1}}}}))
  return str(d)


def _main(capsys, *argv):
  capsys.readouterr()
  rc = aggregate_trials.main(list(argv))
  out, err = capsys.readouterr()
  return rc, out, err


def test_aggregate_summary_lines_and_std_convention(tmp_path, capsys):
  dirs = [_trial(tmp_path, f"t{t}", t, r1=v)
          for t, v in enumerate((0.80, 0.90, 0.85, 0.95, 0.75, 0.80, 0.90,
                                 0.85, 0.95, 0.75))]
  rc, out, err = _main(capsys, *dirs)
  assert rc == 0 and err == ""
  lines = out.strip().splitlines()
  assert lines[0] == ("prid2011, protocol prid2011/given, trapezoid AP, "
                      "trials 0-9; std = population std (ddof=0) over "
                      "trials")
  r1 = 100 * np.array([0.80, 0.90, 0.85, 0.95, 0.75] * 2)
  assert lines[1:] == [
      f"mAP {r1.mean() - 10:.1f} +- {r1.std():.1f} over 10 trials",
      f"mINP {r1.mean() - 20:.1f} +- {r1.std():.1f} over 10 trials",
      f"R1 {r1.mean():.1f} +- {r1.std():.1f} over 10 trials",
      "R5 100.0 +- 0.0 over 10 trials"]
  assert lines[3] == "R1 85.0 +- 7.1 over 10 trials"
  rc, out, _ = _main(capsys, "--std=sample", *dirs)
  assert "std = sample std (ddof=1)" in out
  assert f"R1 85.0 +- {r1.std(ddof=1):.1f} over 10 trials" in out
  rc, out, _ = _main(capsys, "--json", *dirs)
  result = json.loads(out)
  assert result["cmc"]["1"]["mean"] == pytest.approx(0.85)
  assert result["std"] == "population" and result["ddof"] == 0
  assert (result["dataset"], result["protocol"], result["ap"]) == (
      "prid2011", "prid2011/given", "trapezoid")
  assert result["missing_trials"] == [] and result["trials"] == list(
      range(10))


def test_aggregate_warns_once_on_missing_trials(tmp_path, capsys):
  dirs = [_trial(tmp_path, f"t{t}", t, r1=0.8) for t in (0, 3)]
  rc, out, err = _main(capsys, *dirs)
  assert rc == 0
  assert err.splitlines() == [
      "warning: 2 of 10 trials (missing trial 1-2, 4-9): the mean and std "
      "are over 2 trials, not the protocol's 10"]
  assert out.strip().splitlines()[-1] == "R5 100.0 +- 0.0 over 2 trials"
  # --num_trials for a protocol of another size.
  rc, _, err = _main(capsys, "--num_trials=2", dirs[0])
  assert err.splitlines() == ["warning: 1 of 2 trials (missing trial 1): the "
                              "mean and std are over 1 trials, not the "
                              "protocol's 2"]


@pytest.mark.parametrize("kind,line", [
    ("protocol", "error: the workdirs mix protocols (mars/standard: b; "
                 "prid2011/given: a): aggregate one protocol at a time"),
    ("ap", "error: the workdirs mix AP definitions (step: b; trapezoid: a): "
           "aggregate one AP definition at a time"),
    ("dataset", "error: the workdirs mix datasets (ilids_vid: b; prid2011: "
                "a): aggregate one dataset at a time"),
    ("trial", "error: the workdirs repeat trials: [0, 0] (trial 0 more than "
              "once)"),
])
def test_aggregate_refuses_mixes(kind, line, tmp_path, capsys):
  a = _trial(tmp_path, "a", 0, r1=0.8)
  other = {"protocol": dict(protocol="mars/standard"),
           "ap": dict(ap="step"), "dataset": dict(dataset="ilids_vid"),
           "trial": {}}[kind]
  b = _trial(tmp_path, "b", 1 if kind != "trial" else 0, r1=0.7, **other)
  rc, out, err = _main(capsys, a, b)
  assert rc == 2 and out == ""
  assert err.splitlines() == [line]


def test_aggregate_reads_protocol_from_config_when_metrics_lack_it(
    tmp_path, capsys):
  """Older metrics.json without a protocol record: config.json's eval
  block says which protocol and AP, and a mix is still refused."""
  a = _trial(tmp_path, "a", 0, r1=0.8, protocol=None, ap="trapezoid")
  b = _trial(tmp_path, "b", 1, r1=0.8, protocol=None, ap="step")
  rc, _, err = _main(capsys, a, b)
  assert rc == 2 and "mix AP definitions" in err
  assert len(err.splitlines()) == 1


def test_aggregate_errors_are_one_line(tmp_path, capsys):
  good = _trial(tmp_path, "good", 0, r1=0.8)
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "metrics.json").write_text("{not json")
  for argv, want in (
      ([good, str(tmp_path / "none")], "none/metrics.json: missing"),
      ([good, str(bad)], "bad/metrics.json: cannot read the metrics"),
  ):
    rc, out, err = _main(capsys, *argv)
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert want in err
  (bad / "metrics.json").write_text(json.dumps({"step": 3}))
  rc, _, err = _main(capsys, str(bad))
  assert rc == 2 and "has no 'mAP'" in err and len(err.splitlines()) == 1
  # No workdir, an unknown flag: argparse's errors are one line too, and
  # `python -m` exits non-zero.
  for argv in ([], ["--std=median", good]):
    out = subprocess.run(
        [sys.executable, "-m", "vreid_jax.aggregate_trials", *argv],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stderr.startswith("error: ")
  # A workdir without config.json: the trial is unknown, said once.
  lone = _trial(tmp_path, "lone", 0, r1=0.8, config=False)
  rc, _, err = _main(capsys, good, lone)
  assert rc == 0
  assert "1 of 2 workdirs have no config.json" in err
