"""Tests of the `synthetic_video_reid` builder and renderer (tiny config)."""

from __future__ import annotations

import collections
import dataclasses
import io

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from vreid_jax.datasets import features as features_lib
from vreid_jax.datasets.synthetic_video_reid import render
from vreid_jax.datasets.synthetic_video_reid import SyntheticVideoReid

SPLITS = ("train", "query", "gallery")


def _build(data_dir, config="tiny") -> SyntheticVideoReid:
  builder = SyntheticVideoReid(config=config, data_dir=str(data_dir))
  builder.download_and_prepare(file_format="array_record")
  return builder


def _records(data_dir, name: str) -> dict[str, list[dict]]:
  source = tfds.data_source(f"synthetic_video_reid/{name}",
                            data_dir=str(data_dir))
  return {split: [source[split][i] for i in range(len(source[split]))]
          for split in SPLITS}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tiny")
  _build(data_dir)
  return data_dir, _records(data_dir, "tiny")


def test_registered_with_the_shared_features():
  assert tfds.builder_cls("synthetic_video_reid") is SyntheticVideoReid
  builder = SyntheticVideoReid(config="tiny", data_dir="/nonexistent")
  expected = features_lib.reid_features(SyntheticVideoReid.EXTRA_FEATURES)
  assert set(builder.info.features.keys()) == set(expected.keys())
  assert "motion_twin" in builder.info.features
  assert SyntheticVideoReid(data_dir="/nonexistent").builder_config.name == \
      "small"


def test_same_seed_same_bytes_other_seed_differs(tiny, tmp_path):
  _, first = tiny
  _build(tmp_path / "again")
  again = _records(tmp_path / "again", "tiny")
  for split in SPLITS:
    assert len(first[split]) == len(again[split])
    for a, b in zip(first[split], again[split]):
      assert a["frames"] == b["frames"]
      assert list(a["frame_numbers"]) == list(b["frame_numbers"])
      for key in ("pid", "camid", "tracklet_id", "motion_twin", "path"):
        assert a[key] == b[key]

  other = SyntheticVideoReid.config_with_seed("tiny", 1)
  _build(tmp_path / "other", config=other)
  changed = _records(tmp_path / "other", other.name)
  frames = lambda recs: [r["frames"] for s in SPLITS for r in recs[s]]
  assert frames(changed) != frames(first)
  assert render.identity_parameters(other.spec, 1) != \
      render.identity_parameters(other.spec, 0)


def test_split_conventions(tiny):
  _, recs = tiny
  spec = SyntheticVideoReid.builder_configs["tiny"].spec
  train_ids = {r["pid"] for r in recs["train"]}
  query_ids = {r["pid"] for r in recs["query"]}
  gallery_ids = {r["pid"] for r in recs["gallery"] if not r["is_distractor"]}
  assert train_ids == set(range(1, spec.num_train_ids + 1))
  assert query_ids == gallery_ids
  assert len(query_ids) == spec.num_test_ids
  assert not train_ids & (query_ids | gallery_ids)
  assert min(train_ids | query_ids) >= 1

  # One query per (test id, camera); each test id seen by >= 2 cameras.
  query_keys = [(r["pid"], r["camid"]) for r in recs["query"]]
  assert len(query_keys) == len(set(query_keys))
  test_keys = query_keys + [(r["pid"], r["camid"]) for r in recs["gallery"]
                            if not r["is_distractor"]]
  assert set(query_keys) == set(test_keys)
  cams = collections.defaultdict(set)
  for pid, camid in test_keys:
    cams[pid].add(camid)
  assert all(len(c) >= 2 for c in cams.values())

  # Every query has a gallery positive in another camera.
  gallery_keys = {(r["pid"], r["camid"]) for r in recs["gallery"]}
  for pid, camid in query_keys:
    assert any(p == pid and c != camid for p, c in gallery_keys), (pid, camid)

  # Tracklet ids are unique per (pid, camera) across query and gallery.
  ids = [(r["pid"], r["camid"], r["tracklet_id"])
         for s in ("query", "gallery") for r in recs[s]]
  assert len(ids) == len(set(ids))

  # Distractors: pid 0, flagged, gallery only; nothing is junk.
  distractors = [r for r in recs["gallery"] if r["is_distractor"]]
  assert len(distractors) == spec.num_distractors
  assert all(r["pid"] == 0 and r["motion_twin"] == -1 for r in distractors)
  assert all(not r["is_distractor"] for s in ("train", "query")
             for r in recs[s])
  assert not any(r["is_junk"] for s in SPLITS for r in recs[s])


def test_frames_and_frame_numbers(tiny):
  _, recs = tiny
  height, width = SyntheticVideoReid.builder_configs["tiny"].spec.image_size
  spec = SyntheticVideoReid.builder_configs["tiny"].spec
  lengths = []
  for split in SPLITS:
    for r in recs[split]:
      numbers = [int(x) for x in r["frame_numbers"]]
      assert len(numbers) == len(r["frames"])
      assert numbers[0] >= 1
      assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
      assert 1 <= r["camid"] <= spec.num_cameras
      lengths.append(len(numbers))
      for data in r["frames"]:
        assert data[:2] == b"\xff\xd8"  # JPEG.
        with Image.open(io.BytesIO(data)) as img:
          assert img.format == "JPEG"
          frame = np.asarray(img)
        assert frame.dtype == np.uint8
        assert frame.shape == (height, width, 3)
  assert min(lengths) >= 2 and max(lengths) <= spec.max_frames
  assert min(lengths) <= 5  # Some very short tracklets.


def test_metadata_index_matches_records(tiny):
  data_dir, recs = tiny
  info = tfds.builder("synthetic_video_reid/tiny", data_dir=str(data_dir)).info
  index = info.metadata["index"]
  for split in SPLITS:
    rows = recs[split]
    assert index[split]["num_frames"] == [len(r["frames"]) for r in rows]
    for key in ("pid", "camid", "tracklet_id", "is_distractor", "is_junk",
                "motion_twin"):
      assert index[split][key] == [r[key] for r in rows], (split, key)
  synthetic = info.metadata["synthetic"]
  assert synthetic["seed"] == 0
  assert len(synthetic["cameras"]) == 3


def test_motion_twins(tiny):
  _, recs = tiny
  config = SyntheticVideoReid.builder_configs["tiny"]
  ids = render.identity_parameters(config.spec, config.seed)
  twins = {p: i.motion_twin for p, i in ids.items() if i.motion_twin != -1}
  assert len(twins) == 2 * (config.spec.train_twin_pairs +
                            config.spec.test_twin_pairs)
  train_pids = set(range(1, config.spec.num_train_ids + 1))
  for pid, twin in twins.items():
    assert twins[twin] == pid  # Symmetric.
    assert (pid in train_pids) == (twin in train_pids)  # Same split.
    a, b = ids[pid], ids[twin]
    assert a.appearance == b.appearance
    # Same swing and stride: only the gait period (and so speed) differs.
    assert a.motion.arm_swing == b.motion.arm_swing
    assert a.motion.leg_swing == b.motion.leg_swing
    fast, slow = sorted((a.motion.period, b.motion.period))
    assert slow >= 1.6 * fast
    assert a.motion.speed != b.motion.speed
  assert any(p in train_pids for p in twins)
  assert any(p not in train_pids for p in twins)

  # Non-twins all look different.
  looks = {dataclasses.astuple(i.appearance) for i in ids.values()}
  assert len(looks) == len(ids) - len(twins) // 2

  # The records carry the twin of their pid.
  for split in SPLITS:
    for r in recs[split]:
      if not r["is_distractor"]:
        assert r["motion_twin"] == ids[r["pid"]].motion_twin
  assert any(r["motion_twin"] != -1 for r in recs["query"])


def test_twins_render_the_same_pose_at_the_same_phase():
  """Rendering depends on identity only through appearance and pose."""
  config = SyntheticVideoReid.builder_configs["tiny"]
  world = render.make_world(config.spec, config.seed)
  pid, twin = world.twin_pairs()[0]
  plan = next(p for p in world.splits["train"] + world.splits["query"]
              if p.identity.pid == pid)
  camera = world.cameras[plan.camid]
  frame_a = np.zeros((1, 64, 32, 3), np.float32)
  frame_b = np.zeros((1, 64, 32, 3), np.float32)
  args = (np.array([1.0]), np.array([16.0]), np.array([60.0]),
          np.array([50.0]), True)
  render.draw_person(frame_a, world.identities[pid], *args)
  render.draw_person(frame_b, world.identities[twin], *args)
  np.testing.assert_array_equal(frame_a, frame_b)
  assert frame_a.std() > 0.05
  frames = render.render_frames(plan, camera, config.spec)
  assert frames.shape == (len(plan.frame_numbers), 64, 32, 3)


def test_spec_validation():
  with pytest.raises(ValueError, match="twin pairs"):
    render.WorldSpec(num_train_ids=3, num_test_ids=4, num_cameras=2,
                     train_twin_pairs=2, test_twin_pairs=0,
                     num_distractors=0, max_frames=8)
  with pytest.raises(ValueError, match="2 cameras"):
    render.WorldSpec(num_train_ids=3, num_test_ids=4, num_cameras=1,
                     train_twin_pairs=0, test_twin_pairs=0,
                     num_distractors=0, max_frames=8)


def test_occlusion_flags_follow_the_occluder(tiny):
  """`occluded` marks the frames an occluder covers, per frame."""
  config = SyntheticVideoReid.builder_configs["tiny"]
  world = render.make_world(config.spec, config.seed)
  plans = [p for s in world.splits.values() for p in s]
  seen = set()
  for plan in plans:
    flags = render.occluded_frames(plan, world.cameras[plan.camid],
                                   config.spec)
    assert flags.shape == (len(plan.frame_numbers),)
    occ = plan.occlusion
    if occ is None:
      assert not flags.any()
    elif occ.kind in ("low", "side"):
      want = np.zeros(len(flags), bool)
      want[occ.start:occ.start + occ.length] = True
      np.testing.assert_array_equal(flags, want)
      seen.add(occ.kind)
    else:
      assert flags[occ.start]  # The pole is in front at `start`.
      seen.add("pole")
  assert seen  # The tiny world has occluders.
  # The records carry the flags, one per frame.
  _, recs = tiny
  for split in SPLITS:
    for r in recs[split]:
      assert len(r["occluded"]) == len(r["frames"])
  assert any(np.any(r["occluded"]) for s in SPLITS for r in recs[s])


def test_motion_world_has_only_twins_and_long_tracklets():
  config = SyntheticVideoReid.builder_configs["motion"]
  world = render.make_world(config.spec, config.seed)
  assert all(i.motion_twin > 0 for i in world.identities.values())
  lengths = [len(p.frame_numbers) for s in world.splits.values() for p in s]
  assert min(lengths) >= 8 and max(lengths) <= 24


def test_motion_cadence_twins_share_speed_not_cadence():
  config = SyntheticVideoReid.builder_configs["motion_cadence"]
  world = render.make_world(config.spec, config.seed)
  for a, b in world.twin_pairs():
    ma, mb = world.identities[a].motion, world.identities[b].motion
    assert abs(ma.speed - mb.speed) < 1e-3 * ma.speed
    assert max(ma.period, mb.period) >= 1.6 * min(ma.period, mb.period)
  lengths = [len(p.frame_numbers) for s in world.splits.values() for p in s]
  assert min(lengths) >= 16
