"""MARS builder: fake trees in the published layout and the real info files."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

import fake_trees
from vreid_jax.datasets import base
from vreid_jax.datasets.mars import Mars

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MARS_PROTOCOL = SHARED / "protocols" / "mars"


def _skip_without_protocol():
  if not (MARS_PROTOCOL / "tracks_test_info.mat").is_file():
    pytest.skip(f"the real MARS protocol files are not in {MARS_PROTOCOL} "
                "(../shared is absent in this checkout)")


@pytest.mark.parametrize("crlf", [True, False])
def test_fake_tree_splits_match(tmp_path, crlf):
  expected = fake_trees.make_mars_tree(str(tmp_path / "manual"), crlf=crlf)
  builder = fake_trees.build(Mars, str(tmp_path / "manual"),
                             str(tmp_path / "data"))
  assert {s: builder.info.splits[s].num_examples for s in expected} == {
      "train": 4, "query": 2, "gallery": 6}
  for split, want in expected.items():
    got = fake_trees.read_split(builder, split)
    assert [fake_trees.summary(t) for t in got] == [
        fake_trees.summary(t) for t in want], split
  # Frame bytes are the original files, in name-list order.
  rec = fake_trees.read_split(builder, "train")[1]
  assert rec["frame_numbers"] == [1, 2, 5, 6]  # Gap kept.
  first = tmp_path / "manual" / rec["path"]
  assert rec["frames"][0] == first.read_bytes()
  index = builder.info.metadata["index"]
  assert index["gallery"]["is_junk"] == [True] + [False] * 5
  assert index["gallery"]["is_distractor"] == [False, True] + [False] * 4
  assert index["query"]["pid"] == [4, 3]  # query_IDX order, not table order.
  assert builder.info.metadata["layout_notes"] == []


def test_manual_dir_may_be_the_mars_folder(tmp_path):
  fake_trees.make_mars_tree(str(tmp_path / "manual"))
  builder = fake_trees.build(Mars, str(tmp_path / "manual" / "MARS"),
                             str(tmp_path / "data"))
  assert builder.info.splits["gallery"].num_examples == 6


def test_missing_query_idx_is_named(tmp_path):
  manual = tmp_path / "manual"
  fake_trees.make_mars_tree(str(manual))
  os.remove(manual / "MARS" / "info" / "query_IDX.mat")
  with pytest.raises(base.LayoutError, match=r"query_IDX\.mat"):
    fake_trees.build(Mars, str(manual), str(tmp_path / "data"))


def test_each_missing_file_and_folder_is_named(tmp_path):
  manual = tmp_path / "manual"
  fake_trees.make_mars_tree(str(manual))
  shutil.rmtree(manual / "MARS" / "bbox_train")
  os.remove(manual / "MARS" / "info" / "test_name.txt")
  os.remove(manual / "MARS" / "info" / "tracks_train_info.mat")
  with pytest.raises(base.LayoutError) as err:
    Mars(data_dir=str(tmp_path / "data")).validate_layout(str(manual))
  msg = str(err.value)
  for missing in ("bbox_train", "test_name.txt", "tracks_train_info.mat"):
    assert missing in msg
  assert "missing 3" in msg and "bbox_test.zip" not in msg
  assert "MARS-evaluation" in msg  # Says where the files come from.


def test_corrupt_jpeg_named_then_skipped_and_counted(tmp_path):
  manual = tmp_path / "manual"
  fake_trees.make_mars_tree(str(manual))
  bad = manual / "MARS" / "bbox_test" / "0004" / "0004C1T0001F002.jpg"
  fake_trees.corrupt_file(str(bad))
  with pytest.raises(base.CorruptImageError, match="0004C1T0001F002.jpg"):
    fake_trees.build(Mars, str(manual), str(tmp_path / "data"))
  builder = fake_trees.build(Mars, str(manual), str(tmp_path / "data2"),
                             skip_corrupt=True)
  assert len(builder.report.skipped_frames) == 1
  assert "0004C1T0001F002.jpg" in builder.report.summary()
  query = fake_trees.read_split(builder, "query")
  assert query[0]["frame_numbers"] == [1, 3, 4]
  assert builder.info.metadata["build_report"]["skipped_frames"][0][0] == str(
      bad)


def test_wrong_size_image_rejected(tmp_path):
  manual = tmp_path / "manual"
  fake_trees.make_mars_tree(str(manual))
  fake_trees.write_image(
      str(manual / "MARS" / "bbox_train" / "0002" / "0002C3T0001F002.jpg"),
      (128, 64))
  with pytest.raises(base.CorruptImageError, match="128x64"):
    fake_trees.build(Mars, str(manual), str(tmp_path / "data"))


def test_table_name_mismatch_is_reported(tmp_path):
  manual = tmp_path / "manual"
  fake_trees.make_mars_tree(str(manual))
  path = manual / "MARS" / "info" / "tracks_train_info.mat"
  table = scipy.io.loadmat(path)["track_train_info"]
  table[0, 3] = 5  # Camera 5, the names say camera 1.
  scipy.io.savemat(path, {"track_train_info": table})
  builder = fake_trees.build(Mars, str(manual), str(tmp_path / "data"))
  notes = builder.info.metadata["layout_notes"]
  assert len(notes) == 1 and "train row 1" in notes[0]
  assert builder.info.metadata["index"]["train"]["camid"][0] == 5


def test_query_idx_out_of_range_is_an_error(tmp_path):
  manual = tmp_path / "manual"
  fake_trees.make_mars_tree(str(manual))
  scipy.io.savemat(manual / "MARS" / "info" / "query_IDX.mat",
                   {"query_IDX": np.asarray([[1, 99]], np.uint16)})
  with pytest.raises(ValueError, match="query_IDX"):
    fake_trees.build(Mars, str(manual), str(tmp_path / "data"))


def test_real_protocol_files_parse_exactly(tmp_path):
  """The real info files, with frames for no tracklet: parsing only."""
  _skip_without_protocol()
  manual = tmp_path / "manual"
  fake_trees.copy_mars_protocol(str(manual), str(MARS_PROTOCOL))
  real = fake_trees.read_mars_protocol(str(MARS_PROTOCOL))
  builder = Mars(data_dir=str(tmp_path / "data"))
  splits = builder._tracklets(str(manual))  # pylint: disable=protected-access
  assert {s: len(v) for s, v in splits.items()} == {
      "train": 8298, "query": 1980, "gallery": 10200}
  assert builder.info.metadata["layout_notes"] == []
  gallery = splits["gallery"]
  assert sum(t.is_distractor for t in gallery) == 3248
  assert sum(t.is_junk for t in gallery) == 870
  assert sum(t.pid == -1 for t in gallery) == 870
  assert not any(t.is_junk or t.is_distractor for t in splits["query"])
  test_rows = real["test_table"]
  assert [(t.pid, t.camid) for t in splits["query"]] == [
      (int(test_rows[q - 1, 2]), int(test_rows[q - 1, 3]))
      for q in real["query_idx"]]
  # A train tracklet with a gap (row 41), a test one not starting at F001
  # (row 4165), a gap in a test one (row 4131), junk and a distractor.
  checks = [("train", 40), ("test", 4164), ("test", 4130), ("test", 0),
            ("test", int(np.flatnonzero(test_rows[:, 2] == 0)[0]))]
  query_rows = set((real["query_idx"] - 1).tolist())
  for split, row in checks:
    want = fake_trees.expected_mars_tracklet(
        real[f"{split}_names"], real[f"{split}_table"][row], split)
    if split == "train":
      got = splits["train"][row]
    elif row in query_rows:
      got = splits["query"][list(real["query_idx"] - 1).index(row)]
    else:
      got = gallery[row - sum(1 for q in query_rows if q < row)]
    assert (got.pid, got.camid, got.tracklet_id, list(got.frame_numbers),
            got.is_distractor, got.is_junk, got.path) == fake_trees.summary(
                want)
    names = real[f"{split}_names"]
    start, end = real[f"{split}_table"][row][:2]
    assert [os.path.basename(f) for f in got.frames] == names[start - 1:end]
    assert all(os.path.dirname(f).endswith(os.path.join(
        f"bbox_{split}", names[start - 1][:4])) for f in got.frames)
  assert splits["train"][40].frame_numbers[32] == 67  # F032 -> F067.


def test_real_protocol_subset_builds(tmp_path):
  """Some real rows (gaps, late starts, junk, distractors, queries), built."""
  _skip_without_protocol()
  real = fake_trees.read_mars_protocol(str(MARS_PROTOCOL))
  test_table = real["test_table"]
  query_rows = real["query_idx"] - 1
  test_rows = sorted({0, 1, 4130, 4164, 4191, 4374,
                      int(np.flatnonzero(test_table[:, 2] == 0)[0])}
                     | set(np.flatnonzero(test_table[:, 2] == 8).tolist())
                     | set(query_rows[:3].tolist()))
  train_rows = [0, 40, 8297]
  manual = tmp_path / "manual"
  expected = fake_trees.make_mars_subset_tree(
      str(manual), str(MARS_PROTOCOL), train_rows=train_rows,
      test_rows=test_rows)
  assert expected["query"] and expected["gallery"]
  builder = fake_trees.build(Mars, str(manual), str(tmp_path / "data"))
  for split, want in expected.items():
    got = fake_trees.read_split(builder, split)
    assert [fake_trees.summary(t) for t in got] == [
        fake_trees.summary(t) for t in want], split
  assert builder.info.metadata["layout_notes"] == []
