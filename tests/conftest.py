"""Test setup: 8 fake CPU devices, so sharded code paths run everywhere.

XLA_FLAGS must be set before JAX initialises its backends.
"""

import os
import pathlib
import sys
import tempfile

import xla_env  # tests/, beside this file.

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
# Fast compiles (tests/xla_env.py says why; the HLO is unchanged).
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " " + xla_env.FAST_COMPILE
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Repeated compiles of the same tiny programs (several runs per test file,
# subprocess runs) hit the persistent cache instead of XLA. It lives in the
# temporary directory (never the user's home); .ci/run sets its own.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(),
                 f"vreid_jax_test_xla_{getattr(os, 'getuid', lambda: 0)()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# The longest tests (cold-cache seconds on 2 cores, DEVELOPERS.md), started
# first: with `-n 2` a long test collected last leaves one worker idle at
# the end of the run. Order only; every test still runs.
_LONGEST_FIRST = (
    "test_cli.py::test_trl_mars_runlocal",
    "test_cli.py::test_m3d_mars_runlocal",
    "test_multihost.py::test_two_processes_match_one",
    "test_cli.py::test_star_mars_runlocal",
    "test_train.py::test_eight_device_step_equals_single_device",
    "test_export.py::test_artifact_runs_without_vreid_jax",
    "test_faults.py::test_sigterm_checkpoints_the_step",
    "test_faults.py::test_live_workdir_refused_then_sigkill",
    "test_multihost.py::test_sigterm_to_one_process",
    "test_faults.py::test_a_corrupt_jpeg_in_the_dataset",
    "test_cli.py::test_gao_mars_runlocal",
    "test_cli.py::test_gltr_mars_runlocal",
)


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  def rank(item):
    for i, key in enumerate(_LONGEST_FIRST):
      if key in item.nodeid:
        return i
    return len(_LONGEST_FIRST)
  items.sort(key=rank)  # Stable: the rest keep their order.


@pytest.fixture(scope="session")
def shared_dir():
  """../shared beside the checkout; skips the test when it is absent."""
  if not (SHARED / "protocols").is_dir():
    pytest.skip(f"{SHARED} is absent (a user's checkout): this test needs the "
                "real protocol files in ../shared/protocols")
  return SHARED


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory):
  """A TFDS data dir holding synthetic_video_reid/tiny, built once."""
  from vreid_jax.datasets.synthetic_video_reid import synthetic_video_reid as syn  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path_factory.mktemp("tfds")
  builder = syn.SyntheticVideoReid(config="tiny", data_dir=str(data_dir))
  builder.download_and_prepare(file_format="array_record")
  return str(data_dir)


@pytest.fixture(scope="session")
def fake_mars_data_dir(tmp_path_factory):
  """A TFDS data dir with `mars` built by data_prep/build.py from a fake
  MARS tree (tests/fake_trees.py), its flow store filled by
  data_prep/flow.py (OpenCV's TV-L1: seconds), shared by the configs' CLI
  tests."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import fake_trees  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("fake_mars")
  fake_trees.make_mars_tree(str(root / "manual"))
  subprocess.run([sys.executable, "data_prep/build.py", "--dataset=mars",
                  f"--manual_dir={root / 'manual'}",
                  f"--data_dir={root / 'tfds'}"], cwd=ROOT, check=True,
                 capture_output=True, timeout=300)
  subprocess.run([sys.executable, "data_prep/flow.py", "--dataset=mars",
                  f"--data_dir={root / 'tfds'}", "--backend=opencv",
                  "--no_progress"], cwd=ROOT, check=True,
                 capture_output=True, timeout=300)
  return str(root / "tfds")
