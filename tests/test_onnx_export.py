"""ONNX export (`vreid_jax.onnx_export`): the demo's tiny model converts with
symbolic batch and clip length and matches JAX under onnxruntime; a model
with a primitive jax2onnx lacks fails naming it.

Needs the `onnx` extra (jax2onnx, onnxruntime); skipped without it, except
the check that a missing jax2onnx gives the install command.
"""

import os
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from vreid_jax import config_utils
from vreid_jax import models
from vreid_jax import onnx_export
from vreid_jax import train
from vreid_jax.input_pipeline import preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def runtime():
  pytest.importorskip("jax2onnx")
  return pytest.importorskip("onnxruntime")


def _inputs(spec, b, t, seed):
  rng = np.random.default_rng(seed)
  mask = np.ones((b, t), bool)
  mask[0, t - 1] = False  # a padded frame
  return {"clips": rng.standard_normal(
      (b, t, spec.height, spec.width, 3)).astype(np.float32), "mask": mask}


@pytest.fixture(scope="module")
def demo_export(runtime, tmp_path_factory):
  del runtime
  config = config_utils.load_config(
      os.path.join(ROOT, "configs", "demo.py") + ":tiny")
  spec = preprocess.InputSpec.from_config(config.input)
  model = models.build_model(config.model_name, 7, config.model)
  variables = train.init_variables(model, jax.random.PRNGKey(0),
                                   preprocess.dummy_inputs(spec))
  embed = models.embed_fn(model)
  path = str(tmp_path_factory.mktemp("onnx") / "demo.onnx")
  report = onnx_export.to_onnx(embed, variables, _inputs(spec, 2, 2, 0), path,
                               model_name=config.model_name)
  return spec, embed, variables, path, report


def test_demo_model_converts_with_symbolic_batch_and_time(demo_export,
                                                          runtime):
  _, _, _, path, report = demo_export
  assert report["path"] == path and os.path.exists(path)
  assert report["dynamic_batch"] and report["dynamic_time"], report
  assert report["opset"] >= 13 and report["seconds"] > 0
  sess = runtime.InferenceSession(path, providers=["CPUExecutionProvider"])
  ins = {i.name: i.shape for i in sess.get_inputs()}
  assert ins == {"clips": ["B", "T", 16, 8, 3], "mask": ["B", "T"]}
  assert [o.name for o in sess.get_outputs()] == ["embedding"]


def test_demo_model_matches_jax_for_two_batch_sizes_and_clip_lengths(
    demo_export):
  spec, embed, variables, path, _ = demo_export
  cases = [_inputs(spec, b, t, seed=b * 10 + t)
           for b in (1, 3) for t in (2, 5)]
  jitted = jax.jit(embed)
  expected = [np.asarray(jitted(variables, x)) for x in cases]
  result = onnx_export.check_onnx(path, cases, expected, atol=1e-4)
  assert result["shapes"] == [(1, 2), (1, 5), (3, 2), (3, 5)]
  assert max(result["max_abs_err"]) <= 1e-4
  # A wrong reference fails loudly.
  with pytest.raises(AssertionError, match="max abs error"):
    onnx_export.check_onnx(path, cases[:1], [expected[0] + 1.0])


class _HostCallbackHead(nn.Module):
  """A tiny model with a host callback (`pure_callback`), which jax2onnx
  cannot lower."""

  @nn.compact
  def __call__(self, inputs):
    x = nn.Dense(4, name="fc")(inputs["clips"].mean(axis=(1, 2, 3)))
    return jax.pure_callback(np.tanh, jax.ShapeDtypeStruct(x.shape, x.dtype),
                             x)


def test_unsupported_primitive_raises_naming_it(runtime, tmp_path):
  del runtime
  model = _HostCallbackHead()
  inputs = {"clips": np.ones((2, 2, 4, 4, 3), np.float32),
            "mask": np.ones((2, 2), bool)}
  variables = model.init(jax.random.PRNGKey(0), inputs)
  with pytest.raises(onnx_export.OnnxConversionError,
                     match="pure_callback") as info:
    onnx_export.to_onnx(model.apply, variables, inputs,
                        str(tmp_path / "bad.onnx"), model_name="callback_head")
  assert info.value.primitive == "pure_callback"
  assert info.value.model_name == "callback_head"
  assert "'callback_head'" in str(info.value)


def test_missing_jax2onnx_names_the_install_command(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "jax2onnx", None)  # import fails
  with pytest.raises(ImportError, match=r"pip install -e '\.\[onnx\]'"):
    onnx_export.to_onnx(lambda v, x: x["clips"], {},
                        {"clips": np.zeros((1, 1, 2, 2, 3), np.float32),
                         "mask": np.ones((1, 1), bool)},
                        str(tmp_path / "x.onnx"), model_name="m")
