"""Two JAX processes (jax.distributed, gloo CPU collectives) = one process."""

import json
import os
import socket
import subprocess
import sys

import xla_env  # tests/

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env():
  """Each process: 2 CPU devices, gloo collectives between processes."""
  return xla_env.env(2, JAX_PLATFORMS="cpu",
                     JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")


def _flags(workdir, data_dir):
  return [sys.executable, "-m", "vreid_jax.main",
          "--config=configs/demo.py:tiny", f"--workdir={workdir}",
          f"--config.data_dir={data_dir}", "--config.num_steps=4"]


def test_two_processes_match_one(synthetic_data_dir, tmp_path):
  env = _env()
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


def test_sigterm_to_one_process_stops_both_at_the_same_step(
    synthetic_data_dir, tmp_path):
  """JAX's preemption sync point: a SIGTERM to process 1 alone makes both
  processes checkpoint the same step together and exit 0."""
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  env = _env()
  port = _free_port()
  workdir = tmp_path / "multi"
  procs = [subprocess.Popen(
      _flags(workdir, synthetic_data_dir) + [
          "--config.num_steps=200", "--config.checkpoint.every_steps=2",
          "--config.distributed.initialize=True",
          f"--config.distributed.coordinator_address=localhost:{port}",
          "--config.distributed.num_processes=2",
          f"--config.distributed.process_id={i}"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  first = workdir / "checkpoints" / "2" / "_CHECKPOINT_METADATA"
  deadline = time.time() + 300
  while not first.exists():
    assert all(p.poll() is None for p in procs), "a process ended early"
    assert time.time() < deadline
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=300) for p in procs]
  steps = []
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
    line = [l for l in out.splitlines() if l.startswith("preempted at step")]
    assert line, out[-2000:] + err[-2000:]
    steps.append(int(line[0].split()[3].rstrip(",")))
  assert steps[0] == steps[1] < 200
  assert (workdir / "checkpoints" / str(steps[0]) / "_CHECKPOINT_METADATA"
          ).exists()
  assert not (workdir / "metrics.json").exists()
