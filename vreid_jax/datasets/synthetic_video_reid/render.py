"""Procedural renderer of the synthetic video ReID benchmark.

Everything here is plain NumPy + PIL and is a pure function of a `WorldSpec`
and a seed: `make_world` samples identities, cameras and the tracklet plan of
every split (cheap, no pixels), `render_tracklet` draws one planned tracklet
and returns its JPEG bytes.

Identity = appearance (`Appearance`: skin, hair, top colour and pattern,
trousers or shorts, shoes, bag, height, build, posture) + motion (`Motion`:
gait period and phase, stride, arm and leg swing). A "motion twin" pair shares
the very same `Appearance` and arm/leg swing and stride factor, and differs
only in gait period (fast: 5-6.5 frames per cycle, slow: 11-14) and hence
walking speed (or, with `WorldSpec.twins_same_speed`, only in cadence: the
stride scales with the period). Every frame of a twin is drawn from the same distribution of
poses (the phase is uniform over tracklets), so the pair can only be told
apart from how the pose changes from frame to frame.

A frame is a person crop, as a detector would give: the figure is centred
(with detector jitter) and the camera's background scrolls past at the
walking speed. Cameras differ in background, illumination (gain, colour cast,
vertical light gradient), person scale, blur and sensor noise.

`occluded_frames` says which frames of a tracklet an occluder covers (the
"low" and "side" boxes for their frames; the world-fixed pole while it
overlaps the figure), for the attention-vs-occlusion analysis.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageFilter

Colour = tuple[float, float, float]

# Torso patterns and bags.
PATTERNS = ("plain", "stripes", "open_jacket", "logo")
BAGS = ("none", "backpack")

# Gait period bands (frames per cycle).
_PERIOD_RANGE = (7.0, 13.0)
_FAST_TWIN_RANGE = (5.0, 6.5)
_SLOW_TWIN_RANGE = (11.0, 14.0)


@dataclasses.dataclass(frozen=True)
class WorldSpec:
  """Sizes of a synthetic world.

  Attributes:
    num_train_ids: identities of the train split (pids 1..num_train_ids).
    num_test_ids: identities of query/gallery (the next pids).
    num_cameras: number of cameras (camids 1..num_cameras).
    train_twin_pairs: motion-twin pairs among the train identities.
    test_twin_pairs: motion-twin pairs among the test identities.
    num_distractors: pid-0 distractor tracklets appended to the gallery.
    max_frames: longest tracklet.
    min_long_frames: shortest tracklet that is not a "short" one.
    short_fraction: fraction of tracklets with only 2..5 frames.
    second_tracklet_prob: probability of a second train tracklet of an
      identity in a camera (test identities get two where the query rule
      needs them).
    occlusion_prob: probability that a tracklet of >= 3 frames has an
      occlusion event.
    image_size: (height, width) of the frames.
    jpeg_quality: JPEG quality of the encoded frames.
    twins_same_speed: motion twins also share their walking speed (the
      stride scales with the period), so the background scrolls past both
      alike and only the cadence of the gait differs.
  """
  num_train_ids: int
  num_test_ids: int
  num_cameras: int
  train_twin_pairs: int
  test_twin_pairs: int
  num_distractors: int
  max_frames: int
  min_long_frames: int = 6
  short_fraction: float = 0.15
  second_tracklet_prob: float = 0.35
  occlusion_prob: float = 0.3
  image_size: tuple[int, int] = (64, 32)
  jpeg_quality: int = 90
  twins_same_speed: bool = False

  def __post_init__(self):
    if self.num_cameras < 2:
      raise ValueError("need at least 2 cameras for cross-camera queries")
    for split, ids, pairs in (("train", self.num_train_ids,
                               self.train_twin_pairs),
                              ("test", self.num_test_ids,
                               self.test_twin_pairs)):
      if 2 * pairs > ids:
        raise ValueError(f"{pairs} {split} twin pairs need {2 * pairs} "
                         f"identities, the split has {ids}")
    if not 2 <= self.min_long_frames <= self.max_frames:
      raise ValueError("need 2 <= min_long_frames <= max_frames")


@dataclasses.dataclass(frozen=True)
class Appearance:
  """What a single frame shows of a person (shared by motion twins).

  Attributes:
    skin: skin colour (RGB in [0, 1]).
    hair: hair colour.
    long_hair: hair falls to the shoulders.
    top: shirt/jacket colour (torso and upper arms).
    pattern: one of `PATTERNS`.
    pattern_colour: colour of the stripes / jacket front / logo.
    bottom: trousers/shorts colour.
    shorts: shins show skin.
    shoes: shoe colour.
    bag: one of `BAGS`.
    bag_colour: colour of the bag.
    height: body height relative to the camera's person scale (0.85-1).
    build: width factor of torso and limbs (0.8-1.25).
    lean: forward lean of the torso in radians.
  """
  skin: Colour
  hair: Colour
  long_hair: bool
  top: Colour
  pattern: str
  pattern_colour: Colour
  bottom: Colour
  shorts: bool
  shoes: Colour
  bag: str
  bag_colour: Colour
  height: float
  build: float
  lean: float


@dataclasses.dataclass(frozen=True)
class Motion:
  """How a person walks.

  Attributes:
    period: gait cycle length in frames (two steps).
    phase: gait phase (radians) at frame number 0.
    stride: distance covered per cycle in body heights; the walking speed is
      `stride / period` body heights per frame.
    arm_swing: amplitude of the arm swing (radians).
    leg_swing: amplitude of the thigh swing (radians).
  """
  period: float
  phase: float
  stride: float
  arm_swing: float
  leg_swing: float

  @property
  def speed(self) -> float:
    """Walking speed in body heights per frame."""
    return self.stride / self.period


@dataclasses.dataclass(frozen=True)
class Identity:
  """One person.

  Attributes:
    pid: 1-based person id (0 for distractors).
    appearance: what a frame shows.
    motion: how the person walks.
    motion_twin: pid of the appearance twin, or -1.
  """
  pid: int
  appearance: Appearance
  motion: Motion
  motion_twin: int = -1


@dataclasses.dataclass(frozen=True)
class Camera:
  """One camera's nuisance factors.

  Attributes:
    camid: 1-based camera id.
    wall: wall colour (upper background).
    wall_feature: colour of windows/pillars on the wall.
    ground: ground colour (lower background).
    horizon: height of the wall/ground boundary as a fraction of the frame.
    feature_period: spacing of wall features, in frame heights.
    texture_seed: seed of the background's smooth texture.
    gain: global brightness factor.
    cast: per-channel colour factors.
    light_gradient: brightness change from top to bottom (fraction).
    scale: person height as a fraction of the frame height.
    blur: Gaussian blur sigma in output pixels.
    noise: sensor noise std in [0, 1] units.
    rightward_prob: probability that a person walks to the right.
  """
  camid: int
  wall: Colour
  wall_feature: Colour
  ground: Colour
  horizon: float
  feature_period: float
  texture_seed: int
  gain: float
  cast: Colour
  light_gradient: float
  scale: float
  blur: float
  noise: float
  rightward_prob: float


@dataclasses.dataclass(frozen=True)
class Occlusion:
  """An occluder in front of the person for part of a tracklet.

  Attributes:
    kind: "pole" (a world-fixed pole the person walks behind), "low" (a box
      covering the lower body, e.g. a bench), or "side" (a box covering one
      side, e.g. another pedestrian).
    start: first occluded frame (index into the tracklet).
    length: number of occluded frames ("low"/"side"); for "pole" the frame
      at which the pole is in front of the person's centre is `start`.
    colour: occluder colour.
    size: width (pole, side) or height (low) as a fraction of the frame.
    from_left: for "side", the box comes from the left edge.
  """
  kind: str
  start: int
  length: int
  colour: Colour
  size: float
  from_left: bool


@dataclasses.dataclass(frozen=True)
class TrackletPlan:
  """Everything needed to render one tracklet.

  Attributes:
    split: "train", "query" or "gallery".
    identity: who walks (pid 0 for distractors).
    camid: 1-based camera id.
    tracklet_id: 1-based number per (pid, camera); per camera for distractors.
    frame_numbers: rendered frame numbers (1-based, consecutive).
    rightward: walking direction.
    world_x: world position at frame number 0, in body heights.
    occlusion: occlusion event or None.
    seed: seed of the per-frame nuisances (jitter, flicker, noise).
  """
  split: str
  identity: Identity
  camid: int
  tracklet_id: int
  frame_numbers: tuple[int, ...]
  rightward: bool
  world_x: float
  occlusion: Occlusion | None
  seed: int

  @property
  def is_distractor(self) -> bool:
    return self.identity.pid == 0

  @property
  def path(self) -> str:
    """A MARS-style pseudo path of the first frame."""
    pid = f"{self.identity.pid:04d}"
    return (f"synthetic/{self.split}/{pid}/{pid}C{self.camid}"
            f"T{self.tracklet_id:04d}F{self.frame_numbers[0]:04d}.jpg")


@dataclasses.dataclass(frozen=True)
class World:
  """A sampled synthetic world.

  Attributes:
    spec: its sizes.
    seed: its seed.
    identities: pid -> Identity for every train and test identity.
    cameras: camid -> Camera.
    splits: split name -> tracklet plans in record order.
  """
  spec: WorldSpec
  seed: int
  identities: Mapping[int, Identity]
  cameras: Mapping[int, Camera]
  splits: Mapping[str, Sequence[TrackletPlan]]

  @property
  def train_pids(self) -> list[int]:
    return list(range(1, self.spec.num_train_ids + 1))

  @property
  def test_pids(self) -> list[int]:
    first = self.spec.num_train_ids + 1
    return list(range(first, first + self.spec.num_test_ids))

  def twin_pairs(self) -> list[tuple[int, int]]:
    """Sorted (smaller pid, larger pid) motion-twin pairs."""
    return sorted((p, i.motion_twin) for p, i in self.identities.items()
                  if i.motion_twin > p)


# ---------------------------------------------------------------------------
# Sampling the world.
# ---------------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> Colour:
  r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
  return (round(r, 4), round(g, 4), round(b, 4))


def _clothing_colour(rng: np.random.Generator) -> Colour:
  """A clothing colour: vivid w.p. 0.7, else black/grey/white-ish."""
  if rng.random() < 0.7:
    return _hsv(rng.random(), rng.uniform(0.55, 0.95), rng.uniform(0.35, 0.95))
  return _hsv(rng.random(), rng.uniform(0.0, 0.15), rng.uniform(0.12, 0.92))


def _sample_appearance(rng: np.random.Generator) -> Appearance:
  skin = _hsv(rng.uniform(0.03, 0.1), rng.uniform(0.25, 0.6),
              rng.uniform(0.35, 0.95))
  hair = _hsv(rng.uniform(0.02, 0.12), rng.uniform(0.2, 0.7),
              rng.choice([rng.uniform(0.05, 0.3), rng.uniform(0.45, 0.9)]))
  return Appearance(
      skin=skin,
      hair=hair,
      long_hair=bool(rng.random() < 0.3),
      top=_clothing_colour(rng),
      pattern=str(rng.choice(PATTERNS, p=[0.4, 0.25, 0.2, 0.15])),
      pattern_colour=_clothing_colour(rng),
      bottom=_clothing_colour(rng),
      shorts=bool(rng.random() < 0.2),
      shoes=_hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.1, 0.95)),
      bag=str(rng.choice(BAGS, p=[0.7, 0.3])),
      bag_colour=_clothing_colour(rng),
      height=round(float(rng.uniform(0.85, 1.0)), 4),
      build=round(float(rng.uniform(0.8, 1.25)), 4),
      lean=round(float(rng.uniform(0.0, 0.12)), 4),
  )


def _appearance_key(a: Appearance) -> np.ndarray:
  """Vector whose distances say how alike two appearances look."""
  onehot = np.eye(len(PATTERNS))[PATTERNS.index(a.pattern)] * 0.3
  pattern = np.asarray(a.pattern_colour) * (a.pattern != "plain") * 0.6
  return np.concatenate([
      np.asarray(a.top), np.asarray(a.bottom), onehot, pattern,
      [0.3 * a.shorts, 0.3 * (a.bag != "none"), 2.0 * a.height, a.build]])


def _distinct_appearances(rng: np.random.Generator,
                          n: int) -> list[Appearance]:
  """Samples `n` appearances, rejecting near-duplicates of earlier ones."""
  out, keys = [], []
  threshold, failures = 0.6, 0
  while len(out) < n:
    a = _sample_appearance(rng)
    k = _appearance_key(a)
    if keys and np.min(np.linalg.norm(np.asarray(keys) - k, axis=1)) < \
        threshold:
      failures += 1
      if failures % 50 == 0:
        threshold *= 0.9
      continue
    out.append(a)
    keys.append(k)
  return out


def _sample_motion(rng: np.random.Generator,
                   period_range: tuple[float, float] = _PERIOD_RANGE,
                   like: Motion | None = None) -> Motion:
  """A gait; `like` copies everything but period and phase."""
  period = round(float(rng.uniform(*period_range)), 3)
  phase = round(float(rng.uniform(0, 2 * math.pi)), 4)
  if like is not None:
    return dataclasses.replace(like, period=period, phase=phase)
  return Motion(period=period, phase=phase,
                stride=round(float(rng.uniform(0.6, 0.85)), 4),
                arm_swing=round(float(rng.uniform(0.15, 0.7)), 4),
                leg_swing=round(float(rng.uniform(0.32, 0.5)), 4))


def _sample_identities(rng: np.random.Generator, pids: Sequence[int],
                       twin_pairs: int,
                       same_speed: bool = False) -> dict[int, Identity]:
  """Identities of one split; `twin_pairs` random pairs share appearance
  (and, with `same_speed`, their walking speed)."""
  order = [int(p) for p in rng.permutation(np.asarray(pids))]
  twins = [(order[2 * i], order[2 * i + 1]) for i in range(twin_pairs)]
  singles = order[2 * twin_pairs:]
  looks = _distinct_appearances(rng, len(twins) + len(singles))
  out = {}
  for (a, b), look in zip(twins, looks):
    first = _sample_motion(rng)
    fast, slow = (a, b) if rng.random() < 0.5 else (b, a)
    fast_motion = _sample_motion(rng, _FAST_TWIN_RANGE, like=first)
    slow_motion = _sample_motion(rng, _SLOW_TWIN_RANGE, like=first)
    if same_speed:  # stride / period = the first motion's speed for both.
      fast_motion = dataclasses.replace(
          fast_motion, stride=round(first.speed * fast_motion.period, 4))
      slow_motion = dataclasses.replace(
          slow_motion, stride=round(first.speed * slow_motion.period, 4))
    out[fast] = Identity(fast, look, fast_motion, slow)
    out[slow] = Identity(slow, look, slow_motion, fast)
  for pid, look in zip(singles, looks[len(twins):]):
    out[pid] = Identity(pid, look, _sample_motion(rng))
  return dict(sorted(out.items()))


def _sample_cameras(rng: np.random.Generator, n: int) -> dict[int, Camera]:
  blurs = rng.permutation(np.linspace(0.0, 0.7, n))
  scales = rng.permutation(np.linspace(0.76, 0.92, n))
  cams = {}
  for c in range(1, n + 1):
    wall_v = rng.uniform(0.3, 0.8)
    cams[c] = Camera(
        camid=c,
        wall=_hsv(rng.random(), rng.uniform(0.05, 0.35), wall_v),
        wall_feature=_hsv(rng.random(), rng.uniform(0.05, 0.4),
                          np.clip(wall_v + rng.choice([-0.3, 0.25]), 0.05,
                                  0.95)),
        ground=_hsv(rng.random(), rng.uniform(0.0, 0.25),
                    rng.uniform(0.25, 0.65)),
        horizon=round(float(rng.uniform(0.55, 0.72)), 4),
        feature_period=round(float(rng.uniform(0.35, 0.9)), 4),
        texture_seed=int(rng.integers(2**31)),
        gain=round(float(rng.uniform(0.85, 1.1)), 4),
        cast=tuple(round(float(x), 4) for x in rng.uniform(0.92, 1.08, 3)),
        light_gradient=round(float(rng.uniform(-0.15, 0.15)), 4),
        scale=round(float(scales[c - 1]), 4),
        blur=round(float(blurs[c - 1]), 4),
        noise=round(float(rng.uniform(0.005, 0.02)), 4),
        rightward_prob=round(float(rng.choice([0.2, 0.5, 0.8])), 2),
    )
  return cams


def _tracklet_length(rng: np.random.Generator, spec: WorldSpec) -> int:
  if rng.random() < spec.short_fraction:
    return int(rng.integers(2, min(5, spec.max_frames) + 1))
  return int(rng.integers(spec.min_long_frames, spec.max_frames + 1))


def _sample_occlusion(rng: np.random.Generator,
                      n: int) -> Occlusion | None:
  if n < 3:
    return None
  kind = str(rng.choice(["pole", "low", "side"]))
  length = int(rng.integers(2, max(2, n // 2) + 1))
  start = int(rng.integers(0, n - length + 1))
  grey = rng.uniform(0.15, 0.7)
  colour = _hsv(rng.random(), rng.uniform(0.0, 0.3), grey)
  size = {"pole": rng.uniform(0.15, 0.3), "low": rng.uniform(0.25, 0.45),
          "side": rng.uniform(0.3, 0.5)}[kind]
  return Occlusion(kind=kind, start=start, length=length, colour=colour,
                   size=round(float(size), 4),
                   from_left=bool(rng.random() < 0.5))


def _plan(rng: np.random.Generator, spec: WorldSpec, split: str,
          identity: Identity, camera: Camera, tracklet_id: int,
          occlusion_prob: float) -> TrackletPlan:
  n = _tracklet_length(rng, spec)
  start = int(rng.integers(1, 1000))
  occlusion = (_sample_occlusion(rng, n) if rng.random() < occlusion_prob
               else None)
  return TrackletPlan(
      split=split, identity=identity, camid=camera.camid,
      tracklet_id=tracklet_id,
      frame_numbers=tuple(range(start, start + n)),
      rightward=bool(rng.random() < camera.rightward_prob),
      world_x=round(float(rng.uniform(0, 1000)), 3),
      occlusion=occlusion, seed=int(rng.integers(2**31)))


def make_world(spec: WorldSpec, seed: int) -> World:
  """Samples identities, cameras and every split's tracklet plan.

  Splits follow MARS: train and test identities are disjoint; every test
  identity is seen by >= 2 cameras; "query" holds one tracklet per test
  identity and camera, "gallery" all other test tracklets (plus
  `num_distractors` pid-0 tracklets at the end), and every query has a
  gallery tracklet of its identity in another camera.

  Args:
    spec: sizes.
    seed: the world's seed.

  Returns:
    The world; deterministic in (spec, seed).
  """
  rng = np.random.default_rng([seed, 20240611])
  cameras = _sample_cameras(rng, spec.num_cameras)
  train_pids = list(range(1, spec.num_train_ids + 1))
  test_pids = list(range(spec.num_train_ids + 1,
                         spec.num_train_ids + spec.num_test_ids + 1))
  identities = {}
  identities.update(_sample_identities(rng, train_pids, spec.train_twin_pairs,
                                       spec.twins_same_speed))
  identities.update(_sample_identities(rng, test_pids, spec.test_twin_pairs,
                                       spec.twins_same_speed))
  camids = list(cameras)
  occ = spec.occlusion_prob

  train = []
  for pid in train_pids:
    k = int(rng.integers(2, spec.num_cameras + 1))
    for c in sorted(rng.choice(camids, size=k, replace=False).tolist()):
      count = 2 if rng.random() < spec.second_tracklet_prob else 1
      for t in range(1, count + 1):
        train.append(_plan(rng, spec, "train", identities[pid], cameras[c], t,
                           occ))

  query, gallery = [], []
  for pid in test_pids:
    k = int(rng.integers(2, spec.num_cameras + 1))
    cams = sorted(rng.choice(camids, size=k, replace=False).tolist())
    # Two tracklets in >= 2 cameras, so each camera's query has a gallery
    # positive in another camera.
    doubled = set(rng.choice(cams, size=2, replace=False).tolist())
    for c in cams:
      count = 2 if (c in doubled or
                    rng.random() < spec.second_tracklet_prob) else 1
      query_tid = int(rng.integers(1, count + 1))
      for t in range(1, count + 1):
        split = "query" if t == query_tid else "gallery"
        plan = _plan(rng, spec, split, identities[pid], cameras[c], t, occ)
        (query if split == "query" else gallery).append(plan)

  distractor_looks = [_sample_appearance(rng)
                      for _ in range(spec.num_distractors)]
  per_camera = {c: 0 for c in camids}
  for look in distractor_looks:
    c = int(rng.choice(camids))
    per_camera[c] += 1
    ident = Identity(0, look, _sample_motion(rng))
    gallery.append(_plan(rng, spec, "gallery", ident, cameras[c],
                         per_camera[c], occ))

  return World(spec=spec, seed=seed, identities=identities, cameras=cameras,
               splits={"train": train, "query": query, "gallery": gallery})


def identity_parameters(spec: WorldSpec, seed: int) -> dict[int, Identity]:
  """pid -> Identity (appearance, motion, twin) of the world (spec, seed)."""
  return dict(make_world(spec, seed).identities)


# ---------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------

_STRIP_WIDTH_FRAMES = 16  # Background strip width, in frame widths.


@functools.lru_cache(maxsize=64)
def _background(camera: Camera, height: int, width: int) -> np.ndarray:
  """A horizontally periodic background strip, (height, 16 * width, 3)."""
  strip_w = _STRIP_WIDTH_FRAMES * width
  rng = np.random.default_rng(camera.texture_seed)
  y = (np.arange(height) + 0.5)[:, None] / height
  x = np.arange(strip_w)[None, :]
  # Smooth periodic texture: a few sinusoids with integer frequencies.
  tex = np.zeros((height, strip_w))
  for _ in range(6):
    fx = int(rng.integers(1, 3 * _STRIP_WIDTH_FRAMES))
    fy = rng.uniform(0.5, 4.0)
    tex += np.sin(2 * np.pi * (fx * x / strip_w + fy * y) +
                  rng.uniform(0, 2 * np.pi)) * rng.uniform(0.2, 1.0)
  tex /= np.abs(tex).max() + 1e-6
  wall = np.asarray(camera.wall) * (1.0 + 0.08 * tex[..., None])
  # Windows / pillars: periodic in x on the wall.
  period = max(4, int(round(camera.feature_period * height)))
  period = strip_w // max(1, round(strip_w / period))  # Tile the strip.
  duty = rng.uniform(0.25, 0.6)
  top, bottom = rng.uniform(0.05, 0.25), rng.uniform(0.3, 0.5)
  feature = ((x % period) < duty * period) & (y > top) & (y < bottom)
  wall = np.where(feature[..., None], np.asarray(camera.wall_feature), wall)
  # Ground: darker towards the camera, with periodic paving seams.
  ground = np.asarray(camera.ground) * (
      1.05 - 0.25 * (y - camera.horizon)[..., None] / (1 - camera.horizon)
      + 0.05 * tex[..., None])
  seam_period = max(4, period // 2)
  seams = (x % seam_period < max(1, height // 64)) | (
      np.abs(np.sin(np.pi * 8 * (y - camera.horizon))) < 0.05)
  ground = np.where(seams[..., None], ground * 0.8, ground)
  img = np.where((y < camera.horizon)[..., None], wall, ground)
  return np.clip(img, 0.0, 1.0).astype(np.float32)


# The painters below draw one primitive into every frame of a tracklet at
# once: `img` is (T, H, W, 3) float32 in [0, 1] and every coordinate is a
# (T,) array in pixels. Edges are antialiased from the exact distance to the
# primitive (coverage = radius + 0.5 - distance, clipped to [0, 1]).

Points = tuple[np.ndarray, np.ndarray]  # (x, y), each (T,).


def _box(img: np.ndarray, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray],
         pad: np.ndarray) -> tuple[slice, slice, np.ndarray,
                                   np.ndarray] | None:
  """The image box holding the points (+ pad) in every frame.

  Returns:
    (row slice, column slice, y centres (1, h, 1), x centres (1, 1, w)), or
    None when the box is outside the image.
  """
  _, h, w, _ = img.shape
  pad = float(np.max(pad))
  x0 = max(0, math.floor(min(float(np.min(x)) for x in xs) - pad) - 1)
  x1 = min(w, math.ceil(max(float(np.max(x)) for x in xs) + pad) + 2)
  y0 = max(0, math.floor(min(float(np.min(y)) for y in ys) - pad) - 1)
  y1 = min(h, math.ceil(max(float(np.max(y)) for y in ys) + pad) + 2)
  if x0 >= x1 or y0 >= y1:
    return None
  yc = np.arange(y0, y1, dtype=np.float32)[None, :, None] + 0.5
  xc = np.arange(x0, x1, dtype=np.float32)[None, None, :] + 0.5
  return slice(y0, y1), slice(x0, x1), yc, xc


def _col(v: np.ndarray) -> np.ndarray:
  """(T,) -> (T, 1, 1) float32, to broadcast against (T, h, w)."""
  return np.asarray(v, np.float32).reshape(-1, 1, 1)


def _blend(img: np.ndarray, rows: slice, cols: slice, coverage: np.ndarray,
           colour: np.ndarray) -> None:
  """img[:, rows, cols] <- mix with `colour` by `coverage` (in place)."""
  alpha = np.clip(coverage, 0.0, 1.0)[..., None]
  region = img[:, rows, cols]
  region += alpha * (colour - region)


def _segment_distance(xc: np.ndarray, yc: np.ndarray, p0: Points,
                      p1: Points) -> tuple[np.ndarray, np.ndarray]:
  """Distance of pixel centres to segments p0-p1, and the position along."""
  ax, ay = _col(p0[0]), _col(p0[1])
  dx, dy = _col(p1[0]) - ax, _col(p1[1]) - ay
  norm = np.maximum(dx * dx + dy * dy, 1e-6)
  ex, ey = xc - ax, yc - ay
  t = np.clip((ex * dx + ey * dy) / norm, 0.0, 1.0)
  return np.hypot(ex - t * dx, ey - t * dy), t


def _paint_capsule(img: np.ndarray, p0: Points, p1: Points,
                   radius: np.ndarray, colour: np.ndarray) -> None:
  """Paints thick segments p0-p1 (one per frame) with a flat colour."""
  box = _box(img, (p0[0], p1[0]), (p0[1], p1[1]), radius)
  if box is None:
    return
  rows, cols, yc, xc = box
  dist, _ = _segment_distance(xc, yc, p0, p1)
  _blend(img, rows, cols, _col(radius) + 0.5 - dist, colour)


def _paint_torso(img: np.ndarray, hip: Points, shoulder: Points,
                 radius: np.ndarray, look: Appearance, forward: float,
                 unit: np.ndarray) -> None:
  """Paints the torso capsule with the identity's pattern."""
  box = _box(img, (hip[0], shoulder[0]), (hip[1], shoulder[1]), radius)
  if box is None:
    return
  rows, cols, yc, xc = box
  dist, _ = _segment_distance(xc, yc, shoulder, hip)
  r, u = _col(radius), _col(unit)
  length = _col(np.hypot(hip[0] - shoulder[0], hip[1] - shoulder[1]))
  ax = (_col(hip[0]) - _col(shoulder[0])) / length
  ay = (_col(hip[1]) - _col(shoulder[1])) / length
  ex, ey = xc - _col(shoulder[0]), yc - _col(shoulder[1])
  along = ex * ax + ey * ay  # From the shoulder down.
  across = (ex * ay - ey * ax) * forward  # Positive at the chest.
  top = np.asarray(look.top, np.float32)
  pat = np.asarray(look.pattern_colour, np.float32)
  if look.pattern == "stripes":
    mask = (np.floor(along / (0.05 * u)) % 2) == 1
  elif look.pattern == "open_jacket":
    mask = across > 0.2 * r
  elif look.pattern == "logo":
    mask = ((np.abs(along - 0.3 * length) < 0.2 * length) &
            (across > -0.1 * r) & (across < 0.75 * r))
  else:
    mask = None
  colour = top if mask is None else np.where(mask[..., None], pat, top)
  # Slight shading: darker at the back.
  colour = colour * (0.9 + 0.1 * np.clip(across / r, -1, 1))[..., None]
  _blend(img, rows, cols, r + 0.5 - dist, colour)


def _paint_head(img: np.ndarray, centre: Points, radius: np.ndarray,
                look: Appearance, forward: float) -> None:
  """Paints the head: skin face, hair on top and at the back."""
  box = _box(img, (centre[0],), (centre[1],), radius)
  if box is None:
    return
  rows, cols, yc, xc = box
  r = _col(radius)
  ex, ey = xc - _col(centre[0]), yc - _col(centre[1])
  u, v = ex * forward / r, ey / r
  hair = (v < -0.25 + 0.3 * np.clip(u, 0, 1)) | (u < -0.35)
  colour = np.where(hair[..., None], np.asarray(look.hair, np.float32),
                    np.asarray(look.skin, np.float32))
  _blend(img, rows, cols, r + 0.5 - np.hypot(ex, ey), colour)


def _paint_rect(frame: np.ndarray, x0: float, x1: float, y0: float,
                y1: float, colour: np.ndarray) -> None:
  """Fills a rectangle of one (H, W, 3) frame."""
  h, w, _ = frame.shape
  xa, xb = int(max(0, round(x0))), int(min(w, round(x1)))
  ya, yb = int(max(0, round(y0))), int(min(h, round(y1)))
  if xa < xb and ya < yb:
    frame[ya:yb, xa:xb] = colour


def draw_person(img: np.ndarray, ident: Identity, phase: np.ndarray,
                centre_x: np.ndarray, feet_y: np.ndarray,
                body_height: np.ndarray, rightward: bool) -> None:
  """Draws the walking figure into every frame (in place).

  Args:
    img: (T, H, W, 3) float32 canvas.
    ident: who.
    phase: (T,) gait phase in radians (near thigh fully forward at pi/2).
    centre_x: (T,) x of the hips, pixels.
    feet_y: (T,) y of the ground contact, pixels.
    body_height: (T,) standing height in pixels.
    rightward: the person faces/walks to the right.
  """
  look, motion = ident.appearance, ident.motion
  unit = np.asarray(body_height, np.float64)
  d = 1.0 if rightward else -1.0
  thigh_len, shin_len = 0.245 * unit, 0.235 * unit
  torso_len, neck = 0.3 * unit, 0.025 * unit
  head_r = 0.07 * unit
  leg_r = 0.045 * unit * math.sqrt(look.build)
  arm_r = 0.032 * unit * math.sqrt(look.build)
  torso_r = 0.075 * unit * look.build
  upper_arm, forearm = 0.17 * unit, 0.15 * unit

  def leg_angles(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    thigh = motion.leg_swing * np.sin(p)
    # The knee flexes while the leg swings forward (d thigh / dt > 0).
    flex = 1.6 * motion.leg_swing * np.maximum(0.0, np.cos(p)) ** 1.5
    return thigh, thigh - flex

  near, far = leg_angles(phase), leg_angles(phase + np.pi)
  # The lower foot touches the ground: the hip height follows the stance leg.
  extent = np.maximum(*(thigh_len * np.cos(t) + shin_len * np.cos(s)
                        for t, s in (near, far)))
  hip = (np.asarray(centre_x, np.float64), feet_y - extent)
  lean = look.lean
  shoulder = (hip[0] + d * torso_len * math.sin(lean),
              hip[1] - torso_len * math.cos(lean))
  head = (shoulder[0] + d * ((neck + head_r) * math.sin(lean) + 0.01 * unit),
          shoulder[1] - neck - head_r)
  skin = np.asarray(look.skin, np.float32)
  bottom = np.asarray(look.bottom, np.float32)
  shoes = np.asarray(look.shoes, np.float32)
  top = np.asarray(look.top, np.float32)

  def paint_leg(angles: tuple[np.ndarray, np.ndarray], shade: float) -> None:
    thigh, shin = angles
    knee = (hip[0] + d * thigh_len * np.sin(thigh),
            hip[1] + thigh_len * np.cos(thigh))
    ankle = (knee[0] + d * shin_len * np.sin(shin),
             knee[1] + shin_len * np.cos(shin))
    toe = (ankle[0] + d * 0.075 * unit * np.cos(shin),
           ankle[1] - 0.0225 * unit * np.sin(shin))
    _paint_capsule(img, hip, knee, leg_r, bottom * shade)
    _paint_capsule(img, knee, ankle, leg_r * 0.9,
                   (skin if look.shorts else bottom) * shade)
    _paint_capsule(img, ankle, toe, leg_r * 0.75, shoes * shade)

  def paint_arm(p: np.ndarray, shade: float) -> None:
    swing = -motion.arm_swing * np.sin(p)
    elbow_flex = 0.25 + 0.6 * motion.arm_swing * np.maximum(0.0, -np.sin(p))
    elbow = (shoulder[0] + d * upper_arm * np.sin(swing),
             shoulder[1] + upper_arm * np.cos(swing))
    fore = swing + elbow_flex
    hand = (elbow[0] + d * forearm * np.sin(fore),
            elbow[1] + forearm * np.cos(fore))
    _paint_capsule(img, shoulder, elbow, arm_r, top * shade)
    _paint_capsule(img, elbow, hand, arm_r * 0.85, top * shade)
    _paint_capsule(img, hand, hand, arm_r * 0.9, skin * shade)

  far_shade = 0.72
  # Each arm swings opposite to the leg on its side.
  paint_arm(phase + np.pi, far_shade)
  paint_leg(far, far_shade)
  paint_leg(near, 1.0)
  if look.bag == "backpack":
    back = -d * torso_r * 1.1
    _paint_capsule(img, (shoulder[0] + back, shoulder[1] + 0.06 * unit),
                   (hip[0] + 0.9 * back, hip[1] - 0.1 * unit),
                   torso_r * 0.75, np.asarray(look.bag_colour, np.float32))
  _paint_torso(img, hip, shoulder, torso_r, look, d, unit)
  if look.long_hair:
    _paint_capsule(img, (head[0] - d * 0.5 * head_r, head[1]),
                   (shoulder[0] - d * 0.7 * head_r, shoulder[1] + 0.02 * unit),
                   head_r * 0.55, np.asarray(look.hair, np.float32))
  _paint_head(img, head, head_r, look, d)
  paint_arm(phase, 1.0)


def _paint_occlusion(frame: np.ndarray, occ: Occlusion, index: int,
                     pole_x: float) -> None:
  """Paints the occluder into frame `index` of the tracklet."""
  h, w, _ = frame.shape
  colour = np.asarray(occ.colour, np.float32)
  if occ.kind == "pole":
    half = 0.5 * occ.size * w
    _paint_rect(frame, pole_x - half, pole_x + half, 0, h, colour)
    # A highlight stripe makes it read as a cylinder.
    _paint_rect(frame, pole_x - 0.4 * half, pole_x - 0.1 * half, 0, h,
                np.clip(colour * 1.3, 0, 1))
    return
  if not occ.start <= index < occ.start + occ.length:
    return
  if occ.kind == "low":
    _paint_rect(frame, 0, w, h * (1 - occ.size), h, colour)
    _paint_rect(frame, 0, w, h * (1 - occ.size), h * (1 - occ.size) + h * 0.03,
                colour * 0.7)
  elif occ.from_left:
    _paint_rect(frame, 0, w * occ.size, h * 0.1, h, colour)
  else:
    _paint_rect(frame, w * (1 - occ.size), w, h * 0.1, h, colour)


def _pole_x(plan: TrackletPlan, camera: Camera, spec: WorldSpec,
            centre_x: np.ndarray) -> np.ndarray:
  """x of a world-fixed pole in every frame (in front of the figure's
  centre at frame `occlusion.start`)."""
  h, _ = spec.image_size
  body = camera.scale * plan.identity.appearance.height * h
  d = 1.0 if plan.rightward else -1.0
  f = np.asarray(plan.frame_numbers, np.float64)
  return centre_x - d * plan.identity.motion.speed * (
      f - f[plan.occlusion.start]) * body


def occluded_frames(plan: TrackletPlan, camera: Camera,
                    spec: WorldSpec) -> np.ndarray:
  """(T,) bool: frames in which an occluder covers part of the figure.

  "low" and "side" boxes cover their `length` frames from `start`; a pole
  counts while its band overlaps the figure's central band (half a torso
  width plus half the pole's width around the hips' x; detector jitter is
  ignored, a fraction of a pixel here).
  """
  n = len(plan.frame_numbers)
  occ = plan.occlusion
  out = np.zeros(n, bool)
  if occ is None:
    return out
  if occ.kind != "pole":
    out[occ.start:occ.start + occ.length] = True
    return out
  h, w = spec.image_size
  body = camera.scale * plan.identity.appearance.height * h
  half = 0.5 * occ.size * w + 0.075 * body * plan.identity.appearance.build
  pole_x = _pole_x(plan, camera, spec, np.full(n, w / 2))
  return np.abs(pole_x - w / 2) < half


@dataclasses.dataclass(frozen=True)
class CropGeometry:
  """Where things are in each frame of a tracklet (arrays of shape (T,)).

  Attributes:
    offset: strip column shown in image column 0: the background at image
      column j of frame t is strip column offset[t] + j, so it moves by
      offset[t] - offset[t + 1] pixels in x from frame t to t + 1.
    centre_x: x of the hips, pixels.
    feet_y: y of the ground contact, pixels.
    scale: standing height, pixels.
    phase: gait phase, radians.
  """
  offset: np.ndarray
  centre_x: np.ndarray
  feet_y: np.ndarray
  scale: np.ndarray
  phase: np.ndarray


def crop_geometry(plan: TrackletPlan, camera: Camera, spec: WorldSpec,
                  rng: np.random.Generator | None = None) -> CropGeometry:
  """The crop of every frame: background scroll and the figure's placement.

  Args:
    plan: the tracklet.
    camera: its camera.
    spec: the world's sizes.
    rng: the tracklet's generator, before any draw (default: a new one from
      `plan.seed`); the detector jitter is its first three draws.
  """
  h, w = spec.image_size
  rng = np.random.default_rng(plan.seed) if rng is None else rng
  motion = plan.identity.motion
  f = np.asarray(plan.frame_numbers, np.float64)
  n = len(f)
  body = camera.scale * plan.identity.appearance.height * h
  d = 1.0 if plan.rightward else -1.0
  # Detector jitter: the crop is not perfectly centred or scaled.
  jitter_x = rng.normal(0, 0.03, n) * w
  jitter_y = rng.normal(0, 0.015, n) * h
  scale = body * (1.0 + rng.normal(0, 0.02, n))
  # The crop follows the person, so the background scrolls past.
  x_world = (plan.world_x + d * motion.speed * f) * body
  offset = np.round(x_world - w / 2 - jitter_x).astype(np.int64)
  return CropGeometry(
      offset=offset, centre_x=w / 2 + jitter_x,
      feet_y=0.5 * (h + scale) + 0.02 * h + jitter_y, scale=scale,
      phase=motion.phase + 2 * np.pi * f / motion.period)


def render_frames(plan: TrackletPlan, camera: Camera,
                  spec: WorldSpec) -> np.ndarray:
  """Renders a planned tracklet as uint8 (T, H, W, 3) frames (before blur).

  Args:
    plan: what to render.
    camera: the plan's camera.
    spec: the world's sizes (frame size).

  Returns:
    The frames, deterministic in (plan, camera, spec).
  """
  h, w = spec.image_size
  strip = _background(camera, h, w)
  rng = np.random.default_rng(plan.seed)
  ident = plan.identity
  n = len(plan.frame_numbers)
  geo = crop_geometry(plan, camera, spec, rng)
  cols = (geo.offset[:, None] + np.arange(w)[None, :]) % strip.shape[1]
  img = np.ascontiguousarray(strip[:, cols].transpose(1, 0, 2, 3))
  draw_person(img, ident, geo.phase, geo.centre_x, geo.feet_y, geo.scale,
              plan.rightward)
  occ = plan.occlusion
  if occ is not None:
    # A world-fixed pole is in front of the person's centre at `occ.start`.
    pole_x = _pole_x(plan, camera, spec, geo.centre_x)
    for i in range(n):
      _paint_occlusion(img[i], occ, i, float(pole_x[i]))
  # Illumination: camera gain, colour cast, vertical gradient, flicker.
  light = 1.0 + camera.light_gradient * np.linspace(-1, 1, h,
                                                    dtype=np.float32)
  gain = np.asarray(camera.cast, np.float32) * camera.gain
  flicker = 1.0 + rng.normal(0, 0.02, n).astype(np.float32)
  img *= flicker[:, None, None, None] * light[None, :, None, None] * gain
  noise = rng.standard_normal(img.shape, dtype=np.float32)
  img += camera.noise * noise
  img *= 255.0
  img += 0.5
  return np.clip(img, 0, 255, out=img).astype(np.uint8)


def encode_jpeg(frame: np.ndarray, quality: int = 90,
                blur: float = 0.0) -> bytes:
  """JPEG bytes of a uint8 (H, W, 3) frame, after an optional Gaussian blur."""
  img = Image.fromarray(frame)
  if blur > 0:
    img = img.filter(ImageFilter.GaussianBlur(radius=blur))
  buf = io.BytesIO()
  img.save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def render_tracklet(plan: TrackletPlan, camera: Camera,
                    spec: WorldSpec) -> list[bytes]:
  """Renders a planned tracklet as JPEG bytes, one entry per frame."""
  return [encode_jpeg(frame, spec.jpeg_quality, camera.blur)
          for frame in render_frames(plan, camera, spec)]
