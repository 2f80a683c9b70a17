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
