"""Grey frame pairs whose motion is known, to measure optical flow against.

Three kinds, each a `KnownPair` (uint8 grey I0, I1, the true flow of I0's
pixels and where it is valid):

  * `translated_pair`: a smooth random texture shifted by a sub-pixel
    (dx, dy);
  * `warped_pair`: the texture moved by a smooth, spatially varying field;
  * `synthetic_benchmark_pairs`: consecutive frames rendered by the
    synthetic ReID benchmark (vreid_jax/datasets/synthetic_video_reid),
    JPEG-encoded and decoded to grey as the input pipeline does; the
    renderer knows how far the background scrolled between two frames
    (`render.crop_geometry`), so the truth holds on the background, away
    from the walking figure (which is masked out in both frames).

The texture is continuous (cubic-spline interpolation of smoothed noise), so
I1 is sampled exactly where the motion sends each point; both frames are
then rounded to 8 bits, as camera frames are.

Convention: flow[y, x] = (dx, dy) moves I0's pixel (x, y) to (x + dx,
y + dy) in I1, the convention of OpenCV and of `vreid_jax.flow.tvl1`.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class KnownPair:
  """A frame pair and its true motion.

  Attributes:
    name: what it is ("translation", "warp", "synthetic").
    i0: (H, W) uint8 first frame.
    i1: (H, W) uint8 second frame.
    flow: (H, W, 2) float32 true flow of I0's pixels (x, y).
    valid: (H, W) bool, where `flow` is the truth and the point stays in
      the image.
  """
  name: str
  i0: np.ndarray
  i1: np.ndarray
  flow: np.ndarray
  valid: np.ndarray


def end_point_error(flow: np.ndarray, truth: np.ndarray,
                    valid: np.ndarray | None = None) -> float:
  """Average end-point error: mean Euclidean distance of the flow vectors
  over the valid pixels (all of them when `valid` is None)."""
  err = np.sqrt(np.sum(np.square(np.asarray(flow, np.float64)
                                 - np.asarray(truth, np.float64)), -1))
  return float(err.mean() if valid is None else err[valid].mean())


class _Texture:
  """A smooth random grey texture defined at every real (y, x)."""

  def __init__(self, shape: tuple[int, int], rng: np.random.Generator,
               margin: int = 24):
    h, w = shape
    self.margin = margin
    size = (h + 2 * margin, w + 2 * margin)
    fine = ndimage.gaussian_filter(rng.normal(size=size), 1.2)
    coarse = ndimage.gaussian_filter(rng.normal(size=size), 5.0)
    fine /= fine.std() + 1e-12
    coarse /= coarse.std() + 1e-12
    self.grid = 128.0 + 28.0 * fine + 22.0 * coarse
    self.coeffs = ndimage.spline_filter(self.grid, order=3, mode="mirror")

  def __call__(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    coords = np.stack([y + self.margin, x + self.margin])
    return ndimage.map_coordinates(self.coeffs, coords, order=3,
                                   mode="mirror", prefilter=False)


def _to_uint8(img: np.ndarray) -> np.ndarray:
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _inside(flow: np.ndarray) -> np.ndarray:
  h, w = flow.shape[:2]
  y, x = np.mgrid[0:h, 0:w].astype(np.float64)
  tx, ty = x + flow[..., 0], y + flow[..., 1]
  return (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)


def translated_pair(shape: tuple[int, int], shift: tuple[float, float],
                    seed: int = 0) -> KnownPair:
  """A random texture and the same texture moved by shift = (dx, dy)."""
  rng = np.random.default_rng(seed)
  tex = _Texture(shape, rng)
  y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
  dx, dy = shift
  flow = np.zeros(shape + (2,), np.float32)
  flow[..., 0], flow[..., 1] = dx, dy
  return KnownPair("translation", _to_uint8(tex(y, x)),
                   _to_uint8(tex(y - dy, x - dx)), flow, _inside(flow))


def smooth_field(shape: tuple[int, int], amplitude: float,
                 rng: np.random.Generator) -> np.ndarray:
  """(H, W, 2) smooth random flow: a mean drift plus two sinusoidal modes
  per component, at most about `amplitude` pixels."""
  h, w = shape
  y, x = np.mgrid[0:h, 0:w].astype(np.float64)
  out = np.zeros(shape + (2,))
  for c in range(2):
    out[..., c] = rng.uniform(-0.5, 0.5) * amplitude
    for _ in range(2):
      ky, kx = rng.uniform(0.5, 1.5, 2) * 2 * np.pi / np.array([h, w])
      out[..., c] += (0.25 * amplitude * rng.uniform(0.5, 1.0)
                      * np.sin(ky * y + kx * x + rng.uniform(0, 2 * np.pi)))
  return out.astype(np.float32)


def warped_pair(shape: tuple[int, int], amplitude: float = 3.0,
                seed: int = 0) -> KnownPair:
  """A random texture moved by a smooth field (`smooth_field`).

  I1(p) = T(q) where q + flow(q) = p, q found by fixed-point iteration
  (the field's gradient is far below 1, so it converges).
  """
  rng = np.random.default_rng(seed)
  tex = _Texture(shape, rng, margin=24 + int(np.ceil(amplitude)))
  flow = smooth_field(shape, amplitude, rng)
  h, w = shape
  y, x = np.mgrid[0:h, 0:w].astype(np.float64)
  coeffs = [ndimage.spline_filter(flow[..., c].astype(np.float64), order=3,
                                  mode="nearest") for c in range(2)]
  qy, qx = y.copy(), x.copy()
  for _ in range(30):
    at = np.stack([qy, qx])
    fx = ndimage.map_coordinates(coeffs[0], at, order=3, mode="nearest",
                                 prefilter=False)
    fy = ndimage.map_coordinates(coeffs[1], at, order=3, mode="nearest",
                                 prefilter=False)
    qy, qx = y - fy, x - fx
  return KnownPair("warp", _to_uint8(tex(y, x)), _to_uint8(tex(qy, qx)),
                   flow, _inside(flow))


def _grey_of_jpeg(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as img:
    return np.asarray(img.convert("L"))


def _figure_masks(plan, camera, spec, geo) -> np.ndarray:
  """(T, H, W) bool: pixels the walking figure touches (drawn alone)."""
  from vreid_jax.datasets.synthetic_video_reid import render  # pylint: disable=g-import-not-at-top
  h, w = spec.image_size
  n = len(plan.frame_numbers)
  masks = np.zeros((n, h, w), bool)
  for fill in (0.0, 1.0):  # A pixel the figure covers changes on one.
    canvas = np.full((n, h, w, 3), fill, np.float32)
    render.draw_person(canvas, plan.identity, geo.phase, geo.centre_x,
                       geo.feet_y, geo.scale, plan.rightward)
    masks |= np.any(canvas != fill, axis=-1)
  return masks


def synthetic_benchmark_pairs(shape: tuple[int, int], count: int,
                              seed: int = 0, figure_margin: int = 4,
                              max_shift: float | None = None
                              ) -> list[KnownPair]:
  """Consecutive frames of the synthetic ReID benchmark, truth on the
  background.

  Frames are rendered at `shape` (blur, noise, flicker, JPEG at the world's
  quality) and decoded to grey. Valid: background pixels farther than
  `figure_margin` pixels from the figure in both frames, whose destination
  stays in the image. Tracklets with an occluder are skipped.

  The crop follows the walker, so the background scrolls by the walking
  speed plus the detector jitter: about 3 px per frame at the benchmark's
  64x32, 12 px at 256x128 (the world scales with the frame), beyond what
  TV-L1's default pyramid (5 levels of 0.8) recovers. Pairs are therefore
  taken where the scroll is at most `max_shift` pixels (default: width /
  16, e.g. 8 px at 256x128), as between the consecutive frames of real
  tracklets; `max_shift=inf` keeps every pair.

  Args:
    shape: (height, width) of the frames.
    count: number of pairs (at most one per tracklet).
    seed: the world's seed.
    figure_margin: pixels of dilation of the figure's mask (the blur and
      JPEG spread its edges).
    max_shift: largest background scroll of a pair, pixels.
  """
  from vreid_jax.datasets.synthetic_video_reid import render  # pylint: disable=g-import-not-at-top
  h, w = shape
  max_shift = max(2.0, w / 16.0) if max_shift is None else max_shift
  spec = render.WorldSpec(
      num_train_ids=max(8, 40 * count), num_test_ids=2, num_cameras=3,
      train_twin_pairs=0, test_twin_pairs=0, num_distractors=0,
      max_frames=8, min_long_frames=2, short_fraction=0.0,
      occlusion_prob=0.0, image_size=tuple(shape))
  world = render.make_world(spec, seed)
  out = []
  for plan in world.splits["train"]:
    if len(out) == count:
      break
    if plan.occlusion is not None or len(plan.frame_numbers) < 2:
      continue
    camera = world.cameras[plan.camid]
    geo = render.crop_geometry(plan, camera, spec)
    shifts = geo.offset[:-1] - geo.offset[1:]
    ok = np.flatnonzero(np.abs(shifts) <= max_shift)
    if not ok.size:
      continue
    t = int(ok[0])
    jpegs = render.render_tracklet(plan, camera, spec)
    figure = _figure_masks(plan, camera, spec, geo)[t:t + 2]
    figure = ndimage.binary_dilation(
        figure, structure=np.ones((1, 3, 3), bool),
        iterations=figure_margin)
    k = int(shifts[t])
    flow = np.zeros((h, w, 2), np.float32)
    flow[..., 0] = k
    # Where I0's background lands in I1, the figure must not be either.
    shifted = np.ones((h, w), bool)  # Outside I1: masked by _inside too.
    src = slice(max(0, -k), min(w, w - k))
    dst = slice(max(0, k), min(w, w + k))
    shifted[:, src] = figure[1][:, dst]
    valid = ~figure[0] & ~shifted & _inside(flow)
    out.append(KnownPair("synthetic", _grey_of_jpeg(jpegs[t]),
                         _grey_of_jpeg(jpegs[t + 1]), flow, valid))
  if len(out) < count:
    raise ValueError(f"only {len(out)} usable tracklets for {count} pairs")
  return out


def standard_pairs(shape: tuple[int, int], seed: int = 0,
                   num_synthetic: int = 2) -> list[KnownPair]:
  """The pairs of the tests and the benchmark: two translations (one
  sub-pixel, one larger), two smooth warps, `num_synthetic` benchmark
  frames."""
  scale = max(1.0, min(shape) / 64.0)  # Larger frames, larger motion.
  pairs = [translated_pair(shape, (1.3 * scale, -0.6 * scale), seed),
           translated_pair(shape, (-2.7 * scale, 1.8 * scale), seed + 1),
           warped_pair(shape, 2.0 * scale, seed + 2),
           warped_pair(shape, 3.0 * scale, seed + 3)]
  if num_synthetic:
    pairs += synthetic_benchmark_pairs(shape, num_synthetic, seed)
  return pairs


def static_pair(shape: tuple[int, int], seed: int = 0) -> KnownPair:
  """A textured frame and itself: zero flow everywhere."""
  pair = translated_pair(shape, (0.0, 0.0), seed)
  return dataclasses.replace(pair, name="static", i1=pair.i0.copy())


def names(pairs: Sequence[KnownPair]) -> list[str]:
  """Names of the pairs, numbered within each kind (e.g. "warp-1")."""
  seen: dict[str, int] = {}
  out = []
  for p in pairs:
    seen[p.name] = seen.get(p.name, 0) + 1
    out.append(f"{p.name}-{seen[p.name]}")
  return out
