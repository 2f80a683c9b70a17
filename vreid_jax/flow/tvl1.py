"""TV-L1 optical flow (Zach, Pock & Bischof, 2007) in pure JAX.

The scheme is the duality-based one of OpenCV's `DualTVL1OpticalFlow`
(opencv_contrib, `cv::optflow`), step for step, so that the two give
comparable flow on the same grey frames:

  * images are grey levels in 0..255 (float32);
  * a pyramid of `nscales` levels, each level resized from the one above
    by `scale_step` (bilinear, no pre-smoothing: what OpenCV's
    `resize(..., INTER_LINEAR)` does), stopping before a side drops under
    16 pixels;
  * coarse to fine: at each level the flow `u` starts from the coarser
    level's flow, resized (bilinear) and multiplied by 1 / scale_step
    (zero at the coarsest level);
  * at each level: the centred gradient of I1; the dual variables p reset
    to 0; then `warps` times: I1 and its gradient are warped by u (bicubic,
    Keys a = -0.75, zero outside the image: OpenCV's remap with
    BORDER_CONSTANT), the linearised residual rho is set up, and up to
    `outer_iterations` x `inner_iterations` iterations run, each
      - the thresholding step v = TH(u) (the point-wise minimiser of the
        linearised L1 data term plus (u - v)^2 / (2 theta)),
      - u = v + theta div p,
      - the dual (ROF) step p = (p + tau/theta grad u) /
        (1 + tau/theta |grad u|) (Chambolle's projection, per flow
        component, forward differences, backward-difference divergence);
    a 5x5 median filter (`median_filtering`) of u before each block of
    inner iterations; the loops stop early when the squared change of u
    summed over the image drops to epsilon^2 x (number of pixels).
  * gamma > 0 adds OpenCV's illumination variable u3 (not scaled between
    levels, not median filtered).

Loops are `jax.lax` loops over static shapes: the epsilon stop is a
`lax.while_loop` (per pair, also under `vmap`, where a pair that has
converged is frozen while the others iterate), so the number of iterations
matches OpenCV's. Levels are unrolled in Python (their shapes differ), so
one compilation serves every pair of one (parameters, image size, batch
size).

Differences from OpenCV that remain: OpenCV rounds warp coordinates to
1/32 pixel (its remap tables) and sums the stopping error in float32
sequentially; here coordinates are exact and the sum is XLA's. Flow
differs by a small fraction of a pixel (see benchmarks/flow_bench.py).

Public entry points: `TVL1Params` (OpenCV's parameters and defaults),
`tvl1_flow` (one pair), `tvl1_flow_batch` (a batch, vmapped), `DualTVL1`
(an object with OpenCV's `calc` interface); `vreid_jax.flow.batching` runs
many pairs over every local device.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

_MIN_SIDE = 16  # OpenCV stops the pyramid before a side drops under this.
_CUBIC_A = -0.75  # OpenCV's bicubic kernel parameter.
_FLT_EPSILON = float(np.finfo(np.float32).eps)


@dataclasses.dataclass(frozen=True)
class TVL1Params:
  """TV-L1 parameters, named and defaulted as OpenCV's DualTVL1OpticalFlow.

  OpenCV getter -> field: getTau -> tau, getLambda -> lambda_ (`lambda` is
  a Python keyword), getTheta -> theta, getScalesNumber -> nscales,
  getWarpingsNumber -> warps, getEpsilon -> epsilon, getInnerIterations ->
  inner_iterations, getOuterIterations -> outer_iterations, getScaleStep ->
  scale_step, getGamma -> gamma, getMedianFiltering -> median_filtering,
  getUseInitialFlow -> use_initial_flow.

  Attributes:
    tau: time step of the dual (ROF) iteration (stable for tau <= 0.25).
    lambda_: weight of the data term: smaller gives smoother flow.
    theta: coupling of u and v ((u - v)^2 / (2 theta)).
    nscales: number of pyramid levels (fewer if a side would drop under 16).
    warps: warps of I1 per level.
    epsilon: stopping threshold on the root-mean-square change of u.
    inner_iterations: iterations between two median filterings.
    outer_iterations: median filterings (blocks of inner iterations) per
      warp.
    scale_step: size ratio of two consecutive levels.
    gamma: weight of the illumination variable (0: none).
    median_filtering: median filter size applied to u (1: off; OpenCV
      accepts 3 or 5 for float flow).
    use_initial_flow: start from a given flow (downscaled to the coarsest
      level) instead of zero.
  """
  tau: float = 0.25
  lambda_: float = 0.15
  theta: float = 0.3
  nscales: int = 5
  warps: int = 5
  epsilon: float = 0.01
  inner_iterations: int = 30
  outer_iterations: int = 10
  scale_step: float = 0.8
  gamma: float = 0.0
  median_filtering: int = 5
  use_initial_flow: bool = False

  def __post_init__(self):
    if self.nscales < 1 or self.warps < 1:
      raise ValueError("nscales and warps must be >= 1")
    if self.inner_iterations < 1 or self.outer_iterations < 1:
      raise ValueError("inner and outer iterations must be >= 1")
    if not 0.0 < self.scale_step < 1.0 and self.nscales > 1:
      raise ValueError(f"scale_step must be in (0, 1), got {self.scale_step}")
    if self.median_filtering > 1 and self.median_filtering % 2 == 0:
      raise ValueError("median_filtering must be odd (or <= 1: off)")

  # Getter names of OpenCV's object, in field order.
  OPENCV_GETTERS = (
      ("tau", "Tau"), ("lambda_", "Lambda"), ("theta", "Theta"),
      ("nscales", "ScalesNumber"), ("warps", "WarpingsNumber"),
      ("epsilon", "Epsilon"), ("inner_iterations", "InnerIterations"),
      ("outer_iterations", "OuterIterations"), ("scale_step", "ScaleStep"),
      ("gamma", "Gamma"), ("median_filtering", "MedianFiltering"),
      ("use_initial_flow", "UseInitialFlow"))

  @classmethod
  def from_opencv(cls, obj: Any) -> "TVL1Params":
    """The parameters of an OpenCV DualTVL1OpticalFlow object."""
    kwargs = {}
    for field, name in cls.OPENCV_GETTERS:
      kind = type(getattr(cls, field))
      kwargs[field] = kind(getattr(obj, "get" + name)())
    return cls(**kwargs)

  def to_opencv(self, factory: Any = None) -> Any:
    """An OpenCV DualTVL1OpticalFlow object with these parameters."""
    if factory is None:
      from vreid_jax.input_pipeline import flow as flow_lib  # pylint: disable=g-import-not-at-top
      factory = flow_lib.tvl1_factory()
    obj = factory()
    for field, name in self.OPENCV_GETTERS:
      getattr(obj, "set" + name)(getattr(self, field))
    return obj


# --- geometry (static, NumPy) -------------------------------------------------
def pyramid_shapes(shape: tuple[int, int],
                   params: TVL1Params) -> list[tuple[int, int]]:
  """(height, width) of every pyramid level, finest first (as OpenCV)."""
  shapes = [(int(shape[0]), int(shape[1]))]
  for _ in range(1, params.nscales):
    h, w = shapes[-1]
    # OpenCV's resize(Size(), fx, fy): round(side * fx), half to even.
    nh = int(np.rint(h * params.scale_step))
    nw = int(np.rint(w * params.scale_step))
    if nh < _MIN_SIDE or nw < _MIN_SIDE:
      break
    shapes.append((nh, nw))
  return shapes


def _linear_matrix(n_out: int, n_in: int, inv_scale: float) -> np.ndarray:
  """(n_out, n_in) matrix of OpenCV's INTER_LINEAR resize along one axis.

  Output sample i reads the input at (i + 0.5) / inv_scale - 0.5, linearly
  interpolated, clamped to the edge samples.
  """
  x = (np.arange(n_out) + 0.5) / inv_scale - 0.5
  x0 = np.floor(x)
  frac = x - x0
  lo = np.clip(x0, 0, n_in - 1).astype(np.int64)
  hi = np.clip(x0 + 1, 0, n_in - 1).astype(np.int64)
  m = np.zeros((n_out, n_in), np.float64)
  rows = np.arange(n_out)
  np.add.at(m, (rows, lo), 1.0 - frac)
  np.add.at(m, (rows, hi), frac)
  return m.astype(np.float32)


def _resize(img: jax.Array, shape: tuple[int, int],
            inv_scale: tuple[float, float] | None = None) -> jax.Array:
  """Bilinear resize of (..., H, W) to `shape` (OpenCV INTER_LINEAR).

  Args:
    img: the image(s).
    shape: output (height, width).
    inv_scale: (fy, fx) output / input scale; default the size ratio.
  """
  h, w = img.shape[-2:]
  fy, fx = inv_scale if inv_scale is not None else (shape[0] / h,
                                                    shape[1] / w)
  my = jnp.asarray(_linear_matrix(shape[0], h, fy))
  mx = jnp.asarray(_linear_matrix(shape[1], w, fx))
  return jnp.einsum("ij,...jk,lk->...il", my, img, mx,
                    precision=lax.Precision.HIGHEST)


# --- finite differences -------------------------------------------------------
def centered_gradient(img: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Central differences of (H, W); at the borders half the one-sided one.

  (OpenCV's centeredGradient: the border value is 0.5 * (I[1] - I[0]).)
  """
  p = jnp.pad(img, 1, mode="edge")
  dx = 0.5 * (p[1:-1, 2:] - p[1:-1, :-2])
  dy = 0.5 * (p[2:, 1:-1] - p[:-2, 1:-1])
  return dx, dy


def forward_gradient(u: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Forward differences of (..., H, W); 0 on the last column / row."""
  dx = jnp.concatenate([u[..., :, 1:] - u[..., :, :-1],
                        jnp.zeros_like(u[..., :, :1])], axis=-1)
  dy = jnp.concatenate([u[..., 1:, :] - u[..., :-1, :],
                        jnp.zeros_like(u[..., :1, :])], axis=-2)
  return dx, dy


def divergence(px: jax.Array, py: jax.Array) -> jax.Array:
  """Backward-difference divergence of (..., H, W) fields (-adjoint of
  `forward_gradient` for fields that are 0 on the last column / row)."""
  zx = jnp.zeros_like(px[..., :, :1])
  zy = jnp.zeros_like(py[..., :1, :])
  return (px - jnp.concatenate([zx, px[..., :, :-1]], axis=-1)
          + py - jnp.concatenate([zy, py[..., :-1, :]], axis=-2))


# --- the two steps of an iteration --------------------------------------------
def _threshold_constants(grad: jax.Array,
                         l_t: float) -> tuple[jax.Array, jax.Array]:
  """What the thresholding step needs of |grad I1w|^2, computed once per
  warp: l_t |grad I1w|^2 and 1 / |grad I1w|^2 (0 where the gradient
  vanishes)."""
  has_grad = grad > _FLT_EPSILON
  return l_t * grad, jnp.where(has_grad, 1.0 / jnp.where(has_grad, grad, 1.0),
                               0.0)


def _threshold(u: jax.Array, i1wx: jax.Array, i1wy: jax.Array,
               consts: tuple[jax.Array, jax.Array], rho_c: jax.Array,
               l_t: float, gamma: float) -> jax.Array:
  lt_grad, inv_grad = consts
  rho = rho_c + i1wx * u[0] + i1wy * u[1]
  if u.shape[0] == 3:
    rho = rho + gamma * u[2]
  step = jnp.where(rho < -lt_grad, l_t,
                   jnp.where(rho > lt_grad, -l_t, -rho * inv_grad))
  dirs = [i1wx, i1wy] + ([jnp.full_like(i1wx, gamma)]
                         if u.shape[0] == 3 else [])
  return u + step * jnp.stack(dirs)


def threshold_step(u: jax.Array, i1wx: jax.Array, i1wy: jax.Array,
                   grad: jax.Array, rho_c: jax.Array, l_t: float,
                   gamma: float = 0.0) -> jax.Array:
  """The thresholding step v = TH(u) of TV-L1.

  Minimises |rho(v)| lambda + |v - u|^2 / (2 theta) point-wise, with the
  linearised residual rho(v) = rho_c + I1wx v1 + I1wy v2 (+ gamma v3):
  v = u + l_t grad(I1w) where rho < -l_t |grad I1w|^2, u - l_t grad(I1w)
  where rho > l_t |grad I1w|^2, else the step to rho = 0 (none where the
  gradient vanishes). The iteration runs this very code, with the
  constants of the warp computed once (`_threshold_constants`).

  Args:
    u: (K, H, W) flow (K = 2, or 3 with the illumination variable).
    i1wx: warped horizontal gradient of I1.
    i1wy: warped vertical gradient of I1.
    grad: |grad I1w|^2.
    rho_c: the constant part I1w - I1wx u0_1 - I1wy u0_2 - I0.
    l_t: lambda * theta.
    gamma: illumination weight (used when K = 3).

  Returns:
    v, shaped like u.
  """
  return _threshold(u, i1wx, i1wy, _threshold_constants(grad, l_t), rho_c,
                    l_t, gamma)


def dual_step(p: jax.Array, u: jax.Array, taut: float) -> jax.Array:
  """One projected step of the dual (ROF) variables, per flow component.

  p <- (p + taut grad u) / (1 + taut |grad u|), forward differences.

  Args:
    p: (K, 2, H, W) dual variables: p[k, 0] pairs with d/dx, p[k, 1] with
      d/dy of u[k].
    u: (K, H, W).
    taut: tau / theta.

  Returns:
    The new p.
  """
  ux, uy = forward_gradient(u)
  scale = 1.0 / (1.0 + taut * jnp.sqrt(ux * ux + uy * uy))
  return (p + taut * jnp.stack([ux, uy], axis=1)) * scale[:, None]


# --- median filter ------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _median_graph(n: int) -> tuple[tuple[tuple[Any, ...], ...], int]:
  """A min/max graph selecting the median of n values.

  Batcher's odd-even merge sort on the next power of two, run symbolically:
  the padding wires hold +inf, so a compare-exchange with one of them moves
  nothing or swaps; the others make a min and a max node. Only the nodes the
  median wire depends on are kept.

  Returns:
    (nodes, out): node k is ("in", i) (input i), ("min", a, b) or
    ("max", a, b) over earlier nodes; `out` is the median's node.
  """
  size = 1
  while size < n:
    size *= 2
  steps: list[tuple[int, int]] = []

  def merge(lo: int, length: int, r: int) -> None:
    step = 2 * r
    if step < length:
      merge(lo, length, step)
      merge(lo + r, length, step)
      steps.extend((i, i + r) for i in range(lo + r, lo + length - r, step))
    else:
      steps.append((lo, lo + r))

  def sort(lo: int, length: int) -> None:
    if length > 1:
      sort(lo, length // 2)
      sort(lo + length // 2, length // 2)
      merge(lo, length, 1)

  sort(0, size)
  nodes: list[tuple[Any, ...]] = [("in", i) for i in range(n)]
  wires: list[int | None] = list(range(n)) + [None] * (size - n)  # None: inf.
  for i, j in steps:
    a, b = wires[i], wires[j]
    if b is None:
      continue
    if a is None:
      wires[i], wires[j] = b, None
      continue
    nodes.append(("min", a, b))
    nodes.append(("max", a, b))
    wires[i], wires[j] = len(nodes) - 2, len(nodes) - 1
  # Keep what the median depends on, renumbered in order.
  keep, stack = set(), [wires[n // 2]]
  while stack:
    k = stack.pop()
    if k not in keep:
      keep.add(k)
      stack.extend(nodes[k][1:] if nodes[k][0] != "in" else ())
  order = sorted(keep)
  index = {k: i for i, k in enumerate(order)}
  out_nodes = tuple(nodes[k] if nodes[k][0] == "in" else
                    (nodes[k][0], index[nodes[k][1]], index[nodes[k][2]])
                    for k in order)
  return out_nodes, index[wires[n // 2]]


def median_filter(u: jax.Array, size: int) -> jax.Array:
  """size x size median of (..., H, W), edges replicated (as OpenCV's
  medianBlur of float images)."""
  r = size // 2
  h, w = u.shape[-2:]
  pad = [(0, 0)] * (u.ndim - 2) + [(r, r), (r, r)]
  p = jnp.pad(u, pad, mode="edge")
  inputs = [p[..., dy:dy + h, dx:dx + w]
            for dy in range(size) for dx in range(size)]
  nodes, out = _median_graph(size * size)
  vals: list[jax.Array] = []
  for node in nodes:
    if node[0] == "in":
      vals.append(inputs[node[1]])
    elif node[0] == "min":
      vals.append(jnp.minimum(vals[node[1]], vals[node[2]]))
    else:
      vals.append(jnp.maximum(vals[node[1]], vals[node[2]]))
  return vals[out]


# --- warping ------------------------------------------------------------------
def _cubic_weights(t: jax.Array) -> jax.Array:
  """(4, ...) weights of the taps at -1, 0, 1, 2 for a fraction t in [0, 1).

  Keys' cubic convolution kernel with a = -0.75:
  k(d) = (a + 2)|d|^3 - (a + 3)|d|^2 + 1 for |d| <= 1,
         a|d|^3 - 5a|d|^2 + 8a|d| - 4a for 1 < |d| < 2.
  """
  a = _CUBIC_A

  def near(d):
    return ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0

  def far(d):
    return ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a

  w0, w1, w2 = far(1.0 + t), near(t), near(1.0 - t)
  return jnp.stack([w0, w1, w2, 1.0 - w0 - w1 - w2])


def warp_bicubic(imgs: jax.Array, u: jax.Array) -> jax.Array:
  """Samples (C, H, W) images at (x + u[0], y + u[1]), bicubic, 0 outside.

  (OpenCV's remap(INTER_CUBIC, BORDER_CONSTANT): taps outside the image
  read 0.)
  """
  c, h, w = imgs.shape
  x = jnp.arange(w, dtype=jnp.float32)[None, :] + u[0]
  y = jnp.arange(h, dtype=jnp.float32)[:, None] + u[1]
  # Far outside every tap reads 0 anyway; clipping keeps the ints small.
  x = jnp.clip(x, -4.0, w + 3.0)
  y = jnp.clip(y, -4.0, h + 3.0)
  x0, y0 = jnp.floor(x), jnp.floor(y)
  wx, wy = _cubic_weights(x - x0), _cubic_weights(y - y0)
  offs = jnp.arange(-1, 3, dtype=jnp.int32)[:, None, None]
  ix = x0.astype(jnp.int32)[None] + offs
  iy = y0.astype(jnp.int32)[None] + offs
  wx = jnp.where((ix >= 0) & (ix < w), wx, 0.0)
  wy = jnp.where((iy >= 0) & (iy < h), wy, 0.0)
  ix, iy = jnp.clip(ix, 0, w - 1), jnp.clip(iy, 0, h - 1)
  flat = imgs.reshape(c, h * w)
  out = jnp.zeros((c, h, w), imgs.dtype)
  for a in range(4):
    for b in range(4):
      taps = jnp.take(flat, iy[a] * w + ix[b], axis=1)
      out = out + (wy[a] * wx[b])[None] * taps
  return out


# --- one level ----------------------------------------------------------------
def _one_scale(i0: jax.Array, i1: jax.Array, u: jax.Array,
               params: TVL1Params) -> tuple[jax.Array, jax.Array]:
  """TV-L1 at one pyramid level (OpenCV's procOneScale).

  Args:
    i0: (H, W) first image.
    i1: (H, W) second image.
    u: (K, H, W) initial flow (K = 3 with gamma: u[2] is illumination).
    params: the parameters.

  Returns:
    (the flow, the number of inner iterations run).
  """
  h, w = i0.shape
  k = u.shape[0]
  i1x, i1y = centered_gradient(i1)
  sources = jnp.stack([i1, i1x, i1y])
  eps = np.float32(params.epsilon * params.epsilon * h * w)
  l_t = float(params.lambda_ * params.theta)
  taut = float(params.tau / params.theta)
  theta = float(params.theta)
  gamma = float(params.gamma)
  big = jnp.float32(np.finfo(np.float32).max)

  def one_warp(_, carry):
    u, p, count = carry
    i1w, i1wx, i1wy = warp_bicubic(sources, u[:2])
    grad = i1wx * i1wx + i1wy * i1wy
    rho_c = i1w - i1wx * u[0] - i1wy * u[1] - i0
    consts = _threshold_constants(grad, l_t)

    def inner_cond(state):
      _, _, err, n, _ = state
      return (err > eps) & (n < params.inner_iterations)

    def inner_body(state):
      u, p, _, n, count = state
      v = _threshold(u, i1wx, i1wy, consts, rho_c, l_t, gamma)
      new = v + theta * divergence(p[:, 0], p[:, 1])
      err = jnp.sum(jnp.square(new - u))
      return new, dual_step(p, new, taut), err, n + 1, count + 1

    def outer_cond(state):
      _, _, err, n, _ = state
      return (err > eps) & (n < params.outer_iterations)

    def outer_body(state):
      u, p, err, n, count = state
      if params.median_filtering > 1:
        flow = median_filter(u[:2], params.median_filtering)
        u = jnp.concatenate([flow, u[2:]]) if k == 3 else flow
      u, p, err, _, count = lax.while_loop(
          inner_cond, inner_body, (u, p, err, jnp.int32(0), count))
      return u, p, err, n + 1, count

    u, p, _, _, count = lax.while_loop(
        outer_cond, outer_body, (u, p, big, jnp.int32(0), count))
    return u, p, count

  p = jnp.zeros((k, 2, h, w), jnp.float32)
  u, _, count = lax.fori_loop(0, params.warps, one_warp,
                              (u, p, jnp.int32(0)))
  return u, count


def _flow_one_pair(i0: jax.Array, i1: jax.Array, init: jax.Array | None,
                   params: TVL1Params) -> tuple[jax.Array, jax.Array]:
  """Coarse-to-fine TV-L1 of one pair: ((H, W, 2) flow, (levels,) counts)."""
  i0 = i0.astype(jnp.float32)
  i1 = i1.astype(jnp.float32)
  shapes = pyramid_shapes(i0.shape, params)
  step = params.scale_step
  i0s, i1s = [i0], [i1]
  for shape in shapes[1:]:
    i0s.append(_resize(i0s[-1], shape, (step, step)))
    i1s.append(_resize(i1s[-1], shape, (step, step)))
  k = 3 if params.gamma != 0 else 2
  if params.use_initial_flow:
    if init is None:
      raise ValueError("use_initial_flow needs an initial flow")
    u = jnp.moveaxis(init.astype(jnp.float32), -1, 0)
    for shape in shapes[1:]:
      u = _resize(u, shape, (step, step)) * step
    if k == 3:
      u = jnp.concatenate([u, jnp.zeros((1,) + shapes[-1], jnp.float32)])
  else:
    u = jnp.zeros((k,) + shapes[-1], jnp.float32)
  counts = []
  for s in range(len(shapes) - 1, -1, -1):
    u, count = _one_scale(i0s[s], i1s[s], u, params)
    counts.append(count)
    if s > 0:
      u = _resize(u, shapes[s - 1])
      scale = jnp.asarray([1.0 / step] * 2 + [1.0] * (k - 2),
                          jnp.float32)[:, None, None]
      u = u * scale
  return jnp.moveaxis(u[:2], 0, -1), jnp.stack(counts[::-1])


def flow_batch(i0: jax.Array, i1: jax.Array, init: jax.Array | None,
               params: TVL1Params) -> tuple[jax.Array, jax.Array]:
  """Un-jitted batch TV-L1: ((B, H, W, 2) flow, (B, levels) iterations).

  vmap runs the loops of every pair until the last one stops, freezing
  the pairs that are done (a select per carried array and iteration); a
  batch of one skips vmap and those selects.
  """
  if i0.shape[0] == 1:
    flow, counts = _flow_one_pair(i0[0], i1[0],
                                  None if init is None else init[0], params)
    return flow[None], counts[None]
  if init is None:
    return jax.vmap(lambda a, b: _flow_one_pair(a, b, None, params))(i0, i1)
  return jax.vmap(lambda a, b, f: _flow_one_pair(a, b, f, params))(i0, i1,
                                                                   init)


@functools.partial(jax.jit, static_argnames=("params",))
def tvl1_flow_with_counts(i0: jax.Array, i1: jax.Array,
                          params: TVL1Params = TVL1Params(),
                          init: jax.Array | None = None):
  """`tvl1_flow_batch` that also returns the inner iterations per level.

  Returns:
    ((B, H, W, 2) flow, (B, levels) inner iterations, finest level first).
  """
  return flow_batch(i0, i1, init, params)


def tvl1_flow_batch(i0: jax.Array, i1: jax.Array,
                    params: TVL1Params = TVL1Params(),
                    init: jax.Array | None = None) -> jax.Array:
  """TV-L1 flow of a batch of grey image pairs (jitted, vmapped).

  Args:
    i0: (B, H, W) first frames, grey levels 0..255 (uint8 or float).
    i1: (B, H, W) second frames.
    params: the parameters (static: one compilation per value and shape).
    init: (B, H, W, 2) initial flow, with `params.use_initial_flow`.

  Returns:
    (B, H, W, 2) float32 flow in pixels: channel 0 horizontal (x), 1
    vertical (y); I0(x) ~ I1(x + flow(x)).
  """
  return tvl1_flow_with_counts(i0, i1, params, init)[0]


def tvl1_flow(i0, i1, params: TVL1Params = TVL1Params(),
              init=None) -> np.ndarray:
  """TV-L1 flow of one pair of (H, W) grey images -> (H, W, 2) NumPy."""
  batch_init = None if init is None else jnp.asarray(init)[None]
  out = tvl1_flow_batch(jnp.asarray(i0)[None], jnp.asarray(i1)[None],
                        params, batch_init)
  return np.asarray(out[0])


class DualTVL1:
  """OpenCV's DualTVL1OpticalFlow interface over the JAX implementation.

  `DualTVL1().calc(I0, I1, None)` returns the (H, W, 2) float32 flow like
  `cv2.optflow.DualTVL1OpticalFlow_create().calc`: uint8 images are grey
  levels, float images are scaled by 255 (as OpenCV does). Usable wherever
  the OpenCV object is (e.g. `input_pipeline.flow.tracklet_flow`), one pair
  per call, run by `batching.PairFlow` (one pair per local device, the
  other devices' rows blank); `PairFlow` itself is the fast way for many
  pairs. With `use_initial_flow`, `calc` starts from the flow it is given.
  """

  def __init__(self, params: TVL1Params = TVL1Params()):
    self.params = params
    self._engine = None

  def calc(self, i0, i1, flow=None) -> np.ndarray:
    def grey(img):
      img = np.asarray(img)
      if img.ndim != 2:
        raise ValueError(f"expected a grey (H, W) image, got {img.shape}")
      return (img if img.dtype == np.uint8
              else img.astype(np.float32) * 255.0)
    if self.params.use_initial_flow:
      return tvl1_flow(grey(i0).astype(np.float32),
                       grey(i1).astype(np.float32), self.params, flow)
    if self._engine is None:
      from vreid_jax.flow import batching  # pylint: disable=g-import-not-at-top
      self._engine = batching.PairFlow(self.params, per_device_batch=1)
    return self._engine([(grey(i0), grey(i1))])[0]
