"""Precomputed TV-L1 flow (data_prep/flow.py) and its reader, FlowSource."""

import importlib.util
import pathlib

import numpy as np
import pytest

import fake_trees
from vreid_jax.datasets.ilids_vid import IlidsVid
from vreid_jax.input_pipeline import flow

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_flow_cli():
  spec = importlib.util.spec_from_file_location(
      "data_prep_flow", ROOT / "data_prep" / "flow.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_quantisation_round_trip():
  f = np.array([[[0.0, -25.0], [19.9, 3.3]]], np.float32)
  back = flow.decode_flow(flow.encode_flow(f))
  assert back.shape == (1, 2, 2)
  np.testing.assert_allclose(back, np.clip(f, -20, 20), atol=20 / 255 + 1e-6)
  assert flow.quantize(np.zeros((1, 1, 2)))[0, 0, 0] == 128
  assert flow.unpack(flow.pack([b"a", b"", b"xyz"])) == [b"a", b"", b"xyz"]


def test_flow_store_aligned_with_frames(tmp_path):
  pytest.importorskip("cv2", reason="OpenCV is not installed: pip install "
                      "'vreid_jax[flow]' to run the optical flow tests")
  manual = tmp_path / "manual"
  frames = {1: {1: [1, 2, 3], 2: [7]}, 2: {1: [5, 6], 2: [1, 2]}}
  fake_trees.make_ilids_tree(str(manual), pids=(1, 2), frames=frames,
                             ls_set=np.asarray([[1, 2]] * 10, float),
                             moving=True)
  data_dir = str(tmp_path / "data")
  builder = fake_trees.build(IlidsVid, str(manual), data_dir)
  with pytest.raises(flow.FlowNotComputedError, match="data_prep/flow.py"):
    flow.FlowSource(data_dir, "ilids_vid", "tracklets")
  cli = _load_flow_cli()
  assert cli.main(["--dataset=ilids_vid", f"--data_dir={data_dir}"]) == 0
  source = flow.FlowSource(data_dir, "ilids_vid", "tracklets")
  rgb = fake_trees.read_split(builder, "tracklets")
  assert len(source) == len(rgb) == 4
  for i, record in enumerate(rgb):
    encoded = source[i]
    assert len(encoded) == len(record["frames"])  # One per RGB frame.
    decoded = source.decoded(i)
    assert all(d.shape == (128, 64, 2) for d in decoded)
    if len(encoded) > 1:
      assert encoded[-1] == encoded[-2]  # The last frame repeats.
  # Record 0 is person 1 in cam1: the square moves +2 px in x per frame.
  dx = source.decoded(0)[0][..., 0]
  dy = source.decoded(0)[0][..., 1]
  # The 21x21 square spans rows 53..73 and columns 2..22 in frame 0.
  assert 1.5 < float(np.median(dx[57:70, 6:19])) < 2.5
  assert abs(float(np.median(dy[57:70, 6:19]))) < 0.5
  assert abs(float(np.median(dx[:, 40:]))) < 0.2  # Static background.
  # A one-frame tracklet (person 2 in cam1) has zero flow.
  assert np.abs(source.decoded(2)[0]).max() < 0.1
  with pytest.raises(IndexError):
    source[4]
  # Already computed: skipped unless --overwrite.
  assert cli.main(["--dataset=ilids_vid", f"--data_dir={data_dir}"]) == 0
