"""TV-L1 in JAX (vreid_jax.flow): its steps, its flow, and data_prep/flow.py
--backend=jax.

Kept fast: 128x64 frames and two pyramid levels, two compilations (two
pairs vmapped per fake CPU device; one pair per device, which DualTVL1 and
data_prep/flow.py reuse); steps are checked on tiny arrays against NumPy.
"""

import dataclasses
import importlib.util
import os
import pathlib

import jax
import numpy as np
import pytest
from scipy import ndimage

import fake_trees
from vreid_jax.datasets.ilids_vid import IlidsVid
from vreid_jax.flow import batching
from vreid_jax.flow import known_motion as km
from vreid_jax.flow import tvl1
from vreid_jax.input_pipeline import flow as flow_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHAPE = (128, 64)  # iLIDS-VID's frame size: the CLI test reuses the compile.
PARAMS = tvl1.TVL1Params(nscales=2, warps=5)
TVL1_FLAG = "--tvl1=nscales=2,warps=5"


def _cv2():
  return pytest.importorskip("cv2", reason="OpenCV is not installed: pip "
                             "install 'vreid_jax[flow]' for these checks")


def _load_flow_cli():
  spec = importlib.util.spec_from_file_location(
      "data_prep_flow_jax", ROOT / "data_prep" / "flow.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def pairs():
  return (km.standard_pairs(SHAPE, num_synthetic=1)
          + [km.static_pair(SHAPE)])


@pytest.fixture(scope="module")
def batched(pairs):
  """(flows, inner iterations per level), two pairs vmapped per (fake CPU)
  device."""
  engine = batching.PairFlow(PARAMS, per_device_batch=2)
  assert engine.batch_size == 2 * len(engine.devices) > len(pairs)
  flows, counts = engine.collect(engine.dispatch([(p.i0, p.i1)
                                                  for p in pairs]),
                                 with_counts=True)
  return np.stack(flows), np.stack(counts)


@pytest.fixture(scope="module")
def sharded(pairs):
  """Flows of the same pairs, one pair per device (no vmap): the program
  data_prep/flow.py and DualTVL1 run here too."""
  engine = batching.PairFlow(PARAMS, per_device_batch=1)
  assert engine.batch_size == len(engine.devices)
  return engine([(p.i0, p.i1) for p in pairs])


@pytest.fixture(scope="module")
def opencv_flows(pairs):
  cv2 = _cv2()
  cv2.setNumThreads(1)
  algo = PARAMS.to_opencv()
  return [algo.calc(p.i0, p.i1, None) for p in pairs]


# --- parameters and geometry --------------------------------------------------
def test_default_parameters_are_opencvs():
  cv2 = _cv2()
  from_cv = tvl1.TVL1Params.from_opencv(
      cv2.optflow.DualTVL1OpticalFlow_create())
  assert from_cv == tvl1.TVL1Params()
  custom = tvl1.TVL1Params(tau=0.2, lambda_=0.1, nscales=3, warps=4,
                           inner_iterations=7, median_filtering=3)
  assert tvl1.TVL1Params.from_opencv(custom.to_opencv()) == custom


def test_pyramid_shapes_follow_opencv():
  assert tvl1.pyramid_shapes((256, 128), tvl1.TVL1Params()) == [
      (256, 128), (205, 102), (164, 82), (131, 66), (105, 53)]
  # A side would drop under 16: the pyramid stops there.
  assert tvl1.pyramid_shapes((40, 20), tvl1.TVL1Params()) == [(40, 20),
                                                               (32, 16)]


def test_resize_matches_opencv():
  cv2 = _cv2()
  img = np.random.default_rng(0).uniform(0, 255, (37, 23)).astype(np.float32)
  down = cv2.resize(img, None, fx=0.8, fy=0.8,
                    interpolation=cv2.INTER_LINEAR)
  ours = tvl1._resize(img, down.shape, (0.8, 0.8))  # pylint: disable=protected-access
  np.testing.assert_allclose(np.asarray(ours), down, atol=1e-3)
  up = cv2.resize(down, (23, 37), interpolation=cv2.INTER_LINEAR)
  ours = tvl1._resize(down, (37, 23))  # pylint: disable=protected-access
  np.testing.assert_allclose(np.asarray(ours), up, atol=1e-3)


# --- the steps, against NumPy -------------------------------------------------
def _numpy_threshold(u, i1wx, i1wy, grad, rho_c, l_t):
  """TV-L1's thresholding step, pixel by pixel (Zach et al., eq. 11)."""
  v = np.array(u, np.float64)
  for y in range(u.shape[1]):
    for x in range(u.shape[2]):
      g = np.array([i1wx[y, x], i1wy[y, x]], np.float64)
      rho = rho_c[y, x] + g @ u[:, y, x]
      if rho < -l_t * grad[y, x]:
        v[:, y, x] += l_t * g
      elif rho > l_t * grad[y, x]:
        v[:, y, x] -= l_t * g
      elif grad[y, x] > np.finfo(np.float32).eps:
        v[:, y, x] -= rho / grad[y, x] * g
  return v


def test_threshold_step_matches_numpy():
  rng = np.random.default_rng(0)
  h, w = 6, 7
  u = rng.normal(0, 1, (2, h, w)).astype(np.float32)
  i1wx = rng.normal(0, 3, (h, w)).astype(np.float32)
  i1wy = rng.normal(0, 3, (h, w)).astype(np.float32)
  i1wx[0, :3] = i1wy[0, :3] = 0.0  # No gradient: v = u.
  grad = i1wx * i1wx + i1wy * i1wy
  l_t = 0.15 * 0.3
  # Residuals spanning the three cases: below, inside and above +-l_t|g|^2.
  rho_c = (rng.uniform(-2, 2, (h, w)) * l_t * grad
           - i1wx * u[0] - i1wy * u[1]).astype(np.float32)
  rho_c[0, :3] = [-1.0, 0.0, 1.0]
  got = jax.jit(tvl1.threshold_step, static_argnums=5)(u, i1wx, i1wy, grad,
                                                      rho_c, l_t)
  want = _numpy_threshold(u, i1wx, i1wy, grad, rho_c, l_t)
  rho = rho_c + i1wx * u[0] + i1wy * u[1]
  assert (rho < -l_t * grad).any() and (rho > l_t * grad).any()
  assert (np.abs(rho) < l_t * grad).any()
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(got)[:, 0, :3], u[:, 0, :3])


def _numpy_dual_step(p, u, taut):
  """Chambolle's projected step of the ROF dual, forward differences,
  pixel by pixel."""
  k, h, w = u.shape
  out = np.zeros_like(p, dtype=np.float64)
  for c in range(k):
    for y in range(h):
      for x in range(w):
        gx = u[c, y, x + 1] - u[c, y, x] if x + 1 < w else 0.0
        gy = u[c, y + 1, x] - u[c, y, x] if y + 1 < h else 0.0
        norm = 1.0 + taut * np.hypot(gx, gy)
        out[c, 0, y, x] = (p[c, 0, y, x] + taut * gx) / norm
        out[c, 1, y, x] = (p[c, 1, y, x] + taut * gy) / norm
  return out


def _numpy_divergence(px, py):
  h, w = px.shape
  out = np.zeros((h, w))
  for y in range(h):
    for x in range(w):
      out[y, x] = (px[y, x] - (px[y, x - 1] if x > 0 else 0.0)
                   + py[y, x] - (py[y - 1, x] if y > 0 else 0.0))
  return out


def test_rof_dual_step_matches_numpy():
  rng = np.random.default_rng(1)
  u = rng.normal(0, 2, (2, 5, 6)).astype(np.float32)
  p = rng.uniform(-1, 1, (2, 2, 5, 6)).astype(np.float32)
  taut = 0.25 / 0.3
  got = jax.jit(tvl1.dual_step, static_argnums=2)(p, u, taut)
  np.testing.assert_allclose(np.asarray(got), _numpy_dual_step(p, u, taut),
                             rtol=1e-5, atol=1e-6)
  # The divergence is minus the adjoint of the forward gradient.
  divergence = jax.jit(tvl1.divergence)
  np.testing.assert_allclose(np.asarray(divergence(p[0, 0], p[0, 1])),
                             _numpy_divergence(p[0, 0], p[0, 1]), atol=1e-6)
  q = np.array(p[0])
  q[0, :, -1] = q[1, -1, :] = 0.0  # Dual fields vanish on the far border.
  gx, gy = map(np.asarray, jax.jit(tvl1.forward_gradient)(u[0]))
  div = np.asarray(divergence(q[0], q[1]))
  assert np.isclose(np.sum(gx * q[0] + gy * q[1]), -np.sum(u[0] * div),
                    rtol=1e-4)


def test_median_filter_matches_scipy():
  u = np.random.default_rng(2).normal(size=(2, 9, 7)).astype(np.float32)
  for size in (3, 5):
    got = jax.jit(tvl1.median_filter, static_argnums=1)(u, size)
    want = ndimage.median_filter(u, size=(1, size, size), mode="nearest")
    np.testing.assert_array_equal(np.asarray(got), want)


def test_bicubic_warp():
  rng = np.random.default_rng(3)
  img = ndimage.gaussian_filter(rng.uniform(0, 255, (20, 16)), 1.5)
  img = img.astype(np.float32)
  # An integer shift reads the pixels themselves; outside reads 0.
  u = np.zeros((2, 20, 16), np.float32)
  u[0], u[1] = 2.0, -1.0
  warp = jax.jit(tvl1.warp_bicubic)
  got = np.asarray(warp(img[None], u))[0]
  np.testing.assert_allclose(got[1:, :-2], img[:-1, 2:], atol=1e-3)
  np.testing.assert_array_equal(got[0], 0.0)
  # Sub-pixel (on OpenCV's 1/32 grid, where its remap is exact).
  u = np.round(rng.uniform(-3, 3, (2, 20, 16)) * 32) / 32
  u = u.astype(np.float32)
  got = np.asarray(warp(img[None], u))[0]
  cv2 = _cv2()
  y, x = np.mgrid[0:20, 0:16].astype(np.float32)
  want = cv2.remap(img, x + u[0], y + u[1], cv2.INTER_CUBIC,
                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  np.testing.assert_allclose(got, want, atol=2e-2)


# --- flow ---------------------------------------------------------------------
def test_static_pair_has_zero_flow(pairs, batched, sharded):
  flows, counts = batched
  assert pairs[-1].name == "static"
  assert np.abs(flows[-1]).max() < 1e-4
  # The epsilon stop: nothing changes, so one iteration per warp and level.
  np.testing.assert_array_equal(counts[-1], [PARAMS.warps] * 2)
  assert (counts[:-1] > counts[-1]).all()
  # The OpenCV-like object (it runs the program `sharded` compiled).
  del sharded
  still = pairs[-1].i0
  assert np.abs(tvl1.DualTVL1(PARAMS).calc(still, still, None)).max() < 1e-4


def test_known_motion_is_recovered(pairs, batched):
  flows, _ = batched
  epe = {n: km.end_point_error(f, p.flow, p.valid)
         for n, p, f in zip(km.names(pairs), pairs, flows)}
  assert epe["translation-1"] < 0.1, epe
  assert epe["warp-1"] < 0.2 and epe["warp-2"] < 0.2, epe
  assert epe["synthetic-1"] < 1.0, epe  # Background scroll, few textures.


def test_epe_no_worse_than_opencv(pairs, batched, opencv_flows):
  flows, _ = batched
  for name, pair, ours, theirs in zip(km.names(pairs), pairs, flows,
                                      opencv_flows):
    ours_epe = km.end_point_error(ours, pair.flow, pair.valid)
    cv_epe = km.end_point_error(theirs, pair.flow, pair.valid)
    assert ours_epe <= cv_epe + 0.1, (name, ours_epe, cv_epe)
    # The same scheme: the two flows agree closely everywhere.
    assert km.end_point_error(ours, theirs) < 0.05, name


def test_other_options_match_opencv():
  """gamma (illumination), an initial flow and a 3x3 median, one level."""
  cv2 = _cv2()
  cv2.setNumThreads(1)
  pair = km.warped_pair((32, 32), 1.5, seed=5)
  brighter = np.clip(pair.i1 * 1.1 + 5.0, 0, 255).astype(np.uint8)
  init = pair.flow * 0.7
  params = tvl1.TVL1Params(nscales=1, warps=2, gamma=0.3,
                           use_initial_flow=True, median_filtering=3)
  theirs = params.to_opencv().calc(pair.i0, brighter, init.copy())
  ours = tvl1.DualTVL1(params).calc(pair.i0, brighter, init)
  assert np.abs(ours - init).max() > 0.1  # It moved off the initial flow.
  assert km.end_point_error(ours, theirs) < 1e-3


def test_batched_equals_per_pair(pairs, batched, sharded):
  """vmap runs each pair's loops as alone; only float rounding differs
  (XLA orders the batched sums otherwise). A pair that converges agrees
  closely; one that runs every iteration without converging (the
  thresholding keeps switching case somewhere) amplifies the rounding at
  a few pixels, so only its mean is held close."""
  flows, counts = batched
  most = PARAMS.warps * PARAMS.outer_iterations * PARAMS.inner_iterations
  assert len(sharded) == len(pairs)
  converged = 0
  for name, one, many, count in zip(km.names(pairs), sharded, flows, counts):
    assert one.shape == SHAPE + (2,)
    diff = np.abs(one - many)
    if (count < most).all():
      converged += 1
      assert diff.max() < 0.05 and diff.mean() < 1e-3, name
    else:
      assert diff.mean() < 0.02, name
  assert converged >= len(pairs) - 1


# --- data_prep/flow.py --backend=jax ------------------------------------------
@pytest.fixture(scope="module")
def ilids(tmp_path_factory):
  """A built fake iLIDS-VID (moving square, 128x64): its data dir."""
  tmp = tmp_path_factory.mktemp("flow_jax")
  frames = {1: {1: [1, 2, 3], 2: [7]}, 2: {1: [5, 6], 2: [1, 2]}}
  fake_trees.make_ilids_tree(str(tmp / "manual"), pids=(1, 2), frames=frames,
                             ls_set=np.asarray([[1, 2]] * 10, float),
                             moving=True)
  data_dir = str(tmp / "data")
  builder = fake_trees.build(IlidsVid, str(tmp / "manual"), data_dir)
  return data_dir, builder


def test_cli_jax_backend_fills_the_flow_store(ilids):
  data_dir, builder = ilids
  cli = _load_flow_cli()
  args = ["--dataset=ilids_vid", f"--data_dir={data_dir}", "--backend=jax",
          TVL1_FLAG, "--no_progress"]
  assert cli.main(args) == 0
  source = flow_lib.FlowSource(data_dir, "ilids_vid", "tracklets")
  rgb = fake_trees.read_split(builder, "tracklets")
  assert len(source) == len(rgb) == 4
  for i, record in enumerate(rgb):
    assert len(source[i]) == len(record["frames"])
    assert all(d.shape == SHAPE + (2,) for d in source.decoded(i))
  # Record 0: the square moves +2 px in x per frame; the rest is still.
  dx, dy = source.decoded(0)[0][..., 0], source.decoded(0)[0][..., 1]
  assert 1.5 < float(np.median(dx[57:70, 6:19])) < 2.5
  assert abs(float(np.median(dy[57:70, 6:19]))) < 0.5
  assert abs(float(np.median(dx[:, 40:]))) < 0.2
  assert np.abs(source.decoded(2)[0]).max() < 0.1  # One frame: zero flow.
  with open(os.path.join(os.path.dirname(source.path),
                         "tracklets.json")) as f:
    meta = __import__("json").load(f)
  assert meta["backend"] == "jax" and meta["tvl1"]["nscales"] == 2
  assert not os.path.exists(source.path[:-len(".array_record")] + ".parts")


def test_cli_resumes_after_interruption(ilids):
  data_dir, _ = ilids
  cli = _load_flow_cli()
  kwargs = dict(backend="jax", params=PARAMS, chunk=1, progress=False)
  whole = cli.compute_split("ilids_vid", data_dir, "tracklets",
                            overwrite=True, **kwargs)
  with open(whole, "rb") as f:
    expected = f.read()
  os.remove(whole)

  class Interrupted(Exception):
    pass

  def stop_after_two(first_record):
    if first_record == 1:
      raise Interrupted

  with pytest.raises(Interrupted):
    cli.compute_split("ilids_vid", data_dir, "tracklets",
                      on_shard=stop_after_two, **kwargs)
  parts = cli.parts_dir(os.path.dirname(whole), "tracklets")
  assert sorted(f for f in os.listdir(parts) if f.endswith(".array_record")
                ) == ["000000000.array_record", "000000001.array_record"]
  assert not os.path.exists(whole)
  # Other settings do not resume these shards.
  with pytest.raises(cli.ResumeMismatchError, match="--overwrite"):
    cli.compute_split("ilids_vid", data_dir, "tracklets",
                      **dict(kwargs, backend="opencv"))
  written = []
  path = cli.compute_split("ilids_vid", data_dir, "tracklets",
                           on_shard=written.append, **kwargs)
  assert written == [2, 3]  # Only the missing shards were computed.
  with open(path, "rb") as f:
    assert f.read() == expected
  assert not os.path.exists(parts)


def test_tvl1_flag_parsing():
  cli = _load_flow_cli()
  assert cli.parse_tvl1("nscales=3, lambda=0.1,median_filtering=1") == (
      dataclasses.replace(tvl1.TVL1Params(), nscales=3, lambda_=0.1,
                          median_filtering=1))
  with pytest.raises(ValueError, match="name=value"):
    cli.parse_tvl1("scales=3")
  assert cli.parse_size("256x128") == (256, 128)
  with pytest.raises(ValueError):
    cli.parse_size("256")
