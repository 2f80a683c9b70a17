"""benchmarks/train_throughput.py and benchmarks/torch_reference.py.

The JAX measurement runs in-process at tiny widths; the PyTorch side (the
`torch` extra) is skipped where torch is not installed (CI).
"""

import importlib.util
import json
import pathlib

import pytest

from vreid_jax import config_utils

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = {"config": "configs/gltr_mars.py", "batch": 2, "clip_len": 4,
        "height": 32, "width": 16, "model_width": 8, "steps": 1,
        "warmup": 1}
HAS_TORCH = importlib.util.find_spec("torch") is not None


def _load(name):
  spec = importlib.util.spec_from_file_location(
      name, ROOT / "benchmarks" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def bench():
  return _load("train_throughput")


def test_jax_job_reports_speed_flops_memory_and_mfu(bench):
  res = bench.jax_job(dict(TINY, framework="jax", dtype="float32",
                           peak_tflops=1.0))
  assert res["batch"] % res["devices"] == 0 and res["batch"] >= 2
  assert res["frames_per_step"] == res["batch"] * 4 and res["model"] == "gltr"
  for key in ("compile_s", "train_fps", "infer_fps", "peak_mib",
              "train_gflop_per_frame", "infer_gflop_per_frame"):
    assert res[key] > 0, key
  # Forward + backward (data and filter gradients) ~ 3x the forward pass.
  ratio = res["train_gflop_per_frame"] / res["infer_gflop_per_frame"]
  assert 2.5 < ratio < 3.5, ratio
  expected = res["train_gflop_per_frame"] * 1e9 * res["train_fps"] / 1e12
  # Against the 1 TFLOP/s per device given.
  assert res["mfu"] == pytest.approx(expected / res["devices"])


def test_model_flops_counts_convolutions_and_matmuls(bench):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  x, k = jnp.ones((2, 8, 6, 3)), jnp.ones((3, 3, 3, 5))
  m, n = jnp.ones((4, 7)), jnp.ones((7, 9))

  def f(x, k, m, n):
    y = lax.conv_general_dilated(x, k, (2, 1), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.sum() + jax.jit(jnp.dot)(m, n).sum()  # A nested jaxpr too.

  conv = 2 * (2 * 4 * 6 * 5) * (3 * 3 * 3)  # 2 x outputs x (I x window).
  assert bench.model_flops(jax.make_jaxpr(f)(x, k, m, n)) == conv + 2 * 4 * 9 * 7
  scan = jax.make_jaxpr(lambda m: lax.scan(lambda c, _: (c @ n[:, :7], None),
                                           m, None, length=5)[0])(m)
  assert bench.model_flops(scan) == 5 * 2 * 4 * 7 * 7


def test_peak_table_and_random_batch(bench):
  assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4
  assert bench.peak_tflops("NVIDIA H100 PCIe", "float32") == 378.0
  assert bench.peak_tflops("NVIDIA H200", "float32") == 494.7
  assert bench.peak_tflops("cpu", "bfloat16") is None
  assert bench.peak_tflops("cpu", "bfloat16", 2.0) == 2.0
  a = bench.random_batch(2, 3, 8, 4, with_flow=True)
  b = bench.random_batch(2, 3, 8, 4, with_flow=True)
  assert a["clips"].dtype.name == "uint8" and a["mask"].all()
  assert a["flow"].shape == (2, 3, 8, 4, 2)
  assert all((a[k] == b[k]).all() for k in a)  # Seeded: both frameworks.


def test_every_family_config_loads(bench):
  for key, (_, path, fields) in bench.FAMILIES.items():
    config = bench.load_config({"config": path, "dtype": "bfloat16",
                                "model": fields})
    assert config.model.dtype == "bfloat16", key


def test_flag_errors(bench, monkeypatch, capsys):
  with pytest.raises(SystemExit):
    bench.main(["--dtypes=float16"])
  assert "--dtypes" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    bench.main(["--models=nope", "--steps=1"])
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda n, *a: None if n == "torch" else real(n, *a))
  with pytest.raises(SystemExit):
    bench.main(["--compare_torch"])
  assert "pip install -e '.[torch]'" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_TORCH, reason="needs the torch extra")
@pytest.mark.parametrize("temporal,tensors", [("gltr", 291), ("avg", 274)])
def test_torch_reference_computes_our_model(temporal, tensors):
  """Every JAX variable mapped into the reference; same embeddings."""
  ref = _load("torch_reference")
  config = config_utils.load_config(str(ROOT / "configs/gltr_mars.py"))
  with config.unlocked():
    config.model.width, config.model.temporal = 8, temporal
    config.input.height, config.input.width, config.input.clip_len = 32, 16, 8
  out = ref.check(config, batch=2)
  assert out["mapped_tensors"] == tensors
  assert out["max_rel_diff"] < 1e-5
  assert out["loss_rel_diff"] < 1e-3


@pytest.mark.skipif(not HAS_TORCH, reason="needs the torch extra")
def test_compare_torch_prints_both_and_ratios(bench, capsys, tmp_path):
  out = tmp_path / "r.json"
  assert bench.main(["--compare_torch", "--dtypes=float32", "--batch=2",
                     "--clip_len=4", "--height=32", "--width=16",
                     "--model_width=8", "--steps=1", "--warmup=1",
                     "--repeats=1", f"--json_out={out}"]) == 0
  last = capsys.readouterr().out.strip().splitlines()[-1]
  result = json.loads(last)
  assert result == json.loads(out.read_text())
  r = result["ratios"]["float32"]
  assert r["jax_train_fps"] > 0 and r["torch_train_fps"] > 0
  assert r["train_jax_over_torch"] == pytest.approx(
      r["jax_train_fps"] / r["torch_train_fps"])
  assert result["torch"]["float32"]["runs"][0]["framework"] == "torch"
