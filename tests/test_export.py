"""Export, extraction and search: a trained model leaves the training code.

One tiny demo run is trained once for the module; the tests export it, run
the artifact in a fresh Python process that never imports vreid_jax, and
check that extraction reproduces the run's metrics and features.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import xla_env  # tests/

from vreid_jax import config_utils
from vreid_jax import evaluate_features
from vreid_jax import export
from vreid_jax import extract
from vreid_jax import search
from vreid_jax import train
from vreid_jax.input_pipeline import augment
from vreid_jax.input_pipeline import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(synthetic_data_dir, tmp_path_factory):
  """(workdir, export folder, data dir) of a 2-step tiny demo run."""
  root = tmp_path_factory.mktemp("export")
  config = config_utils.load_config(os.path.join(ROOT,
                                                 "configs/demo.py:tiny"))
  with config.unlocked():
    config.data_dir = synthetic_data_dir
    config.num_steps = 2
    config.evals.reid.save_features = True
  workdir = str(root / "work")
  train.train_and_evaluate(config, workdir)
  out = str(root / "export")
  card = export.export_workdir(workdir, out, onnx="no", log=lambda _: None)
  assert card["dims"] == {"batch": "symbolic", "time": "symbolic"}
  return workdir, out, synthetic_data_dir


FRESH_PROCESS = r"""
import json, sys
import flax.serialization, jax, numpy as np
E, frames_npz, out = sys.argv[1:4]
exported = jax.export.deserialize(open(E + "/model.jax", "rb").read())
variables = flax.serialization.msgpack_restore(
    open(E + "/variables.msgpack", "rb").read())
card = json.load(open(E + "/model.json"))
mean = np.asarray(card["input"]["mean"], np.float32)
std = np.asarray(card["input"]["std"], np.float32)
tracklets = [v for _, v in sorted(np.load(frames_npz).items())]
def norm(x):
  return ((x.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
# Each tracklet alone, at its own length (B=1, several T).
alone = [np.asarray(exported.call(variables, {
    "clips": norm(t)[None], "mask": np.ones((1, len(t)), bool)}))[0]
    for t in tracklets]
# All together (B=len), padded to the longest and masked.
T = max(len(t) for t in tracklets)
clips = np.zeros((len(tracklets), T) + tracklets[0].shape[1:], np.uint8)
mask = np.zeros((len(tracklets), T), bool)
for i, t in enumerate(tracklets):
  clips[i, :len(t)], mask[i, :len(t)] = t, True
together = np.asarray(exported.call(variables, {"clips": norm(clips),
                                                "mask": mask}))
assert not any(m.startswith("vreid_jax") for m in sys.modules), "imported"
np.savez(out, alone=np.stack(alone), together=together)
"""


def test_artifact_runs_without_vreid_jax_and_matches_extract(run,
                                                             tmp_path):
  workdir, exp_dir, data_dir = run
  card = json.loads(open(os.path.join(exp_dir, "model.json")).read())
  assert card["input_keys"] == ["clips", "mask"]
  assert card["inputs"]["clips"]["shape"] == [None, None, 16, 8, 3]
  assert card["checkpoint_step"] == 2
  assert card["final_metrics"]["checkpoint_step_matches"]
  assert card["platforms"] == ["cpu", "cuda", "tpu"]
  assert card["onnx"]["status"] == "skipped"
  # Extraction's embeddings of whole tracklets (mode "all": one masked clip
  # per tracklet, padded to a length bucket) ...
  feats = str(tmp_path / "feats")
  assert extract.main([f"--export={exp_dir}", f"--data_dir={data_dir}",
                       "--splits=query", "--mode=all",
                       f"--output={feats}"]) == 0
  with np.load(os.path.join(feats, "query.npz")) as f:
    want, records = f["features"], f["records"]
  # ... equal the artifact's in a process that never imports vreid_jax, for
  # tracklets of several lengths, alone (B=1) and batched (B=n, padded).
  data = pipeline.open_dataset(
      config_utils.load_config(os.path.join(
          ROOT, "configs/demo.py:tiny")).dataset, data_dir)
  source = data.source(data.roles["query"].split)
  rows = [0, 1, 2, 3]
  tracklets = {}
  for i in rows:
    frames = source[int(records[i])]["frames"]
    tracklets[f"t{i}"] = augment.decode_clip(frames, np.arange(len(frames)),
                                             16, 8)
  assert len({len(t) for t in tracklets.values()}) >= 2, "want 2 lengths"
  np.savez(tmp_path / "frames.npz", **tracklets)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  out = subprocess.run(
      [sys.executable, "-c", FRESH_PROCESS, exp_dir,
       str(tmp_path / "frames.npz"), str(tmp_path / "got.npz")],
      cwd=str(tmp_path), env=env, capture_output=True, text=True,
      timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  with np.load(tmp_path / "got.npz") as got:
    np.testing.assert_allclose(got["alone"], want[rows], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["together"], want[rows], atol=1e-5,
                               rtol=0)


def test_extract_then_evaluate_features_reproduces_metrics(run, tmp_path,
                                                           capsys):
  workdir, exp_dir, _ = run
  metrics = json.loads(open(os.path.join(workdir, "metrics.json")).read())
  for flag in (f"--workdir={workdir}", f"--export={exp_dir}"):
    out = str(tmp_path / flag.split("=")[0].strip("-"))
    assert extract.main([flag, f"--output={out}"]) == 0
    capsys.readouterr()
    assert evaluate_features.main([f"--query={out}/query.npz",
                                   f"--gallery={out}/gallery.npz"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert abs(result["mAP"] - metrics["mAP"]) <= 1e-6, flag
    assert result["cmc"] == pytest.approx(metrics["cmc"], abs=1e-6)
    assert result["settings"]["sources"]["ap"] == "file"
    record = json.loads(open(os.path.join(out, "extract.json")).read())
    assert record["speed"]["query"]["frames_per_s"] > 0
  # The trainer's saved features are the same files and reproduce it too.
  for role in ("query", "gallery"):
    with np.load(os.path.join(workdir, f"{role}_features.npz")) as a, \
        np.load(str(tmp_path / "export" / f"{role}.npz")) as b:
      np.testing.assert_allclose(a["features"], b["features"], atol=1e-5)
      np.testing.assert_array_equal(a["pids"], b["pids"])


def _footage(data_dir, root, num=3):
  """A frames folder made of query tracklets' own JPEG bytes, plus a
  corrupt frame and a tracklet with no readable frame."""
  data = pipeline.open_dataset(
      config_utils.load_config(os.path.join(
          ROOT, "configs/demo.py:tiny")).dataset, data_dir)
  q = data.roles["query"]
  source = data.source(q.split)
  lines = ["tracklet,pid,camid"]
  for i in range(num):
    d = root / f"person_{i}"
    d.mkdir(parents=True)
    for j, frame in enumerate(source[int(q.records[i])]["frames"]):
      (d / f"{j:04d}.jpg").write_bytes(frame)
    lines.append(f"person_{i},{q.index['pid'][i]},{q.index['camid'][i]}")
  (root / "person_0" / "9999.jpg").write_bytes(b"\xff\xd8 truncated")
  (root / "broken").mkdir()
  (root / "broken" / "0000.png").write_bytes(b"not a png")
  (root / "labels.csv").write_text("\n".join(lines) + "\n")
  return q


def test_frames_dir_skips_and_names_bad_frames_then_search(run, tmp_path,
                                                           capsys):
  workdir, exp_dir, data_dir = run
  q = _footage(data_dir, tmp_path / "footage")
  out = str(tmp_path / "foot")
  assert extract.main([f"--export={exp_dir}",
                       f"--frames_dir={tmp_path / 'footage'}",
                       f"--output={out}"]) == 0
  err = capsys.readouterr().err
  assert "person_0/9999.jpg" in err and "broken" in err
  record = json.loads(open(os.path.join(out, "extract.json")).read())
  assert record["num_bad_frames"] == 2
  assert record["empty_tracklets"] == ["broken"]
  with np.load(os.path.join(out, "features.npz")) as f:
    assert list(f["tracklet_ids"]) == ["person_0", "person_1", "person_2"]
    np.testing.assert_array_equal(f["pids"], q.index["pid"][:3])
    footage_features = f["features"]
  # The same frames as dataset records embed to the same features.
  ds = str(tmp_path / "ds")
  assert extract.main([f"--export={exp_dir}", "--splits=query",
                       f"--output={ds}"]) == 0
  with np.load(os.path.join(ds, "query.npz")) as f:
    np.testing.assert_allclose(footage_features, f["features"][:3],
                               atol=1e-5)
  # Search the run's gallery with the footage as queries.
  assert extract.main([f"--workdir={workdir}", f"--output={ds}"]) == 0
  for rerank in ([], ["--rerank"]):
    res = str(tmp_path / f"search{len(rerank)}")
    assert search.main([f"--features={ds}/gallery.npz",
                        f"--query_dir={tmp_path / 'footage'}",
                        f"--export={exp_dir}", "--top_k=4",
                        f"--output={res}"] + rerank) == 0
    ranks = json.loads(open(os.path.join(res, "ranks.json")).read())
    assert [x["query"] for x in ranks["queries"]] == [
        "person_0", "person_1", "person_2"]
    for query in ranks["queries"]:
      d = [r["distance"] for r in query["ranks"]]
      assert len(d) == 4 and d == sorted(d)
    assert len(ranks["pictures"]) == 3
    assert all(os.path.getsize(p) > 1000 for p in ranks["pictures"])


def test_bad_input_is_named(run, tmp_path, capsys):
  workdir, exp_dir, _ = run
  assert export.main([f"--workdir={tmp_path / 'nope'}",
                      f"--output={tmp_path / 'e'}"]) == 2
  assert "nope" in capsys.readouterr().err
  assert export.main([f"--workdir={workdir}", f"--output={exp_dir}"]) == 2
  assert "--overwrite" in capsys.readouterr().err
  assert extract.main([f"--workdir={workdir}", f"--export={exp_dir}",
                       f"--output={tmp_path / 'x'}"]) == 2
  assert "exactly one of --workdir" in capsys.readouterr().err
  assert extract.main([f"--export={tmp_path}",
                       f"--output={tmp_path / 'x'}"]) == 2
  assert "model.jax" in capsys.readouterr().err
  (tmp_path / "f" / "a").mkdir(parents=True)
  (tmp_path / "f" / "a" / "0.jpg").write_bytes(b"x")
  (tmp_path / "f" / "labels.csv").write_text("tracklet,pid,camid\nb,1,1\n")
  assert extract.main([f"--export={exp_dir}", f"--frames_dir={tmp_path/'f'}",
                       f"--output={tmp_path / 'x'}"]) == 2
  assert "'b'" in capsys.readouterr().err
  assert extract.main([f"--export={exp_dir}", "--splits=train,nope",
                       f"--output={tmp_path / 'x'}"]) == 2
  assert "nope" in capsys.readouterr().err


def test_extract_with_an_export_on_four_devices_equals_one(run, tmp_path):
  """The exported function (lowered for one device) runs per device."""
  _, exp_dir, _ = run
  outs = []
  for n in (1, 4):
    env = xla_env.env(n)
    out = str(tmp_path / f"d{n}")
    proc = subprocess.run(
        [sys.executable, "-m", "vreid_jax.extract", f"--export={exp_dir}",
         "--splits=query", f"--output={out}"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(os.path.join(out, "query.npz")) as f:
      outs.append(f["features"])
  np.testing.assert_allclose(outs[0], outs[1], atol=1e-5, rtol=0)


def _one_config_per_model():
  seen = {}
  for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
    if not name.endswith(".py") or name in ("__init__.py", "common.py") or (
        name.endswith("_common.py")):
      continue
    variants = "tiny" if name == "demo.py" else "runlocal"
    path = os.path.join(ROOT, "configs", f"{name}:{variants}")
    try:
      config = config_utils.load_config(path)
    except ValueError:
      continue
    seen.setdefault(config.model_name, path)
  return sorted(seen.items())


@pytest.mark.parametrize("model_name,path", _one_config_per_model())
def test_every_model_exports_with_symbolic_batch_and_time(model_name, path):
  """Lowering only (no compile): each model family serialises with
  symbolic B and T for all three platforms."""
  import jax  # pylint: disable=g-import-not-at-top
  from vreid_jax import models  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import preprocess  # pylint: disable=g-import-not-at-top
  config = config_utils.load_config(path)
  spec = preprocess.InputSpec.from_config(config.input)
  model = models.build_model(config.model_name, 5, config.model)
  keys = models.input_keys(model)
  variables = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0),
                          "dropout": jax.random.key(1)},
                         preprocess.dummy_inputs(spec), train=False))
  variables = {k: v for k, v in variables.items()
               if k in ("params", "batch_stats")}
  exported, dims = export.serialize_embed(models.embed_fn(model), variables,
                                          spec, keys)
  assert dims == {"batch": "symbolic", "time": "symbolic"}, model_name
  loaded = jax.export.deserialize(exported.serialize())
  assert loaded.platforms == ("cpu", "cuda", "tpu")
  assert str(loaded.in_avals[-1].shape[0]) == "B"


def test_export_writes_a_checked_onnx_when_jax2onnx_is_installed(run,
                                                                 tmp_path):
  pytest.importorskip("jax2onnx")
  pytest.importorskip("onnxruntime")
  workdir, _, _ = run
  out = str(tmp_path / "e")
  card = export.export_workdir(workdir, out, log=lambda _: None)
  assert card["onnx"]["status"] == "ok", card["onnx"]
  assert card["onnx"]["dynamic_batch"] and card["onnx"]["dynamic_time"]
  assert max(card["onnx"]["check"]["max_abs_err"]) < 1e-4
  assert os.path.getsize(os.path.join(out, export.ONNX_FILE)) > 1000
