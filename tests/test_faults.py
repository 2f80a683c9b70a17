"""Faults injected for real: signals to a real CLI process, bytes truncated
on disk, interrupted saves, an unwritable checkpoint directory, a disk too
small, a live run holding the workdir, a broken JPEG inside a built
dataset. Each run that resumes must end with the metrics of an
uninterrupted run (batches are a pure function of (seed, step)); after a
SIGTERM and resume, its final parameters too, bit for bit.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import pytest

from vreid_jax import checkpoint as ckpt_lib
from vreid_jax import config_utils
from vreid_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8


def _main(workdir, data_dir, *flags):
  return [sys.executable, "-m", "vreid_jax.main",
          "--config=configs/demo.py:tiny", f"--workdir={workdir}",
          f"--config.data_dir={data_dir}", f"--config.num_steps={STEPS}",
          "--config.checkpoint.every_steps=2", *flags]


def _run(workdir, data_dir):
  return subprocess.run(_main(workdir, data_dir), cwd=ROOT, check=False,
                        capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def baseline(synthetic_data_dir, tmp_path_factory):
  """An uninterrupted run: (workdir, metrics)."""
  workdir = tmp_path_factory.mktemp("baseline") / "run"
  out = _run(workdir, synthetic_data_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "6", "8"]
  assert (workdir / "config.json").exists()
  assert any(f.startswith("events") for f in os.listdir(workdir))
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert set(metrics["cmc"]) == {"1", "5", "10", "20"}
  return workdir, metrics


def _same_metrics(workdir, want):
  got = json.loads((workdir / "metrics.json").read_text())
  assert got["mAP"] == want["mAP"]
  assert got["cmc"] == want["cmc"]
  assert got["step"] == want["step"] == STEPS


def _start_and_wait_for_checkpoint(workdir, data_dir, step=2):
  proc = subprocess.Popen(_main(workdir, data_dir), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  ckpt = workdir / "checkpoints" / str(step)
  deadline = time.time() + 300
  while not (ckpt / "_CHECKPOINT_METADATA").exists():
    assert proc.poll() is None, "the run ended before its first checkpoint"
    assert time.time() < deadline
    time.sleep(0.05)
  return proc


def test_live_workdir_refused_then_sigkill_and_rerun_resumes_identically(
    baseline, synthetic_data_dir, tmp_path):
  """A second run on a live workdir is refused naming the holder; the holder
  is SIGKILLed; the rerun takes over its stale lock, resumes from its last
  checkpoint and ends with the uninterrupted run's metrics."""
  _, want = baseline
  killed = tmp_path / "killed"
  proc = _start_and_wait_for_checkpoint(killed, synthetic_data_dir)
  try:
    t0 = time.monotonic()
    second = _run(killed, synthetic_data_dir)
    assert second.returncode == 1
    assert f"pid {proc.pid}" in second.stderr, second.stderr[-2000:]
    assert "error: " in second.stderr and "Traceback" not in second.stderr
    assert time.monotonic() - t0 < 60
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
  assert not (killed / "metrics.json").exists()
  out = _run(killed, synthetic_data_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Resuming from step" in out.stdout
  assert "stale" in out.stdout + out.stderr
  assert f"pid {proc.pid}" in out.stdout + out.stderr
  _same_metrics(killed, want)


def test_sigterm_checkpoints_the_step_exits_0_and_resumes(
    baseline, synthetic_data_dir, tmp_path):
  sig = signal.SIGTERM
  _, want = baseline
  workdir = tmp_path / "preempted"
  proc = _start_and_wait_for_checkpoint(workdir, synthetic_data_dir)
  t0 = time.monotonic()
  proc.send_signal(sig)
  stdout, stderr = proc.communicate(timeout=300)
  seconds = time.monotonic() - t0
  assert proc.returncode == 0, stderr[-3000:]
  line = [l for l in stdout.splitlines() if l.startswith("preempted at step")]
  assert line, stdout[-2000:]
  step = int(line[0].split()[3].rstrip(","))
  assert "checkpoint saved" in line[0]
  assert signal.Signals(sig).name in line[0]
  # The signalled step is the newest checkpoint, complete on disk.
  steps = sorted(int(d) for d in os.listdir(workdir / "checkpoints")
                 if d.isdigit())
  assert steps[-1] == step and 2 <= step < STEPS
  assert (workdir / "checkpoints" / str(step) / "_CHECKPOINT_METADATA"
          ).exists()
  assert not (workdir / "metrics.json").exists()
  assert seconds < 60
  out = _run(workdir, synthetic_data_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"Resuming from step {step}" in out.stdout
  _same_metrics(workdir, want)
  # Not only the metrics: the final parameters are bit-identical.
  import numpy as np  # pylint: disable=g-import-not-at-top
  a = ckpt_lib.restore_params(str(baseline[0]))
  b = ckpt_lib.restore_params(str(workdir))
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])


def _largest_file(folder):
  files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
  return max(files, key=os.path.getsize)


def test_corrupt_latest_checkpoint_falls_back_and_is_kept(
    baseline, synthetic_data_dir, tmp_path):
  """A truncated array file in the newest checkpoint, and the temporary
  folder of an interrupted save: both named and moved aside, the run
  resumes from the newest good checkpoint and ends identically."""
  src, want = baseline
  workdir = tmp_path / "corrupt"
  shutil.copytree(src, workdir)
  os.remove(workdir / "metrics.json")
  newest = workdir / "checkpoints" / str(STEPS)
  victim = _largest_file(newest / "state")
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 2)
  tmp = workdir / "checkpoints" / f"{STEPS + 2}.orbax-checkpoint-tmp-123"
  (tmp / "state").mkdir(parents=True)
  (tmp / "state" / "half").write_bytes(b"\0" * 100)
  out = _run(workdir, synthetic_data_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  text = out.stdout + out.stderr
  assert f"checkpoint of step {STEPS}" in text and "unreadable" in text
  assert "orbax-checkpoint-tmp-123" in text
  assert f"Resuming from step {STEPS - 2}" in out.stdout
  bad = sorted(os.listdir(workdir / ckpt_lib.BAD_DIR))
  assert any(b.startswith(f"{STEPS}.") for b in bad), bad
  assert any("orbax-checkpoint-tmp-123" in b for b in bad), bad
  _same_metrics(workdir, want)


def test_checkpoint_with_a_missing_item_is_skipped(baseline, tmp_path,
                                                   synthetic_data_dir):
  src, _ = baseline
  workdir = tmp_path / "missing"
  shutil.copytree(src, workdir)
  shutil.rmtree(workdir / "checkpoints" / str(STEPS) / "data_iter")
  config = config_utils.load_config(os.path.join(ROOT,
                                                 "configs/demo.py:tiny"))
  with config.unlocked():
    config.data_dir = synthetic_data_dir
    config.num_steps = STEPS
  run = train.setup(config, str(workdir))
  _, _, start = train.restore_or_init(run)
  assert start == STEPS - 2
  assert any(b.startswith(f"{STEPS}.")
             for b in os.listdir(workdir / ckpt_lib.BAD_DIR))


def _make_unwritable(path):
  """chmod for users; chattr +i for root (root ignores permission bits)."""
  if os.geteuid() != 0:
    os.chmod(path, 0o555)
    return lambda: os.chmod(path, 0o755)
  ok = subprocess.run(["chattr", "+i", str(path)], capture_output=True,
                      check=False).returncode == 0
  if not ok:
    pytest.skip("running as root without chattr +i: no way to make a "
                "directory unwritable")
  return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)


def test_unwritable_workdir_is_refused_before_training(synthetic_data_dir,
                                                       tmp_path):
  parent = tmp_path / "ro"
  parent.mkdir()
  undo = _make_unwritable(parent)
  try:
    out = subprocess.run(_main(parent / "run", synthetic_data_dir), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
  finally:
    undo()
  assert out.returncode != 0
  assert "is not writable" in out.stderr and str(parent) in out.stderr


def test_a_failing_save_stops_and_keeps_the_previous_checkpoint(
    synthetic_data_dir, tmp_path):
  config = config_utils.load_config(os.path.join(ROOT,
                                                 "configs/demo.py:tiny"))
  with config.unlocked():
    config.data_dir = synthetic_data_dir
    config.num_steps = STEPS
    config.checkpoint.every_steps = 2
  workdir = tmp_path / "run"
  run = train.setup(config, str(workdir))
  state, it, start = train.restore_or_init(run)
  undo = []

  def lock_disk(step, _):
    if step == 3:  # Checkpoint 2 is written; the one of step 4 will fail.
      run.manager.wait_until_finished()
      undo.append(_make_unwritable(workdir / "checkpoints"))

  try:
    with pytest.raises(ckpt_lib.CheckpointSaveError,
                       match=r"step 4 in .* failed.*step 2\) is intact"):
      train.train_loop(run, state, it, start,
                       hooks=[train.Periodic(3, lock_disk)])
  finally:
    for u in undo:
      u()
  run = train.setup(config, str(workdir))
  _, _, start = train.restore_or_init(run)
  assert start == 2


def test_too_little_disk_for_two_checkpoints_is_refused(tmp_path):
  free = shutil.disk_usage(tmp_path).free
  huge = {"w": jax.ShapeDtypeStruct((free // 4 + 1,), "float32")}
  with pytest.raises(train.WorkdirError, match="at least two must fit"):
    train.check_free_space(str(tmp_path), huge, keep=3)
  assert train.check_free_space(
      str(tmp_path), {"w": jax.ShapeDtypeStruct((10,), "float32")}, 3) == 40


def test_sigint_is_recorded_and_a_second_one_is_not_swallowed():
  """Ctrl-C: the first SIGINT only asks to stop at the step's end; the
  handlers are restored on close."""
  from vreid_jax import preemption  # pylint: disable=g-import-not-at-top
  before = signal.getsignal(signal.SIGINT)
  watch = preemption.Preemption(multi_process=False)
  try:
    assert not watch.reached(1)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)
    assert watch.reached(2) and watch.signal_name == "SIGINT"
  finally:
    watch.close()
  assert signal.getsignal(signal.SIGINT) is before


def test_a_corrupt_jpeg_in_the_dataset_stops_or_is_skipped_and_counted(
    synthetic_data_dir, tmp_path):
  """A frame inside the built dataset's train records no longer decodes:
  the run stops naming it, or with on_bad_frame=skip finishes and counts
  it in metrics.json."""
  import test_data_faults  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path / "tfds"
  shutil.copytree(synthetic_data_dir, data_dir)
  # Every train tracklet's frame 0 is broken, so every batch meets one.
  from vreid_jax.input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  config = config_utils.load_config(os.path.join(ROOT,
                                                 "configs/demo.py:tiny"))
  data = pipeline.open_dataset(config.dataset, str(data_dir))
  train_role = data.roles["train"]
  for record in train_role.records:
    test_data_faults._break_jpeg(str(data_dir), train_role.split,  # pylint: disable=protected-access
                                 int(record), 1)
  out = subprocess.run(_main(tmp_path / "stop", data_dir), cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "frame" in last
  assert train_role.split in last and "on_bad_frame=skip" in last
  out = subprocess.run(
      _main(tmp_path / "skip", data_dir,
            "--config.input.on_bad_frame=skip"), cwd=ROOT,
      capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "bad frame(s) replaced" in out.stdout
  faults = json.loads((tmp_path / "skip" / "metrics.json").read_text())[
      "data_faults"]
  assert faults["on_bad_frame"] == "skip"
  assert faults["train"]["num_bad_frames"] > 0
  assert all(":1" in n for n in faults["train"]["bad_frames"])
  assert faults["eval"]["num_bad_frames"] == 0
