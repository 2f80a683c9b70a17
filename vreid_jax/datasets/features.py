"""The one feature spec shared by every vreid_jax TFDS builder.

Every builder (the synthetic benchmark and the six real datasets) stores one
record per tracklet with these fields:

  frames:        Sequence of the original encoded JPEG/PNG bytes, in temporal
                 order, never re-encoded. Decoded by the input pipeline.
  frame_numbers: Sequence(int32), the frame number of each frame as published
                 (MARS `F001`, Duke `F0099`, ...). Gaps are kept.
  pid:           int32 person id as published (MARS: 0 distractor, -1 junk).
  camid:         int32 camera id as published (1-based).
  tracklet_id:   int32 tracklet number as published (per pid and camera where
                 the dataset numbers it that way).
  is_distractor: bool, the pid is a distractor identity (gallery negative).
  is_junk:       bool, the pid is junk (ignored by the evaluation).
  path:          Text, the source path of the tracklet (its first frame,
                 relative to the manual dir), for visualisation.

Builders may add dataset-specific scalar fields (e.g. the synthetic
benchmark's `motion_twin`).

Records are written with `disable_shuffling=True` and keys 0..N-1 in
generation order, so record `i` of a split is the i-th generated tracklet, and
the builder stores a per-split index in `info.metadata["index"][split]`:
`{"pid": [...], "camid": [...], "num_frames": [...], ...}` in record order.
The input pipeline reads that index instead of scanning every frame.
"""

from __future__ import annotations

from collections.abc import Mapping
import numpy as np
import tensorflow_datasets as tfds

# Per-tracklet scalar fields mirrored into `info.metadata["index"]`.
INDEX_FIELDS = ("pid", "camid", "tracklet_id", "num_frames", "is_distractor",
                "is_junk")


def reid_features(
    extra: Mapping[str, tfds.features.FeatureConnector] | None = None,
) -> tfds.features.FeaturesDict:
  """Returns the shared FeaturesDict, plus dataset-specific `extra` fields."""
  spec = {
      "frames": tfds.features.Sequence(
          tfds.features.Tensor(shape=(), dtype=np.object_)),
      "frame_numbers": tfds.features.Sequence(tfds.features.Scalar(np.int32)),
      "pid": tfds.features.Scalar(np.int32),
      "camid": tfds.features.Scalar(np.int32),
      "tracklet_id": tfds.features.Scalar(np.int32),
      "is_distractor": tfds.features.Scalar(np.bool_),
      "is_junk": tfds.features.Scalar(np.bool_),
      "path": tfds.features.Text(),
  }
  for key, feature in (extra or {}).items():
    if key in spec:
      raise ValueError(f"extra feature {key!r} clashes with the shared spec")
    spec[key] = feature
  return tfds.features.FeaturesDict(spec)
