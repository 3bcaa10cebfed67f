"""Where every artifact of a run on the generated sample lives."""

from __future__ import annotations

import dataclasses
import pathlib


@dataclasses.dataclass(frozen=True)
class RunLayout:
  """Where every artifact of a sample run lives."""

  root: pathlib.Path

  @property
  def marker(self) -> pathlib.Path:
    """Written first by a run; only a folder holding it is reused or deleted."""
    return self.root / ".sample_run"

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
