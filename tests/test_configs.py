"""Every config file loads, locks, and builds its model."""

import glob
import os

import jax
import jax.numpy as jnp
import pytest

from vreid_jax import config_utils
from vreid_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPERS = {"__init__.py", "common.py", "gltr_common.py"}
CONFIGS = sorted(os.path.basename(p) for p in glob.glob(
    os.path.join(ROOT, "configs", "*.py")) if os.path.basename(p) not in
                 HELPERS)
VARIANTS = {"demo.py": ["", "tiny"]}
DEFAULT_VARIANTS = ["", "stage1", "runlocal", "stage1_runlocal"]


def _cases():
  for name in CONFIGS:
    for variant in VARIANTS.get(name, DEFAULT_VARIANTS):
      yield name, variant


def test_there_are_configs():
  assert "demo.py" in CONFIGS
  for name in ("gltr_mars.py", "gltr_duke.py", "gltr_lsvid.py",
               "gltr_prid.py", "gltr_ilids.py"):
    assert name in CONFIGS


@pytest.mark.parametrize("name,variant", list(_cases()))
def test_config_loads_and_builds_model(name, variant):
  path = os.path.join(ROOT, "configs", name) + (f":{variant}" if variant
                                                 else "")
  config = config_utils.load_config(path)
  config_utils.check_config(config)
  with pytest.raises(AttributeError):
    config.no_such_field = 1  # Locked: a typo fails.
  model = train.build_model(config, num_classes=7)
  shape = (2, config.input.clip_len, config.input.height, config.input.width,
           3)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape),
                         jnp.ones(shape[:2], bool), train=False))
  out = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros(shape), jnp.ones(shape[:2], bool),
                            train=False), variables)
  embedding, aux = out
  assert embedding.shape[0] == 2 and embedding.ndim == 2
  assert aux["logits"].shape == (2, 7)


def test_bad_variant_is_named():
  with pytest.raises(ValueError, match="variants"):
    config_utils.load_config(os.path.join(ROOT, "configs", "gltr_mars.py:x"))
