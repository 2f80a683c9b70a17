"""Pictures of evaluation results (matplotlib, Agg backend, imported lazily).

* `plot_cmc`: CMC curve(s) as a PNG.
* `plot_ranked_lists`: a query tracklet and its top-k gallery tracklets as
  frame strips, like Fig. 7 of the GLTR paper: green border = true match,
  red = wrong, grey and faded = junk (ignored by the metrics).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

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
                      labels: Sequence[str] | None = None) -> str:
  """Writes a ranked-list figure: query on top, then ranks 1..k.

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
  """
  k = len(gallery_frames_list)
  is_match = list(is_match)
  is_junk = [False] * k if is_junk is None else list(is_junk)
  if len(is_match) != k or len(is_junk) != k:
    raise ValueError(f"{k} gallery tracklets but {len(is_match)} is_match "
                     f"and {len(is_junk)} is_junk flags")
  rows = [_strip(query_frames, max_frames)]
  rows += [_strip(g, max_frames) for g in gallery_frames_list]
  # pylint: disable-next=g-import-not-at-top
  from matplotlib.patches import Rectangle
  height = max(r.shape[0] for r in rows)
  width = max(r.shape[1] for r in rows)
  fig = _figure(figsize=(1.2 * width / height + 1.5, 1.2 * (k + 1)),
                dpi=100)
  axes = fig.subplots(k + 1, 1, squeeze=False)
  for i, (ax, strip) in enumerate(zip(axes[:, 0], rows)):
    if i == 0:
      color, text, alpha = QUERY_COLOR, "query", 1.0
    else:
      junk = bool(is_junk[i - 1])
      color = (JUNK_COLOR if junk else
               MATCH_COLOR if is_match[i - 1] else WRONG_COLOR)
      text = f"rank {i}" + (" (junk)" if junk else "")
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
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(os.fspath(path), format="png")
  return os.fspath(path)
