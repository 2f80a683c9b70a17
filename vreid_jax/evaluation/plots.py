"""Pictures of evaluation results (matplotlib, Agg backend, imported lazily).

* `plot_cmc`: CMC curve(s) as a PNG, titled (`cmc_title`) with the dataset,
  protocol and AP definition the numbers come from.
* `plot_ranked_lists`: a query tracklet and its top-k gallery tracklets as
  frame strips, like Fig. 7 of the GLTR paper: green border = true match,
  red = wrong, grey and faded = junk (ignored by the metrics). Ranks are
  numbered as the CMC counts them (`ranked_list`): junk entries are shown,
  marked "junk", and not counted, so the picture's "rank 3" is the CMC's
  rank 3.
* `plot_boxes`: frames side by side, each with a box (e.g. the region a
  spatial transformer samples).
* `plot_attention`: frames side by side with a spatial attention map
  overlaid, and a clip's per-frame (temporal) attention weights below.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

MATCH_COLOR = "#1a9641"
WRONG_COLOR = "#d7191c"
JUNK_COLOR = "#9e9e9e"
QUERY_COLOR = "#2b83ba"


def _figure(**kwargs):
  """A Figure on an Agg canvas: no pyplot, no global backend switch."""
  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(**kwargs)
  FigureCanvasAgg(fig)
  return fig


def cmc_title(dataset: str | None = None, protocol: str | None = None,
              ap: str | None = None, *, prefix: str = "CMC") -> str:
  """'CMC: <dataset>, protocol <protocol>, <ap> AP' (the parts given).

  A protocol name that already starts with the dataset ("mars/matlab") is
  not repeated after it.
  """
  parts = []
  if dataset:
    parts.append(str(dataset))
  if protocol:
    protocol = str(protocol)
    if dataset and protocol.startswith(f"{dataset}/"):
      protocol = protocol[len(str(dataset)) + 1:]
    parts.append(f"protocol {protocol}")
  if ap:
    parts.append(f"{ap} AP")
  return f"{prefix}: " + ", ".join(parts) if parts else prefix


def cmc_ranks(is_junk: Sequence[bool]) -> list[int | None]:
  """The CMC rank of each entry of a distance-ordered list: junk entries
  get None and are not counted (`metrics.py`'s rule)."""
  out: list[int | None] = []
  rank = 0
  for junk in is_junk:
    if junk:
      out.append(None)
    else:
      rank += 1
      out.append(rank)
  return out


class RankedList(NamedTuple):
  """The entries of one query's ranked-list picture.

  Attributes:
    positions: gallery indices drawn, in distance order (junk included).
    ranks: CMC rank of each drawn entry (None for junk).
    is_match: same pid as the query and not junk.
    is_junk: ignored by the metrics (gallery junk flag, or same pid and
      same camera as the query).
    hidden_junk: junk entries before the last drawn rank left out of the
      picture (more than `max_junk`).
  """
  positions: np.ndarray
  ranks: list[int | None]
  is_match: np.ndarray
  is_junk: np.ndarray
  hidden_junk: int


def ranked_list(distances: Any, gallery_pids: Any, gallery_camids: Any,
                query_pid: int, query_camid: int, *, top_k: int,
                gallery_junk: Any | None = None,
                max_junk: int | None = None,
                same_camera_rule: bool = True) -> RankedList:
  """One query's top-k ranked list, ranked and numbered as the CMC does.

  Entries are ordered by increasing distance, ties by gallery index (the
  metrics' stable order). Junk entries (`gallery_junk`, and with
  `same_camera_rule` those with the query's pid and camera) are kept in
  the list, marked, and not counted: the list runs until its `top_k`-th
  counted rank, with at most `max_junk` (default `top_k`) junk entries
  drawn among them.

  Args:
    distances: (n,) distances of the query to the gallery.
    gallery_pids, gallery_camids: (n,) labels.
    query_pid, query_camid: the query's labels (a negative pid: unknown,
      nothing is a match and the same-camera rule is off).
    top_k: counted ranks to show.
    gallery_junk: (n,) bool gallery junk flags (default: none).
    max_junk: junk entries drawn at most (None: top_k).
    same_camera_rule: also mark same pid and same camera entries junk.
  """
  d = np.asarray(distances).reshape(-1)
  gp = np.asarray(gallery_pids).reshape(-1)
  gc = np.asarray(gallery_camids).reshape(-1)
  junk = (np.zeros(d.size, bool) if gallery_junk is None
          else np.asarray(gallery_junk, bool).reshape(-1).copy())
  if gp.shape != d.shape or gc.shape != d.shape or junk.shape != d.shape:
    raise ValueError(f"{d.size} distances but {gp.size} pids, {gc.size} "
                     f"camids and {junk.size} junk flags")
  known = int(query_pid) >= 0
  same = (gp == int(query_pid)) & known
  if same_camera_rule and known:
    junk |= same & (gc == int(query_camid))
  max_junk = top_k if max_junk is None else max_junk
  order = np.argsort(d, kind="stable")
  positions, shown_junk, hidden, counted = [], 0, 0, 0
  for j in order:
    if counted >= top_k:
      break
    if junk[j]:
      if shown_junk < max_junk:
        positions.append(int(j))
        shown_junk += 1
      else:
        hidden += 1
      continue
    positions.append(int(j))
    counted += 1
  pos = np.asarray(positions, np.int64)
  is_junk = junk[pos]
  return RankedList(positions=pos, ranks=cmc_ranks(is_junk),
                    is_match=same[pos] & ~is_junk, is_junk=is_junk,
                    hidden_junk=hidden)


def plot_cmc(cmc_curve: Sequence[float] | Mapping[str, Sequence[float]],
             path: str | os.PathLike, *, title: str = "CMC") -> str:
  """Writes a CMC curve PNG; `cmc_curve` is one curve or {label: curve}."""
  curves = (dict(cmc_curve) if isinstance(cmc_curve, Mapping)
            else {"": cmc_curve})
  fig = _figure(figsize=(5, 4), dpi=100)
  ax = fig.subplots()
  for label, curve in curves.items():
    y = 100 * np.asarray(curve, np.float64)
    ax.plot(np.arange(1, y.size + 1), y, marker="o", markersize=3,
            label=label or None)
  # pylint: disable-next=g-import-not-at-top
  from matplotlib.ticker import MaxNLocator
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel("rank")
  ax.set_ylabel("matching rate (%)")
  ax.set_ylim(0, 100)
  ax.grid(True, alpha=0.3)
  ax.set_title(title)
  if any(curves):
    ax.legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(os.fspath(path), format="png")
  return os.fspath(path)


def _strip(frames: Any, max_frames: int) -> np.ndarray:
  """Up to max_frames evenly chosen frames side by side, (H, W*k, 3) uint8."""
  f = np.asarray(frames)
  if f.ndim == 3:                                   # (T, H, W) grey
    f = np.repeat(f[..., None], 3, axis=-1)
  if f.ndim != 4 or f.shape[-1] not in (1, 3) or f.dtype != np.uint8:
    raise ValueError(f"frames must be uint8 (T, H, W[, 1|3]), got "
                     f"{f.dtype} {f.shape}")
  if f.shape[-1] == 1:
    f = np.repeat(f, 3, axis=-1)
  t = f.shape[0]
  if t == 0:
    raise ValueError("a tracklet has no frame")
  k = min(t, max_frames)
  idx = ((2 * np.arange(k) + 1) * t) // (2 * k)
  return np.concatenate(list(f[idx]), axis=1)


def plot_ranked_lists(query_frames: Any, gallery_frames_list: Sequence[Any],
                      is_match: Sequence[bool], is_junk: Sequence[bool] | None,
                      path: str | os.PathLike, *, max_frames: int = 6,
                      title: str | None = None,
                      labels: Sequence[str] | None = None,
                      ranks: Sequence[int | None] | None = None) -> str:
  """Writes a ranked-list figure: query on top, then the gallery entries.

  Entries are labelled with their CMC rank: junk entries are drawn (grey,
  faded, "junk, not ranked") but not counted, so the rank numbers are the
  ones the CMC and mAP use (`ranked_list` chooses the entries).

  Args:
    query_frames: uint8 (T, H, W, 3) (or (T, H, W)) query tracklet.
    gallery_frames_list: the top-k gallery tracklets in rank order, each a
      uint8 frame array.
    is_match: (k,) True where the gallery tracklet has the query's pid.
    is_junk: (k,) True where it is junk (greyed); None for no junk.
    path: output PNG.
    max_frames: frames shown per tracklet (evenly sampled).
    title: figure title.
    labels: optional text per gallery row (e.g. "pid 12 cam 3").
    ranks: the rank shown per row (None: junk, not ranked); default the
      CMC numbering of `is_junk` (`cmc_ranks`).
  """
  k = len(gallery_frames_list)
  is_match = list(is_match)
  is_junk = [False] * k if is_junk is None else [bool(j) for j in is_junk]
  if len(is_match) != k or len(is_junk) != k:
    raise ValueError(f"{k} gallery tracklets but {len(is_match)} is_match "
                     f"and {len(is_junk)} is_junk flags")
  ranks = cmc_ranks(is_junk) if ranks is None else list(ranks)
  if len(ranks) != k:
    raise ValueError(f"{k} gallery tracklets but {len(ranks)} ranks")
  rows = [_strip(query_frames, max_frames)]
  rows += [_strip(g, max_frames) for g in gallery_frames_list]
  # pylint: disable-next=g-import-not-at-top
  from matplotlib.patches import Rectangle
  height = max(r.shape[0] for r in rows)
  width = max(r.shape[1] for r in rows)
  fig_w = 1.2 * width / height + 1.5
  fig = _figure(figsize=(fig_w, 1.2 * (k + 1)), dpi=100)
  axes = fig.subplots(k + 1, 1, squeeze=False)
  for i, (ax, strip) in enumerate(zip(axes[:, 0], rows)):
    if i == 0:
      color, text, alpha = QUERY_COLOR, "query", 1.0
    else:
      junk = bool(is_junk[i - 1])
      color = (JUNK_COLOR if junk else
               MATCH_COLOR if is_match[i - 1] else WRONG_COLOR)
      rank = ranks[i - 1]
      text = ("junk, not ranked" if junk or rank is None
              else f"rank {rank}")
      alpha = 0.35 if junk else 1.0
      if labels is not None:
        text += f"\n{labels[i - 1]}"
    h, w = strip.shape[:2]
    ax.imshow(strip, alpha=alpha, extent=(0, w, h, 0))
    ax.add_patch(Rectangle((0, 0), w, h, fill=False, edgecolor=color,
                           linewidth=4))
    ax.set_xlim(-2, width + 2)                  # strips left-aligned, same
    ax.set_ylim(height + 2, -2)                 # scale in every row
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
      spine.set_visible(False)
    ax.set_ylabel(text, rotation=0, ha="right", va="center", fontsize=8,
                  color=color)
  if title:
    # pylint: disable-next=g-import-not-at-top
    import textwrap
    fig.suptitle("\n".join(textwrap.wrap(title, max(24, int(fig_w * 13)))),
                 fontsize=8)
  fig.tight_layout()
  fig.savefig(os.fspath(path), format="png")
  return os.fspath(path)


def plot_boxes(frames: Any, boxes: Any, path: str | os.PathLike, *,
               title: str | None = None) -> str:
  """Writes frames side by side, each with its box.

  The panels share limits that cover the frames and every box, so a box
  that leaves the frame (a spatial transformer zooming out) is drawn whole.

  Args:
    frames: uint8 (k, H, W, 3).
    boxes: (k, 4) = (x0, y0, x1, y1) in pixels (may leave the frame).
    path: output PNG.
    title: figure title.
  """
  frames = np.asarray(frames)
  boxes = np.asarray(boxes, np.float64)
  if frames.ndim != 4 or boxes.shape != (frames.shape[0], 4):
    raise ValueError(f"expected frames (k, H, W, 3) and boxes (k, 4), got "
                     f"{frames.shape} and {boxes.shape}")
  # pylint: disable-next=g-import-not-at-top
  from matplotlib.patches import Rectangle
  k, h, w = frames.shape[:3]
  x_lo = min(-0.5, float(boxes[:, 0].min()) - 1.5)
  x_hi = max(w - 0.5, float(boxes[:, 2].max()) + 0.5)
  y_lo = min(-0.5, float(boxes[:, 1].min()) - 1.5)
  y_hi = max(h - 0.5, float(boxes[:, 3].max()) + 0.5)
  panel_h = 2.4
  panel_w = max(panel_h * (x_hi - x_lo) / (y_hi - y_lo), 0.8)
  fig_w = k * panel_w + 0.3
  lines = []
  if title:
    # pylint: disable-next=g-import-not-at-top
    import textwrap
    lines = textwrap.wrap(title, max(24, int(fig_w * 13)))
  fig_h = panel_h + 0.2 + 0.16 * len(lines)
  fig = _figure(figsize=(fig_w, fig_h), dpi=100)
  axes = fig.subplots(1, k, squeeze=False)[0]
  for ax, frame, (x0, y0, x1, y1) in zip(axes, frames, boxes):
    ax.imshow(frame, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    # Drawn unclipped, so a box on the frame's border stays visible.
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0,
                           fill=False, edgecolor=MATCH_COLOR, linewidth=2,
                           clip_on=False))
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_hi, y_lo)
    ax.set_axis_off()
  if lines:
    fig.suptitle("\n".join(lines), fontsize=8)
  fig.subplots_adjust(left=0.02, right=0.98, bottom=0.03,
                      top=1.0 - (0.1 + 0.16 * len(lines)) / fig_h,
                      wspace=0.05)
  fig.savefig(os.fspath(path), format="png")
  return os.fspath(path)


def plot_attention(frames: Any, maps: Any | None, weights: Any | None,
                   path: str | os.PathLike, *,
                   frame_ids: Sequence[int] | None = None,
                   value_range: tuple[float, float] | None = (0.0, 1.0),
                   title: str | None = None) -> str:
  """Writes frames with their spatial attention, and temporal weights.

  Args:
    frames: uint8 (k, H, W, 3), the frames drawn.
    maps: (k, h, w) spatial attention of those frames (stretched over the
      frame, bilinear), or None.
    weights: (n,) temporal weights of every frame of the clip (bars, the
      drawn frames in colour; a dashed line at uniform 1/n), or None.
    path: output PNG.
    frame_ids: positions of the drawn frames among the n weights.
    value_range: the maps' colour range (a gate's (0, 1) by default; None =
      each frame's min to max).
    title: figure title.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4:
    raise ValueError(f"expected frames (k, H, W, 3), got {frames.shape}")
  vmin, vmax = value_range if value_range is not None else (None, None)
  k, h, w = frames.shape[:3]
  if maps is not None:
    maps = np.asarray(maps, np.float64)
    if maps.ndim != 3 or maps.shape[0] != k:
      raise ValueError(f"expected maps (k, h, w) for {k} frames, got "
                       f"{maps.shape}")
  panel_h = 2.4
  panel_w = max(panel_h * w / h, 0.8)
  fig_w = max(k * panel_w + 0.3, 3.0)
  bars_h = 1.2 if weights is not None else 0.0
  lines = []
  if title:
    # pylint: disable-next=g-import-not-at-top
    import textwrap
    lines = textwrap.wrap(title, max(24, int(fig_w * 13)))
  top = 0.2 + 0.16 * len(lines)
  fig = _figure(figsize=(fig_w, panel_h + bars_h + top + 0.2), dpi=100)
  grid = fig.add_gridspec(2 if weights is not None else 1, k,
                          height_ratios=([panel_h, bars_h]
                                         if weights is not None else None))
  for i in range(k):
    ax = fig.add_subplot(grid[0, i])
    ax.imshow(frames[i], extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    if maps is not None:
      ax.imshow(maps[i], cmap="jet", alpha=0.45, interpolation="bilinear",
                vmin=vmin, vmax=vmax, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    ax.set_axis_off()
  if weights is not None:
    weights = np.asarray(weights, np.float64).reshape(-1)
    ax = fig.add_subplot(grid[1, :])
    colors = [JUNK_COLOR] * len(weights)
    for j in frame_ids if frame_ids is not None else ():
      colors[int(j)] = QUERY_COLOR
    ax.bar(np.arange(len(weights)), weights, color=colors)
    ax.axhline(1.0 / max(len(weights), 1), color="k", linestyle="--",
               linewidth=0.8)
    ax.set_xlabel("frame", fontsize=7)
    ax.set_ylabel("weight", fontsize=7)
    ax.tick_params(labelsize=6)
  if lines:
    fig.suptitle("\n".join(lines), fontsize=8)
  fig.savefig(os.fspath(path), format="png")
  return os.fspath(path)
