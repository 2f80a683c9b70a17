"""Data faults injected into a built dataset: a bad JPEG, an unreadable record.

The tiny synthetic dataset is copied (the session's copy stays intact) and
damaged for real on disk:
  * a corrupt frame: the record is read back through the array_record API
    (the files are zstd-compressed, group_size 1, so bytes cannot be edited
    in place), the SOI marker of one JPEG is overwritten in the serialized
    record and the split is rewritten with the file's own writer options;
  * an unreadable record: bytes inside that record's compressed chunk are
    flipped in place, so the riegeli chunk hash no longer matches.
"""

from __future__ import annotations

import glob
import os
import re
import shutil

import numpy as np
import pytest

from configs import common
from vreid_jax.input_pipeline import pipeline

NAME = "synthetic_video_reid/tiny"
SOI = b"\xff\xd8\xff"
BAD_FRAME = 2  # Neighbours 1 and 3: the earlier one stands in on a tie.


def _split_file(data_dir: str, split: str) -> str:
  (path,) = glob.glob(os.path.join(
      data_dir, "synthetic_video_reid", "tiny", "*",
      f"synthetic_video_reid-{split}.array_record-*"))
  return path


def _break_jpeg(data_dir: str, split: str, record: int, frame: int) -> None:
  """Rewrites `split` with frame `frame` of `record` no longer a JPEG."""
  from array_record.python import array_record_module as ar  # pylint: disable=g-import-not-at-top
  path = _split_file(data_dir, split)
  reader = ar.ArrayRecordReader(path)
  options, records = reader.writer_options_string(), reader.read_all()
  reader.close()
  data = bytearray(records[record])
  starts = [m.start() for m in re.finditer(re.escape(SOI), bytes(data))]
  data[starts[frame]:starts[frame] + 3] = b"\0\0\0"
  records[record] = bytes(data)
  writer = ar.ArrayRecordWriter(path, options)
  for r in records:
    writer.write(r)
  writer.close()


def _break_record(data_dir: str, split: str, record: int) -> None:
  """Flips bytes inside the compressed chunk of `record`, in place.

  zstd leaves the first JPEG header of each record literal, so the k-th SOI
  in the file lies in record k's chunk (group_size 1: a chunk per record).
  """
  path = _split_file(data_dir, split)
  with open(path, "rb") as f:
    data = bytearray(f.read())
  starts = [m.start() for m in re.finditer(re.escape(SOI), bytes(data))]
  at = starts[record] + 8
  data[at:at + 8] = bytes(b ^ 0xFF for b in data[at:at + 8])
  with open(path, "wb") as f:
    f.write(data)


def _config(on_bad_frame: str = "error"):
  config = common.get_config()
  config.dataset.name = "synthetic_video_reid"
  config.dataset.config = "tiny"
  inp = config.input
  inp.height, inp.width = 32, 16
  # Tracklets have 2..10 frames: a 12-frame consecutive clip loops over every
  # frame of its tracklet, whatever the draw.
  inp.clip_len, inp.clip_sampling = 12, "consecutive"
  inp.num_ids_per_batch, inp.num_per_id = 2, 2
  inp.flip_prob, inp.pad, inp.erasing_prob = 0.0, 0, 0.0
  inp.on_bad_frame = on_bad_frame
  return config


def _train_batches(data_dir: str, on_bad_frame: str = "error"):
  config = _config(on_bad_frame)
  data = pipeline.open_dataset(config.dataset, data_dir)
  return pipeline.TrainBatches(pipeline.make_train_spec(data, config))


def _target(batches) -> tuple[int, int, int]:
  """(slot, position, record) of a step-0 tracklet drawn once, with more
  than BAD_FRAME + 1 frames and another tracklet of its identity."""
  spec = batches.spec
  _, row = batches.locate(0)
  for slot, pos in enumerate(row):
    pos = int(pos)
    if ((row == pos).sum() == 1 and spec.num_frames[pos] > BAD_FRAME + 1
        and spec.pids.count(spec.pids[pos]) > 1):
      return slot, pos, spec.records[pos]
  raise AssertionError("no suitable tracklet at step 0")


@pytest.fixture(scope="module")
def clean(synthetic_data_dir):
  batches = _train_batches(synthetic_data_dir)
  return batches, batches(0)


@pytest.fixture(scope="module")
def bad_jpeg_dir(synthetic_data_dir, clean, tmp_path_factory):
  """A copy of the dataset with frame BAD_FRAME of a step-0 train record and
  of query record 0 corrupt."""
  data_dir = str(tmp_path_factory.mktemp("bad_jpeg") / "tfds")
  shutil.copytree(synthetic_data_dir, data_dir)
  _, _, record = _target(clean[0])
  _break_jpeg(data_dir, "train", record, BAD_FRAME)
  _break_jpeg(data_dir, "query", 0, BAD_FRAME)
  return data_dir


@pytest.fixture(scope="module")
def bad_record_dir(synthetic_data_dir, clean, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("bad_record") / "tfds")
  shutil.copytree(synthetic_data_dir, data_dir)
  _, _, record = _target(clean[0])
  _break_record(data_dir, "train", record)
  _break_record(data_dir, "query", 0)
  return data_dir


def test_on_bad_frame_is_validated():
  config = _config("ignore")
  with pytest.raises(ValueError, match=r"on_bad_frame must be one of "
                     r"\('error', 'skip'\), got 'ignore'"):
    pipeline.check_on_bad_frame(config.input.on_bad_frame)
  from vreid_jax import config_utils  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="on_bad_frame"):
    config_utils.check_config(config)


def test_the_injections_are_real(bad_jpeg_dir, bad_record_dir, clean):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from PIL import UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import augment  # pylint: disable=g-import-not-at-top
  _, _, record = _target(clean[0])
  frames = tfds.data_source(NAME, split="train",
                            data_dir=bad_jpeg_dir)[record]["frames"]
  with pytest.raises(UnidentifiedImageError):
    augment.decode_resize(frames[BAD_FRAME], 32, 16)
  augment.decode_resize(frames[BAD_FRAME - 1], 32, 16)
  source = tfds.data_source(NAME, split="train", data_dir=bad_record_dir)
  with pytest.raises(Exception, match="(?i)corrupt"):
    source[record]  # pylint: disable=pointless-statement
  source[record - 1]  # pylint: disable=pointless-statement
  source[record + 1]  # pylint: disable=pointless-statement


def test_bad_frame_error_names_it(bad_jpeg_dir, clean):
  _, pos, record = _target(clean[0])
  batches = _train_batches(bad_jpeg_dir, "error")
  with pytest.raises(pipeline.DataFaultError) as info:
    batches(0)
  e = info.value
  assert (e.dataset, e.split, e.record, e.frame) == (NAME, "train", record,
                                                    BAD_FRAME)
  msg = str(e)
  for part in (NAME, "split 'train'", f"frame {BAD_FRAME} ",
               f"of record {record}", f"pid {batches.spec.pids[pos]}",
               "tracklet_id", "cannot be decoded", "UnidentifiedImageError",
               "data_prep/build.py --dataset=synthetic_video_reid "
               "--config=tiny", "--config.input.on_bad_frame=skip"):
    assert part in msg, (part, msg)


def test_bad_frame_skip_uses_the_nearest_frame(bad_jpeg_dir, clean,
                                               synthetic_data_dir):
  slot, pos, record = _target(clean[0])
  reference = clean[1]["clips"]
  batches = _train_batches(bad_jpeg_dir, "skip")
  batch = batches(0)
  n = batches.spec.num_frames[pos]
  bad_t = np.flatnonzero(np.arange(12) % n == BAD_FRAME)
  assert len(bad_t)
  clips = batch["clips"]
  for t in bad_t:  # The earlier neighbour stands in; never a black frame.
    np.testing.assert_array_equal(clips[slot, t], reference[slot, t - 1])
    assert clips[slot, t].any()
  others = np.ones(clips.shape[:2], bool)
  others[slot, bad_t] = False
  np.testing.assert_array_equal(clips[others], reference[others])
  assert int(batch["num_bad_frames"]) == 1
  assert batch["bad_frames"].tolist() == [f"{NAME}/train/{record}:{BAD_FRAME}"]
  for key in ("labels", "pids", "camids", "mask"):
    np.testing.assert_array_equal(batch[key], clean[1][key])
  # A pure function of (seed, step), in any order, in a fresh instance.
  again = _train_batches(bad_jpeg_dir, "skip")
  again(1)
  for key, value in again(0).items():
    np.testing.assert_array_equal(value, batch[key])
  # A clean batch under skip reports nothing.
  clean_skip = _train_batches(synthetic_data_dir, "skip")(0)
  assert int(clean_skip["num_bad_frames"]) == 0
  assert clean_skip["bad_frames"].shape == (0,)


def test_unreadable_record_error_names_it(bad_record_dir, clean):
  _, pos, record = _target(clean[0])
  batches = _train_batches(bad_record_dir, "error")
  with pytest.raises(pipeline.DataFaultError) as info:
    batches(0)
  e = info.value
  assert (e.dataset, e.split, e.record, e.frame) == (NAME, "train", record,
                                                    None)
  msg = str(e)
  for part in (f"record {record} (pid {batches.spec.pids[pos]}",
               "cannot be read", "Corrupted", "data_prep/build.py",
               "on_bad_frame=skip"):
    assert part in msg, (part, msg)


def test_unreadable_record_skip_uses_the_same_identity(bad_record_dir, clean):
  slot, _, record = _target(clean[0])
  batch = _train_batches(bad_record_dir, "skip")(0)
  assert int(batch["num_bad_frames"]) == 1
  assert batch["bad_frames"].tolist() == [f"{NAME}/train/{record}:*"]
  for key in ("labels", "pids"):
    np.testing.assert_array_equal(batch[key], clean[1][key])
  assert batch["clips"][slot].any()
  again = _train_batches(bad_record_dir, "skip")(0)
  for key, value in again.items():
    np.testing.assert_array_equal(value, batch[key])


def _eval_batches(data_dir: str, split: str, record: int, num_frames: int,
                  on_bad_frame: str):
  plan = pipeline.eval_batches_plan([num_frames], "all", 8, 1)
  return pipeline.EvalBatches(NAME, data_dir, split, [record], plan, 32, 16,
                              on_bad_frame=on_bad_frame)


def _query_frames(data_dir: str) -> int:
  config = _config()
  data = pipeline.open_dataset(config.dataset, data_dir)
  query = data.roles["query"]
  assert query.split == "query" and query.records[0] == 0
  return int(query.index["num_frames"][0])


def test_eval_bad_frame(bad_jpeg_dir, synthetic_data_dir):
  n = _query_frames(synthetic_data_dir)
  assert n > BAD_FRAME
  reference = _eval_batches(synthetic_data_dir, "query", 0, n, "error")(0)
  with pytest.raises(pipeline.DataFaultError, match=(
      f"{NAME} split 'query': frame {BAD_FRAME} .*of record 0")):
    _eval_batches(bad_jpeg_dir, "query", 0, n, "error")(0)
  batch = _eval_batches(bad_jpeg_dir, "query", 0, n, "skip")(0)
  clips, ref = batch["clips"][0], reference["clips"][0]
  np.testing.assert_array_equal(clips[BAD_FRAME], ref[BAD_FRAME - 1])
  keep = np.arange(len(clips)) != BAD_FRAME
  np.testing.assert_array_equal(clips[keep], ref[keep])
  assert int(batch["num_bad_frames"]) == 1
  assert batch["bad_frames"].tolist() == [f"{NAME}/query/0:{BAD_FRAME}"]


def test_eval_unreadable_record_stops_even_under_skip(bad_record_dir,
                                                      synthetic_data_dir):
  n = _query_frames(synthetic_data_dir)
  with pytest.raises(pipeline.DataFaultError,
                     match="record 0 cannot be read.*evaluation cannot"):
    _eval_batches(bad_record_dir, "query", 0, n, "skip")(0)


def test_embedder_reports_bad_frames(bad_jpeg_dir):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vreid_jax import parallel  # pylint: disable=g-import-not-at-top
  from vreid_jax.evaluators import embedder as embedder_lib  # pylint: disable=g-import-not-at-top
  from vreid_jax.input_pipeline import preprocess  # pylint: disable=g-import-not-at-top
  config = _config("skip")
  data = pipeline.open_dataset(config.dataset, bad_jpeg_dir)
  embedder = embedder_lib.Embedder(
      lambda variables, x: jnp.mean(x["clips"], axis=(1, 2, 3)),
      preprocess.InputSpec.from_config(config.input), parallel.make_mesh(),
      on_bad_frame="skip")
  plan = embedder_lib.EmbedPlan(mode="all", clip_len=8, batch_size=8)
  features = embedder.embed({}, data, "query", plan)
  assert np.isfinite(features).all()
  assert embedder.last_bad_frames == [f"{NAME}/query/0:{BAD_FRAME}"]
  embedder.embed({}, data, "gallery", plan)
  assert embedder.last_bad_frames == []
  assert embedder.bad_frames == [f"{NAME}/query/0:{BAD_FRAME}"]


def test_workers_see_the_same_batches_and_errors(bad_jpeg_dir, clean):
  """grain worker processes: the same skip batch; errors keep their fields."""
  import pickle  # pylint: disable=g-import-not-at-top
  batches = _train_batches(bad_jpeg_dir, "skip")
  expected = batches(0)
  it = pipeline.train_iterator(batches, 1, num_workers=1)
  got = next(it)
  assert sorted(got) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(got[key], value)
  with pytest.raises(pipeline.DataFaultError) as info:
    _train_batches(bad_jpeg_dir, "error")(0)
  e = pickle.loads(pickle.dumps(info.value))
  assert type(e) is pipeline.DataFaultError
  assert str(e) == str(info.value)
  assert (e.dataset, e.split, e.record, e.frame, e.tracklet) == (
      NAME, "train", _target(clean[0])[2], BAD_FRAME, info.value.tracklet)
