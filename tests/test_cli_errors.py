"""Every CLI: a user's mistake is one `error:` line, not a traceback.

Each CLI gets at least one mistake a new user makes, checked for its
message (what is wrong and the fix), its exit status, no "Traceback" and
at most 3 lines of output; `--debug`/VREID_DEBUG=1 brings the traceback
back. In-process (`main(argv)` with capsys) wherever possible; the absl
trainer (`vreid_jax.main`) runs as 5 subprocesses started together, none of
which trains (each fails before any step).
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import xla_env  # tests/

from vreid_jax import cli
from vreid_jax import evaluate_features
from vreid_jax import export
from vreid_jax import extract
from vreid_jax import import_weights
from vreid_jax import search

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
  spec = importlib.util.spec_from_file_location(
      f"data_prep_{name}_cli_errors", ROOT / "data_prep" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _one_error_line(text, *want):
  """The output is at most 3 lines, one of them `error: ...` holding
  every string of `want`; no traceback."""
  lines = [line for line in text.splitlines() if line.strip()]
  assert "Traceback" not in text, text
  assert len(lines) <= 3, text
  errors = [line for line in lines if line.startswith("error: ")]
  assert len(errors) == 1, text
  for w in want:
    assert w in errors[0], (w, errors[0])
  return errors[0]


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
  monkeypatch.delenv(cli.DEBUG_ENV, raising=False)


# --- vreid_jax.cli -----------------------------------------------------------


def test_run_prints_user_errors_and_reraises_bugs(capsys, monkeypatch):
  def fails(exc):
    def fn(argv):
      del argv
      raise exc
    return fn

  assert cli.run(fails(cli.UserError("bad\n  thing")), []) == 1
  assert capsys.readouterr().err == "error: bad thing\n"
  assert cli.run(fails(cli.UsageError("no flag")), []) == 2
  assert cli.run(fails(FileNotFoundError(2, "No such file or directory",
                                          "/x/y.npz")), [], exit_code=2) == 2
  assert "error: /x/y.npz: no such file or directory" in (
      capsys.readouterr().err)
  # Our own check's ValueError is the user's; NumPy's (a bug) is not.
  assert cli.run(lambda argv: evaluate_features.load_feature_file("/n.npz"),
                 []) == 1
  assert capsys.readouterr().err == "error: /n.npz: no such file\n"
  with pytest.raises(ValueError, match="mine"):  # Not from vreid_jax/.
    cli.run(fails(ValueError("mine")), [])
  with pytest.raises(ValueError, match="broadcast"):
    cli.run(lambda argv: np.zeros(2) + np.zeros(3), [])
  with pytest.raises(ZeroDivisionError):
    cli.run(lambda argv: 1 / 0, [])
  # --debug and VREID_DEBUG=1 re-raise.
  with pytest.raises(cli.UserError):
    cli.run(fails(cli.UserError("x")), ["--debug"])
  monkeypatch.setenv(cli.DEBUG_ENV, "1")
  with pytest.raises(cli.UserError):
    cli.run(fails(cli.UserError("x")), [])
  assert capsys.readouterr().err == ""
  assert cli.strip_debug(["--a", "--debug", "--debug=true"]) == ["--a"]


def test_argparse_errors_are_one_line(capsys):
  with pytest.raises(SystemExit) as e:
    export.main(["--output=x"])
  assert e.value.code == 2
  _one_error_line(capsys.readouterr().err, "--workdir",
                  "python -m vreid_jax.export --help")


# --- one mistake per CLI (in-process) ----------------------------------------


def test_import_weights_missing_file(tmp_path, capsys):
  argv = [f"--input={tmp_path / 'resnet50.pth'}",
          f"--output={tmp_path / 'out.npz'}"]
  assert import_weights.main(argv) == 1
  out = capsys.readouterr()
  line = _one_error_line(out.out + out.err, "resnet50.pth", "no such file")
  assert "PyTorch" not in line
  with pytest.raises(cli.UserError):  # --debug: the exception itself.
    import_weights.main(argv + ["--debug"])


def test_export_extract_search_missing_workdir_or_file(tmp_path, capsys):
  nope = tmp_path / "nope"
  assert export.main([f"--workdir={nope}", f"--output={tmp_path / 'e'}"]) == 2
  _one_error_line(capsys.readouterr().err, f"--workdir={nope}",
                  "not a workdir")
  assert extract.main([f"--workdir={nope}", f"--output={tmp_path / 'x'}"]) == 2
  _one_error_line(capsys.readouterr().err, f"--workdir={nope}")
  assert search.main([f"--features={nope}.npz", f"--query_dir={tmp_path}",
                      f"--export={tmp_path}",
                      f"--output={tmp_path / 's'}"]) == 2
  _one_error_line(capsys.readouterr().err, f"--features={nope}.npz",
                  "no such file")


def test_evaluate_features_missing_file_and_debug(tmp_path, capsys):
  argv = [f"--query={tmp_path / 'q.npz'}", f"--gallery={tmp_path / 'g.npz'}"]
  assert evaluate_features.main(argv) == 2
  out = capsys.readouterr()
  assert out.out == ""
  _one_error_line(out.err, "q.npz", "no such file")
  with pytest.raises(evaluate_features.FeatureFileError):
    evaluate_features.main(argv + ["--debug"])


def test_build_unknown_dataset_and_missing_manual_dir(tmp_path, capsys):
  build = _load("build")
  with pytest.raises(SystemExit) as e:
    build.main(["--dataset=marss"])
  assert e.value.code == 2
  _one_error_line(capsys.readouterr().err, "--dataset", "'marss'", "'mars'",
                  "'ls_vid'")
  assert build.main(["--dataset=mars", f"--manual_dir={tmp_path / 'no'}",
                     f"--data_dir={tmp_path / 'data'}"]) == 1
  _one_error_line(capsys.readouterr().err, "--manual_dir=", "is not a folder")


def test_flow_unknown_and_unbuilt_dataset(tmp_path, capsys):
  flow = _load("flow")
  assert flow.main(["--dataset=marss", f"--data_dir={tmp_path}"]) == 1
  _one_error_line(capsys.readouterr().err, "--dataset=marss",
                  "did you mean 'mars'?", "duke_video_reid")
  assert flow.main(["--dataset=mars", f"--data_dir={tmp_path}"]) == 1
  _one_error_line(capsys.readouterr().err, "not built",
                  "data_prep/build.py --dataset=mars")


# --- vreid_jax.main (absl + config_flags): subprocesses ----------------------

MAIN_CASES = {  # name: the flags besides --workdir (cwd: the checkout).
    "unknown_dataset": ["--config=configs/demo.py:tiny",
                        "--config.dataset.name=marss"],
    "no_config_file": ["--config=configs/nope.py"],
    "config_key_typo": ["--config=configs/demo.py",
                        "--config.inputt.clip_len=4"],
    "workdir_is_a_file": ["--config=configs/demo.py:tiny"],
    "debug": ["--config=configs/demo.py", "--config.input.clip_lenn=4"],
}


@pytest.fixture(scope="module")
def main_runs(tmp_path_factory):
  """{case: CompletedProcess-like (returncode, out)} of `python -m
  vreid_jax.main` for each case of MAIN_CASES, run concurrently."""
  root = tmp_path_factory.mktemp("main_errors")
  a_file = root / "a_file"
  a_file.write_text("not a folder")
  procs = {}
  for name, argv in MAIN_CASES.items():
    workdir = a_file if name == "workdir_is_a_file" else root / name
    env = xla_env.env()
    env.pop(cli.DEBUG_ENV, None)
    if name == "debug":
      env[cli.DEBUG_ENV] = "1"
    procs[name] = subprocess.Popen(
        [sys.executable, "-m", "vreid_jax.main", f"--workdir={workdir}",
         *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
  out = {}
  for name, proc in procs.items():
    text, _ = proc.communicate(timeout=300)
    out[name] = (proc.returncode, text)
  return out


def test_main_unknown_dataset(main_runs):
  code, out = main_runs["unknown_dataset"]
  assert code == 1
  _one_error_line(out, "config.dataset.name='marss'", "sdu_vid")
  assert "tensorflow_datasets" not in out and "imagenet" not in out


def test_main_config_file_missing(main_runs):
  code, out = main_runs["no_config_file"]
  assert code == 2
  _one_error_line(out, "--config=configs/nope.py: no such file",
                  "configs/demo.py")


def test_main_config_key_typo(main_runs):
  code, out = main_runs["config_key_typo"]
  assert code == 2
  _one_error_line(out, "--config.inputt.clip_len", "no field 'inputt'",
                  "did you mean 'input'?")


def test_main_workdir_is_a_file(main_runs):
  code, out = main_runs["workdir_is_a_file"]
  assert code == 2
  _one_error_line(out, "a_file is a file, not a folder")


def test_main_debug_env_shows_the_traceback(main_runs):
  code, out = main_runs["debug"]
  assert code != 0
  assert "Traceback (most recent call last)" in out and "clip_lenn" in out
  assert "error: " not in out


# --- vreid_jax.main's checks, in-process ---------------------------------------


@pytest.fixture(scope="module")
def main_module():
  from vreid_jax import main  # pylint: disable=g-import-not-at-top
  return main


def test_main_data_dir_checks(main_module, tmp_path):
  from vreid_jax import config_utils  # pylint: disable=g-import-not-at-top
  config = config_utils.load_config(str(ROOT / "configs/demo.py:tiny"))
  nowhere = str(tmp_path / "nonexistent")
  with config.unlocked():
    config.data_dir = nowhere
    config.dataset.auto_build = False
  with pytest.raises(cli.UsageError, match="does not exist"):
    main_module._check_dirs(config, str(tmp_path / "w"))
  a_file = tmp_path / "f"
  a_file.write_text("")
  with config.unlocked():
    config.data_dir = str(a_file / "data")
    config.dataset.auto_build = True
  with pytest.raises(cli.UsageError, match="cannot be created"):
    main_module._check_dirs(config, str(tmp_path / "w"))
  with config.unlocked():
    config.data_dir = nowhere  # Auto-built there: fine.
  main_module._check_dirs(config, str(tmp_path / "w"))
