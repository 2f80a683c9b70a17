"""TensorBoard summaries without TensorFlow (tensorboardX event files)."""

from __future__ import annotations

from collections.abc import Mapping


class SummaryWriter:
  """Writes scalar summaries into the workdir; a no-op when disabled."""

  def __init__(self, logdir: str, *, enabled: bool = True):
    self._writer = None
    if enabled:
      from tensorboardX import SummaryWriter as _Writer  # pylint: disable=g-import-not-at-top
      self._writer = _Writer(logdir=logdir, flush_secs=30)

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    for key, value in values.items():
      self._writer.add_scalar(key, float(value), global_step=int(step))

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
