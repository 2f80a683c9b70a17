"""XLA flags for the tests' processes: pytest's own (conftest.py) and the
`python -m vreid_jax...` processes the tests start.

The tests' programs are tiny, so their time is compile time, much of it
LLVM optimising generated code (one threefry per parameter in every
`init`, the fusions of the deep models' training steps). At
`--xla_backend_optimization_level=0` a ResNet-18 `init` compiles in 1.4 s
instead of 8 s, and the TRL runlocal training step in 24 s instead of 43 s
(2-core VM). The HLO, and so what a program computes, is the same at every
level; only the machine code differs.
"""

from __future__ import annotations

import os

FAST_COMPILE = "--xla_backend_optimization_level=0"


def flags(num_devices: int | None = None) -> str:
  """XLA_FLAGS for a test process: fast compiles, and `num_devices` fake
  CPU devices (None: XLA's default, one)."""
  out = FAST_COMPILE
  if num_devices is not None:
    out += f" --xla_force_host_platform_device_count={num_devices}"
  return out


def env(num_devices: int | None = None, **extra: str) -> dict[str, str]:
  """This process's environment with `flags(num_devices)` and `extra`."""
  return dict(os.environ, XLA_FLAGS=flags(num_devices), **extra)
