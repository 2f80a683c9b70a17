r"""Trains and evaluates a video ReID model.

  python -m vreid_jax.main --config=configs/demo.py --workdir=/tmp/demo
  python -m vreid_jax.main --config=configs/gltr_mars.py:runlocal \
      --workdir=/tmp/gltr --config.data_dir=~/tensorflow_datasets

Rerunning the same command resumes from the workdir's latest checkpoint.

A mistake (a config path or key that does not exist, a bad flag value, a
dataset that is not built, a workdir that is a file, ...) ends the run with
one line `error: ...` on stderr that names the flag or file and the fix,
exit status 1 (2 for a bad command line); `--debug` or VREID_DEBUG=1 shows
the full traceback instead (`vreid_jax.cli`).
"""

import difflib
import os
import re
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

from vreid_jax import checkpoint
from vreid_jax import cli
from vreid_jax import config_utils
from vreid_jax import parallel
from vreid_jax import train
from vreid_jax import workdir_lock
from vreid_jax.input_pipeline import pipeline

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:variant]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, summaries and metrics.")
flags.DEFINE_bool("debug", False, cli.DEBUG_HELP)
flags.mark_flags_as_required(["config", "workdir"])

PROG = "python -m vreid_jax.main"
# The project's errors a run can end with (each prints as one line).
ERRORS = (workdir_lock.WorkdirBusyError,
          workdir_lock.WorkdirLockUnsupportedError, train.WorkdirError,
          train.NonFiniteLossError, checkpoint.CheckpointSaveError,
          checkpoint.CheckpointMismatchError, pipeline.DataFaultError,
          pipeline.DatasetNotBuiltError, config_utils.ConfigError)


def _configs_dir() -> str:
  """configs/ as a path to type from here (relative when under the cwd)."""
  path = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "configs")
  rel = os.path.relpath(path)
  return path if rel.startswith("..") else rel


def _check_config_paths(argv) -> None:
  for path in _config_paths(argv[1:]):
    if not os.path.isfile(path):
      where = _configs_dir()
      raise cli.UsageError(
          f"--config={path}: no such file (from {os.getcwd()}); the "
          f"project's configs are in {where}/, e.g. "
          f"--config={os.path.join(where, 'demo.py')}")


def _load_config(argv):
  """The ConfigDict of the last --config=PATH[:ARG] in argv (no overrides)."""
  spec = [a.split("=", 1)[1] if a.startswith("--config=") else argv[i + 1]
          for i, a in enumerate(argv[:-1] + [""])
          if a.startswith("--config=") or a == "--config"][-1]
  return config_utils.load_config(spec)


def _config_key_error(e: BaseException, argv) -> str | None:
  """'--config.inputt.x=1: no field ...' for a config-key typo, else None."""
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]  # ConfigDict wraps the KeyError in an AttributeError.
  text = str(e.args[0]) if e.args else str(e)
  found = re.match(r"\s*'([^']*)'", text)
  if not found:
    return None
  key = found.group(1)
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  flag = next((a for a in overrides if key in
               a[len("--config."):].split("=", 1)[0].split(".")),
              overrides[-1] if overrides else "--config.<field>")
  hint = re.search(r'Did you mean "([^"]+)"', text)
  if hint:
    fix = f"did you mean {hint.group(1)!r}?"
  else:
    fix = "configs/common.py lists the fields"
    try:  # The fields at the failing level, from the config file itself.
      node = _load_config(argv)
      path = flag[len("--config."):].split("=", 1)[0].split(".")
      for part in path[:path.index(key)]:
        node = node[part]
      close = difflib.get_close_matches(key, list(node.keys()), n=3)
      fix = (f"did you mean {' or '.join(map(repr, close))}?" if close else
             f"it has {', '.join(sorted(node.keys()))}")
    except Exception:  # pylint: disable=broad-except
      pass
  return f"{flag.split('=', 1)[0]}: the config has no field {key!r} ({fix})"


def _flag_error(e: BaseException, argv) -> str:
  """The one-line message for an error of flag parsing."""
  if isinstance(e, (KeyError, AttributeError)):
    message = _config_key_error(e, argv)
    if message:
      return message
  text = str(e)
  required = re.search(r"Flag --(\w+) must have a value other than None", text)
  if required:
    example = {"config": "configs/demo.py", "workdir": "/tmp/vreid_demo"}
    name = required.group(1)
    return (f"--{name} is required, e.g. --{name}="
            f"{example.get(name, '...')} ({PROG} --helpshort lists the flags)")
  if isinstance(e, flags.UnrecognizedFlagError):
    text = re.sub(r"^Unknown command line flag '([^']*)'", r"unknown flag --\1",
                  cli.one_line(text))
    return f"{text}: {PROG} --helpshort lists the flags"
  if "Traceback (most recent call last)" in text:
    # A config file's get_config raised: "flag --config=X: Error whilst
    # parsing config file:" + its traceback; keep the flag and the last line.
    lines = [line for line in text.splitlines() if line.strip()]
    flag = lines[0].split(": Error whilst", 1)[0].removeprefix("flag ")
    return f"{flag}: {lines[-1].strip().removeprefix('ValueError: ')}"
  if isinstance(e, OSError) and isinstance(e.__cause__, OSError):
    return cli.describe(e.__cause__)  # A config file that cannot be read.
  name = "" if isinstance(e, (flags.Error, OSError)) else (
      f"{type(e).__name__}: ")
  return name + cli.describe(e).removeprefix("flag ")


def _parse_flags(argv):
  """absl's flag parsing; its errors (and the config file's) as UsageError."""
  try:
    _check_config_paths(argv)
    return flags.FLAGS(argv)
  except cli.UsageError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if cli.debug_requested(argv[1:]):
      raise
    raise cli.UsageError(_flag_error(e, argv)) from e


def _check_dirs(config, workdir: str) -> None:
  """Fails early, naming the flag, on a workdir or data dir that cannot be."""
  problem = train.workdir_is_a_file(workdir)
  if problem:
    raise cli.UsageError(problem)  # A flag's value: exit 2.
  data_dir = config.get("data_dir")
  if not data_dir:
    return
  path = os.path.expanduser(data_dir)
  if os.path.isdir(path):
    return
  if os.path.exists(path):
    raise cli.UsageError(f"--config.data_dir={data_dir} is a file, not a "
                         "folder: pass the TFDS data dir")
  if not config.get("dataset", {}).get("auto_build", False):
    raise cli.UsageError(
        f"--config.data_dir={data_dir} does not exist: pass the folder "
        "data_prep/build.py built the datasets into (its --data_dir), or "
        "leave it unset for $TFDS_DATA_DIR, else ~/tensorflow_datasets")
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise cli.UsageError(
        f"--config.data_dir={data_dir} does not exist and cannot be created "
        f"({parent} is not a writable folder): pass a folder this user can "
        "write to, or leave it unset for ~/tensorflow_datasets")


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])} "
                         "(flags are --name=value)")
  config = _CONFIG.value
  _check_dirs(config, _WORKDIR.value)
  if not flags.FLAGS["verbosity"].present:
    # Orbax and TFDS log every save at INFO; progress goes to stdout anyway.
    logging.set_verbosity(logging.WARNING)
  if config.get("jax_cache_dir"):
    jax.config.update("jax_compilation_cache_dir",
                      os.path.expanduser(config.jax_cache_dir))
  parallel.initialize_distributed(config.distributed)
  logging.info("JAX %s, process %d/%d, local devices: %s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_devices())
  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except train.Preempted:
    sys.exit(0)  # Checkpointed; rerunning the command resumes.


def run(argv=None) -> int:
  """The command line: absl flags, then `main`; a user error is one
  `error:` line (exit 1; 2 for flags), `--debug`/VREID_DEBUG=1 shows the
  traceback."""
  argv = list(sys.argv if argv is None else argv)

  def _run(_):
    app.run(main, argv=argv, flags_parser=_parse_flags)

  return cli.run(_run, argv[1:], errors=ERRORS)


if __name__ == "__main__":
  sys.exit(run())
