"""Where a result came from: package, git commit, library versions, devices.

Written into export model cards and into a training workdir's start records
(`<workdir>/provenance/start-0001.json`, `start-0002.json`, ...: one per
start of a run, fresh or resumed, never overwritten; `start_record`,
`write_start_record`), so a file found later says which code, which
libraries, which command and which settings produced it, and a resume says
which settings changed since the previous start (`config_changes`).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit() -> str | None:
  """The checkout's commit (with "+dirty" when files differ), else None
  (an installed wheel, or git missing)."""
  if not os.path.isdir(os.path.join(_ROOT, ".git")):
    return None
  try:
    commit = subprocess.run(
        ["git", "-C", _ROOT, "rev-parse", "HEAD"], capture_output=True,
        text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", _ROOT, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return commit + ("+dirty" if dirty else "")


def versions() -> dict[str, Any]:
  """Python, vreid_jax, jax, jaxlib, flax, orbax, numpy versions and the
  platform (module versions read from the already imported modules, else
  from the installed distributions)."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  out: dict[str, Any] = {"python": platform.python_version(),
                         "platform": sys.platform}
  for dist in ("vreid_jax", "jax", "jaxlib", "flax", "orbax-checkpoint",
               "numpy"):
    try:
      out[dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
      out[dist] = None
  out["git_commit"] = git_commit()
  return out


def devices() -> dict[str, Any]:
  """The JAX backend, device kind and counts (imports jax)."""
  import jax  # pylint: disable=g-import-not-at-top
  d = jax.devices()
  return {"platform": d[0].platform, "device_kind": d[0].device_kind,
          "num_devices": len(d), "num_local_devices": jax.local_device_count(),
          "process_count": jax.process_count()}


# ---------------------------------------------------------------------------
# Start records: <workdir>/provenance/start-0001.json, start-0002.json, ...
# One per start of a run (fresh or resumed), never overwritten.

RECORD_DIR = "provenance"
_RECORD_PREFIX = "start-"


def config_source(argv: list[str] | None = None
                  ) -> tuple[str | None, str | None]:
  """(config file, variant) of `--config=PATH[:VARIANT]` (or `--config
  PATH[:VARIANT]`) in `argv` (default sys.argv); (None, None) without one,
  e.g. when training is called as a library. The variant is None when the
  flag names none."""
  argv = list(sys.argv if argv is None else argv)
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      value = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
  if value is None:
    return None, None
  path, colon, variant = value.partition(":")
  return path, (variant if colon else None)


def config_overrides(argv: list[str] | None = None) -> list[str]:
  """The `--config.<field>=<value>` flags of `argv` (default sys.argv)."""
  argv = list(sys.argv if argv is None else argv)
  return [a for a in argv if a.startswith("--config.")]


def _file_sha256(path: str) -> str | None:
  import hashlib  # pylint: disable=g-import-not-at-top
  try:
    with open(path, "rb") as f:
      return hashlib.sha256(f.read()).hexdigest()
  except OSError:
    return None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{"schedule.base_lr": 0.01, ...} of a nested dict (lists are leaves)."""
  if isinstance(tree, dict):
    out: dict[str, Any] = {}
    for k in sorted(tree):
      out.update(flatten(tree[k], f"{prefix}{k}."))
    if not tree and prefix:
      out[prefix[:-1]] = {}
    return out
  return {prefix[:-1]: tree}


_UNSET = "<unset>"


def config_changes(old: dict[str, Any], new: dict[str, Any]
                   ) -> list[dict[str, Any]]:
  """Every dotted setting whose value differs: [{"key", "old", "new"}],
  sorted by key; a setting only on one side has "<unset>" on the other."""
  a, b = flatten(old), flatten(new)
  return [{"key": k, "old": a.get(k, _UNSET), "new": b.get(k, _UNSET)}
          for k in sorted(set(a) | set(b))
          if a.get(k, _UNSET) != b.get(k, _UNSET)]


def format_changes(changes: list[dict[str, Any]]) -> str:
  """'schedule.base_lr 0.01 -> 0.02, num_steps 2 -> 4'."""
  return ", ".join(f"{c['key']} {c['old']!r} -> {c['new']!r}"
                   for c in changes)


def record_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), RECORD_DIR)


def start_records(workdir: str) -> list[str]:
  """The workdir's start record names (start-0001, ...), oldest first."""
  root = record_dir(workdir)
  if not os.path.isdir(root):
    return []
  out = []
  for name in os.listdir(root):
    stem, ext = os.path.splitext(name)
    if (ext == ".json" and stem.startswith(_RECORD_PREFIX)
        and stem[len(_RECORD_PREFIX):].isdigit()):
      out.append(stem)
  return sorted(out, key=lambda s: int(s[len(_RECORD_PREFIX):]))


def read_record(workdir: str, name: str) -> dict[str, Any]:
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(record_dir(workdir), name + ".json")) as f:
    return json.load(f)


def previous_config(workdir: str) -> tuple[str | None, dict[str, Any] | None]:
  """The config of the workdir's last start: (its source, the config).

  The source is the newest readable start record's name, else "config.json"
  (a workdir from before start records), else (None, None).
  """
  import json  # pylint: disable=g-import-not-at-top
  for name in reversed(start_records(workdir)):
    try:
      record = read_record(workdir, name)
    except (OSError, ValueError):
      continue  # A record cut short (killed while writing): the one before.
    if isinstance(record.get("config"), dict):
      return name, record["config"]
  path = os.path.join(os.path.abspath(workdir), "config.json")
  try:
    with open(path) as f:
      return "config.json", json.load(f)
  except (OSError, ValueError):
    return None, None


def start_record(*, config: dict[str, Any], start_step: int,
                 resumed: bool, total_steps: int | None = None,
                 previous: str | None = None,
                 changes: list[dict[str, Any]] | None = None,
                 argv: list[str] | None = None,
                 with_devices: bool = True) -> dict[str, Any]:
  """What one start of a run records (`write_start_record` names it).

  Args:
    config: the resolved config (JSON-able dict).
    start_step: the step the run starts from (0 = scratch).
    resumed: whether it continues a checkpoint of the workdir.
    total_steps: the run's length in steps.
    previous: the record (or "config.json") the changes are relative to.
    changes: `config_changes(previous config, config)`.
    argv: the command line (default sys.argv).
    with_devices: add `devices()` (imports jax).
  """
  import datetime  # pylint: disable=g-import-not-at-top
  argv = list(sys.argv if argv is None else argv)
  path, variant = config_source(argv)
  record: dict[str, Any] = {
      "time": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "start_step": int(start_step),
      "resumed": bool(resumed),
      "total_steps": None if total_steps is None else int(total_steps),
      "command_line": argv,
      "cwd": os.getcwd(),
      "host": platform.node(),
      "config_file": path,
      "config_variant": variant,
      "config_file_sha256": _file_sha256(path) if path else None,
      "config_overrides": config_overrides(argv),
      "versions": versions(),
      "previous": previous,
      "changed_since_last_start": changes if previous is not None else None,
  }
  if with_devices:
    record["devices"] = devices()
  record["config"] = config
  return record


def write_start_record(workdir: str, record: dict[str, Any]) -> str:
  """Writes `record` as the next `provenance/start-NNNN.json` (never over
  an existing file); returns its name ("start-0002")."""
  import json  # pylint: disable=g-import-not-at-top
  root = record_dir(workdir)
  os.makedirs(root, exist_ok=True)
  names = start_records(workdir)
  number = int(names[-1][len(_RECORD_PREFIX):]) + 1 if names else 1
  while True:
    name = f"{_RECORD_PREFIX}{number:04d}"
    text = json.dumps({"record": name, **record}, indent=2, default=str)
    try:
      with open(os.path.join(root, name + ".json"), "x") as f:
        f.write(text + "\n")
      return name
    except FileExistsError:
      number += 1
