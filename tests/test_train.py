"""The training step on 8 fake devices, end-to-end runs, resume, bad input."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vreid_jax import checkpoint as ckpt_lib
from vreid_jax import config_utils
from vreid_jax import optim
from vreid_jax import parallel
from vreid_jax import train
from vreid_jax.input_pipeline import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(tmp_data_dir=None, variant="tiny"):
  config = config_utils.load_config(
      os.path.join(ROOT, f"configs/demo.py:{variant}"))
  if tmp_data_dir:
    with config.unlocked():
      config.data_dir = tmp_data_dir
  return config


def _tiny_setup(num_classes=4, lr=0.05):
  config = _config()
  model = train.build_model(config, num_classes)
  schedule = optax.constant_schedule(lr)
  with config.unlocked():
    config.optimizer.momentum = 0.9
    config.optimizer.name = "sgd"
  tx = optim.make_optimizer(config.optimizer, schedule)
  clip_shape = (1, 2, 16, 8, 3)
  variables = train.init_variables(model, jax.random.PRNGKey(0), clip_shape)
  state = train.create_train_state(variables, tx, jax.random.PRNGKey(1))
  rng = np.random.default_rng(0)
  batches = [{
      "clips": rng.integers(0, 256, (8, 2, 16, 8, 3), dtype=np.uint8),
      "mask": np.ones((8, 2), bool),
      "labels": np.repeat(np.arange(4, dtype=np.int32), 2),
  } for _ in range(3)]
  return config, model, tx, schedule, state, batches


def _run_steps(devices, config, model, tx, schedule, state, batches):
  mesh = parallel.make_mesh(devices)
  sharding = train.state_sharding_like(state, mesh)
  step_fn = train.jit_train_step(mesh, sharding, model=model, tx=tx,
                                 losses=config.losses.to_dict(),
                                 schedule=schedule)
  state = jax.device_put(jax.tree.map(jnp.array, state), sharding)
  history = []
  for b in batches:
    state, metrics = step_fn(state, parallel.global_batch(b, mesh))
    history.append(jax.device_get(metrics))
  return jax.device_get(state), history


def _assert_trees_close(a, b, rtol, atol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol,
                                                       atol=atol), a, b)


def test_eight_device_step_equals_single_device():
  """The sharded step is the one-device step (up to float summation order).

  One step agrees to ~1e-7; float reassociation noise then grows with the
  training dynamics, so three steps are compared at a gentle learning rate.
  """
  assert jax.device_count() == 8, "conftest asks for 8 fake CPU devices"
  config, model, tx, schedule, state, batches = _tiny_setup()
  one, h1 = _run_steps(jax.devices()[:1], config, model, tx, schedule, state,
                       batches[:1])
  eight, h8 = _run_steps(jax.devices(), config, model, tx, schedule, state,
                         batches[:1])
  for k in h1[0]:
    np.testing.assert_allclose(h1[0][k], h8[0][k], rtol=1e-5, err_msg=k)
  _assert_trees_close(one.params, eight.params, 1e-5, 1e-5)
  _assert_trees_close(one.batch_stats, eight.batch_stats, 1e-5, 1e-5)
  # The momentum trace holds raw gradients (|g| up to ~10).
  _assert_trees_close(one.opt_state, eight.opt_state, 1e-5, 1e-4)

  setup = _tiny_setup(lr=0.002)
  one, h1 = _run_steps(jax.devices()[:1], *setup)
  eight, h8 = _run_steps(jax.devices(), *setup)
  for a, b in zip(h1, h8):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6,
                                 err_msg=k)
  _assert_trees_close(one.params, eight.params, 1e-4, 1e-5)
  _assert_trees_close(one.batch_stats, eight.batch_stats, 1e-4, 1e-5)
  assert int(eight.step) == 3


def test_train_batches_deterministic_and_sharded(synthetic_data_dir):
  config = _config(synthetic_data_dir)
  data = pipeline.open_dataset(config.dataset, config.data_dir)
  spec = pipeline.make_train_spec(data, config)
  full = pipeline.TrainBatches(spec)(3)
  again = pipeline.TrainBatches(spec)(3)
  for k in full:
    np.testing.assert_array_equal(full[k], again[k])
  halves = [pipeline.TrainBatches(pipeline.make_train_spec(
      data, config, process_index=i, process_count=2))(3) for i in range(2)]
  for k in full:
    np.testing.assert_array_equal(
        full[k], np.concatenate([h[k] for h in halves]))
  assert full["clips"].shape == (8, 2, 16, 8, 3)
  labels = full["labels"].reshape(4, 2)
  assert (labels == labels[:, :1]).all()


def test_iterator_state_resumes_same_batches(synthetic_data_dir):
  config = _config(synthetic_data_dir)
  data = pipeline.open_dataset(config.dataset, config.data_dir)
  batches = pipeline.TrainBatches(pipeline.make_train_spec(data, config))
  it = pipeline.train_iterator(batches, 6)
  next(it), next(it)
  state = it.get_state()
  want = [next(it) for _ in range(3)]
  it2 = pipeline.train_iterator(batches, 6)
  it2.set_state(json.loads(json.dumps(state)))
  for w in want:
    got = next(it2)
    np.testing.assert_array_equal(w["clips"], got["clips"])


def test_end_to_end_resume_gives_identical_metrics(synthetic_data_dir,
                                                   tmp_path, capsys):
  config = _config(synthetic_data_dir)
  with config.unlocked():
    config.num_steps = 6
    config.schedule.name = "constant"
    del config.schedule["warmup_epochs"]
  full = tmp_path / "full"
  res_full = train.train_and_evaluate(config, str(full))
  assert sorted(os.listdir(full / "checkpoints")) == ["2", "4", "6"]
  metrics = json.loads((full / "metrics.json").read_text())
  assert 0.0 <= metrics["mAP"] <= 1.0
  assert set(metrics["cmc"]) == {"1", "5", "10", "20"}
  assert (full / "config.json").exists()
  assert any(f.startswith("events") for f in os.listdir(full))

  # A run "killed" after its step-2 checkpoint: only that checkpoint left.
  killed = tmp_path / "killed"
  killed.mkdir()
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(full / "checkpoints" / "2", killed / "checkpoints" / "2")
  capsys.readouterr()
  res_resumed = train.train_and_evaluate(config, str(killed))
  assert "Resuming from step 2" in capsys.readouterr().out
  assert res_resumed["mAP"] == res_full["mAP"]
  assert res_resumed["cmc"] == res_full["cmc"]
  a = ckpt_lib.restore_params(str(full))
  b = ckpt_lib.restore_params(str(killed))
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])


def test_workdir_of_another_model_is_refused(synthetic_data_dir, tmp_path):
  config = _config(synthetic_data_dir)
  with config.unlocked():
    config.num_steps = 2
  train.train_and_evaluate(config, str(tmp_path))
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  config_json = (tmp_path / "config.json").read_text()
  with config.unlocked():
    config.model.embed_dim = 32
    config.num_steps = 4
  with pytest.raises(ckpt_lib.CheckpointMismatchError,
                     match="different model.*Nothing was overwritten"):
    train.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before
  assert (tmp_path / "config.json").read_text() == config_json


def test_non_finite_loss_stops_with_step_and_terms(synthetic_data_dir,
                                                   tmp_path):
  config = _config(synthetic_data_dir)
  with config.unlocked():
    config.schedule.base_lr = 1e30
    config.optimizer.name = "sgd"
    config.num_steps = 6
  with pytest.raises(train.NonFiniteLossError,
                     match=r"non-finite loss at step \d+: .*softmax"):
    train.train_and_evaluate(config, str(tmp_path))


def test_dataset_not_built_says_how(tmp_path):
  config = _config(str(tmp_path / "empty"))
  with config.unlocked():
    config.dataset.name = "mars"
    config.dataset.config = ""
    config.dataset.auto_build = False
  with pytest.raises(pipeline.DatasetNotBuiltError,
                     match="data_prep/build.py --dataset=mars"):
    pipeline.open_dataset(config.dataset, config.data_dir)


def test_unknown_config_key_fails(tmp_path):
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  out = subprocess.run(
      [sys.executable, "-m", "vreid_jax.main", "--config=configs/demo.py",
       f"--workdir={tmp_path}", "--config.input.clip_lenn=3"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "clip_lenn" in out.stderr


def test_cross_dataset_evaluation(synthetic_data_dir, tmp_path):
  """Train on synthetic tiny, test on a (fake) MARS with its own protocol."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import fake_trees  # pylint: disable=g-import-not-at-top
  from vreid_jax.datasets.mars import mars  # pylint: disable=g-import-not-at-top
  fake_trees.make_mars_tree(str(tmp_path / "manual"))
  data_dir = tmp_path / "tfds"
  mars.Mars(data_dir=str(data_dir)).download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=str(tmp_path / "manual")), file_format="array_record")
  # Both datasets in one data dir.
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(os.path.join(synthetic_data_dir, "synthetic_video_reid"),
                  data_dir / "synthetic_video_reid")
  config = _config(str(data_dir))
  with config.unlocked():
    config.num_steps = 2
    config.eval_dataset.name = "mars"
    config.eval.protocol = "matlab"
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["protocol"]["name"] == "mars/matlab"
  assert results["num_queries"] == 2
