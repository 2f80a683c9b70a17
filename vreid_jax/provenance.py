"""Where a result came from: package, git commit, library versions, devices.

Written into export model cards (and run records), so a file found later
says which code and which libraries produced it.
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
