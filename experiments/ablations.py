r"""The paper's ablations on the generated sample (Tables 3 and 4).

  python -m experiments.ablations [--output_dir=output/sample_run]

Reuses everything `experiments.sample_run` already wrote in `--output_dir`
(data, vocabulary, the full model and its evaluation; missing pieces are run
first), then trains and evaluates on the same test split:

  w/o Stage I        Stage II alone, from scratch, for the steps of both stages
                     (Table 3, variant A)
  w/o Stage II       the Stage I checkpoint evaluated directly (Table 3, B)
  w/o contrastive    both stages with alpha = beta = 0, i.e. NIG only (Table 4)

and prints them beside the full model and LIR (Table 3 layout), then the
paired t-test of the full model against the one without contrastive terms
(Table 4 layout). Writes `ablations.md` into `--output_dir`.
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

from evaluator import report
from experiments import sample_run
from experiments import stages
from experiments.layout import RunLayout

NO_CONTRASTIVE_BINDINGS = ("models.CALRecModel.alpha=0.0",
                           "models.CALRecModel.beta=0.0")
# Column name, evaluation folder under eval/.
COLUMNS = (("CALRec", "calrec"), ("w/o Stage I", "no_stage1"),
           ("w/o Stage II", "no_stage2"), ("w/o contrastive", "no_contrastive"),
           ("LIR", "lir"))


def ablation_stages(layout: RunLayout,
                    args: argparse.Namespace) -> list[stages.Stage]:
  """Training and evaluation of the three variants."""
  data = sample_run.data_stages(layout, args)
  stage1 = sample_run.training_stages(layout, args, data)[0]
  no_stage1 = sample_run.training_stages(
      layout, args, data, name_suffix="_no_stage1", stage1=False)
  no_contrastive = sample_run.training_stages(
      layout, args, data, name_suffix="_no_contrastive",
      extra_bindings=NO_CONTRASTIVE_BINDINGS)
  return [
      *no_stage1,
      sample_run.evaluation(layout, args, data, "no_stage1", no_stage1[-1]),
      sample_run.evaluation(layout, args, data, "no_stage2", stage1),
      *no_contrastive,
      sample_run.evaluation(layout, args, data, "no_contrastive",
                            no_contrastive[-1]),
  ]


def ablation_report(layout: RunLayout) -> str:
  """Table 3 layout over every column, then Table 4 for contrastive terms."""
  table_3 = report.table_2([
      (name, report.load_summary(str(layout.eval_dir(folder))))
      for name, folder in COLUMNS])
  test = report.paired_t_test(
      report.load_user_ranks(str(layout.eval_dir("calrec"))),
      report.load_user_ranks(str(layout.eval_dir("no_contrastive"))))
  table_4 = report.table_4("w/ contrastive", "w/o contrastive", test)
  return (f"## Ablations (paper Table 3 layout)\n\n{table_3}\n"
          f"## Contrastive alignment, paired t-test (paper Table 4 layout)\n\n"
          f"{table_4}")


def run(argv: Sequence[str] | None = None) -> str:
  args = sample_run.parse_args(argv, prog="experiments.ablations",
                               description=__doc__)
  layout = sample_run.open_layout(args)
  start = time.monotonic()
  sample_run.run_stages(
      sample_run.main_stages(layout, args) + ablation_stages(layout, args),
      layout, start)
  markdown = ablation_report(layout)
  (layout.root / "ablations.md").write_text(markdown)
  print("\n" + markdown)
  print(f"Wrote {layout.root / 'ablations.md'} in "
        f"{time.monotonic() - start:.0f}s.", flush=True)
  return markdown


def main(argv: Sequence[str] | None = None) -> None:
  stages.main_exiting_on_stage_error(run, argv)


if __name__ == "__main__":
  main()
