"""Result tables and the paired t-test between two evaluation runs.

`python -m evaluator.report table --run NAME=DIR ...` lays runs out like the
paper's Table 2 (a row per category and metric, a column per run, cells
"(opt)/(pes)"). `python -m evaluator.report ttest --run_a NAME=DIR --run_b
NAME=DIR` joins two runs' per-user results by user id and runs a paired
t-test (scipy.stats.ttest_rel) on every metric, laid out like Table 4.

A table holds one run per column name and category, and the runs of one
category must be on one split; the t-test compares runs on the same category
and split.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional, Sequence

import numpy as np
import scipy.stats

from evaluator import metrics
from pipelines import files

METRICS_FILE = "metrics.json"
USERS_PREFIX = "users"


# Marks the optimistic metrics of a run with a `tie_warning`.
TIE_MARK = "!"


def _pair(opt: float, pes: float, digits: int = 4, mark: str = "") -> str:
  return f"{opt:.{digits}f}{mark}/{pes:.{digits}f}"


def tie_warning(name: str, summary: dict[str, Any]) -> Optional[str]:
  """Why the optimistic metrics of a run with many tied targets mislead.

  Paper section 4, "Evaluation Metrics": where other items share the
  target's score, the optimistic rank puts the target first among them and
  the pessimistic rank last. An output that matches nothing (footnote 9: an
  empty one scores 0 with every item) ties the target with the whole corpus
  and earns a perfect optimistic Recall, so only the pessimistic figures
  tell how well a model singles out the target: they are the ones to trust.
  Warns when the ties lift the optimistic NDCG@10 more than
  `metrics.OPTIMISM_LIMIT` (relative) over the pessimistic one; ties far
  below the top 10, common with a good model too, change neither. Runs from
  before `tied_target_share` was counted get no warning.
  """
  share = summary.get("tied_target_share")
  if share is None:
    return None
  optimistic = summary["metrics"]["NDCG@10/opt"]
  pessimistic = summary["metrics"]["NDCG@10/pes"]
  if optimistic <= pessimistic * (1 + metrics.OPTIMISM_LIMIT):
    return None
  return (f"{name} on {summary['category']}: optimistic NDCG@10 "
          f"{optimistic:.4f} against pessimistic {pessimistic:.4f} (over "
          f"{metrics.OPTIMISM_LIMIT:.0%} above it): {share:.1%} of the ranked "
          "users have their target tied with other items, and the optimistic "
          "metrics rank it first among them: trust the pessimistic ones "
          "(paper section 4).")


def table_2(runs: Sequence[tuple[str, dict[str, Any]]]) -> str:
  """Markdown in Table 2's layout; `runs` are (column name, metrics.json).

  Runs sharing a name fill one column, a row block per category. The
  optimistic metrics of a run with a `tie_warning` carry TIE_MARK, and the
  warning follows the table. Raises ValueError for two runs of one name and
  category, or for runs of one category on different splits.
  """
  names = list(dict.fromkeys(name for name, _ in runs))
  cells, splits, warnings = {}, {}, {}
  for name, summary in runs:
    category, split = summary["category"], summary["split"]
    if (name, category) in cells:
      raise ValueError(f"Two runs named {name!r} on {category}; a column "
                       "holds one run per category.")
    cells[name, category] = summary["metrics"]
    warnings[name, category] = tie_warning(name, summary)
    if splits.setdefault(category, split) != split:
      raise ValueError(f"The runs on {category} mix the {splits[category]} "
                       f"and {split} splits; a row block compares one split.")
  categories = list(splits)
  lines = ["| Dataset | Metric (opt)/(pes) | " + " | ".join(names) + " |",
           "|---|---|" + "---|" * len(names)]
  for category in categories:
    for position, metric in enumerate(metrics.METRICS):
      row = []
      for name in names:
        values = cells.get((name, category))
        mark = TIE_MARK if warnings.get((name, category)) else ""
        row.append(_pair(values[f"{metric}/opt"], values[f"{metric}/pes"],
                         mark=mark) if values else "-")
      label = category if position == 0 else ""
      lines.append(f"| {label} | {metric} | " + " | ".join(row) + " |")
  notes = [f"{TIE_MARK} {warning}" for warning in warnings.values() if warning]
  return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def table_7_matches(runs: Sequence[tuple[str, dict[str, Any]]]) -> str:
  """Markdown of Table 7's first columns: shares of outputs that match."""
  columns = ("Format Error", "All Four Attributes", "Title Only")
  lines = ["| Dataset | Run | " + " | ".join(columns) + " |",
           "|---|---|" + "---|" * len(columns)]
  for name, summary in runs:
    shares = summary["output_matches"]["shares"]
    lines.append(f"| {summary['category']} | {name} | " + " | ".join(
        f"{100 * shares[column]:.1f}%" for column in columns) + " |")
  return "\n".join(lines) + "\n"


def load_summary(run_dir: str) -> dict[str, Any]:
  path = os.path.join(run_dir, METRICS_FILE)
  if not files.exists(path):
    raise FileNotFoundError(f"No {METRICS_FILE} in {run_dir}: is it the "
                            "--output_dir of a finished evaluation?")
  return files.read_json(path)


def check_paired(summary_a: dict[str, Any], summary_b: dict[str, Any]) -> None:
  """Raises ValueError unless both runs scored the same category and split."""
  for key in ("category", "split"):
    if summary_a[key] != summary_b[key]:
      raise ValueError(f"The runs differ in {key} ({summary_a[key]} vs. "
                       f"{summary_b[key]}); a paired t-test compares runs on "
                       "the same users.")


def load_user_ranks(run_dir: str) -> dict[str, tuple[int, int]]:
  """user id -> (optimistic rank, pessimistic rank) of one run."""
  paths = files.glob(os.path.join(run_dir, f"{USERS_PREFIX}-*.parquet"))
  if not paths:
    raise FileNotFoundError(f"No {USERS_PREFIX}-*.parquet in {run_dir}.")
  ranks = {}
  for path in paths:
    table = files.read_parquet(path, ["user_id", "rank_optimistic",
                                      "rank_pessimistic"]).to_pydict()
    for user_id, opt, pes in zip(table["user_id"], table["rank_optimistic"],
                                 table["rank_pessimistic"]):
      ranks[user_id] = (opt, pes)
  return ranks


def paired_t_test(ranks_a: dict[str, tuple[int, int]],
                  ranks_b: dict[str, tuple[int, int]]) -> dict[str, Any]:
  """Per metric key: means of A and B, relative gain of A, two-sided p-value.

  Users are joined by id; users present in only one run are counted, not used.
  """
  common = sorted(ranks_a.keys() & ranks_b.keys())
  if len(common) < 2:
    raise ValueError(f"The runs share {len(common)} users; a paired t-test "
                     "needs at least 2.")

  def per_user(ranks):
    values = [metrics.user_metrics(metrics.TargetRanks(*ranks[user]))
              for user in common]
    return {key: np.array([v[key] for v in values])
            for key in metrics.metric_keys()}

  values_a, values_b = per_user(ranks_a), per_user(ranks_b)
  rows = {}
  for key in metrics.metric_keys():
    a, b = values_a[key], values_b[key]
    if np.array_equal(a, b):
      p_value = 1.0  # No difference at all; ttest_rel would give NaN.
    else:
      p_value = float(scipy.stats.ttest_rel(a, b).pvalue)
    mean_a, mean_b = float(a.mean()), float(b.mean())
    rows[key] = {"a": mean_a, "b": mean_b, "p_value": p_value,
                 "improvement": (mean_a - mean_b) / mean_b if mean_b else None}
  return {"num_users": len(common),
          "only_in_a": len(ranks_a.keys() - ranks_b.keys()),
          "only_in_b": len(ranks_b.keys() - ranks_a.keys()),
          "metrics": rows}


def table_4(name_a: str, name_b: str, test: dict[str, Any]) -> str:
  """Markdown in Table 4's layout: A, B, A's gain and p-values, opt/pes."""

  def gain(value):
    return "-" if value is None else f"{100 * value:.2f}%"

  lines = [f"| Metric | {name_a} | {name_b} | Improv. | p-value |",
           "|---|---|---|---|---|"]
  rows = test["metrics"]
  for metric in metrics.METRICS:
    opt, pes = rows[f"{metric}/opt"], rows[f"{metric}/pes"]
    lines.append(
        f"| {metric} | {_pair(opt['a'], pes['a'])} | "
        f"{_pair(opt['b'], pes['b'])} | "
        f"{gain(opt['improvement'])}/{gain(pes['improvement'])} | "
        f"{opt['p_value']:.4g}/{pes['p_value']:.4g} |")
  return "\n".join(lines) + "\n"


def _named_run(value: str) -> tuple[str, str]:
  name, separator, run_dir = value.partition("=")
  if not separator or not name or not run_dir:
    raise argparse.ArgumentTypeError(
        f"expected NAME=DIR (e.g. CALRec=/runs/scientific), got {value!r}")
  if not files.exists(os.path.join(run_dir, METRICS_FILE)):
    raise argparse.ArgumentTypeError(
        f"{run_dir} holds no {METRICS_FILE} of a finished evaluation")
  return name, run_dir


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      allow_abbrev=False, prog="python -m evaluator.report",
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  table_help = "Table 2 layout over one or more evaluation runs."
  table = commands.add_parser("table", allow_abbrev=False, help=table_help,
                              description=table_help)
  table.add_argument("--run", type=_named_run, action="append", required=True,
                     metavar="NAME=DIR",
                     help="A column name and an evaluation --output_dir. "
                     "Repeat for more columns; runs of one name on other "
                     "categories fill the same column. One run per name and "
                     "category; the runs of a category must share a split.")
  table.add_argument("--output", default=None,
                     help="Also write the Markdown table to this file (its "
                     "folder is created).")
  ttest_help = ("Paired t-test of run A against run B (Table 4 layout); "
                "both must be on the same category and split.")
  ttest = commands.add_parser("ttest", allow_abbrev=False, help=ttest_help,
                              description=ttest_help)
  ttest.add_argument("--run_a", type=_named_run, required=True,
                     metavar="NAME=DIR", help="The run whose gain is reported.")
  ttest.add_argument("--run_b", type=_named_run, required=True,
                     metavar="NAME=DIR", help="The reference run.")
  ttest.add_argument("--output", default=None,
                     help="Also write the Markdown table to this file, and "
                     "the test's means, gains and p-values beside it as JSON "
                     "(same name, .json extension; the folder is created).")
  return parser


def main(argv: Sequence[str] | None = None) -> None:
  parser = _parser()
  args = parser.parse_args(argv)
  try:
    markdown, result = _run_command(args)
  except (ValueError, FileNotFoundError) as error:
    parser.error(str(error))
  sys.stdout.write(markdown)
  if args.output:
    files.make_dirs(os.path.dirname(args.output) or ".")
    files.write_text(args.output, markdown)
    if result is not None:
      files.write_text(os.path.splitext(args.output)[0] + ".json",
                       json.dumps(result, indent=2))


def _run_command(args: argparse.Namespace
                 ) -> tuple[str, dict[str, Any] | None]:
  """The Markdown of `args.command`, and the t-test's numbers for ttest."""
  if args.command == "table":
    return table_2([(name, load_summary(run_dir))
                    for name, run_dir in args.run]), None
  (name_a, dir_a), (name_b, dir_b) = args.run_a, args.run_b
  check_paired(load_summary(dir_a), load_summary(dir_b))
  result = paired_t_test(load_user_ranks(dir_a), load_user_ranks(dir_b))
  print(f"Paired over {result['num_users']} users "
        f"({result['only_in_a']} only in {name_a}, "
        f"{result['only_in_b']} only in {name_b}).", file=sys.stderr)
  return table_4(name_a, name_b, result), result


if __name__ == "__main__":
  main()
