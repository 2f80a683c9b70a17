"""Samplers and clip-consistent augmentation."""

import io

import numpy as np
from PIL import Image
import pytest

from vreid_jax.input_pipeline import augment
from vreid_jax.input_pipeline import sampling


def test_pk_plan_balanced_and_deterministic():
  pids = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
  plan = sampling.pk_epoch_plan(pids, p=4, k=3, rng=np.random.default_rng(0))
  again = sampling.pk_epoch_plan(pids, p=4, k=3, rng=np.random.default_rng(0))
  np.testing.assert_array_equal(plan, again)
  assert plan.shape[1] == 12
  for row in plan:
    ids = pids[row].reshape(4, 3)
    assert (ids == ids[:, :1]).all(), "each group of K shares one identity"
    assert len(np.unique(ids[:, 0])) == 4, "P distinct identities"
  # An identity with >= K tracklets never repeats a tracklet within a chunk.
  for row in plan:
    for chunk in row.reshape(4, 3):
      if (pids == pids[chunk[0]]).sum() >= 3:
        assert len(set(chunk)) == 3


def test_pk_plan_too_few_ids():
  with pytest.raises(ValueError, match="num_ids_per_batch"):
    sampling.pk_epoch_plan(np.array([1, 1, 2]), p=4, k=2,
                           rng=np.random.default_rng(0))


@pytest.mark.parametrize("mode", sampling.CLIP_MODES)
@pytest.mark.parametrize("length", [1, 3, 8, 37])
def test_clip_sampling_in_range(mode, length):
  rng = np.random.default_rng(1)
  for r in (rng, None):
    idx = sampling.sample_clip(length, 8, mode, r)
    assert idx.shape == (8,)
    assert idx.min() >= 0 and idx.max() < length


def test_consecutive_loop_padding_and_contiguity():
  np.testing.assert_array_equal(
      sampling.sample_clip(3, 8, "consecutive", None),
      [0, 1, 2, 0, 1, 2, 0, 1])
  idx = sampling.sample_clip(40, 8, "consecutive", np.random.default_rng(3))
  np.testing.assert_array_equal(np.diff(idx), 1)


def test_restricted_one_frame_per_segment():
  rng = np.random.default_rng(0)
  for _ in range(20):
    idx = sampling.sample_clip(40, 4, "restricted", rng)
    np.testing.assert_array_equal(idx // 10, [0, 1, 2, 3])


def test_evenly_spread():
  np.testing.assert_array_equal(sampling.sample_clip(16, 4, "evenly", None),
                                [0, 4, 8, 12])


def test_contiguous_labels():
  labels, classes = sampling.contiguous_labels([7, 3, 7, 9])
  np.testing.assert_array_equal(labels, [1, 0, 1, 2])
  np.testing.assert_array_equal(classes, [3, 7, 9])


def _jpeg(color, size=(16, 8)):
  buf = io.BytesIO()
  Image.fromarray(np.full(size + (3,), color, np.uint8)).save(buf, "PNG")
  return buf.getvalue()


def test_decode_clip_resizes_and_orders():
  frames = [_jpeg(10 * i) for i in range(4)]
  clip = augment.decode_clip(frames, np.array([3, 0, 0]), 8, 4)
  assert clip.shape == (3, 8, 4, 3) and clip.dtype == np.uint8
  np.testing.assert_array_equal(clip[:, 0, 0, 0], [30, 0, 0])


def test_augmentation_is_clip_consistent():
  rng = np.random.default_rng(0)
  frame = rng.integers(0, 255, size=(16, 8, 3), dtype=np.uint8)
  clip = np.stack([frame] * 5)
  cfg = augment.AugmentConfig(height=16, width=8, flip=0.5, pad=2,
                              erasing=1.0)
  for seed in range(10):
    out = augment.augment_clip(clip, cfg, np.random.default_rng(seed))
    assert out.shape == clip.shape
    for t in range(1, 5):  # The same draw on every frame.
      np.testing.assert_array_equal(out[t], out[0])


def test_flip_and_erasing_values():
  clip = np.arange(2 * 4 * 6 * 3, dtype=np.uint8).reshape(2, 4, 6, 3)
  cfg = augment.AugmentConfig(height=4, width=6, flip=1.0)
  out = augment.augment_clip(clip, cfg, np.random.default_rng(0))
  np.testing.assert_array_equal(out, clip[:, :, ::-1])
  cfg = augment.AugmentConfig(height=4, width=6, erasing=1.0,
                              erasing_area=(0.2, 0.3))
  out = augment.augment_clip(clip, cfg, np.random.default_rng(0))
  fill = np.round(np.asarray(augment.IMAGENET_MEAN) * 255).astype(np.uint8)
  erased = (out != clip).any(-1)
  assert erased.any()
  assert (out[erased] == fill).all()


def test_normalize_matches_numpy():
  x = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 4, 3)).astype(
      np.uint8)
  want = (x / 255.0 - np.array(augment.IMAGENET_MEAN)) / np.array(
      augment.IMAGENET_STD)
  np.testing.assert_allclose(np.asarray(augment.normalize(x)), want,
                             rtol=1e-5, atol=1e-5)


def test_eval_plan_caps_frames_per_device():
  from vreid_jax.input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  lengths = [5, 9, 16, 16, 40, 70, 3]
  for num_devices in (1, 8):
    plan = pipeline.eval_batches_plan(lengths, "all", 4, batch_size=32,
                                      max_frames_per_device=32,
                                      num_devices=num_devices)
    covered = sorted(it.position for b in plan for it in b.items
                     if it.position >= 0)
    assert covered == list(range(len(lengths)))
    for b in plan:
      assert len(b.items) % num_devices == 0
      per_device = len(b.items) // num_devices
      # Under the cap, except one whole tracklet longer than it.
      assert per_device * b.clip_len <= max(32, b.clip_len), (b.clip_len,
                                                               per_device)
  # Without a cap: batch_size clips, rounded up to the devices.
  plan = pipeline.eval_batches_plan([8] * 10, "dense", 4, batch_size=6,
                                    num_devices=4)
  assert [len(b.items) for b in plan] == [8, 8, 8]


def test_preprocess_normalises_and_dequantises():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import flow as flow_lib  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import preprocess  # pylint: disable=g-import-not-at-top
  spec = preprocess.InputSpec(height=2, width=2, clip_len=1, mean=(0.5,) * 3,
                              std=(0.25,) * 3, with_flow=True)
  flow = flow_lib.quantize(np.full((1, 1, 2, 2, 2), [10.0, -20.0]))
  batch = {"clips": np.full((1, 1, 2, 2, 3), 255, np.uint8),
           "mask": np.ones((1, 1), np.uint8), "flow": flow,
           "labels": np.zeros(1)}
  inputs = preprocess.preprocess(batch, spec)
  assert set(inputs) == {"clips", "mask", "flow"}
  np.testing.assert_allclose(inputs["clips"], 2.0)   # (1 - 0.5) / 0.25.
  assert inputs["mask"].dtype == jnp.bool_
  # +-20 px -> +-1, within the quantisation step 40/255 px.
  np.testing.assert_allclose(inputs["flow"][..., 0], 0.5, atol=0.2 / 20)
  np.testing.assert_allclose(inputs["flow"][..., 1], -1.0, atol=0.2 / 20)
  spec = preprocess.InputSpec(height=2, width=2, clip_len=1)
  assert set(preprocess.preprocess(batch, spec)) == {"clips", "mask"}


def test_pk_plan_ids_visits_every_identity_once():
  """Gao's sampler: an epoch is every identity once, K tracklets each."""
  pids = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
  plan = sampling.pk_epoch_plan_ids(pids, p=4, k=3,
                                    rng=np.random.default_rng(0))
  assert plan.shape == (2, 12)                       # 10 // 4 batches.
  ids = pids[plan].reshape(2, 4, 3)
  assert (ids == ids[..., :1]).all()
  assert len(np.unique(ids[..., 0])) == 8            # Never an id twice.
  for row in plan.reshape(-1, 3):
    n = (pids == pids[row[0]]).sum()
    if n >= 3:
      assert len(set(row)) == 3                      # Without replacement.
  plan = sampling.pk_epoch_plan_ids(np.array([0, 0, 1, 1]), p=2, k=4,
                                    rng=np.random.default_rng(1))
  assert plan.shape == (1, 8) and len(set(plan[0, :4])) <= 2  # Duplicates.
  with pytest.raises(ValueError, match="num_ids_per_batch"):
    sampling.pk_epoch_plan_ids(np.array([0, 1]), p=3, k=1,
                               rng=np.random.default_rng(0))


def test_random_2d_translation_and_per_frame_draws():
  clip = np.zeros((6, 16, 8, 3), np.uint8)
  clip[:, 8, 4] = 255                                 # One bright pixel.
  cfg = augment.AugmentConfig(height=16, width=8, translate=1.0)
  rng = np.random.default_rng(0)
  moved = [augment.augment_clip(clip, cfg, rng) for _ in range(8)]
  for out in moved:
    assert out.shape == clip.shape
    peaks = [np.unravel_index(f[..., 0].argmax(), f.shape[:2]) for f in out]
    assert len(set(peaks)) == 1                       # One draw per clip.
  positions = {np.unravel_index(o[0, ..., 0].argmax(), (16, 8))
               for o in moved}
  assert len(positions) > 1                           # It does translate.
  # Per-frame draws (the authors' code): frames of a clip differ.
  per_frame = augment.AugmentConfig(height=16, width=8, translate=1.0,
                                    flip=0.5, per_frame=True)
  out = augment.augment_clip(clip, per_frame, np.random.default_rng(1))
  peaks = {np.unravel_index(f[..., 0].argmax(), f.shape[:2]) for f in out}
  assert len(peaks) > 1
  # Flow follows each frame's own draw: a flip negates its x displacement.
  from vreid_jax.input_pipeline import flow as flow_lib  # pylint: disable=g-import-not-at-top
  flow = flow_lib.quantize(np.broadcast_to(np.array([4.0, 0.0]),
                                           (6, 16, 8, 2)))
  flip_only = augment.AugmentConfig(height=16, width=8, flip=0.5,
                                    per_frame=True)
  rgb = np.arange(6 * 16 * 8 * 3, dtype=np.uint8).reshape(6, 16, 8, 3)
  out_rgb, out_flow = augment.augment_clip(rgb, flip_only,
                                           np.random.default_rng(3),
                                           flow=flow)
  for f_rgb, f_rgb0, f_flow in zip(out_rgb, rgb, out_flow):
    flipped = np.array_equal(f_rgb, f_rgb0[:, ::-1])
    x = flow_lib.dequantize(f_flow)[..., 0].mean()
    assert (x < 0) == flipped


def test_shuffle_frames_control_draws_random_frames(synthetic_data_dir):
  """The control: random frames of the tracklet in random order, at train
  and test time; deterministic."""
  import os  # pylint: disable=g-import-not-at-top
  from vreid_jax import config_utils  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  idx = sampling.shuffled_clip(20, 6, np.random.default_rng(0))
  assert len(set(idx)) == 6 and (np.diff(idx) != 1).any()
  assert sorted(sampling.shuffled_clip(3, 6, np.random.default_rng(0))) == [
      0, 0, 1, 1, 2, 2]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_utils.load_config(os.path.join(root, "configs/demo.py:tiny"))
  with config.unlocked():
    config.data_dir = synthetic_data_dir
    config.input.shuffle_frames = True
  data = pipeline.open_dataset(config.dataset, config.data_dir)
  spec = pipeline.make_train_spec(data, config)
  a, b = pipeline.TrainBatches(spec)(2), pipeline.TrainBatches(spec)(2)
  np.testing.assert_array_equal(a["clips"], b["clips"])
  item = pipeline.EvalItem(1, np.arange(4), np.ones(4, bool))
  batches = pipeline.EvalBatches("x", "", "query", [0, 0], [], 8, 4,
                                 shuffle_frames=True, num_frames=(5, 30))
  idx = batches.frame_indices(item)
  assert len(set(idx)) == 4 and idx.max() < 30
  assert (np.diff(idx) != 1).any()
  np.testing.assert_array_equal(idx, batches.frame_indices(item))  # Fixed.
  with pytest.raises(ValueError, match="num_frames"):
    pipeline.EvalBatches("x", "", "query", [0, 0], [], 8, 4,
                         shuffle_frames=True)
