"""Protocol set sizes on the real MARS protocol files (in ../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vreid_jax.evaluation import evaluate_split
from vreid_jax.evaluation import metrics
from vreid_jax.evaluation import protocols

MARS_INFO = (Path(__file__).resolve().parents[1].parent / "shared"
             / "protocols" / "mars")


@pytest.fixture(name="mars", scope="module")
def _mars():
  if not (MARS_INFO / "tracks_test_info.mat").is_file():
    pytest.skip(f"real MARS protocol files not found in {MARS_INFO} "
                "(expected ../shared/protocols/mars beside the repository)")
  return protocols.load_mars_protocol(MARS_INFO)


def _queries_without_positive(mars, split):
  gallery = metrics.make_gallery_index(
      mars.pids[split.gallery], mars.camids[split.gallery],
      split.gallery_junk)
  pairs = metrics.same_identity_pairs(mars.pids[split.query],
                                      mars.camids[split.query], gallery)
  return int((np.bincount(pairs.pos_rows, minlength=split.query.size)
              == 0).sum())


def test_mars_files(mars):
  assert mars.pids.shape == (12180,) and mars.query.shape == (1980,)
  assert (mars.pids == -1).sum() == 870 and (mars.pids == 0).sum() == 3248
  assert set(np.unique(mars.camids)) == set(range(1, 7))
  assert (mars.pids[mars.query] > 0).all()


@pytest.mark.parametrize("variant, gallery_size, without_positive", [
    # DATASETS.md: 140 standard queries lack a cross-camera positive. With
    # the queries kept in the gallery, each of them finds one among the
    # other queries, so none is excluded.
    ("standard", 9330, 140),
    ("with_queries", 11310, 0),
    ("matlab", 12180, 0),
])
def test_mars_variants(mars, variant, gallery_size, without_positive):
  split = protocols.mars_split(mars.pids, mars.camids, mars.query, variant)
  assert split.query.size == 1980
  assert split.gallery.size == gallery_size
  assert split.gallery_junk.sum() == (870 if variant == "matlab" else 0)
  assert _queries_without_positive(mars, split) == without_positive


def test_mars_standard_evaluation_reports_excluded(mars):
  rng = np.random.default_rng(0)
  centers = rng.standard_normal((mars.pids.max() + 2, 8)).astype(np.float32)
  feats = centers[mars.pids + 1] + rng.standard_normal(
      (mars.pids.size, 8)).astype(np.float32)
  split = protocols.mars_split(mars.pids, mars.camids, mars.query)
  out = evaluate_split(feats, mars.pids, mars.camids, split)
  assert out["num_queries"] == 1980
  assert out["num_valid_queries"] == 1840
  assert out["num_excluded_queries"] == 140
