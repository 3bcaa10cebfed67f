r"""Tables and training curves of a sample run (paper Table 1, Table 2, Fig. 2).

  python -m experiments.report --output_dir=output/sample_run

Reads the run's preprocessing statistics, the CALRec and LIR evaluations and
the TensorBoard summaries of both training stages; writes `results.md` (Table 1
columns and Table 2 layout) and `training_curves.png` (NIG and TT losses,
Stage II continuing Stage I's step axis) into the run folder, and prints the
Markdown.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Sequence

from evaluator import report
from experiments import curves
from experiments.layout import RunLayout
from pipelines import stats as stats_lib

LOSS_TAGS = ("nig_loss", "tt_loss")
# Table 2 columns: name, evaluation folder under eval/.
RUNS = (("CALRec", "calrec"), ("LIR", "lir"))


def read_dataset_stats(data_dir: pathlib.Path) -> dict[str, dict]:
  """stats.json of every category, in the order of the run's config."""
  manifest = json.loads((data_dir / "manifest.json").read_text())
  names = [category["name"] for category in manifest["config"]["categories"]]
  return {name: json.loads((data_dir / name / "stats.json").read_text())
          for name in names}


def plot_training_curves(layout: RunLayout) -> None:
  """Stage II after Stage I on one step axis, as in the paper's Figure 2."""
  stage1 = curves.read_scalars(layout.model_dir("stage1") / "train")
  stage2 = curves.read_scalars(layout.model_dir("stage2") / "train")
  curves.plot_losses(
      {"Stage I": stage1,
       "Stage II": curves.shifted(stage2, curves.last_step(stage1))},
      LOSS_TAGS, layout.training_curves)


def write_report(layout: RunLayout) -> str:
  """Writes results.md and training_curves.png; returns the Markdown."""
  table_1 = stats_lib.format_table(read_dataset_stats(layout.data))
  table_2 = report.table_2([
      (name, report.load_summary(str(layout.eval_dir(folder))))
      for name, folder in RUNS])
  plot_training_curves(layout)
  markdown = (f"## Dataset statistics (paper Table 1 columns)\n\n```\n{table_1}"
              f"\n```\n\n## Test results (paper Table 2 layout)\n\n{table_2}")
  layout.results.write_text(markdown)
  return markdown


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(allow_abbrev=False,
                                   prog="python -m experiments.report",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--output_dir", required=True,
                      help="folder of a run of experiments.sample_run")
  args = parser.parse_args(argv)
  layout = RunLayout(pathlib.Path(args.output_dir))
  for needed in (layout.data / "manifest.json",
                 *(layout.eval_dir(folder) / "metrics.json"
                   for _, folder in RUNS)):
    if not needed.is_file():
      parser.error(f"{needed} is missing; run experiments.sample_run first.")
  print(write_report(layout))


if __name__ == "__main__":
  main()
