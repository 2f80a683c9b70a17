"""DukeMTMC-VideoReID builder on fake trees in the published layout."""

import os
import shutil

import pytest

import fake_trees
from vreid_jax.datasets import base
from vreid_jax.datasets.duke_video_reid import DukeVideoReid
from vreid_jax.datasets.duke_video_reid.duke_video_reid import parse_frame_name


def test_both_frame_name_formats():
  assert parse_frame_name("0001_C6_F0099_X30823.jpg") == (1, 6, 99)
  assert parse_frame_name("0001C6F0099X30823.jpg") == (1, 6, 99)
  assert parse_frame_name("0123_C8_F10001_X00001.jpg") == (123, 8, 10001)
  assert parse_frame_name("thumbs.db") is None


def test_fake_tree_splits_match(tmp_path):
  manual = tmp_path / "manual"
  expected = fake_trees.make_duke_tree(str(manual))
  builder = fake_trees.build(DukeVideoReid, str(manual),
                             str(tmp_path / "data"))
  for split, want in expected.items():
    got = fake_trees.read_split(builder, split)
    assert [fake_trees.summary(t) for t in got] == [
        fake_trees.summary(t) for t in want], split
  train = fake_trees.read_split(builder, "train")
  assert train[0]["camid"] == 6 and train[1]["camid"] == 2  # new, old.
  assert train[1]["frame_numbers"] == [2, 3, 7]  # Starts at F0002, gap.
  # Ordered by the F number, not by name: F10000 after F9999.
  assert train[2]["frame_numbers"] == [9998, 9999, 10000, 10001]
  tdir = manual / "DukeMTMC-VideoReID" / "train" / "0003" / "0001"
  by_name = {p.read_bytes(): p.name for p in tdir.iterdir()}
  assert [by_name[b] for b in train[2]["frames"]][-1].startswith(
      "0003_C1_F10001")
  gallery = builder.info.metadata["index"]["gallery"]
  assert gallery["is_distractor"] == [False, False, True]
  assert builder.info.metadata["layout_notes"] == []


def test_missing_split_folders_are_named(tmp_path):
  manual = tmp_path / "manual"
  fake_trees.make_duke_tree(str(manual))
  shutil.rmtree(manual / "DukeMTMC-VideoReID" / "query")
  shutil.rmtree(manual / "DukeMTMC-VideoReID" / "gallery")
  with pytest.raises(base.LayoutError) as err:
    fake_trees.build(DukeVideoReid, str(manual), str(tmp_path / "data"))
  msg = str(err.value)
  assert os.path.join("DukeMTMC-VideoReID", "query") in msg
  assert os.path.join("DukeMTMC-VideoReID", "gallery") in msg
  assert "DukeMTMC-VideoReID.zip" in msg


def test_pid_mismatch_and_empty_tracklet_reported(tmp_path):
  manual = tmp_path / "manual"
  fake_trees.make_duke_tree(str(manual))
  tdir = manual / "DukeMTMC-VideoReID" / "train" / "0001" / "0001"
  fake_trees.write_image(str(tdir / "0002_C6_F0102_X10000.jpg"), (64, 32))
  os.makedirs(manual / "DukeMTMC-VideoReID" / "query" / "0005" / "0009")
  builder = fake_trees.build(DukeVideoReid, str(manual),
                             str(tmp_path / "data"))
  notes = builder.info.metadata["layout_notes"]
  assert any("another pid" in n for n in notes)
  assert builder.report.skipped_tracklets == [
      (os.path.join("DukeMTMC-VideoReID", "query", "0005", "0009"),
       "no image file")]
