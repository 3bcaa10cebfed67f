"""Runs one stage of the system as its own command, the way a user would.

Each stage is a separate process (`python -m pipelines.preprocess ...`), so a
run exercises the real command lines, and JAX, TensorFlow, Beam and the JVM
never share one interpreter. A stage whose output is already complete is
skipped, so an interrupted run picks up where it stopped, unless the stage's
command or that of a stage it reads from, or the project's code and configs,
changed since: each stage records all three in `{log_dir}/{name}.json` before
it runs, and on completion what the run cost (wall and CPU seconds).
`Lanes` runs sequences of stages side by side.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Sequence


class StageError(RuntimeError):
  """A stage's command exited with an error."""


@dataclasses.dataclass(frozen=True)
class Stage:
  """One command of a run and the file whose presence means it completed.

  A stage without `done_marker` always runs (it is cheap and reads what the
  others wrote). `inputs` are the stages whose outputs it reads: a change in
  their commands reruns it too. `resume_dir` is a folder the command resumes
  from (training checkpoints), deleted before a run with another command than
  the one that wrote it. `show_plain` shows its output without the `[name]`
  prefix.
  """

  name: str
  module: str
  args: Sequence[str]
  done_marker: pathlib.Path | None
  inputs: Sequence[Stage] = ()
  resume_dir: pathlib.Path | None = None
  show_plain: bool = False

  def command(self) -> list[str]:
    return [sys.executable, "-m", self.module, *self.args]

  def record(self) -> dict[str, Any]:
    """What its output depends on: its command, the code and its inputs'
    records."""
    return {"command": [self.module, *self.args], "code": code_digest(),
            "inputs": {stage.name: stage.record() for stage in self.inputs}}


# The packages (with their gin and JSON configs) whose code a stage runs.
_CODE_PACKAGES = ("pipelines", "tasks", "trainer", "evaluator", "experiments")
_CODE_SUFFIXES = (".py", ".gin", ".json")


@functools.cache
def code_digest() -> str:
  """The digest of the project's code and configs: an output written by other
  code is not taken as complete."""
  return tree_digest(pathlib.Path(__file__).resolve().parents[1])


def tree_digest(root: pathlib.Path) -> str:
  """SHA-256 over the code and config files of the packages under `root`,
  each with its path relative to `root`."""
  digest = hashlib.sha256()
  for package in _CODE_PACKAGES:
    for path in sorted((root / package).rglob("*")):
      if path.suffix in _CODE_SUFFIXES and path.is_file():
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
  return digest.hexdigest()


def main_exiting_on_stage_error(run: Callable[[Sequence[str] | None], object],
                                argv: Sequence[str] | None = None) -> None:
  """Runs a multi-stage command; a failed stage exits with its message."""
  try:
    run(argv)
  except StageError as error:
    sys.exit(f"error: {error}")


def log_line(message: str) -> None:
  """Prints `message` as one write, whole beside other lanes' lines."""
  sys.stdout.write(message + "\n")
  sys.stdout.flush()


def run_stage(stage: Stage, log_dir: pathlib.Path,
              stop: threading.Event | None = None) -> float:
  """Runs `stage` unless already complete; returns its wall time in seconds.

  Complete means its `done_marker` exists and `log_dir/{name}.json` records a
  finished run of the same `Stage.record()`. The command's output is streamed
  with a `[name]` prefix and kept in `log_dir/{name}.log`. Raises StageError
  naming the log on failure, and when `stop` is set while the command runs
  (it is terminated).
  """
  record_path = log_dir / f"{stage.name}.json"
  record = stage.record()
  earlier = _read_record(record_path)
  if stage.done_marker and stage.done_marker.exists():
    if earlier.get("stage") == record and earlier.get("complete"):
      log_line(f"[{stage.name}] already complete ({stage.done_marker}), "
               "skipped")
      return 0.0
    log_line(f"[{stage.name}] {stage.done_marker} was not made with these "
             f"flags, inputs and code (see {record_path}), rerunning")
  if (earlier.get("stage") != record and stage.resume_dir and
      stage.resume_dir.exists()):
    log_line(f"[{stage.name}] deleting {stage.resume_dir}, made with other "
             "flags, inputs or code")
    shutil.rmtree(stage.resume_dir)
  log_dir.mkdir(parents=True, exist_ok=True)
  _write_record(record_path, record, complete=False)
  log_path = log_dir / f"{stage.name}.log"
  log_line(f"[{stage.name}] $ {' '.join(stage.command()[1:])}")
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  start = time.monotonic()
  # Line-buffered: the log shows a running stage's progress as it comes.
  with open(log_path, "w", buffering=1) as log_file:
    process = subprocess.Popen(
        stage.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=env)
    assert process.stdout is not None
    finished = threading.Event()
    if stop is not None:
      threading.Thread(target=_terminate_on, args=(stop, finished, process),
                       daemon=True).start()
    for line in process.stdout:
      log_file.write(line)
      shown = _display_line(line)
      if shown is not None:
        log_line(shown if stage.show_plain else f"[{stage.name}] {shown}")
    returncode, cpu_seconds = _wait(process)
    finished.set()
  seconds = time.monotonic() - start
  cost = {"wall_seconds": round(seconds, 1),
          "cpu_seconds": round(cpu_seconds, 1)}
  if returncode != 0 and stop is not None and stop.is_set():
    raise StageError(f"Stage {stage.name!r} stopped after {seconds:.0f}s: a "
                     "stage of another lane failed.")
  if returncode != 0:
    raise StageError(f"Stage {stage.name!r} failed with exit code {returncode}"
                     f" after {seconds:.0f}s; its full output is in "
                     f"{log_path}.")
  if stage.done_marker and not stage.done_marker.exists():
    raise StageError(f"Stage {stage.name!r} exited cleanly but did not write "
                     f"{stage.done_marker}; see {log_path}.")
  _write_record(record_path, record, complete=True, cost=cost)
  log_line(f"[{stage.name}] done in {seconds:.0f}s "
           f"({cost['cpu_seconds']:.0f}s of CPU)")
  return seconds


def stage_cost(stage: Stage, log_dir: pathlib.Path) -> dict[str, float]:
  """Wall and CPU seconds of the run that completed `stage`.

  CPU seconds are the command's and its reaped children's (Beam workers),
  user plus system. A training stage resumed after an interruption counts
  the resumed run only. Raises ValueError when its record holds none (the
  stage has not completed since costs were recorded).
  """
  record_path = log_dir / f"{stage.name}.json"
  earlier = _read_record(record_path)
  if not earlier.get("complete") or "cost" not in earlier:
    raise ValueError(f"{record_path} records no completed run's cost; rerun "
                     f"stage {stage.name!r}.")
  return earlier["cost"]


def _read_record(path: pathlib.Path) -> dict[str, Any]:
  """A stage's record as `_write_record` wrote it ({} when there is none)."""
  return json.loads(path.read_text()) if path.exists() else {}


def _terminate_on(stop: threading.Event, finished: threading.Event,
                  process: subprocess.Popen) -> None:
  """Terminates `process` once `stop` is set, unless `finished` first."""
  while not finished.wait(timeout=0.5):
    if stop.is_set():
      process.terminate()
      return


def _wait(process: subprocess.Popen) -> tuple[int, float]:
  """Waits for `process`: its exit code, and the CPU seconds (user plus
  system) of it and of the children it reaped (Beam workers), its own alone
  while other lanes' commands run beside it."""
  _, status, usage = os.wait4(process.pid, 0)
  process.returncode = os.waitstatus_to_exitcode(status)
  return process.returncode, usage.ru_utime + usage.ru_stime


class Lanes:
  """Runs lanes, functions each running stages one after another, side by
  side in threads (`concurrent`) or one after another in the order given.

  A lane waits for a point of another (e.g. a stage whose cost it reads)
  with `wait`; when a lane fails, the others stop: a stage run by
  `Lanes.run_stage` is terminated, and `check` and `wait` raise. `run`
  raises the first failure.
  """

  def __init__(self, concurrent: bool):
    self.concurrent = concurrent
    self._failed = threading.Event()

  def run_stage(self, stage: Stage, log_dir: pathlib.Path) -> float:
    """`run_stage` in a lane: not started, or terminated while it runs, once
    another lane has failed."""
    self.check()
    return run_stage(stage, log_dir, stop=self._failed)

  def check(self) -> None:
    """Raises StageError if another lane has failed."""
    if self._failed.is_set():
      raise StageError("Stopped: a stage of another lane failed.")

  def wait(self, point: threading.Event) -> None:
    """Blocks until another lane sets `point` (StageError if one fails)."""
    while not point.wait(timeout=1.0):
      self.check()

  def run(self, lanes: Sequence[Callable[[], None]]) -> None:
    if not self.concurrent:
      for lane in lanes:
        lane()
      return
    failures: list[BaseException] = []

    def guarded(lane: Callable[[], None]) -> None:
      try:
        lane()
      except BaseException as error:  # pylint: disable=broad-except
        failures.append(error)
        self._failed.set()

    threads = [threading.Thread(target=guarded, args=(lane,))
               for lane in lanes]
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
    if failures:
      raise failures[0]


def _write_record(path: pathlib.Path, record: dict[str, Any], complete: bool,
                  cost: dict[str, float] | None = None) -> None:
  content = {"stage": record, "complete": complete}
  if cost is not None:
    content["cost"] = cost
  path.write_text(json.dumps(content, indent=2))


# Library chatter that says nothing about the run's progress, and Beam's
# forwarded copies of worker log lines (they stay in the log file).
_LIBRARY_NOISE = re.compile(
    r"apache_beam|sdk_worker|harness|data_plane|orbax|checkpoint_manager|"
    r"Worker: severity:|Resource module is not available|"
    r"logging_writer|Pipeline_options|semi_persistent_directory|"
    r"checkpoint_handler|checkpointer|xla_bridge|cuda|oneDNN|cpu_feature_guard|"
    r"rebuild TensorFlow|AVX|absl::InitializeLog|apitools|port\.cc|util\.cc|"
    r"^\s*$")
# absl's "I1127 04:26:42.880279 140442364816256 train_loop.py:248] " prefix.
_ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ")
_PYTHON_LOGGING_PREFIX = re.compile(r"^(INFO|WARNING):[\w.]+:")


def _display_line(line: str) -> str | None:
  """The line without logging prefixes, or None for library chatter."""
  if _LIBRARY_NOISE.search(line):
    return None
  line = _ABSL_PREFIX.sub("", line.rstrip())
  return _PYTHON_LOGGING_PREFIX.sub("", line)
