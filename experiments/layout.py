"""Where every artifact of an experiment run lives."""

from __future__ import annotations

import dataclasses
import pathlib
import shutil


@dataclasses.dataclass(frozen=True)
class RunLayout:
  """Where every artifact of a sample run lives."""

  root: pathlib.Path
  # Names the kind of run (sample run, pretrained experiment) in its folder.
  marker_name: str = ".sample_run"

  @property
  def marker(self) -> pathlib.Path:
    """Written first by a run; only a folder holding it is reused or deleted."""
    return self.root / self.marker_name

  def open(self, force: bool = False) -> None:
    """Creates and marks the run's folder; `force` deletes an earlier run's
    first. Callers have refused folders that hold anything but a run."""
    if force and self.root.exists():
      shutil.rmtree(self.root)
    self.root.mkdir(parents=True, exist_ok=True)
    self.marker.touch()

  def holds_other_files(self) -> bool:
    """Whether `root` is a file or a non-empty folder no run marked."""
    if not self.root.exists() or self.marker.is_file():
      return False
    return not self.root.is_dir() or any(self.root.iterdir())

  @property
  def raw(self) -> pathlib.Path:
    return self.root / "raw"

  @property
  def data(self) -> pathlib.Path:
    return self.root / "data"

  @property
  def vocabulary(self) -> pathlib.Path:
    return self.root / "vocab" / "spm.model"

  @property
  def logs(self) -> pathlib.Path:
    return self.root / "logs"

  @property
  def results(self) -> pathlib.Path:
    return self.root / "results.md"

  @property
  def training_curves(self) -> pathlib.Path:
    return self.root / "training_curves.png"

  def model_dir(self, name: str) -> pathlib.Path:
    return self.root / name

  def eval_dir(self, name: str) -> pathlib.Path:
    return self.root / "eval" / name
