"""`synthetic_video_reid`: a procedurally rendered video ReID benchmark.

Articulated pedestrians walk past several cameras; an identity is its
appearance (clothes, hair, bag, height, build) and its gait (period, stride,
arm and leg swing). Motion-twin pairs look identical and differ only in gait
period and speed, so they separate temporal models from frame averaging
(feature `motion_twin`: the twin's pid or -1; `occluded`: per frame, whether
an occluder covers the figure). No download, deterministic in the config's
seed, builds in seconds:

  from vreid_jax.datasets.synthetic_video_reid import SyntheticVideoReid
  builder = SyntheticVideoReid(config="small", data_dir=data_dir)
  builder.download_and_prepare(file_format="array_record")
  source = tfds.data_source("synthetic_video_reid/small", data_dir=data_dir)

See `render.py` for what is drawn and docs_synthetic.md for the numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from vreid_jax.datasets import base
from vreid_jax.datasets.synthetic_video_reid import render

# World sizes of the predefined configs.
SMALL = render.WorldSpec(
    num_train_ids=100, num_test_ids=60, num_cameras=3, train_twin_pairs=10,
    test_twin_pairs=8, num_distractors=20, max_frames=40, min_long_frames=6,
    short_fraction=0.15, occlusion_prob=0.3, image_size=(64, 32))
TINY = render.WorldSpec(
    num_train_ids=8, num_test_ids=6, num_cameras=3, train_twin_pairs=1,
    test_twin_pairs=1, num_distractors=2, max_frames=10, min_long_frames=6,
    short_fraction=0.25, occlusion_prob=0.5, image_size=(64, 32))
# Every identity has a motion twin: appearance alone separates no training
# pair, so a model must learn motion (cadence and walking speed);
# tracklets of >= 8 frames show the gait.
MOTION = render.WorldSpec(
    num_train_ids=100, num_test_ids=60, num_cameras=3, train_twin_pairs=50,
    test_twin_pairs=30, num_distractors=20, max_frames=24, min_long_frames=8,
    short_fraction=0.0, occlusion_prob=0.3, image_size=(64, 32))
# The harder variant: twins also share their speed, so only the cadence of
# the gait separates them; tracklets of 16-32 frames cover a slow cycle.
MOTION_CADENCE = dataclasses.replace(
    MOTION, max_frames=32, min_long_frames=16, twins_same_speed=True)
MEDIUM = render.WorldSpec(
    num_train_ids=300, num_test_ids=200, num_cameras=4, train_twin_pairs=30,
    test_twin_pairs=25, num_distractors=50, max_frames=48, min_long_frames=8,
    short_fraction=0.15, occlusion_prob=0.3, image_size=(128, 64))


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
  """A synthetic world: its sizes and its seed.

  Attributes:
    spec: sizes (identities, cameras, twins, tracklet lengths, frame size).
    seed: everything rendered is a deterministic function of (spec, seed).
  """
  spec: render.WorldSpec = SMALL
  seed: int = 0


def _describe(spec: render.WorldSpec) -> str:
  h, w = spec.image_size
  return (f"{spec.num_train_ids} train / {spec.num_test_ids} test ids "
          f"({spec.train_twin_pairs} / {spec.test_twin_pairs} motion-twin "
          f"pairs), {spec.num_cameras} cameras, {spec.num_distractors} "
          f"distractors, tracklets of 2..{spec.max_frames} frames, {h}x{w}.")


class SyntheticVideoReid(base.ReidBuilder):
  """Procedurally rendered walking pedestrians with motion twins."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": "The `motion` and `motion_cadence` configs; per-frame "
               "`occluded` flags.",
  }
  NEEDS_MANUAL_DIR = False
  EXTRA_FEATURES = {
      "motion_twin": tfds.features.Scalar(np.int32),
      "occluded": tfds.features.Sequence(tfds.features.Scalar(np.bool_)),
  }
  BUILDER_CONFIGS = [
      SyntheticConfig(name="small", spec=SMALL, seed=0,
                      description="Default; the demo's dataset. " +
                      _describe(SMALL)),
      SyntheticConfig(name="tiny", spec=TINY, seed=0,
                      description="For unit tests. " + _describe(TINY)),
      SyntheticConfig(name="motion", spec=MOTION, seed=0,
                      description="Motion identity: every identity has an "
                      "appearance twin. " + _describe(MOTION)),
      SyntheticConfig(name="motion_cadence", spec=MOTION_CADENCE, seed=0,
                      description="Motion twins of the same speed: only the "
                      "cadence differs. " + _describe(MOTION_CADENCE)),
      SyntheticConfig(name="medium", spec=MEDIUM, seed=0,
                      description="For accelerator runs. " +
                      _describe(MEDIUM)),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "small"

  @property
  def IMAGE_SIZE(self) -> tuple[int, int]:  # pylint: disable=invalid-name
    """(height, width) of every frame, checked by the base class."""
    return tuple(self.builder_config.spec.image_size)

  @classmethod
  def config_with_seed(cls, name: str, seed: int) -> SyntheticConfig:
    """A predefined config rendered with another seed (`{name}_seed{seed}`).

    Args:
      name: a predefined config ("small", "tiny", "medium").
      seed: the new seed.

    Returns:
      A config to pass as `SyntheticVideoReid(config=...)`.
    """
    known = cls.builder_configs[name]
    return SyntheticConfig(name=f"{name}_seed{seed}", spec=known.spec,
                           seed=seed, description=known.description)

  def world(self) -> render.World:
    """The sampled world (identities, cameras, tracklet plans)."""
    return render.make_world(self.builder_config.spec,
                             self.builder_config.seed)

  def _tracklets(self,
                 manual_dir: str) -> Mapping[str, Sequence[base.Tracklet]]:
    del manual_dir  # Everything is rendered.
    config = self.builder_config
    world = self.world()
    self.info.metadata["synthetic"] = {
        "seed": config.seed,
        "spec": dataclasses.asdict(config.spec),
        "twin_pairs": [list(p) for p in world.twin_pairs()],
        "cameras": [dataclasses.asdict(c) for c in world.cameras.values()],
    }
    splits = {}
    for split, plans in world.splits.items():
      splits[split] = [self._tracklet(world, plan) for plan in plans]
    return splits

  def _tracklet(self, world: render.World,
                plan: render.TrackletPlan) -> base.Tracklet:
    frames = render.render_tracklet(plan, world.cameras[plan.camid],
                                    world.spec)
    return base.Tracklet(
        frames=frames,
        frame_numbers=list(plan.frame_numbers),
        pid=plan.identity.pid,
        camid=plan.camid,
        tracklet_id=plan.tracklet_id,
        path=plan.path,
        is_distractor=plan.is_distractor,
        extra={"motion_twin": np.int32(plan.identity.motion_twin),
               "occluded": render.occluded_frames(
                   plan, world.cameras[plan.camid], world.spec)},
    )
