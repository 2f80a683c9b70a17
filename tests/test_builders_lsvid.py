"""LS-VID builder on fake trees: the .mat (HDF5) and the .npy variants."""

import os

import numpy as np
import pytest

import fake_trees
from vreid_jax.datasets import base
from vreid_jax.datasets.ls_vid import LsVid
from vreid_jax.datasets.ls_vid.ls_vid import frame_numbers
from vreid_jax.input_pipeline import splits


def _paper_free(notes):
  return [n for n in notes if "paper's split" not in n]


@pytest.mark.parametrize("query_format", ["mat", "npy"])
def test_fake_tree_splits_match(tmp_path, query_format):
  manual = tmp_path / "manual"
  expected = fake_trees.make_lsvid_tree(str(manual),
                                        query_format=query_format)
  builder = fake_trees.build(LsVid, str(manual), str(tmp_path / "data"))
  assert set(builder.info.splits) == {"train", "val", "query", "gallery"}
  for split, want in expected.items():
    got = fake_trees.read_split(builder, split)
    assert [fake_trees.summary(t) for t in got] == [
        fake_trees.summary(t) for t in want], split
  metadata = builder.info.metadata
  assert metadata["index"]["train"]["camid"] == [3, 12, 1]  # Token 2.
  assert metadata["index"]["query"]["pid"] == [11, 10]  # Query index order.
  assert _paper_free(metadata["layout_notes"]) == []
  # The paper's id counts are checked, and the tiny tree differs: reported.
  assert any("842" in n for n in metadata["layout_notes"])
  roles = splits.select_roles("ls_vid", metadata)
  assert set(roles) == {"train", "val", "query", "gallery"}
  assert roles["val"][0] == "val" and list(roles["val"][1]) == [0, 1]


def test_missing_query_files_and_lists_named(tmp_path):
  manual = tmp_path / "manual"
  fake_trees.make_lsvid_tree(str(manual))
  os.remove(manual / "LS-VID" / "test" / "data" / "info_test.mat")
  os.remove(manual / "LS-VID" / "list_sequence" / "list_seq_val.txt")
  with pytest.raises(base.LayoutError) as err:
    fake_trees.build(LsVid, str(manual), str(tmp_path / "data"))
  msg = str(err.value)
  assert "info_test.mat" in msg and "query.npy" in msg
  assert "list_seq_val.txt" in msg


def test_npy_mismatches_and_zero_based_reported(tmp_path):
  manual = tmp_path / "manual"
  fake_trees.make_lsvid_tree(str(manual), query_format="npy")
  test_dir = manual / "LS-VID" / "test"
  np.save(test_dir / "query.npy", np.asarray([2, 0]))  # 0-based rows.
  info = np.load(test_dir / "info_test.npy")
  info[1, 3] = 14  # Another camera than the names say.
  np.save(test_dir / "info_test.npy", info)
  builder = fake_trees.build(LsVid, str(manual), str(tmp_path / "data"))
  notes = _paper_free(builder.info.metadata["layout_notes"])
  assert any("0-based" in n for n in notes)
  assert any("column 3" in n and "1 rows" in n for n in notes)
  index = builder.info.metadata["index"]
  assert index["query"]["pid"] == [11, 10]
  assert index["query"]["camid"] == [9, 5]  # The names win.


def test_query_rows_out_of_range(tmp_path):
  manual = tmp_path / "manual"
  fake_trees.make_lsvid_tree(str(manual), query_rows=(1, 6))
  with pytest.raises(ValueError, match="5 lines"):
    fake_trees.build(LsVid, str(manual), str(tmp_path / "data"))


def test_list_line_without_frames_is_reported(tmp_path):
  manual = tmp_path / "manual"
  fake_trees.make_lsvid_tree(str(manual))
  with open(manual / "LS-VID" / "list_sequence" / "list_seq_train.txt",
            "a", newline="") as f:
    f.write("tracklet_train/0009/0009001 9\r\n")
  builder = fake_trees.build(LsVid, str(manual), str(tmp_path / "data"))
  assert builder.info.splits["train"].num_examples == 3
  assert builder.report.skipped_tracklets[0][0].startswith("train row 4")


def test_frame_numbers_from_name_tokens():
  assert frame_numbers([["0001001", "0003", "05", "001"],
                        ["0001001", "0004", "05", "001"]]) == [3, 4]
  # Token 1 constant, token 3 varying: token 3 is the frame.
  assert frame_numbers([["0001", "001", "05", "0007"],
                        ["0001", "001", "05", "0009"]]) == [7, 9]
  assert frame_numbers([["a", "b", "05", "c"], ["a", "x", "05", "d"]]) == [
      1, 2]
