"""Tests of the rate and ETA reporter, on an injected clock."""

import logging
import math

import pytest

from pipelines import progress


class _Clock:
  """Seconds that pass only when a test says so."""

  def __init__(self):
    self.now = 100.0

  def __call__(self) -> float:
    return self.now


@pytest.mark.parametrize("seconds, text", [
    (0, "0:00:00"), (59.9, "0:00:59"), (3 * 3600 + 62, "3:01:02"),
    (math.inf, "?")])
def test_format_duration(seconds, text):
  assert progress.format_duration(seconds) == text


def test_rate_and_eta_leave_out_paused_time():
  clock = _Clock()
  steps = progress.Progress("steps", 100, done=20, period=None, clock=clock)
  assert steps.eta() == math.inf
  clock.now += 10
  steps.add(10)
  with steps.paused():
    clock.now += 1000
  assert steps.rate() == 1.0
  assert steps.eta() == 70.0
  assert steps.line() == "30/100  1.00 steps/s  ETA 0:01:10"


def test_lap_is_the_rate_since_the_previous_lap():
  clock = _Clock()
  steps = progress.Progress("steps", 100, period=None, clock=clock)
  clock.now += 4
  steps.add(8)
  assert steps.lap() == 2.0
  clock.now += 2
  with steps.paused():
    clock.now += 50
  clock.now += 2
  steps.add(2)
  assert steps.lap() == 0.5
  assert steps.rate() == 10 / 8


def test_add_logs_at_most_every_period(caplog):
  caplog.set_level(logging.INFO)
  clock = _Clock()
  users = progress.Progress("users", period=30, label="Generated: ",
                            clock=clock)
  for _ in range(4):
    clock.now += 10
    users.add(5)
  clock.now += 25
  users.add(0)
  assert [r.getMessage() for r in caplog.records] == [
      "Generated: 15  0.50 users/s", "Generated: 20  0.31 users/s"]
