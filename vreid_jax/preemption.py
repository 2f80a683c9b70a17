"""Preemption: SIGTERM / SIGINT stop a run at a step boundary, checkpointed.

A scheduler preempts a job with SIGTERM (and a user with Ctrl-C, SIGINT).
`Preemption.reached(step)` is asked after every training step; once it says
yes, the trainer saves a checkpoint of that step, waits for the write to
finish and exits 0 (`train.Preempted`), losing nothing: rerunning the same
command resumes from that step and, since batches are a pure function of
(seed, step), ends exactly as an uninterrupted run.

One process: Python handlers for SIGTERM and SIGINT set a flag; the step
in flight finishes first (the handler only records the signal). A second
signal restores the default handlers and stops the process at once.

Several processes (`jax.distributed`): every process must save the same
step. JAX's preemption service (on by default with `jax.distributed`)
catches SIGTERM in any process, tells the others, and
`multihost_utils.reached_preemption_sync_point(step)` becomes true on all of
them at the same step (the maximum step any process had reached, plus one),
so they all checkpoint it together. SIGINT is forwarded to SIGTERM so that
the service sees it too. The handlers are restored on `close`.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption:
  """Watches for SIGTERM / SIGINT; `reached(step)` after every step.

  Attributes:
    signal_name: the signal that asked to stop ("SIGTERM", "SIGINT"), or
      None.
    received_at: `time.monotonic()` when it arrived (for the time-to-exit
      figure).
  """

  def __init__(self, *, multi_process: bool | None = None):
    import jax  # pylint: disable=g-import-not-at-top
    self.multi_process = (jax.process_count() > 1 if multi_process is None
                          else multi_process)
    self.signal_name: str | None = None
    self.received_at: float | None = None
    self._previous: dict[int, Any] = {}
    try:
      if self.multi_process:
        # SIGTERM belongs to JAX's preemption notifier; route SIGINT to it.
        self._install(signal.SIGINT, self._forward_to_sigterm)
      else:
        for sig in SIGNALS:
          self._install(sig, self._record)
    except ValueError:
      # signal.signal only works in the main thread (e.g. not inside a
      # notebook worker thread): preemption is then not watched.
      self._previous.clear()

  def _install(self, sig: int, handler) -> None:
    self._previous[sig] = signal.signal(sig, handler)

  def _record(self, signum, frame) -> None:  # pylint: disable=unused-argument
    if self.signal_name is None:
      self.signal_name = signal.Signals(signum).name
      self.received_at = time.monotonic()
      print(f"{self.signal_name} received: finishing this step and saving "
            "a checkpoint (send it again to stop at once, without one)",
            flush=True)
      return
    # A second signal: the default behaviour, now.
    self.close()
    os.kill(os.getpid(), signum)

  def _forward_to_sigterm(self, signum, frame) -> None:
    self._record(signum, frame)
    os.kill(os.getpid(), signal.SIGTERM)

  def reached(self, step: int) -> bool:
    """Whether to checkpoint `step` and stop (all processes agree)."""
    if self.multi_process:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      try:
        hit = multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # The preemption service is disabled.
        return False
      if hit and self.signal_name is None:
        self.signal_name = "SIGTERM"
        self.received_at = time.monotonic()
      return hit
    return self.signal_name is not None

  def close(self) -> None:
    """Restores the previous signal handlers."""
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
