"""Two JAX processes (jax.distributed, gloo CPU collectives) = one process."""

import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _flags(workdir, data_dir):
  return [sys.executable, "-m", "vreid_jax.main",
          "--config=configs/demo.py:tiny", f"--workdir={workdir}",
          f"--config.data_dir={data_dir}", "--config.num_steps=4"]


def test_two_processes_match_one(synthetic_data_dir, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  single = tmp_path / "single"
  subprocess.run(_flags(single, synthetic_data_dir), cwd=ROOT, env=env,
                 check=True, capture_output=True, timeout=600)
  port = _free_port()
  multi = tmp_path / "multi"
  procs = [subprocess.Popen(
      _flags(multi, synthetic_data_dir) + [
          "--config.distributed.initialize=True",
          f"--config.distributed.coordinator_address=localhost:{port}",
          "--config.distributed.num_processes=2",
          f"--config.distributed.process_id={i}"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "Devices: 4 x cpu, processes: 2" in outs[0][0]
  a = json.loads((single / "metrics.json").read_text())
  b = json.loads((multi / "metrics.json").read_text())
  # 2 devices vs 2 x 2 devices: the same global batch and program, up to
  # float summation order.
  assert abs(a["mAP"] - b["mAP"]) < 1e-3
  assert sorted(os.listdir(multi / "checkpoints")) == ["2", "4"]
