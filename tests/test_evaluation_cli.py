"""End-to-end tests of `python -m vreid_jax.evaluate_features`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vreid_jax.evaluation import evaluate

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
  return subprocess.run(
      [sys.executable, "-m", "vreid_jax.evaluate_features", *args],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
      check=False)


@pytest.fixture(name="files")
def _files(tmp_path):
  rng = np.random.default_rng(0)
  centers = rng.standard_normal((6, 8)) * 2
  qp, gp = np.arange(6), np.concatenate([np.arange(6)] * 4 + [[-1, 0]])
  qc, gc = np.zeros(6, int), rng.integers(0, 3, gp.size)
  qf = centers[qp] + rng.standard_normal((6, 8))
  gf = np.concatenate([centers[gp[:-2]], np.zeros((2, 8))])
  gf = gf + rng.standard_normal(gf.shape)
  data = dict(qf=qf, qp=qp, qc=qc, gf=gf, gp=gp, gc=gc)
  np.savez(tmp_path / "q.npz", features=qf, pids=qp, camids=qc)
  np.savez(tmp_path / "g.npz", features=gf, pids=gp, camids=gc)
  return tmp_path, data


@pytest.mark.parametrize("flags", [
    ["--ap=trapezoid"],
    ["--metric=cosine", "--max_rank=10"],
    ["--normalize", "--rerank", "--rerank_k1=6", "--rerank_k2=3"],
])
def test_cli_prints_one_json_matching_evaluate(files, flags):
  tmp, d = files
  proc = _run(f"--query={tmp / 'q.npz'}", f"--gallery={tmp / 'g.npz'}",
              *flags)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1
  out = json.loads(lines[0])
  for key in ("mAP", "mINP", "cmc", "num_queries", "num_valid_queries"):
    assert key in out
  kwargs = {"ap": "trapezoid"} if "--ap=trapezoid" in flags else {}
  if "--metric=cosine" in flags:
    kwargs.update(metric="cosine", max_rank=10)
  if "--rerank" in flags:
    kwargs.update(normalize=True, rerank=True, rerank_k1=6, rerank_k2=3)
  want = evaluate(d["qf"], d["qp"], d["qc"], d["gf"], d["gp"], d["gc"],
                  **kwargs)
  assert out["mAP"] == pytest.approx(want["mAP"], abs=1e-12)
  assert out["cmc"] == pytest.approx(want["cmc"], abs=1e-12)
  assert out["num_queries"] == 6


def test_cli_bad_files(files):
  tmp, d = files
  np.savez(tmp / "nocam.npz", features=d["gf"], pids=d["gp"])
  proc = _run(f"--query={tmp / 'q.npz'}", f"--gallery={tmp / 'nocam.npz'}")
  assert proc.returncode != 0 and proc.stdout == ""
  assert "nocam.npz" in proc.stderr and "camids" in proc.stderr

  np.savez(tmp / "dim.npz", features=d["gf"][:, :5], pids=d["gp"],
           camids=d["gc"])
  proc = _run(f"--query={tmp / 'q.npz'}", f"--gallery={tmp / 'dim.npz'}")
  assert proc.returncode != 0
  assert "dim.npz" in proc.stderr and "D=5" in proc.stderr

  np.savez(tmp / "len.npz", features=d["gf"], pids=d["gp"][:-1],
           camids=d["gc"])
  proc = _run(f"--query={tmp / 'len.npz'}", f"--gallery={tmp / 'g.npz'}")
  assert proc.returncode != 0
  assert "len.npz" in proc.stderr and "'pids'" in proc.stderr

  (tmp / "junk.txt").write_text("not an npz")
  proc = _run(f"--query={tmp / 'junk.txt'}", f"--gallery={tmp / 'g.npz'}")
  assert proc.returncode != 0 and "junk.txt" in proc.stderr

  proc = _run(f"--query={tmp / 'missing.npz'}", f"--gallery={tmp / 'g.npz'}")
  assert proc.returncode != 0 and "missing.npz" in proc.stderr


def test_cli_imports_no_jax():
  code = ("import sys, vreid_jax.evaluate_features, vreid_jax.evaluation;"
          "print(sorted(m for m in ('jax', 'scipy', 'matplotlib')"
          " if m in sys.modules))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                        capture_output=True, text=True, check=True,
                        env={**os.environ, "PYTHONPATH": str(REPO)})
  assert proc.stdout.strip() == "[]"


def test_cli_gallery_junk_key(files):
  tmp, d = files
  junk = d["gp"] <= 0                         # pid -1 and distractors
  np.savez(tmp / "gj.npz", features=d["gf"], pids=d["gp"], camids=d["gc"],
           junk=junk)
  proc = _run(f"--query={tmp / 'q.npz'}", f"--gallery={tmp / 'gj.npz'}")
  assert proc.returncode == 0, proc.stderr
  want = evaluate(d["qf"], d["qp"], d["qc"], d["gf"], d["gp"], d["gc"],
                  gallery_junk=junk)
  assert json.loads(proc.stdout)["mAP"] == pytest.approx(want["mAP"])


def test_cli_fuses_two_streams(files):
  """--fuse: each file L2-normalised, then concatenated (M3D's eq. 1)."""
  tmp, d = files
  rng = np.random.default_rng(1)
  q2, g2 = rng.standard_normal((6, 5)), rng.standard_normal((26, 5))
  np.savez(tmp / "q2.npz", features=q2, pids=d["qp"], camids=d["qc"])
  np.savez(tmp / "g2.npz", features=g2, pids=d["gp"], camids=d["gc"])
  out = _run("--fuse", f"--query={tmp / 'q.npz'},{tmp / 'q2.npz'}",
             f"--gallery={tmp / 'g.npz'},{tmp / 'g2.npz'}")
  assert out.returncode == 0, out.stderr
  norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # pylint: disable=g-long-lambda
  want = evaluate(np.concatenate([norm(d["qf"]), norm(q2)], 1), d["qp"],
                  d["qc"], np.concatenate([norm(d["gf"]), norm(g2)], 1),
                  d["gp"], d["gc"])
  assert json.loads(out.stdout)["mAP"] == pytest.approx(want["mAP"])
  # Files of other tracklets are refused, naming the key.
  np.savez(tmp / "q3.npz", features=q2, pids=d["qp"][::-1], camids=d["qc"])
  out = _run("--fuse", f"--query={tmp / 'q.npz'},{tmp / 'q3.npz'}",
             f"--gallery={tmp / 'g.npz'},{tmp / 'g2.npz'}")
  assert out.returncode == 2 and "'pids' differs" in out.stderr
  out = _run(f"--query={tmp / 'q.npz'},{tmp / 'q2.npz'}",
             f"--gallery={tmp / 'g.npz'}")
  assert out.returncode == 2 and "need --fuse" in out.stderr


def test_cli_refuses_files_of_different_protocols(files, capsys):
  """A query file of one protocol against a gallery file of another is
  refused in one line (in-process: no subprocess needed)."""
  from vreid_jax import evaluate_features  # pylint: disable=g-import-not-at-top
  tmp, d = files
  np.savez(tmp / "qm.npz", features=d["qf"], pids=d["qp"], camids=d["qc"],
           protocol=np.asarray("matlab"))
  np.savez(tmp / "gs.npz", features=d["gf"], pids=d["gp"], camids=d["gc"],
           protocol=np.asarray("standard"))
  code = evaluate_features.main([f"--query={tmp / 'qm.npz'}",
                                 f"--gallery={tmp / 'gs.npz'}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code != 0 and len(err) == 1 and err[0].startswith("error: ")
  assert "different protocol values ['matlab', 'standard']" in err[0]
