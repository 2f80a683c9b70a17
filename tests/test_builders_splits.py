"""select_roles: which records play train, query and gallery."""

import numpy as np
import pytest

from vreid_jax.input_pipeline import splits


def _index(pids, cams):
  return {"pid": list(pids), "camid": list(cams),
          "num_frames": [3] * len(pids)}


FIXED = {"index": {"train": _index([1, 1, 2], [1, 2, 1]),
                   "query": _index([5, 6], [1, 2]),
                   "gallery": _index([5, 6, 0, -1], [2, 1, 3, 1])}}

TRIALS = {
    "index": {"tracklets": _index([1, 1, 2, 2, 3, 3, 4, 5],
                                  [1, 2, 1, 2, 1, 2, 2, 1])},
    "trials": [{"train": [1, 2], "test": [3, 4, 5]},
               {"train": [3, 4], "test": [1, 2]}],
    "protocol": {"split": "tracklets", "query_camid": 1, "gallery_camid": 2},
}


@pytest.mark.parametrize("name", ["mars", "duke_video_reid",
                                  "synthetic_video_reid",
                                  "synthetic_video_reid/tiny"])
def test_fixed_splits_are_whole_splits(name):
  roles = splits.select_roles(name, FIXED)
  assert set(roles) == {"train", "query", "gallery"}
  for role, (split, rec) in roles.items():
    assert split == role
    assert rec.dtype == np.int64
    np.testing.assert_array_equal(rec, np.arange(len(FIXED["index"][split][
        "pid"])))


def test_fixed_splits_reject_a_trial():
  with pytest.raises(ValueError, match="fixed"):
    splits.select_roles("mars", FIXED, trial=0)


def test_ls_vid_has_val_and_roles_from_protocol():
  metadata = {"index": dict(FIXED["index"], val=_index([9, 9], [1, 2])),
              "protocol": {"roles": {"train": "train", "val": "val",
                                     "query": "query",
                                     "gallery": "gallery"}}}
  roles = splits.select_roles("ls_vid", metadata)
  assert list(roles) == ["train", "val", "query", "gallery"]
  np.testing.assert_array_equal(roles["val"][1], [0, 1])


def test_fixed_split_missing_is_an_error():
  with pytest.raises(ValueError, match="query"):
    splits.select_roles("mars", {"index": {"train": _index([1], [1])}})
  with pytest.raises(ValueError, match="index"):
    splits.select_roles("mars", {})


@pytest.mark.parametrize("name", ["ilids_vid", "prid2011", "sdu_vid"])
def test_trial_roles(name):
  roles = splits.select_roles(name, TRIALS, trial=0)
  assert {r: s for r, (s, _) in roles.items()} == {
      "train": "tracklets", "query": "tracklets", "gallery": "tracklets"}
  np.testing.assert_array_equal(roles["train"][1], [0, 1, 2, 3])
  np.testing.assert_array_equal(roles["query"][1], [4, 7])   # cam1 of 3,4,5
  np.testing.assert_array_equal(roles["gallery"][1], [5, 6])  # cam2
  roles = splits.select_roles(name, TRIALS, trial=1)
  np.testing.assert_array_equal(roles["train"][1], [4, 5, 6])
  np.testing.assert_array_equal(roles["query"][1], [0, 2])
  np.testing.assert_array_equal(roles["gallery"][1], [1, 3])


def test_trial_errors():
  with pytest.raises(ValueError, match=r"trial=0\.\.1"):
    splits.select_roles("ilids_vid", TRIALS)
  with pytest.raises(ValueError, match="out of range"):
    splits.select_roles("ilids_vid", TRIALS, trial=2)
  with pytest.raises(ValueError, match="out of range"):
    splits.select_roles("ilids_vid", TRIALS, trial=-1)
  with pytest.raises(ValueError, match="no trials"):
    splits.select_roles("prid2011", {"index": TRIALS["index"]}, trial=0)
  bad = dict(TRIALS, trials=[{"train": [1, 3], "test": [3]}])
  with pytest.raises(ValueError, match="both train and test"):
    splits.select_roles("sdu_vid", bad, trial=0)
  assert splits.num_trials(TRIALS) == 2 and splits.num_trials(FIXED) == 0
