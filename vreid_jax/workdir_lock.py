"""One run per workdir: an exclusive lock on `<workdir>/.vreid_lock`.

    lock = workdir_lock.acquire(workdir, enabled=jax.process_index() == 0)
    ...                       # train; the lock is held
    lock.release()            # or `with workdir_lock.acquire(workdir): ...`

The lock is `fcntl.flock(LOCK_EX | LOCK_NB)` on the lock file, which holds
the holder's JSON record {host, pid, started, argv}. A second process that
asks for a held workdir gets `WorkdirBusyError` at once, naming the holder.

Stale locks. The kernel drops a flock when the last descriptor of its open
file goes away, so a run that dies frees the workdir by itself; what it
leaves is its record. `release()`, and the interpreter's exit handlers (a
normal exit, an uncaught exception), empty the file, so a record found under
a free lock is that of a run that died without them (SIGKILL, the OOM
killer, an unhandled SIGTERM, a segfault, a lost host): `acquire` takes the
lock over and says so ("took over the stale lock of host H pid P (started
T): that run is gone"), as `WorkdirLock.takeover`. The file itself is never
deleted: unlinking a lock file lets two processes hold locks on two
different inodes under one name. A forked child (a data-loader worker)
shares its parent's lock: if it outlives a killed parent the workdir stays
busy, and the refusal says that the named pid is gone but a child of it
holds the lock.

Re-entrant within a process: a second `acquire` of the same workdir (same
real path) in the process that holds it returns another handle on the same
lock, counted; the lock goes when the last handle is released. The process
never opens the lock file twice (see NFS below, where a second open and
close would drop the lock).

Multi-host: only one process takes the lock (all processes may share one
workdir). `acquire_for_run(workdir)` does it for a JAX run: process 0
locks, the others get a handle that holds nothing, and process 0's outcome
is broadcast so every process is refused together. `acquire(workdir,
enabled=jax.process_index() == 0)` is the same without the broadcast.

Filesystems. Local filesystems (ext4, xfs, btrfs, tmpfs, overlayfs) support
flock. On NFS, Linux (since 2.6.12) implements flock as a whole-file POSIX
(fcntl) lock that the NFS server arbitrates, so it excludes processes on
other hosts too, provided the mount does locking (NFSv4, or NFSv3 with
lockd); a mount with `nolock` or `local_lock=flock|all` makes the lock
local to one host, and two hosts can then both "hold" it: this module
cannot tell. Being an fcntl lock underneath, it is per process: closing any
descriptor of the file in the holding process drops it, which is why a
process opens the file once. After an NFS client loses its lease (a network
partition) the server may grant the lock to another host while the first
run still lives. A filesystem that refuses locks (ENOLCK, EOPNOTSUPP,
ENOSYS: some FUSE mounts, NFS without a lock daemon) makes `acquire` raise
`WorkdirLockUnsupportedError` naming the filesystem problem; pass
`on_unsupported="warn"` to run unlocked with a warning instead. Running
unlocked silently is never the default: two runs writing one workdir corrupt
each other's checkpoints.
"""

from __future__ import annotations

import atexit
import dataclasses
import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

LOCK_NAME = ".vreid_lock"

_UNSUPPORTED_ERRNOS = frozenset(
    e for e in (getattr(errno, n, None) for n in
                ("ENOLCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS"))
    if e is not None)

_log = logging.getLogger(__name__)


class WorkdirBusyError(RuntimeError):
  """Another live process holds the workdir's lock.

  Attributes:
    workdir: the refused workdir.
    holder: the holder's record ({host, pid, started, argv}), or {} when the
      lock file could not be read.
  """

  def __init__(self, workdir: str, holder: dict[str, Any], note: str = ""):
    self.workdir = workdir
    self.holder = holder
    who = describe_holder(holder) if holder else (
        "an unknown process (its lock file has no readable record)")
    cmd = holder.get("argv")
    lines = [f"workdir {workdir} is in use by another run: {who}."]
    if note:
      lines.append(note)
    if cmd:
      lines.append(f"Its command: {_join_argv(cmd)}")
    stop = (f" (`kill {holder['pid']}` on host {holder['host']})"
            if "pid" in holder and "host" in holder else "")
    lines.append(
        f"Wait for that run to finish, stop it{stop}, or choose another "
        "--workdir. Two runs on one workdir would overwrite each other's "
        "checkpoints.")
    super().__init__("\n".join(lines))


class WorkdirLockUnsupportedError(OSError):
  """The workdir's filesystem refuses file locks."""


def describe_holder(holder: dict[str, Any]) -> str:
  """"host H pid P (started T)" from a lock record (fields it has)."""
  parts = [f"{k} {holder[k]}" for k in ("host", "pid") if k in holder]
  started = holder.get("started")
  if isinstance(started, (int, float)):
    parts.append(time.strftime("(started %Y-%m-%d %H:%M:%S %Z)",
                               time.localtime(started)))
  return " ".join(parts) or "an unknown process"


def _join_argv(argv) -> str:
  try:
    return shlex.join(str(a) for a in argv)
  except TypeError:
    return str(argv)


@dataclasses.dataclass
class _Held:
  """One process's lock on one workdir, shared by its handles."""
  workdir: str
  fd: int
  owner_pid: int
  record: dict[str, Any]
  count: int = 0


_registry: dict[str, _Held] = {}
_registry_lock = threading.Lock()


class WorkdirLock:
  """A handle on a workdir's lock; `release()` or use as a context manager.

  Attributes:
    workdir: the workdir (its real path).
    path: the lock file.
    held: whether this handle holds (a share of) the lock now; False for a
      disabled handle (a process other than 0) and after `release()`.
    takeover: the message when acquiring took over a stale lock, else None.
    stale_holder: the dead holder's record in that case, else None.
    record: this process's record as written to the lock file ({} if not
      holding).
  """

  def __init__(self, workdir: str, held: _Held | None, *,
               record: dict[str, Any] | None = None,
               stale_holder: dict[str, Any] | None = None,
               takeover: str | None = None):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self._held = held
    self.record = record or {}
    self.stale_holder = stale_holder
    self.takeover = takeover

  @property
  def held(self) -> bool:
    return self._held is not None

  def release(self) -> None:
    """Gives up this handle's share; the lock goes with the last share.

    Idempotent. The record is emptied first, so the next run does not see
    a stale lock.
    """
    held, self._held = self._held, None
    if held is None:
      return
    with _registry_lock:
      held.count -= 1
      if held.count > 0:
        return
      if _registry.get(held.workdir) is held:
        del _registry[held.workdir]
    _drop(held)

  def __enter__(self) -> WorkdirLock:
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def __repr__(self) -> str:
    return f"WorkdirLock({self.workdir!r}, held={self.held})"


def _drop(held: _Held) -> None:
  """Empties the record and unlocks, in the process that took the lock.

  A forked child (a data-loader worker) shares the parent's open file, so
  unlocking or truncating there would free the parent's lock: the child
  only closes its descriptor.
  """
  try:
    if os.getpid() == held.owner_pid:
      try:
        os.ftruncate(held.fd, 0)
      except OSError:
        pass
      fcntl.flock(held.fd, fcntl.LOCK_UN)
  finally:
    os.close(held.fd)


def _release_all_at_exit() -> None:
  with _registry_lock:
    held = list(_registry.values())
    _registry.clear()
  for h in held:
    try:
      _drop(h)
    except OSError:
      pass


atexit.register(_release_all_at_exit)


def _read_record(fd: int) -> dict[str, Any]:
  """The JSON record in the open lock file; {} if empty or unreadable."""
  try:
    size = os.fstat(fd).st_size
    data = os.pread(fd, max(size, 1) + 4096, 0)
  except OSError:
    return {}
  if not data.strip():
    return {}
  try:
    record = json.loads(data.decode("utf-8", "replace"))
  except ValueError:
    return {}
  return record if isinstance(record, dict) else {}


def _pid_alive(pid: Any) -> bool | None:
  """Whether pid exists on this host (None when unknowable)."""
  if not isinstance(pid, int) or pid <= 0:
    return None
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # Exists, owned by another user.
  except OSError:
    return None
  try:  # A zombie (killed, not yet reaped by its parent) is dead.
    with open(f"/proc/{pid}/stat", "rb") as f:
      return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
  except (OSError, IndexError):
    return True


def _busy_error(workdir: str, path: str) -> WorkdirBusyError:
  """The error for a held lock, with the holder read from the file.

  The holder writes its record just after locking, so a reader can find
  the file empty for an instant: read a few times before giving up.
  """
  holder: dict[str, Any] = {}
  deadline = time.monotonic() + 0.5
  while True:
    try:
      fd = os.open(path, os.O_RDONLY)
    except OSError:
      fd = None
    if fd is not None:
      try:
        holder = _read_record(fd)
      finally:
        os.close(fd)
    if holder or time.monotonic() > deadline:
      break
    time.sleep(0.05)
  note = ""
  if holder.get("host") == socket.gethostname() and (
      _pid_alive(holder.get("pid")) is False):
    note = (f"pid {holder.get('pid')} has exited, but a process it started "
            "(e.g. a data-loader worker) still holds the lock: stop that "
            "process (`fuser " + path + "` names it).")
  return WorkdirBusyError(workdir, holder, note)


def acquire(workdir: str, *, enabled: bool = True,
            on_unsupported: str = "raise",
            log: Callable[[str], Any] | None = None) -> WorkdirLock:
  """Takes the workdir's lock, or raises `WorkdirBusyError` at once.

  Args:
    workdir: the run's directory (created if missing).
    enabled: False returns a handle that holds nothing (for every process
      but one in a multi-host run: pass `jax.process_index() == 0`).
    on_unsupported: "raise" (`WorkdirLockUnsupportedError`) or "warn" (run
      unlocked, with a warning) when the filesystem refuses locks.
    log: called with the stale-takeover or unsupported-filesystem message
      (default: this module's logger at WARNING).

  Returns:
    A `WorkdirLock`; its `takeover` is the message when a stale lock of a
    dead run was taken over.

  Raises:
    WorkdirBusyError: another live process holds the lock.
    WorkdirLockUnsupportedError: the filesystem refuses locks and
      `on_unsupported == "raise"`.
  """
  if on_unsupported not in ("raise", "warn"):
    raise ValueError(f"on_unsupported={on_unsupported!r}: expected 'raise' "
                     "or 'warn'")
  log = log or _log.warning
  workdir = os.path.realpath(os.path.expanduser(workdir))
  if not enabled:
    return WorkdirLock(workdir, None)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_NAME)

  with _registry_lock:
    held = _registry.get(workdir)
    if held is not None and held.owner_pid == os.getpid():
      held.count += 1
      return WorkdirLock(workdir, held, record=held.record)

    while True:
      fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        os.close(fd)
        raise _busy_error(workdir, path) from None
      except OSError as e:
        os.close(fd)
        if e.errno not in _UNSUPPORTED_ERRNOS:
          raise
        message = (
            f"the filesystem of workdir {workdir} refuses file locks "
            f"({e.strerror}), so this run cannot make sure it is the only "
            "one writing there (on NFS: mount with locking, e.g. NFSv4 or "
            "lockd; some FUSE mounts have none). Use a workdir on a "
            "filesystem with locks")
        if on_unsupported == "raise":
          raise WorkdirLockUnsupportedError(
              e.errno, message + ", or allow unlocked runs "
              "(on_unsupported='warn').", path) from e
        log(message + "; running WITHOUT a workdir lock.")
        return WorkdirLock(workdir, None)
      # The file may have been deleted (or replaced) between our open and
      # our lock, by hand or by a holder on an old version: a lock on an
      # unlinked inode excludes nobody. Lock the file the name points to.
      try:
        same = os.path.samestat(os.fstat(fd), os.stat(path))
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)

    try:
      stale = _read_record(fd)
      record = {"host": socket.gethostname(), "pid": os.getpid(),
                "started": time.time(),
                "argv": list(getattr(sys, "orig_argv", sys.argv))}
      data = json.dumps(record).encode()
      os.ftruncate(fd, 0)
      os.pwrite(fd, data, 0)
      os.fsync(fd)
    except BaseException:
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)
      raise
    held = _Held(workdir=workdir, fd=fd, owner_pid=os.getpid(),
                 record=record, count=1)
    _registry[workdir] = held

  takeover = None
  if stale:
    takeover = (f"took over the stale lock of {describe_holder(stale)}: "
                "that run is gone")
    if (stale.get("host") == record["host"] and stale.get("pid") !=
        record["pid"] and _pid_alive(stale.get("pid"))):
      takeover += f" (pid {stale.get('pid')} is now another process)"
    log(takeover)
  return WorkdirLock(workdir, held, record=record,
                     stale_holder=stale or None, takeover=takeover)


def acquire_for_run(workdir: str, *, on_unsupported: str = "raise",
                    log: Callable[[str], Any] | None = None) -> WorkdirLock:
  """`acquire` for a (possibly multi-host) JAX run: process 0 locks.

  Process 0 takes the lock; the others get a handle that holds nothing.
  With several processes, process 0's outcome is broadcast (a collective:
  every process must call this), so that when the workdir is busy every
  process raises `WorkdirBusyError` at once instead of the others waiting
  at their next collective for a process 0 that has gone.
  """
  import jax  # pylint: disable=g-import-not-at-top
  first = jax.process_index() == 0
  error = None
  lock = WorkdirLock(os.path.realpath(os.path.expanduser(workdir)), None)
  try:
    lock = acquire(workdir, enabled=first, on_unsupported=on_unsupported,
                   log=log)
  except (WorkdirBusyError, WorkdirLockUnsupportedError) as e:
    error = e
  if jax.process_count() > 1:
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    pid = (error.holder.get("pid", 0)
           if isinstance(error, WorkdirBusyError) else 0)
    refused, pid = (int(v) for v in multihost_utils.broadcast_one_to_all(
        np.array([error is not None, pid if isinstance(pid, int) else 0],
                 np.int32)))
    if refused and error is None:
      error = WorkdirBusyError(
          lock.workdir, {"pid": pid} if pid > 0 else {},
          note=f"(Process {jax.process_index()}: process 0 of this run was "
          "refused the lock; its message names the holder.)")
  if error is not None:
    raise error
  return lock
