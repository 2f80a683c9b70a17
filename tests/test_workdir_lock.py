"""One run per workdir (vreid_jax.workdir_lock), with real processes.

A child Python process takes the lock and sleeps; the parent is refused with
the child's host and pid; after SIGKILL the kernel has dropped the lock and
the parent takes over the stale record, naming the dead pid.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

import xla_env  # tests/

from vreid_jax import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HOLDER = textwrap.dedent("""
    import sys, time
    from vreid_jax import workdir_lock
    lock = workdir_lock.acquire(sys.argv[1])
    print("locked", flush=True)
    if sys.argv[2] == "sleep":
      time.sleep(60)
    """)


def _start_holder(workdir, mode="sleep"):
  """A child process holding the lock; returns once it says "locked"."""
  proc = subprocess.Popen(
      [sys.executable, "-c", _HOLDER, str(workdir), mode], cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  line = proc.stdout.readline()
  if line.strip() != "locked":
    proc.kill()
    raise AssertionError(f"holder did not lock: {line!r} {proc.stderr.read()}")
  return proc


@pytest.fixture
def holder(tmp_path):
  workdir = tmp_path / "run"
  proc = _start_holder(workdir)
  yield workdir, proc
  if proc.poll() is None:
    proc.kill()
  proc.wait(timeout=10)
  proc.stdout.close()
  proc.stderr.close()


def test_busy_then_stale_takeover(holder):
  workdir, proc = holder
  host = socket.gethostname()
  with pytest.raises(workdir_lock.WorkdirBusyError) as info:
    workdir_lock.acquire(workdir)
  message = str(info.value)
  assert f"pid {proc.pid}" in message and f"host {host}" in message, message
  assert str(os.path.realpath(workdir)) in message
  assert "--workdir" in message and "-c" in message  # What to do; its argv.
  assert info.value.holder["pid"] == proc.pid

  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=10)
  # The dead run's record is still there; its flock went with it.
  record = json.loads((workdir / workdir_lock.LOCK_NAME).read_text())
  assert record["pid"] == proc.pid
  logged = []
  with workdir_lock.acquire(workdir, log=logged.append) as lock:
    assert lock.held
    assert lock.stale_holder["pid"] == proc.pid
    assert lock.takeover.startswith(
        f"took over the stale lock of host {host} pid {proc.pid} (started ")
    assert lock.takeover.endswith("that run is gone"), lock.takeover
    assert logged == [lock.takeover]
    record = json.loads((workdir / workdir_lock.LOCK_NAME).read_text())
    assert record["pid"] == os.getpid() and record["host"] == host
  # A clean release leaves an empty record: the next run sees no stale lock.
  assert (workdir / workdir_lock.LOCK_NAME).read_text() == ""


def test_reentrant_in_one_process(tmp_path):
  workdir = tmp_path / "run"
  first = workdir_lock.acquire(workdir)
  # Another spelling of the same directory: the same lock, counted.
  second = workdir_lock.acquire(os.path.join(tmp_path, ".", "run", ""))
  assert first.held and second.held and second.takeover is None
  assert second.record == first.record
  first.release()
  first.release()  # Idempotent per handle: does not drop second's share.
  assert not first.held
  # Still held: another process is refused.
  out = subprocess.run(
      [sys.executable, "-c", _HOLDER, str(workdir), "exit"], cwd=ROOT,
      capture_output=True, text=True, timeout=30, check=False)
  assert out.returncode != 0 and "WorkdirBusyError" in out.stderr
  assert f"pid {os.getpid()}" in out.stderr
  second.release()
  # Free now: a child takes it and, exiting without release(), leaves no
  # stale record (the interpreter's exit empties it).
  out = subprocess.run(
      [sys.executable, "-c", _HOLDER, str(workdir), "exit"], cwd=ROOT,
      capture_output=True, text=True, timeout=30, check=True)
  assert out.stdout.strip() == "locked"
  with workdir_lock.acquire(workdir) as lock:
    assert lock.held and lock.takeover is None


def test_disabled_holds_nothing(holder):
  workdir, _ = holder
  lock = workdir_lock.acquire(workdir, enabled=False)  # Not process 0.
  assert not lock.held
  lock.release()


def test_unsupported_filesystem(tmp_path, monkeypatch):
  import errno  # pylint: disable=g-import-not-at-top
  import fcntl  # pylint: disable=g-import-not-at-top

  def no_locks(fd, op):
    del fd, op
    raise OSError(errno.ENOLCK, "No locks available")

  monkeypatch.setattr(fcntl, "flock", no_locks)
  with pytest.raises(workdir_lock.WorkdirLockUnsupportedError,
                     match="refuses file locks"):
    workdir_lock.acquire(tmp_path)
  logged = []
  lock = workdir_lock.acquire(tmp_path, on_unsupported="warn",
                              log=logged.append)
  assert not lock.held and "WITHOUT a workdir lock" in logged[0]


_JAX_PROCESS = textwrap.dedent("""
    import sys
    import jax
    jax.distributed.initialize(coordinator_address=sys.argv[2],
                               num_processes=2, process_id=int(sys.argv[3]))
    from vreid_jax import workdir_lock
    try:
      lock = workdir_lock.acquire_for_run(sys.argv[1])
      print("held" if lock.held else "not held")
    except workdir_lock.WorkdirBusyError as e:
      print("busy:", e)
    """)


def test_two_jax_processes_all_refused(holder):
  """Only process 0 locks; when it is refused, process 1 is told too."""
  workdir, proc = holder
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = xla_env.env(1, JAX_PLATFORMS="cpu",
                    JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  procs = [subprocess.Popen(
      [sys.executable, "-c", _JAX_PROCESS, str(workdir), f"localhost:{port}",
       str(i)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=120) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "busy:" in outs[0][0], outs[0][0]
  assert f"host {socket.gethostname()} pid {proc.pid}" in outs[0][0]
  assert "busy:" in outs[1][0] and f"pid {proc.pid}." in outs[1][0]
  assert "process 0 of this run was refused" in outs[1][0]
