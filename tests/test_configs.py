"""Every config file loads with every variant, locks, and builds its model.

Configs are found by globbing configs/*.py; a file with a `get_config` is an
experiment config and its `VARIANTS` (config_utils.Variants) say which
args to try, so a new config file needs no edit here.
"""

import glob
import json
import os

import jax
import pytest

from vreid_jax import config_utils
from vreid_jax import losses as losses_lib
from vreid_jax import models
from vreid_jax.input_pipeline import preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_modules():
  out = {}
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
    module = config_utils.load_config_module(path)
    if hasattr(module, "get_config") and hasattr(module, "VARIANTS"):
      out[os.path.basename(path)] = module
  return out


MODULES = _config_modules()


def _cases():
  for name, module in MODULES.items():
    for arg in module.VARIANTS.examples():
      yield name, arg


def test_there_are_configs():
  for name in ("demo.py", "gltr_mars.py", "gltr_duke.py", "gltr_lsvid.py",
               "gltr_prid.py", "gltr_ilids.py"):
    assert name in MODULES
  # Every file with a get_config declares its variants.
  for path in glob.glob(os.path.join(ROOT, "configs", "*.py")):
    module = config_utils.load_config_module(path)
    if hasattr(module, "get_config") and os.path.basename(path) != (
        "common.py"):
      assert isinstance(getattr(module, "VARIANTS", None),
                        config_utils.Variants), path


# Model traces shared between configs that build the same model on the same
# inputs (the same row on several datasets, a flag that changes only the
# recipe): tracing is most of this test's time.
_TRACED = {}


def _trace(config):
  """(embedding shape, aux shapes) of the config's model on 2 dummy clips,
  with 7 classes; one trace per distinct model, model config and inputs."""
  spec = preprocess.InputSpec.from_config(config.input)
  key = json.dumps([config.model_name, config.model.to_dict(), repr(spec)],
                   sort_keys=True, default=str)
  if key not in _TRACED:
    model = models.build_model(config.model_name, 7, config.model)
    preprocess.check_model_inputs(models.input_keys(model), spec,
                                  config.model_name)
    inputs = jax.eval_shape(lambda: preprocess.dummy_inputs(spec, 2))
    (embedding, aux), _ = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.PRNGKey(0), x,
                                         train=False), inputs)
    _TRACED[key] = (embedding.shape, {k: v.shape for k, v in aux.items()})
  return _TRACED[key]


@pytest.mark.parametrize("name,arg", list(_cases()))
def test_config_loads_and_builds_model(name, arg):
  path = os.path.join(ROOT, "configs", name) + (f":{arg}" if arg else "")
  config = config_utils.load_config(path)
  config_utils.check_config(config)
  with pytest.raises(AttributeError):
    config.no_such_field = 1  # Locked: a typo fails.
  embedding_shape, aux_shapes = _trace(config)
  assert embedding_shape[0] == 2 and len(embedding_shape) == 2
  assert aux_shapes["logits"] == (2, 7)
  # Every loss finds its inputs.
  losses_lib.check_sources(losses_lib.resolve(config.losses.to_dict()),
                           aux_shapes.keys(), ("labels", "pids", "camids"))
  assert config.main_eval in config.evals


def test_bad_variant_is_named():
  with pytest.raises(ValueError, match="unknown variant 'x'.*rows stage2, "
                     "stage1; flags runlocal"):
    config_utils.load_config(os.path.join(ROOT, "configs", "gltr_mars.py:x"))


def test_variants_parser():
  v = config_utils.Variants(rows=("ta", "tp_avg"), flags=("runlocal",),
                            trial=-1, lr=0.1)
  got = v.parse("tp_avg,runlocal,trial=3")
  assert (got.row, got.runlocal, got.trial, got.lr) == ("tp_avg", True, 3,
                                                        0.1)
  got = v.parse(None)
  assert (got.row, got.runlocal, got.trial) == ("ta", False, -1)
  with pytest.raises(ValueError, match="two rows"):
    v.parse("ta,tp_avg")
  with pytest.raises(ValueError, match="trial: expected a int"):
    v.parse("trial=x")
  with pytest.raises(ValueError, match="unknown argument 'lrr'"):
    v.parse("lrr=1")
  assert list(v.examples()) == ["", "ta", "tp_avg", "runlocal",
                                "tp_avg,runlocal"]
  with pytest.raises(ValueError, match="used twice"):
    config_utils.Variants(rows=("runlocal",))


def _one_config_per_model():
  """The first config file (sorted) of each model module."""
  out = {}
  for name in sorted(MODULES):
    model_name = config_utils.load_config(
        os.path.join(ROOT, "configs", name)).model_name
    out.setdefault(model_name, name)
  return sorted(out.values())


@pytest.mark.parametrize("name", _one_config_per_model())
def test_summary_cli_works_for_every_model(name, capsys):
  """`python -m vreid_jax.summary` on a config of every model (its small
  variant); the summary reads only the model and input configs, which
  test_config_loads_and_builds_model checks for every config."""
  import json  # pylint: disable=g-import-not-at-top
  from vreid_jax import summary  # pylint: disable=g-import-not-at-top
  module = MODULES[name]
  flag = next((f for f in ("runlocal", "tiny") if f in module.VARIANTS.flags),
              "")
  summary.main([f"--config={os.path.join(ROOT, 'configs', name)}:{flag}",
                "--num_classes=3", "--json"])
  got = json.loads(capsys.readouterr().out)
  assert got["params"] == sum(got["params_by_module"].values()) > 0
  assert got["embedding_dim"] > 0 and got["flops_per_clip"] > 0
  assert got["aux"]["logits"][-1] == 3
