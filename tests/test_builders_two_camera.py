"""iLIDS-VID, PRID-2011 and SDU-VID builders, and their trial selection."""

import json
import os
import shutil

import numpy as np
import pytest
import scipy.io

import fake_trees
from vreid_jax.datasets import base
from vreid_jax.datasets.ilids_vid import IlidsVid
from vreid_jax.datasets.prid2011 import Prid2011
from vreid_jax.datasets.prid2011 import prid2011 as prid_lib
from vreid_jax.datasets.sdu_vid import SduVid
from vreid_jax.input_pipeline import splits


def _check_records(builder, expected):
  got = fake_trees.read_split(builder, "tracklets")
  assert [fake_trees.summary(t) for t in got] == [
      fake_trees.summary(t) for t in expected]
  return got


def _check_trial_roles(name, metadata, trial, want):
  """select_roles gives cam1 test as query, cam2 test as gallery, ..."""
  roles = splits.select_roles(name, metadata, trial=trial)
  index = metadata["index"]["tracklets"]
  pid, cam = np.asarray(index["pid"]), np.asarray(index["camid"])
  assert set(roles) == {"train", "query", "gallery"}
  for role, (split, rec) in roles.items():
    assert split == "tracklets"
    assert np.all(np.diff(rec) > 0)
  _, q = roles["query"]
  _, g = roles["gallery"]
  _, t = roles["train"]
  assert set(cam[q]) <= {1} and set(cam[g]) <= {2}
  assert set(pid[q]) == set(want["test"]) & set(pid[cam == 1])
  assert set(pid[g]) == set(want["test"]) & set(pid[cam == 2])
  assert set(pid[t]) == set(want["train"]) & set(pid)
  assert len(t) == int(np.isin(pid, want["train"]).sum())


# --- iLIDS-VID ----------------------------------------------------------------
def test_ilids_fake_tree_and_trials(tmp_path):
  manual = tmp_path / "manual"
  expected = fake_trees.make_ilids_tree(str(manual))
  builder = fake_trees.build(IlidsVid, str(manual), str(tmp_path / "data"))
  got = _check_records(builder, expected["tracklets"])
  assert len(got) == 16 and {r["camid"] for r in got} == {1, 2}
  metadata = builder.info.metadata
  assert metadata["trials"] == expected["trials"]
  assert len(metadata["trials"]) == 10
  for trial in (0, 9):
    _check_trial_roles("ilids_vid", metadata, trial,
                       expected["trials"][trial])
  with pytest.raises(ValueError, match="out of range"):
    splits.select_roles("ilids_vid", metadata, trial=10)
  with pytest.raises(ValueError, match="trial"):
    splits.select_roles("ilids_vid", metadata)


def test_ilids_ls_set_convention(tmp_path):
  """Row k: first half test, second half train, 1-based sorted cam1 rows."""
  manual = tmp_path / "manual"
  pids = (3, 5, 9, 12)
  ls_set = np.asarray([[4, 1, 2, 3]] * 10, np.float64)
  fake_trees.make_ilids_tree(str(manual), pids=pids, ls_set=ls_set)
  builder = fake_trees.build(IlidsVid, str(manual), str(tmp_path / "data"))
  assert builder.info.metadata["trials"][0] == {"test": [3, 12],
                                                "train": [5, 9]}


def test_ilids_missing_splits_and_camera_named(tmp_path):
  manual = tmp_path / "manual"
  fake_trees.make_ilids_tree(str(manual))
  shutil.rmtree(manual / "train-test people splits")
  shutil.rmtree(manual / "i-LIDS-VID" / "sequences" / "cam2")
  with pytest.raises(base.LayoutError) as err:
    fake_trees.build(IlidsVid, str(manual), str(tmp_path / "data"))
  msg = str(err.value)
  assert "train_test_splits_ilidsvid.mat" in msg
  assert os.path.join("sequences", "cam2") in msg


def test_ilids_ls_set_out_of_range(tmp_path):
  manual = tmp_path / "manual"
  fake_trees.make_ilids_tree(str(manual), pids=(1, 2, 3, 4),
                             ls_set=np.asarray([[1, 2, 3, 9]] * 10, float))
  with pytest.raises(ValueError, match="4 person folders"):
    fake_trees.build(IlidsVid, str(manual), str(tmp_path / "data"))


def test_ilids_wrong_size_rejected(tmp_path):
  manual = tmp_path / "manual"
  fake_trees.make_ilids_tree(str(manual), pids=(1, 2))
  person = manual / "i-LIDS-VID" / "sequences" / "cam1" / "person001"
  first = sorted(os.listdir(person))[0]
  fake_trees.write_image(str(person / first), (256, 128), fmt="PNG")
  with pytest.raises(base.CorruptImageError, match="256x128"):
    fake_trees.build(IlidsVid, str(manual), str(tmp_path / "data"))


# --- PRID-2011 ----------------------------------------------------------------
def test_prid_stores_persons_of_both_cameras(tmp_path):
  manual = tmp_path / "manual"
  expected = fake_trees.make_prid_tree(str(manual))
  builder = fake_trees.build(Prid2011, str(manual), str(tmp_path / "data"))
  _check_records(builder, expected["tracklets"])
  persons = builder.info.metadata["persons"]
  assert persons["cam_a_only"] == expected["excluded_pids"]["cam_a_only"]
  assert persons["cam_b_only"] == expected["excluded_pids"]["cam_b_only"]
  assert persons["excluded_persons"] == 3
  assert persons["excluded_tracklets"] == 3
  metadata = builder.info.metadata
  assert metadata["trials"] == expected["trials"]
  assert metadata["protocol"]["trials_source"].endswith("splits_prid2011.json")
  for trial in (0, 1):
    _check_trial_roles("prid2011", metadata, trial, expected["trials"][trial])
  assert 3 in persons["short"]  # <= 27 frames: listed for reference only.
  roles = splits.select_roles("prid2011", metadata, trial=0)
  index = metadata["index"]["tracklets"]
  assert [index["pid"][i] for i in roles["query"][1]] == [4, 5, 6]


def test_prid_bundled_splits(tmp_path):
  """Without a split file in manual_dir the bundled 10 x (89, 89) is used."""
  manual = tmp_path / "manual"
  fake_trees.make_prid_tree(str(manual), splits_path=None)
  builder = fake_trees.build(Prid2011, str(manual), str(tmp_path / "data"))
  metadata = builder.info.metadata
  assert metadata["protocol"]["trials_source"] == (
      "bundled splits_prid2011.json")
  trials = metadata["trials"]
  assert len(trials) == 10
  assert all(len(t["train"]) == 89 and len(t["test"]) == 89 for t in trials)
  everyone = set(trials[0]["train"]) | set(trials[0]["test"])
  assert len(everyone) == 178 and 6 not in everyone and 200 not in everyone
  # The tiny tree lacks most trial persons: reported, not fatal.
  assert metadata["layout_notes"]
  roles = splits.select_roles("prid2011", metadata, trial=0)
  pids = np.asarray(metadata["index"]["tracklets"]["pid"])
  assert set(pids[roles["query"][1]]) <= set(trials[0]["test"])


def test_prid_bundled_file_matches_shared_copy(shared_dir):
  bundled = prid_lib.read_splits(prid_lib.bundled_splits_path())
  shared = prid_lib.read_splits(
      str(shared_dir / "protocols" / "prid2011" / "splits_prid2011.json"))
  assert bundled == shared


def test_prid_missing_camera_named_and_bad_split_file(tmp_path):
  manual = tmp_path / "manual"
  fake_trees.make_prid_tree(str(manual))
  with open(manual / "splits_prid2011.json", "w") as f:
    json.dump([{"train": ["p1"], "test": ["person_0002"]}], f)
  with pytest.raises(ValueError, match="person folder name"):
    fake_trees.build(Prid2011, str(manual), str(tmp_path / "data"))
  shutil.rmtree(manual / "prid_2011" / "multi_shot" / "cam_b")
  with pytest.raises(base.LayoutError, match="cam_b"):
    fake_trees.build(Prid2011, str(manual), str(tmp_path / "data2"))


# --- SDU-VID ------------------------------------------------------------------
def test_sdu_fake_tree_and_seeded_trials(tmp_path):
  manual = tmp_path / "manual"
  expected = fake_trees.make_sdu_tree(str(manual))
  builder = fake_trees.build(SduVid, str(manual), str(tmp_path / "data"))
  _check_records(builder, expected["tracklets"])
  metadata = builder.info.metadata
  trials = metadata["trials"]
  assert len(trials) == 10
  for t in trials:
    assert sorted(t["train"] + t["test"]) == [1, 2, 3, 4, 5, 6]
    assert len(t["test"]) == 3
  # Fixed seed: a second build draws the same trials.
  again = fake_trees.build(SduVid, str(manual), str(tmp_path / "data2"))
  assert again.info.metadata["trials"] == trials
  _check_trial_roles("sdu_vid", metadata, 3, trials[3])


def test_sdu_missing_cameras_named(tmp_path):
  (tmp_path / "manual" / "SDU-VID").mkdir(parents=True)
  with pytest.raises(base.LayoutError) as err:
    fake_trees.build(SduVid, str(tmp_path / "manual"), str(tmp_path / "data"))
  assert "cam1" in str(err.value) and "cam2" in str(err.value)


def test_ilids_reads_matlab_v73_ls_set(tmp_path):
  """An HDF5 (v7.3) splits file is read transposed back to (trials, ids)."""
  h5py = pytest.importorskip("h5py")
  manual = tmp_path / "manual"
  fake_trees.make_ilids_tree(str(manual), pids=(1, 2, 3, 4),
                             ls_set=np.asarray([[4, 3, 2, 1]] * 10, float))
  path = (manual / "train-test people splits" /
          "train_test_splits_ilidsvid.mat")
  ls_set = scipy.io.loadmat(path)["ls_set"]
  os.remove(path)
  with h5py.File(path, "w") as f:
    f.create_dataset("ls_set", data=ls_set.T)
  builder = fake_trees.build(IlidsVid, str(manual), str(tmp_path / "data"))
  assert builder.info.metadata["trials"][0] == {"test": [3, 4],
                                                "train": [1, 2]}
