"""The whole config is checked at start-up (`config_utils.check_config`),
in-process and without training: every enum-like field against the values
its consumer accepts, each refusal one line naming the field and them."""

import os

import pytest

from vreid_jax import config_utils
from vreid_jax import evaluation
from vreid_jax import train
from vreid_jax.evaluation import distances
from vreid_jax.evaluators import embedder
from vreid_jax.evaluators import reid
from vreid_jax.input_pipeline import pipeline
from vreid_jax.input_pipeline import sampling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name="demo.py:tiny", **fields):
  config = config_utils.load_config(os.path.join(ROOT, "configs", name))
  with config.unlocked():
    for field, value in fields.items():
      *path, key = field.split(".")
      node = config
      for part in path:
        node = node[part]
      node[key] = value
  return config


def _refused(config) -> str:
  with pytest.raises(config_utils.ConfigError) as e:
    config_utils.check_config(config)
  message = str(e.value)
  assert "\n" not in message
  return message


def test_shipped_demo_config_passes():
  config_utils.check_config(_config())


@pytest.mark.parametrize("field,value,allowed,hint", [
    ("evals.reid.mode", "every", embedder.MODES, "every_frame"),
    ("evals.reid.metric", "cos", distances.METRICS, "cosine"),
    ("evals.reid.ap", "trap", evaluation.AP_DEFINITIONS, "trapezoid"),
    ("input.clip_sampling", "even", sampling.CLIP_MODES, "evenly"),
    ("input.pk_epoch", "id", sampling.PK_EPOCHS, "ids"),
    ("input.on_bad_frame", "ignore", pipeline.ON_BAD_FRAME, None),
])
def test_enum_field_names_field_value_and_allowed_values(field, value,
                                                         allowed, hint):
  """The allowed values are the consumer's own list (one source)."""
  message = _refused(_config(**{field: value}))
  assert message.startswith(
      f"config.{field}={value!r} is not one of {'|'.join(allowed)}")
  if hint:
    assert f"did you mean {hint!r}" in message


def test_eval_mode_message_matches_the_issue():
  assert _refused(_config(**{"evals.reid.mode": "every"})).startswith(
      "config.evals.reid.mode='every' is not one of "
      "all|dense|every_frame|evenly")


def test_protocol_is_checked_against_the_evaluated_dataset():
  """--config.evals.reid.protocol=standard on iLIDS-VID used to run and
  label its result mars/standard."""
  message = _refused(_config("gltr_ilids.py",
                             **{"evals.reid.protocol": "standard"}))
  assert message.startswith(
      "config.evals.reid.protocol='standard' is not one of given")
  assert "ilids_vid" in message
  # MARS has its gallery variants.
  assert config_utils.eval_protocols("mars") == reid.PROTOCOLS
  config_utils.check_config(_config("gltr_mars.py",
                                    **{"evals.reid.protocol": "standard"}))
  # A cross-dataset evaluator is checked against its own dataset.
  config_utils.check_config(_config(**{"evals.reid.dataset.name": "mars",
                                       "evals.reid.protocol": "matlab"}))
  assert "synthetic_video_reid" in _refused(
      _config(**{"evals.reid.protocol": "matlab"}))


def test_optimizer_and_schedule_names_and_options():
  message = _refused(_config(**{"optimizer.name": "adma"}))
  assert message.startswith("config.optimizer.name='adma' is not one of ")
  assert "|adam|" in message and "|sgd|" in message
  assert "'adam'" in message.split("did you mean")[1]
  assert _refused(_config(**{"schedule.name": "cosin"})).startswith(
      "config.schedule.name='cosin' is not one of constant|cosine|step "
      "(did you mean 'cosine'?)")
  # Options the optax function or the schedule does not take.
  message = _refused(_config(**{"optimizer.momentum": 0.9}))
  assert "config.optimizer (optax.adam)" in message and "momentum" in message
  assert "b1, b2" in message
  message = _refused(_config(**{"schedule.name": "constant"}))
  assert "config.schedule (name='constant')" in message
  assert "warmup_epochs" in message


def test_losses_models_datasets_and_evaluators_by_name():
  assert "unknown loss type 'triplet'" in _refused(
      _config(**{"losses.batch_hard_triplet.type": "triplet"}))
  assert "has no option(s) ['marign']" in _refused(
      _config(**{"losses.batch_hard_triplet.marign": 0.3}))
  assert _refused(_config(model_name="gltrr")).startswith(
      "config.model_name='gltrr'")
  assert _refused(_config(**{"dataset.name": "ilids"})).startswith(
      "config.dataset.name='ilids' is not one of synthetic_video_reid|mars|")
  assert "config.evals.reid.dataset.trial=-1" in _refused(
      _config(**{"evals.reid.dataset.name": "ilids_vid"}))
  assert "config.main_eval='x'" in _refused(_config(main_eval="x"))
  assert "motion_twins.source='y'" in _refused(
      _config(**{"evals.motion_twins.source": "y"}))
  assert "config.evals.reid.type='reidd'" in _refused(
      _config(**{"evals.reid.type": "reidd"}))


def test_setup_refuses_before_touching_the_workdir(tmp_path):
  """A typo fails at start, before the workdir, the dataset or a compile."""
  workdir = tmp_path / "run"
  with pytest.raises(config_utils.ConfigError, match="evals.reid.mode"):
    train.setup(_config(**{"evals.reid.mode": "every"}), str(workdir))
  assert not workdir.exists()
