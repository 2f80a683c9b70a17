"""One-line errors for the command-line tools.

Every CLI (`python -m vreid_jax.main`, `.extract`, `.export`, `.search`,
`.evaluate_features`, `.import_weights`, `data_prep/build.py`,
`data_prep/flow.py`) runs its body through `run`: a mistake the user can fix
(a missing file, a bad flag value, a config-key typo, a dataset that is not
built, ...) prints as ONE line `error: MESSAGE` on stderr, naming the file,
field or flag and the fix to try, and the process exits non-zero, instead of
showing a traceback. `--debug` on the command line or `VREID_DEBUG=1` in the
environment re-raises instead, so the full traceback shows.

What counts as the user's mistake (`is_user_error`):
  * `UserError` (this module) and the error types the CLI names;
  * an `OSError` about a path (`.filename` set: no such file, permission
    denied, not a directory, ...);
  * a `ValueError`, `LookupError` (`KeyError`), `OSError` or `ImportError`
    raised by this project's own checks, i.e. whose innermost traceback
    frame is in `vreid_jax/`, `data_prep/` or `configs/` (e.g. "reading x.pth
    needs PyTorch (pip install torch)").
Anything else (an error raised inside JAX, NumPy, ... : most likely a bug)
keeps its traceback. Library functions keep raising typed exceptions; only
the CLIs' entry points catch.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

DEBUG_FLAG = "--debug"
DEBUG_ENV = "VREID_DEBUG"
DEBUG_HELP = ("show the full traceback of an error (also: VREID_DEBUG=1) "
              "instead of one 'error:' line")
_TRUE = ("1", "true", "yes", "on")
# Where "our own checks" live: the package, data_prep/ and configs/.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN_DIRS = tuple(os.path.join(_ROOT, d) + os.sep
                  for d in ("vreid_jax", "data_prep", "configs"))


class UserError(Exception):
  """A mistake the user can fix; the message names what and how.

  CLIs print it as one `error:` line and exit with `exit_code`.
  """
  exit_code = 1


class UsageError(UserError):
  """A bad command line (flag missing, unknown or malformed)."""
  exit_code = 2


def debug_requested(argv: Sequence[str] | None = None) -> bool:
  """Whether `--debug` (absl: also `--debug=true`) is in argv (default
  sys.argv) or VREID_DEBUG is 1/true/yes/on."""
  if os.environ.get(DEBUG_ENV, "").strip().lower() in _TRUE:
    return True
  args = sys.argv[1:] if argv is None else argv
  return any(a == DEBUG_FLAG or (a.startswith(DEBUG_FLAG + "=") and
                                 a.split("=", 1)[1].lower() in _TRUE)
             for a in args)


def strip_debug(argv: Sequence[str] | None = None) -> list[str]:
  """argv (default sys.argv[1:]) without `--debug`/`--debug=...`."""
  args = sys.argv[1:] if argv is None else argv
  return [a for a in args
          if a != DEBUG_FLAG and not a.startswith(DEBUG_FLAG + "=")]


def add_debug_flag(parser) -> None:
  """Adds `--debug` to an argparse parser (`run` reads it from argv)."""
  parser.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose command-line errors are one `error:` line (exit 2),
  pointing at --help instead of printing the usage; it has `--debug`."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    add_debug_flag(self)

  def error(self, message):
    print_error(f"{message} ({self.prog} --help lists the flags)")
    self.exit(2)


def did_you_mean(value: str, choices: Sequence[str]) -> str:
  """" (did you mean 'x'?)" for the closest choice, else ""."""
  close = difflib.get_close_matches(value, list(choices), n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def one_line(text: Any) -> str:
  """The text with its lines joined by spaces (blank lines dropped)."""
  return " ".join(line.strip() for line in str(text).splitlines()
                  if line.strip())


def describe(exc: BaseException) -> str:
  """The one-line message for an error."""
  if isinstance(exc, OSError) and exc.filename is not None and (
      not exc.args or exc.args[0] == exc.errno):
    # Errno-style: "[Errno 2] No such file or directory: 'x'" -> "x: ...".
    where = exc.filename if exc.filename2 is None else (
        f"{exc.filename} -> {exc.filename2}")
    return f"{where}: {(exc.strerror or str(exc)).lower()}"
  if isinstance(exc, KeyError) and len(exc.args) == 1:
    return one_line(exc.args[0])  # str(KeyError) adds quotes.
  message = one_line(exc)
  return message or type(exc).__name__


def raised_by_project(exc: BaseException) -> bool:
  """Whether the innermost traceback frame is this project's code."""
  frames = traceback.extract_tb(exc.__traceback__)
  if not frames:
    return False
  return os.path.abspath(frames[-1].filename).startswith(_OWN_DIRS)


def is_user_error(exc: BaseException,
                  errors: tuple[type[BaseException], ...] = ()) -> bool:
  """Whether `exc` is a mistake the user can fix (see the module doc)."""
  if isinstance(exc, (UserError,) + tuple(errors)):
    return True
  if isinstance(exc, OSError) and exc.filename is not None:
    return True
  if isinstance(exc, (ValueError, LookupError, OSError, ImportError)):
    return raised_by_project(exc)
  return False


def print_error(message: Any, file=None) -> None:
  """Prints `error: MESSAGE` (one line) to stderr."""
  print(f"error: {one_line(message)}", file=file or sys.stderr, flush=True)


def run(fn: Callable[[Any], Any], argv: Sequence[str] | None = None, *,
        errors: tuple[type[BaseException], ...] | Callable[[], tuple[
            type[BaseException], ...]] = (),
        exit_code: int = 1) -> Any:
  """Calls `fn(argv)`; turns a user error into one `error:` line.

  Args:
    fn: the CLI body; its return value is returned.
    argv: passed to fn unchanged (None: fn reads sys.argv itself); also
      where `--debug` is looked for.
    errors: further exception types that are the user's mistake, or a
      function returning them (called only on an error: lets a CLI keep
      heavy imports after its flags are parsed).
    exit_code: the status returned for such an error (a `UserError` carries
      its own).

  Returns:
    fn's result, or the exit status after printing `error: MESSAGE`.

  Raises:
    The error itself when `--debug`/VREID_DEBUG=1 is given, or when it is
    not a user error (a bug: its traceback is wanted).
  """
  try:
    return fn(argv)
  except Exception as e:  # pylint: disable=broad-except
    if callable(errors):
      errors = errors()
    if debug_requested(argv) or not is_user_error(e, errors):
      raise
    print_error(describe(e))
    return e.exit_code if isinstance(e, UserError) else exit_code
