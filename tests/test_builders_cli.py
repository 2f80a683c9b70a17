"""data_prep/build.py: layout errors, corrupt frames, report, split sizes."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import tensorflow_datasets as tfds

import fake_trees
from vreid_jax.input_pipeline import splits

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_build():
  spec = importlib.util.spec_from_file_location(
      "data_prep_build", ROOT / "data_prep" / "build.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


build = _load_build()


def test_layout_error_exits_with_one_paragraph(tmp_path):
  manual = tmp_path / "manual"
  fake_trees.make_mars_tree(str(manual))
  os.remove(manual / "MARS" / "info" / "query_IDX.mat")
  proc = subprocess.run(
      [sys.executable, str(ROOT / "data_prep" / "build.py"), "--dataset=mars",
       f"--manual_dir={manual}", f"--data_dir={tmp_path / 'data'}"],
      capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 1
  assert "query_IDX.mat" in proc.stderr
  assert "Traceback" not in proc.stderr + proc.stdout
  assert not (tmp_path / "data" / "mars").exists()


def test_corrupt_frame_named_then_skipped_with_report(tmp_path, capsys):
  manual = tmp_path / "manual"
  fake_trees.make_duke_tree(str(manual))
  bad = (manual / "DukeMTMC-VideoReID" / "gallery" / "0005" / "0002" /
         "0005_C4_F0002_X49998.jpg")
  fake_trees.corrupt_file(str(bad))
  args = ["--dataset=duke_video_reid", f"--manual_dir={manual}",
          f"--data_dir={tmp_path / 'data'}"]
  assert build.main(args) == 1
  err = capsys.readouterr().err
  assert "0005_C4_F0002_X49998.jpg" in err and "--skip_corrupt" in err
  assert build.main(args + ["--skip_corrupt"]) == 0
  out = capsys.readouterr().out
  assert "skipped 1 corrupt frames" in out
  assert "0005_C4_F0002_X49998.jpg" in out
  for line in ("train", "query", "gallery"):
    assert line in out
  assert "      3 tracklets" in out  # train and gallery sizes.


def test_missing_manual_dir_and_synthetic(tmp_path, capsys):
  assert build.main(["--dataset=ilids_vid",
                     f"--data_dir={tmp_path / 'data'}"]) == 1
  assert "--manual_dir" in capsys.readouterr().err
  assert build.main(["--dataset=synthetic_video_reid", "--config=tiny",
                     f"--data_dir={tmp_path / 'data'}"]) == 0
  out = capsys.readouterr().out
  assert "synthetic_video_reid/tiny" in out and "query" in out
  builder = tfds.builder("synthetic_video_reid/tiny",
                         data_dir=str(tmp_path / "data"))
  roles = splits.select_roles("synthetic_video_reid", builder.info.metadata)
  assert set(roles) == {"train", "query", "gallery"}
  n = builder.info.splits["query"].num_examples
  np.testing.assert_array_equal(roles["query"][1], np.arange(n))


def test_prints_trials_for_trial_datasets(tmp_path, capsys):
  manual = tmp_path / "manual"
  fake_trees.make_ilids_tree(str(manual))
  assert build.main(["--dataset=ilids_vid", f"--manual_dir={manual}",
                     f"--data_dir={tmp_path / 'data'}"]) == 0
  out = capsys.readouterr().out
  assert "tracklets" in out and "10 trials of 4 train / 4 test ids" in out


def test_dataset_names_listed_once_match_the_registered_builders():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import vreid_jax.datasets  # pylint: disable=g-import-not-at-top
  registered = set(tfds.list_builders(with_community_datasets=False))
  assert set(vreid_jax.datasets.NAMES) <= registered
  from vreid_jax.datasets import base  # pylint: disable=g-import-not-at-top
  ours = {cls.name for cls in _subclasses(tfds.core.GeneratorBasedBuilder)
          if cls.__module__.startswith("vreid_jax.datasets.")
          and cls.__module__ != base.__name__}
  assert ours == set(vreid_jax.datasets.NAMES)


def _subclasses(cls):
  for sub in cls.__subclasses__():
    yield sub
    yield from _subclasses(sub)
