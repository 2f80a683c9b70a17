"""The motion-twin evaluator's twin-pair metric on hand-built features."""

import numpy as np

from vreid_jax.evaluation import protocols
from vreid_jax.evaluators import motion_twins


def test_twin_pair_map_reads_only_the_pair():
  # Test set: queries 0 (pid 1, twin 2) and 1 (pid 2, twin 1); gallery rows
  # 2..5: pid 1 cam 2, pid 2 cam 2, pid 3 cam 2 (not in the pair), pid 1.
  pids = np.array([1, 2, 1, 2, 3, 1])
  camids = np.array([1, 1, 2, 2, 2, 3])
  twin = np.array([2, 1, 2, 1, -1, 2])
  features = np.array([[0.0], [10.0], [1.0], [9.0], [0.1], [20.0]])
  split = protocols.given_split(pids, np.arange(6) < 2)
  test = {"pid": pids, "camid": camids, "motion_twin": twin}
  kwargs = dict(metric="euclidean", normalize=False, ap="step", max_rank=5)
  got = motion_twins.twin_pair_map(features, test, split, kwargs)
  # Query 0 vs {row2 (d=1, +), row3 (d=9, -), row5 (d=20, +)}: AP = (1 + 2/3)/2.
  # Query 1 vs {row3 (d=1, +), row2 (d=9, -), row5 (d=10, -)}: AP = 1.
  # The pid-3 distractor at d=0.1 is outside the pair and never counts.
  np.testing.assert_allclose(got, ((1 + 2 / 3) / 2 + 1) / 2)


class _Round:
  """A stand-in EvalRound that returns hand-made clip aux."""

  def __init__(self, clips):
    self.clips = clips

  def clip_aux(self, data, role, plan):
    del data, plan
    return self.clips[role]


def test_attention_occlusion_averages_relative_weights():
  from vreid_jax.evaluators import attention_occlusion  # pylint: disable=g-import-not-at-top
  ev = attention_occlusion.Evaluator.__new__(attention_occlusion.Evaluator)
  ev.skipped = None
  ev.source = type("Src", (), {"data": None, "plan": None})()
  flags = {"query": [np.array([0, 1, 1, 0], bool)],
           "gallery": [np.array([0, 0, 0], bool)]}
  ev._flags = lambda role: flags[role]  # pylint: disable=protected-access
  # Query clip over frames 0..3: occluded frames 1, 2 get 0.1 each, clean
  # 0.4 each; the gallery clip has no occluded frame and is not counted.
  w = np.array([0.4, 0.1, 0.1, 0.4])
  round_ = _Round({"query": [[(np.arange(4), {"frame_weights": w})]],
                   "gallery": [[(np.arange(3),
                                 {"frame_weights": np.full(3, 1 / 3)})]]})
  got = ev.run(round_)
  np.testing.assert_allclose(got["occluded_weight"], 0.4)   # 0.1 x 4.
  np.testing.assert_allclose(got["clean_weight"], 1.6)
  assert got["num_clips"] == 1 and got["num_occluded_frames"] == 2
  no_weights = _Round({"query": [[(np.arange(4), {})]], "gallery": [[]]})
  assert "no per-frame attention" in ev.run(no_weights)["skipped"]
