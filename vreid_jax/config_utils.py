"""Config helpers: durations, checks and loading configs outside absl."""

from __future__ import annotations

import importlib.util
import os

import ml_collections


def total_steps(config, steps_per_epoch: int) -> int:
  """The run's length: config.num_steps if > 0, else num_epochs epochs."""
  if config.num_steps > 0:
    return int(config.num_steps)
  if config.num_epochs > 0:
    return max(1, int(round(config.num_epochs * steps_per_epoch)))
  raise ValueError("set config.num_steps or config.num_epochs (> 0)")


def to_steps(epochs: float, steps_per_epoch: int) -> int:
  return int(round(epochs * steps_per_epoch))


def check_config(config) -> None:
  """Cross-field checks with messages that name the fields."""
  inp = config.input
  if inp.num_ids_per_batch < 2:
    raise ValueError("config.input.num_ids_per_batch must be >= 2 (the "
                     "triplet loss needs negatives)")
  if inp.num_per_id < 1:
    raise ValueError("config.input.num_per_id must be >= 1")
  if inp.clip_len < 1:
    raise ValueError("config.input.clip_len must be >= 1")
  if len(inp.mean) != 3 or len(inp.std) != 3:
    raise ValueError("config.input.mean and config.input.std need 3 values")
  if not config.losses:
    raise ValueError("config.losses names no loss")


def load_config(path: str) -> ml_collections.ConfigDict:
  """Loads `configs/x.py[:arg]` like --config does (for notebooks, tests)."""
  path, _, arg = path.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no config file {path}")
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"_vreid_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  config.lock()
  return config
