"""Rate and ETA of a long count, for the progress lines of every stage.

`Progress` counts units (train steps, users) over wall time, leaving out the
time spent `paused` (validation, saving), and formats
"N/total  X units/s  ETA h:mm:ss"; `add` logs that line at most every
`period` seconds. The trainer's progress line (`trainer.train_metrics`) and
the generation workers' (`evaluator.model_handler`) both count with it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Callable, Iterator, Optional


def format_duration(seconds: float) -> str:
  """h:mm:ss, or '?' for an unknown (infinite) duration."""
  if not math.isfinite(seconds):
    return "?"
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}"


class Progress:
  """Units done per second of unpaused wall time, and the time left."""

  def __init__(self, unit: str, total: Optional[int] = None, *, done: int = 0,
               period: Optional[float] = 30.0, label: str = "",
               clock: Callable[[], float] = time.monotonic):
    """Starts counting at `done` units, now.

    Args:
      unit: what is counted, plural ('steps', 'users').
      total: the count at the end, if known (for the ETA).
      done: units already done before now (a resumed run's steps).
      period: `add` logs the line at most this often, in seconds; None never.
      label: what the logged line starts with.
      clock: seconds, for tests; monotonic wall time by default.
    """
    self.unit = unit
    self.total = total
    self.done = done
    self._period = period
    self._label = label
    self._clock = clock
    self._start = self._last_log = clock()
    self._paused = 0.0
    self._start_done = self._lap_done = done
    self._lap_seconds = 0.0

  def _active_seconds(self) -> float:
    """Seconds since the start, paused ones left out."""
    return self._clock() - self._start - self._paused

  def add(self, units: int = 1) -> None:
    """Counts `units` more; logs the line if `period` has passed since the
    last one."""
    self.done += units
    now = self._clock()
    if self._period is not None and now - self._last_log >= self._period:
      self._last_log = now
      logging.info("%s%s", self._label, self.line())

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """Leaves the time spent in the `with` block out of every rate."""
    start = self._clock()
    try:
      yield
    finally:
      self._paused += self._clock() - start

  def rate(self) -> float:
    """Units per second since the start."""
    return (self.done - self._start_done) / max(self._active_seconds(), 1e-9)

  def lap(self) -> float:
    """Units per second since the previous lap (or the start); starts the
    next lap."""
    seconds = self._active_seconds()
    rate = (self.done - self._lap_done) / max(seconds - self._lap_seconds,
                                              1e-9)
    self._lap_done, self._lap_seconds = self.done, seconds
    return rate

  def eta(self) -> float:
    """Seconds to `total` at the rate since the start; inf if unknown."""
    rate = self.rate()
    if self.total is None or rate <= 0:
      return math.inf
    return max(self.total - self.done, 0) / rate

  def count(self) -> str:
    """'N/total', or 'N' without a total."""
    return f"{self.done}" if self.total is None else f"{self.done}/{self.total}"

  def line(self) -> str:
    """'N/total  X units/s  ETA h:mm:ss' (no ETA without a total)."""
    text = f"{self.count()}  {self.rate():.2f} {self.unit}/s"
    if self.total is None:
      return text
    return f"{text}  ETA {format_duration(self.eta())}"
