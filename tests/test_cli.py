"""The command line: every paper's runlocal config on a fake MARS tree.

(SIGKILL, SIGTERM and the other faults: tests/test_faults.py.)
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import xla_env  # tests/

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(workdir, *flags):
  return [sys.executable, "-m", "vreid_jax.main",
          "--config=configs/demo.py:tiny", f"--workdir={workdir}", *flags]


def _runlocal(config, workdir, data_dir, *flags):
  """`python -m vreid_jax.main` on one CPU device, as on a user's laptop."""
  env = xla_env.env()
  out = subprocess.run(
      [sys.executable, "-m", "vreid_jax.main", f"--config={config}",
       f"--workdir={workdir}", f"--config.data_dir={data_dir}",
       "--config.num_steps=4", *flags],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads((workdir / "metrics.json").read_text())


def test_gltr_mars_runlocal_on_a_fake_mars_tree(fake_mars_data_dir,
                                                tmp_path):
  metrics = _runlocal("configs/gltr_mars.py:runlocal", tmp_path / "gltr",
                      fake_mars_data_dir,
                      "--config.evals.reid.save_features=True")
  assert metrics["protocol"]["name"] == "mars/matlab"
  assert metrics["protocol"]["ap"] == "trapezoid"
  assert 0.0 <= metrics["mAP"] <= 1.0
  assert os.listdir(tmp_path / "gltr" / "checkpoints")
  # The saved features carry the matlab gallery (queries included), its
  # junk flags and the trapezoid AP: evaluate_features reproduces the run.
  out = subprocess.run(
      [sys.executable, "-m", "vreid_jax.evaluate_features",
       f"--query={tmp_path / 'gltr' / 'query_features.npz'}",
       f"--gallery={tmp_path / 'gltr' / 'gallery_features.npz'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  result = json.loads(out.stdout)
  assert result["settings"]["ap"] == "trapezoid"
  with np.load(tmp_path / "gltr" / "gallery_features.npz") as f:
    assert len(f["features"]) == metrics["protocol"]["num_gallery"]
    assert f["junk"].any()
  assert abs(result["mAP"] - metrics["mAP"]) <= 1e-6
  assert result["cmc"] == pytest.approx(metrics["cmc"], abs=1e-6)


def test_gao_mars_runlocal_on_a_fake_mars_tree(fake_mars_data_dir, tmp_path):
  """The paper's best row; every row was run this way by hand (README)."""
  metrics = _runlocal("configs/gao_mars.py:ta,runlocal", tmp_path / "gao",
                      fake_mars_data_dir)
  assert metrics["protocol"]["name"] == "mars/standard"
  assert metrics["protocol"]["ap"] == "step"
  assert 0.0 <= metrics["mAP"] <= 1.0


def test_m3d_mars_runlocal_on_a_fake_mars_tree(fake_mars_data_dir, tmp_path):
  """The paper's headline row (both streams, two named CE instances); every
  row was run this way by hand (README)."""
  metrics = _runlocal("configs/m3d_mars.py:two_stream,runlocal",
                      tmp_path / "m3d", fake_mars_data_dir)
  assert metrics["protocol"]["name"] == "mars/matlab"
  assert metrics["protocol"]["ap"] == "trapezoid"
  assert 0.0 <= metrics["mAP"] <= 1.0


def test_aggregate_trials(tmp_path):
  from vreid_jax import aggregate_trials  # pylint: disable=g-import-not-at-top
  for t, m in enumerate((0.5, 0.7)):
    d = tmp_path / f"t{t}"
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps(
        {"mAP": m, "cmc": {"1": m, "5": 1.0}}))
    (d / "config.json").write_text(json.dumps(
        {"dataset": {"name": "prid2011", "trial": t}}))
  out = aggregate_trials.aggregate([tmp_path / "t0", tmp_path / "t1"])
  assert out["mAP"]["mean"] == pytest.approx(0.6)
  assert out["mAP"]["std"] == pytest.approx(0.1)
  assert out["num_trials"] == 2
  (tmp_path / "t1" / "config.json").write_text(json.dumps(
      {"dataset": {"name": "prid2011", "trial": 0}}))
  with pytest.raises(ValueError, match="repeat trials"):
    aggregate_trials.aggregate([tmp_path / "t0", tmp_path / "t1"])


def test_trl_mars_runlocal_on_a_fake_mars_tree(fake_mars_data_dir, tmp_path):
  """TRL + ST²N, the paper's full model (two streams, two named CE
  instances, the stn_boxes evaluator and its picture); every row and stage 1
  were run this way by hand (README)."""
  metrics = _runlocal("configs/trl_mars.py:full,runlocal", tmp_path / "trl",
                      fake_mars_data_dir)
  assert metrics["protocol"]["name"] == "mars/matlab"
  assert metrics["reid_step"]["protocol"]["name"] == "mars/standard"
  assert 0.0 <= metrics["mAP"] <= 1.0
  assert metrics["stn_boxes"]["num_frames"] > 0
  assert (tmp_path / "trl" / "stn_boxes_0.png").exists()


def test_star_mars_runlocal_on_a_fake_mars_tree(fake_mars_data_dir, tmp_path):
  """STAR's full model (RGB + flow stems, LSTA, GSTA, R_pr) on the fake MARS
  whose flow store data_prep/flow.py filled; the star_attention evaluator's
  numbers and picture. Every row was run this way by hand (README)."""
  data_dir = fake_mars_data_dir
  metrics = _runlocal("configs/star_mars.py:full,runlocal", tmp_path / "star",
                      data_dir)
  assert metrics["protocol"]["name"] == "mars/standard"
  assert 0.0 <= metrics["mAP"] <= 1.0
  attention = metrics["star_attention"]
  assert attention["num_frames"] > 0 and attention["num_clips"] > 0
  assert 0.0 < attention["temporal_entropy"] <= 1.0 + 1e-6
  assert (tmp_path / "star" / "star_attention_0.png").exists()
