r"""Trains and evaluates a video ReID model.

  python -m vreid_jax.main --config=configs/demo.py --workdir=/tmp/demo
  python -m vreid_jax.main --config=configs/gltr_mars.py:runlocal \
      --workdir=/tmp/gltr --config.data_dir=~/tensorflow_datasets

Rerunning the same command resumes from the workdir's latest checkpoint.
"""

import os
import sys


def _config_paths(argv) -> list[str]:
  """The config file paths of `--config=PATH[:ARG]` and `--config PATH`."""
  paths = []
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      paths.append(arg.split("=", 1)[1])
    elif arg == "--config" and i + 1 < len(argv):
      paths.append(argv[i + 1])
  return [p.split(":", 1)[0] for p in paths]


def _configs_on_path(argv) -> None:
  """Lets `configs/x.py` import `configs.common` from any working dir."""
  for path in _config_paths(argv):
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:
      sys.path.insert(0, root)


_configs_on_path(sys.argv)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from vreid_jax import parallel
from vreid_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:variant]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, summaries and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  if not flags.FLAGS["verbosity"].present:
    # Orbax and TFDS log every save at INFO; progress goes to stdout anyway.
    logging.set_verbosity(logging.WARNING)
  if config.get("jax_cache_dir"):
    jax.config.update("jax_compilation_cache_dir",
                      os.path.expanduser(config.jax_cache_dir))
  parallel.initialize_distributed(config.distributed)
  logging.info("JAX %s, process %d/%d, local devices: %s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_devices())
  from vreid_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from vreid_jax import workdir_lock  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except train.Preempted:
    sys.exit(0)  # Checkpointed; rerunning the command resumes.
  except (workdir_lock.WorkdirBusyError, train.WorkdirError,
          checkpoint.CheckpointSaveError, pipeline.DataFaultError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
