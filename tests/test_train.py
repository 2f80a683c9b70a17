"""The training step on 8 fake devices, end-to-end runs, resume, bad input."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vreid_jax import checkpoint as ckpt_lib
from vreid_jax import config_utils
from vreid_jax import losses as losses_lib
from vreid_jax import models
from vreid_jax import optim
from vreid_jax import parallel
from vreid_jax import train
from vreid_jax.input_pipeline import pipeline
from vreid_jax.input_pipeline import preprocess

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
  model = models.build_model(config.model_name, num_classes, config.model)
  schedule = optax.constant_schedule(lr)
  with config.unlocked():
    config.optimizer.momentum = 0.9
    config.optimizer.name = "sgd"
  tx = optim.make_optimizer(config.optimizer, schedule)
  spec = preprocess.InputSpec.from_config(config.input)
  variables = train.init_variables(model, jax.random.PRNGKey(0),
                                   preprocess.dummy_inputs(spec))
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
  step_fn = train.jit_train_step(
      mesh, sharding, model=model, tx=tx,
      losses=losses_lib.resolve(config.losses.to_dict()), schedule=schedule,
      input_spec=preprocess.InputSpec.from_config(config.input))
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


@pytest.mark.parametrize("size", [0, 2])
def test_device_prefetch_saves_the_state_of_the_batch_it_hands_out(
    synthetic_data_dir, size):
  """With batches already pulled ahead, the state handed out with batch s
  resumes at batch s+1: a resumed run sees the same batches."""
  config = _config(synthetic_data_dir)
  data = pipeline.open_dataset(config.dataset, config.data_dir)
  batches = pipeline.TrainBatches(pipeline.make_train_spec(data, config))
  mesh = parallel.make_mesh()
  ahead = train.DevicePrefetch(pipeline.train_iterator(batches, 5), mesh,
                               size, host_keys=("labels",))
  items = list(ahead)
  assert len(items) == 5  # Every step once, none lost at the end.
  plain = list(pipeline.train_iterator(batches, 5))
  for (host, on_device, _), want in zip(items, plain):
    np.testing.assert_array_equal(host["labels"], want["labels"])
    assert "labels" not in on_device  # Host keys stay on the host.
    np.testing.assert_array_equal(np.asarray(on_device["clips"]),
                                  want["clips"])
    assert on_device["clips"].sharding == parallel.data_sharded(mesh)
  resumed = pipeline.train_iterator(batches, 5)
  resumed.set_state(json.loads(json.dumps(items[1][2])))
  np.testing.assert_array_equal(next(resumed)["clips"], plain[2]["clips"])
  with pytest.raises(ValueError, match="device_prefetch"):
    train.DevicePrefetch(iter(()), mesh, -1)


def test_workdir_of_another_model_is_refused(synthetic_data_dir, tmp_path):
  config = _config(synthetic_data_dir)
  with config.unlocked():
    config.num_steps = 2
  train.train_and_evaluate(config, str(tmp_path))
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  config_json = (tmp_path / "config.json").read_text()
  with config.unlocked():
    config.model.frame_dim = 32
    config.num_steps = 4
  with pytest.raises(ckpt_lib.CheckpointMismatchError,
                     match="different model.*Nothing was overwritten"):
    train.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before
  assert (tmp_path / "config.json").read_text() == config_json


@pytest.mark.parametrize("field,value,named", [
    ("model.last_stride", 2, "model.last_stride: checkpoint 1, config 2"),
    ("model.neck_feat", "before", "model.neck_feat: checkpoint 'after'"),
    ("model.dtype", "bfloat16", "model.dtype: checkpoint 'float32'"),
    ("input.height", 24, "input.height: checkpoint 16, config 24"),
    ("input.clip_len", 3, "input.clip_len: checkpoint 2, config 3"),
])
def test_changed_model_setting_is_refused_by_name(field, value, named,
                                                  synthetic_data_dir,
                                                  tmp_path):
  """Settings that change no parameter shape are still part of the model."""
  config = _config(synthetic_data_dir)
  with config.unlocked():
    config.num_steps = 2
  run = train.setup(config, str(tmp_path))
  state, _, _ = train.restore_or_init(run)
  ckpt_lib.save(run.manager, 2, state, {"step": 2}, run.meta, force=True)
  run.manager.wait_until_finished()
  section, key = field.split(".")
  with config.unlocked():
    config[section][key] = value
  run = train.setup(config, str(tmp_path))
  with pytest.raises(ckpt_lib.CheckpointMismatchError) as e:
    train.restore_or_init(run)
  assert named in str(e.value) and "Nothing was overwritten" in str(e.value)


def test_changed_optimizer_gets_a_friendly_message(synthetic_data_dir,
                                                   tmp_path):
  config = _config(synthetic_data_dir)
  run = train.setup(config, str(tmp_path))
  state, _, _ = train.restore_or_init(run)
  ckpt_lib.save(run.manager, 2, state, {"step": 2}, run.meta, force=True)
  run.manager.wait_until_finished()
  with config.unlocked():
    config.optimizer.name = "sgd"
    config.optimizer.momentum = 0.9
  run = train.setup(config, str(tmp_path))
  with pytest.raises(ckpt_lib.CheckpointMismatchError,
                     match=r"another optimizer: optimizer.momentum: checkpoint"
                     r" '<unset>', config 0.9; optimizer.name: checkpoint "
                     r"'adam', config 'sgd'.*init_from.checkpoint"):
    train.restore_or_init(run)
  # A setting that keeps the state's layout resumes, and is said.
  with config.unlocked():
    config.optimizer.name = "adam"
    del config.optimizer["momentum"]
    config.optimizer.weight_decay = 1e-3
  run = train.setup(config, str(tmp_path))
  _, _, start = train.restore_or_init(run)
  assert start == 2


def test_restore_for_inference_reproduces_the_run_features(
    synthetic_data_dir, tmp_path):
  """A tool that only embeds: model, variables and config from the workdir
  alone give the features the run's evaluator saved."""
  from vreid_jax.evaluators import embedder as embedder_lib  # pylint: disable=g-import-not-at-top
  config = _config(synthetic_data_dir)
  with config.unlocked():
    config.num_steps = 2
    config.evals.reid.save_features = True
  train.train_and_evaluate(config, str(tmp_path))
  model, variables, restored = ckpt_lib.restore_for_inference(str(tmp_path))
  assert restored.model.to_dict() == config.model.to_dict()
  data = pipeline.open_dataset(restored.dataset, restored.data_dir)
  embedder = embedder_lib.Embedder(
      models.embed_fn(model), preprocess.InputSpec.from_config(
          restored.input), parallel.make_mesh())
  got = embedder.embed(variables, data, "query",
                       embedder_lib.EmbedPlan.from_config(restored.evals.reid))
  with np.load(tmp_path / "query_features.npz") as f:
    np.testing.assert_allclose(got, f["features"], rtol=1e-6, atol=1e-6)


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
  # `--config PATH:ARG` (space form) from another directory loads the file
  # (its `configs.common` import included) and reaches the same check.
  out = subprocess.run(
      [sys.executable, "-m", "vreid_jax.main", "--config",
       os.path.join(ROOT, "configs/demo.py:tiny"), f"--workdir={tmp_path}",
       "--config.input.clip_lenn=3"],
      cwd=tmp_path, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "clip_lenn" in out.stderr and "configs.common" not in out.stderr


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
    config.evals.reid.dataset.name = "mars"
    config.evals.reid.protocol = "matlab"
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["protocol"]["name"] == "mars/matlab"
  assert results["num_queries"] == 2
  # MARS has no motion twins: the demo's twin evaluator says so.
  assert "no motion-twin annotations" in results["motion_twins"]["skipped"]


@pytest.fixture(scope="module")
def flow_data_dir(tmp_path_factory):
  """synthetic_video_reid/tiny with a flow store for every split.

  The flow of frame t of a record is a uniform (t mod 5, -1) px field (no
  OpenCV needed): what matters here is that the model reads it.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from vreid_jax.datasets.synthetic_video_reid import synthetic_video_reid as syn  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import flow as flow_lib  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds_flow"))
  syn.SyntheticVideoReid(config="tiny", data_dir=data_dir).download_and_prepare(
      file_format="array_record")
  builder = tfds.builder("synthetic_video_reid/tiny", data_dir=data_dir)
  for split, index in builder.info.metadata["index"].items():
    num_frames = [int(n) for n in index["num_frames"]]
    records = [[flow_lib.encode_flow(np.full((64, 32, 2), [t % 5, -1.0]))
                for t in range(n)] for n in num_frames]
    flow_lib.write_flow_store(builder.data_dir, split, records, num_frames)
  return data_dir


def test_flow_config_trains_through_the_flow_path(flow_data_dir, tmp_path):
  config = _config(flow_data_dir)
  with config.unlocked():
    config.num_steps = 2
    config.input.with_flow = True
    config.model.use_flow = True
  run = train.setup(config, str(tmp_path))
  assert run.input_spec.keys == ("clips", "mask", "flow")
  state, _, _ = train.restore_or_init(run)
  before = jax.device_get(state.params["backbone"]["flow_conv1"]["kernel"])
  state = train.train_loop(run, state, None, 0)
  after = jax.device_get(state.params["backbone"]["flow_conv1"]["kernel"])
  assert np.abs(after - before).max() > 0, "the flow stem did not train"
  results = train.finish(run, state)  # Evaluation embeds with flow too.
  assert 0.0 <= results["mAP"] <= 1.0


def test_model_and_config_must_agree_on_flow(synthetic_data_dir, tmp_path):
  config = _config(synthetic_data_dir)
  with config.unlocked():
    config.model.use_flow = True
  with pytest.raises(ValueError, match="reads optical flow but config.input"
                     ".with_flow is False"):
    train.setup(config, str(tmp_path))
  with config.unlocked():
    config.model.use_flow = False
    config.input.with_flow = True
  with pytest.raises(ValueError, match="does not read flow"):
    train.setup(config, str(tmp_path))


def test_two_instances_of_one_loss_train_two_heads():
  """Two CE instances on two heads of one model, through the real step."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class TwoHeads(nn.Module):

    @nn.compact
    def __call__(self, inputs, *, train):
      del train
      x = inputs["clips"].mean(axis=(1, 2, 3))
      f = nn.Dense(6, name="body")(x)
      return f, {"features": f,
                 "logits_a": nn.Dense(4, name="head_a")(f),
                 "logits_b": nn.Dense(4, name="head_b")(nn.relu(f))}

  model = TwoHeads()
  spec = preprocess.InputSpec(height=8, width=4, clip_len=2)
  losses = losses_lib.resolve({
      "ce_a": {"type": "softmax_cross_entropy",
               "inputs": {"logits": "logits_a"}},
      "ce_b": {"type": "softmax_cross_entropy", "weight": 0.5,
               "inputs": {"logits": "logits_b"}}})
  tx = optax.sgd(0.1)
  variables = train.init_variables(model, jax.random.PRNGKey(0),
                                   preprocess.dummy_inputs(spec))
  state = train.create_train_state(variables, tx, jax.random.PRNGKey(1))
  rng = np.random.default_rng(0)
  batch = {"clips": rng.integers(0, 256, (4, 2, 8, 4, 3), dtype=np.uint8),
           "mask": np.ones((4, 2), bool),
           "labels": np.array([0, 1, 2, 3], np.int32)}
  new, metrics = jax.jit(functools.partial(
      train.train_step, model=model, tx=tx, losses=losses,
      schedule=optax.constant_schedule(0.1), input_spec=spec))(state, batch)
  assert {"loss/ce_a", "loss/ce_b"} <= set(metrics)
  np.testing.assert_allclose(
      metrics["loss"], metrics["loss/ce_a"] + 0.5 * metrics["loss/ce_b"],
      rtol=1e-6)
  for head in ("head_a", "head_b"):
    assert np.abs(new.params[head]["kernel"]
                  - variables["params"][head]["kernel"]).max() > 0, head


def test_loop_runs_hooks_and_saves_where_the_manager_says(synthetic_data_dir,
                                                          tmp_path):
  config = _config(synthetic_data_dir)
  with config.unlocked():
    config.num_steps = 5
    config.checkpoint.every_steps = 2
  run = train.setup(config, str(tmp_path))
  state, it, start = train.restore_or_init(run)
  seen = []
  hook = train.Periodic(1, lambda s, st: seen.append((s, int(st.step))))
  train.train_loop(run, state, it, start, hooks=[hook])
  assert seen == [(s, s) for s in range(1, 6)]
  # Every 2 steps (orbax's should_save), and the last step.
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4", "5"]
  run.writer.close()


def test_motion_twins_config_reports_the_twin_pair_metric(synthetic_data_dir,
                                                          tmp_path):
  """configs/motion_twins.py (runlocal: the tiny world): twin-pair mAP in
  metrics.json; the 3D CNN has no frame weights, said by the attention
  evaluator; the shuffled control trains on permuted clips."""
  config = config_utils.load_config(
      os.path.join(ROOT, "configs/motion_twins.py:runlocal"))
  with config.unlocked():
    config.data_dir = synthetic_data_dir
    config.num_steps = 2
  res = train.train_and_evaluate(config, str(tmp_path / "c3d"))
  assert 0.0 <= res["motion_twins"]["pair_mAP"] <= 1.0
  assert "no per-frame attention" in res["attention"]["skipped"]
  config = config_utils.load_config(
      os.path.join(ROOT, "configs/motion_twins.py:avg,shuffled,runlocal"))
  assert config.input.shuffle_frames and config.model_name == "baseline"


def test_remat_and_norm_impl_may_change_on_resume():
  """Rematerialisation and the BatchNorm implementation change how a model
  runs, not what it computes (a checkpoint written before `norm_impl`
  existed resumes too)."""
  meta = {"model_name": "gltr", "model": {"width": 8, "remat": False},
          "param_shapes": {}}
  now = dict(meta, model={"width": 8, "remat": True})
  assert ckpt_lib.check_meta(meta, now, "/w", 3) == []
  fused = dict(meta, model={"width": 8, "remat": False, "norm_impl": "fused"})
  assert ckpt_lib.check_meta(meta, fused, "/w", 3) == []
  assert ckpt_lib.check_meta(
      dict(meta, model={"width": 8, "norm_impl": "flax"}), fused, "/w", 3) == []
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match="model.width"):
    ckpt_lib.check_meta(meta, dict(now, model={"width": 16, "remat": True}),
                        "/w", 3)


def test_global_norm_equals_optax_tree_norm():
  """The grad_norm metric: one reduction over all leaves, optax's value."""
  rng = np.random.default_rng(0)
  tree = {"a": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
          "b": {"c": jnp.asarray(rng.normal(size=(5,)), jnp.bfloat16),
                "d": jnp.asarray(rng.normal(size=(2, 2, 2)), jnp.float32)}}
  want = optax.tree.norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))
  np.testing.assert_allclose(train.global_norm(tree), want, rtol=1e-6)
  assert train.global_norm({}) == 0.0
