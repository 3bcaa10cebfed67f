"""Where every artifact of a run on the generated sample lives."""

from __future__ import annotations

import dataclasses
import pathlib


@dataclasses.dataclass(frozen=True)
class RunLayout:
  """Where every artifact of a sample run lives."""

  root: pathlib.Path

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
