"""benchmarks/extract_bench.py: flags, and a tiny run of both sides."""

import importlib.util
import json
import pathlib

import pytest

BENCH = (pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
         / "extract_bench.py")


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("extract_bench", BENCH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_flags(bench):
  args = bench.parse_args([])
  assert args.batch_sizes == [1, 4]
  assert (args.clip_len, args.height, args.width) == (8, 256, 128)
  assert (args.dtype, args.device, args.arch) == ("float32", "auto",
                                                  "resnet50")
  args = bench.parse_args(["--batch_sizes=1,2", "--clip_len=4",
                           "--dtype=bfloat16", "--threads=1"])
  assert args.batch_sizes == [1, 2] and args.clip_len == 4
  for bad in (["--batch_sizes=0"], ["--batch_sizes=a"], ["--iters=0"],
              ["--dtype=float16"]):
    with pytest.raises(SystemExit):
      bench.parse_args(bad)


def test_tiny_run(bench, capsys):
  torch = bench.import_torch()
  threads = torch.get_num_threads() if torch is not None else None
  try:
    code = bench.main([
        "--arch=resnet18", "--base_width=8", "--height=32", "--width=16",
        "--clip_len=2", "--batch_sizes=1", "--warmup=0", "--iters=1",
        "--device=cpu"])
  finally:
    if torch is not None:
      torch.set_num_threads(threads)
  out = capsys.readouterr().out
  result = json.loads(out.strip().splitlines()[-1])
  assert code == 0
  (row,) = result["results"]
  assert row["clip_len"] == 2 and row["batch"] % result["jax_devices"] == 0
  assert row["jax_fps"] > 0
  assert result["mars_test"]["frames"] == 681_089
  if torch is None:
    assert "timing the JAX side only" in out
    assert result["numerics"] is None
  else:
    # Same weights (the torch .pth through baseline.load): same embeddings.
    assert result["numerics"]["relative"] < 1e-4
    assert row["torch_fps"] > 0 and "ratio" in row
