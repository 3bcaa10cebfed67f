"""Stages run side by side in lanes, each stage's CPU seconds its own."""

import json
import threading
import time

import pytest

from experiments import stages


def _stage(name, statement):
  return stages.Stage(name=name, module="timeit",
                      args=["-n", "1", "-r", "1", statement], done_marker=None)


def test_lanes_run_side_by_side_and_one_waits_for_the_others_point():
  lanes = stages.Lanes(concurrent=True)
  point = threading.Event()
  order = []

  def waiting():
    lanes.wait(point)
    order.append("after the point")

  def setting():
    order.append("before the point")
    point.set()

  # One after another in this order, the first lane would wait forever.
  lanes.run([waiting, setting])
  assert order == ["before the point", "after the point"]


def test_lanes_one_after_another_keep_their_order():
  lanes = stages.Lanes(concurrent=False)
  order = []
  lanes.run([lambda: order.append(1), lambda: order.append(2)])
  assert order == [1, 2]


def test_a_failed_lane_stops_the_others_and_is_raised():
  lanes = stages.Lanes(concurrent=True)
  never = threading.Event()
  stopped = []

  def failing():
    raise stages.StageError("Stage 'train' failed")

  def waiting():
    try:
      lanes.wait(never)
    except stages.StageError as error:
      stopped.append(str(error))
      raise

  with pytest.raises(stages.StageError, match="Stage 'train' failed"):
    lanes.run([failing, waiting])
  assert stopped == ["Stopped: a stage of another lane failed."]
  with pytest.raises(stages.StageError, match="another lane failed"):
    lanes.check()


def test_a_failed_lane_terminates_the_stage_another_lane_is_running(
    tmp_path):
  logs = tmp_path / "logs"
  sleeping = _stage("sleeping", "import time; time.sleep(60)")
  lanes = stages.Lanes(concurrent=True)
  stopped = []

  def failing():
    time.sleep(1.0)  # The other lane's command is running by then.
    raise stages.StageError("Stage 'train' failed")

  def sleeping_lane():
    try:
      lanes.run_stage(sleeping, logs)
    except stages.StageError as error:
      stopped.append(str(error))
      raise

  start = time.monotonic()
  with pytest.raises(stages.StageError, match="Stage 'train' failed"):
    lanes.run([failing, sleeping_lane])
  assert time.monotonic() - start < 20
  assert len(stopped) == 1 and "'sleeping' stopped" in stopped[0]
  record = json.loads((logs / "sleeping.json").read_text())
  assert not record["complete"]


def test_each_stage_records_its_own_cpu_seconds_beside_another(tmp_path):
  """A stage that sleeps while another computes records almost no CPU (the
  computing one's would count if costs were differences of the parent's
  reaped-children totals)."""
  logs = tmp_path / "logs"
  sleeping = _stage("sleeping", "import time; time.sleep(3)")
  busy = _stage("busy", "sum(range(30_000_000))")
  lanes = stages.Lanes(concurrent=True)
  lanes.run([lambda: stages.run_stage(sleeping, logs),
             lambda: stages.run_stage(busy, logs)])
  busy_cpu = stages.stage_cost(busy, logs)["cpu_seconds"]
  sleeping_cpu = stages.stage_cost(sleeping, logs)["cpu_seconds"]
  assert busy_cpu >= 0.2
  assert sleeping_cpu < busy_cpu / 2


def test_a_log_line_is_one_write_so_lanes_do_not_split_it(monkeypatch):
  writes = []

  class Recorder:

    def write(self, text):
      writes.append(text)

    def flush(self):
      pass

  monkeypatch.setattr("sys.stdout", Recorder())
  stages.log_line("[tiny] step 2/50")
  assert writes == ["[tiny] step 2/50\n"]


def test_a_running_stages_log_shows_its_lines_as_they_come(tmp_path):
  logs, release = tmp_path / "logs", tmp_path / "release"
  waiting = stages.Stage(
      name="waiting", module="timeit",
      args=["-n", "1", "-r", "1",
            "import os, time; print('step 1/2', flush=True)",
            f"while not os.path.exists({str(release)!r}): time.sleep(0.05)"],
      done_marker=None)
  runner = threading.Thread(target=stages.run_stage, args=(waiting, logs))
  runner.start()
  try:
    deadline = time.monotonic() + 30
    log = logs / "waiting.log"
    while time.monotonic() < deadline and not (
        log.exists() and "step 1/2" in log.read_text()):
      time.sleep(0.05)
    assert "step 1/2" in log.read_text()
  finally:
    release.touch()
    runner.join()
