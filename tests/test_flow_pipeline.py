"""RGB + flow clips: the flow gets the same draw as the frames."""

import os

import numpy as np

from vreid_jax import config_utils
from vreid_jax.input_pipeline import augment
from vreid_jax.input_pipeline import flow as flow_lib
from vreid_jax.input_pipeline import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _constant_flow():
  return flow_lib.quantize(np.broadcast_to(np.array([5.0, -3.0]),
                                           (2, 6, 4, 2)))


def test_flip_negates_horizontal_flow():
  clip = np.arange(2 * 6 * 4 * 3, dtype=np.uint8).reshape(2, 6, 4, 3)
  cfg = augment.AugmentConfig(height=6, width=4, flip=1.0)
  out_clip, out = augment.augment_clip(clip, cfg, np.random.default_rng(0),
                                       flow=_constant_flow())
  np.testing.assert_array_equal(out_clip, clip[:, :, ::-1])
  decoded = flow_lib.dequantize(out)
  np.testing.assert_allclose(decoded[..., 0], -5.0, atol=0.2)
  np.testing.assert_allclose(decoded[..., 1], -3.0, atol=0.2)


def test_translation_moves_flow_with_frames_and_pads_zero_motion():
  clip = np.zeros((2, 6, 4, 3), np.uint8)
  clip[:, 2, 1] = 200  # A marked pixel.
  flow = _constant_flow().copy()
  flow[:, 2, 1] = 0  # Marked in the flow too.
  cfg = augment.AugmentConfig(height=6, width=4, pad=2)
  for seed in range(5):
    out_clip, out = augment.augment_clip(clip, cfg,
                                         np.random.default_rng(seed),
                                         flow=flow)
    np.testing.assert_array_equal(out_clip[..., 0] == 200,
                                  out[..., 0] == 0)
    outside = (out != _constant_flow()[0, 0]).any(-1) & (out[..., 0] != 0)
    assert (out[outside] == 128).all(), "padding is zero motion"


def test_decode_flow_clip_scales_displacements():
  f = np.zeros((8, 4, 2), np.float32)
  f[..., 0], f[..., 1] = 2.0, 1.0
  data = flow_lib.encode_flow(f)
  out = augment.decode_flow_clip([data], np.array([0, 0]), 16, 12)
  got = flow_lib.dequantize(out)
  np.testing.assert_allclose(got[..., 0], 6.0, atol=0.2)  # x3 width.
  np.testing.assert_allclose(got[..., 1], 2.0, atol=0.2)  # x2 height.


def test_train_batches_serve_flow(synthetic_data_dir):
  config = config_utils.load_config(os.path.join(ROOT,
                                                 "configs/demo.py:tiny"))
  with config.unlocked():
    config.data_dir = synthetic_data_dir
    config.input.with_flow = True
  data = pipeline.open_dataset(config.dataset, config.data_dir)
  train = data.roles["train"]
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(data.name, data_dir=data.data_dir)
  num_frames = list(data.metadata["index"][train.split]["num_frames"])
  # Flow of frame t: a uniform (t, 0) displacement (no OpenCV needed).
  records = [[flow_lib.encode_flow(np.full((64, 32, 2), [t % 5, 0.0]))
              for t in range(n)] for n in num_frames]
  flow_lib.write_flow_store(builder.data_dir, train.split, records,
                            num_frames)
  spec = pipeline.make_train_spec(data, config)
  batch = pipeline.TrainBatches(spec)(0)
  assert batch["flow"].shape == batch["clips"].shape[:-1] + (2,)
  assert batch["flow"].dtype == np.uint8
