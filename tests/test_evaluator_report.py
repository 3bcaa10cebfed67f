"""Table 2 / Table 4 layouts and the paired t-test."""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.stats

from evaluator import metrics
from evaluator import report


def _summary(category, value, split="test"):
  return {"category": category, "split": split,
          "metrics": {key: value for key in metrics.metric_keys()}}


def test_table_2_layout():
  # A distinct value per metric and variant shows each cell's source.
  calrec = {"category": "Scientific", "split": "test", "metrics": {
      "NDCG@10/opt": 0.0788, "NDCG@10/pes": 0.0775,
      "Recall@1/opt": 0.0302, "Recall@1/pes": 0.0301,
      "Recall@10/opt": 0.1471, "Recall@10/pes": 0.1457,
      "MRR/opt": 0.0689, "MRR/pes": 0.0678}}
  markdown = report.table_2([("LIR", _summary("Scientific", 0.05)),
                             ("CALRec", calrec),
                             ("CALRec", _summary("Office", 0.1))])
  assert markdown.splitlines() == [
      "| Dataset | Metric (opt)/(pes) | LIR | CALRec |",
      "|---|---|---|---|",
      "| Scientific | NDCG@10 | 0.0500/0.0500 | 0.0788/0.0775 |",
      "|  | Recall@1 | 0.0500/0.0500 | 0.0302/0.0301 |",
      "|  | Recall@10 | 0.0500/0.0500 | 0.1471/0.1457 |",
      "|  | MRR | 0.0500/0.0500 | 0.0689/0.0678 |",
      "| Office | NDCG@10 | - | 0.1000/0.1000 |",
      "|  | Recall@1 | - | 0.1000/0.1000 |",
      "|  | Recall@10 | - | 0.1000/0.1000 |",
      "|  | MRR | - | 0.1000/0.1000 |"]


def test_table_7_match_shares():
  summary = dict(_summary("Office", 0.1), output_matches={"shares": {
      "Format Error": 0.0, "All Four Attributes": 0.845, "Title Only": 0.947}})
  lines = report.table_7_matches([("CALRec", summary)]).splitlines()
  assert lines[0] == ("| Dataset | Run | Format Error | All Four Attributes | "
                      "Title Only |")
  assert lines[2] == "| Office | CALRec | 0.0% | 84.5% | 94.7% |"


def test_table_2_refuses_a_second_run_of_a_name_and_category():
  with pytest.raises(ValueError, match="Two runs named 'A' on Office"):
    report.table_2([("A", _summary("Office", 0.1)),
                    ("A", _summary("Office", 0.2))])


def test_table_2_refuses_mixed_splits_in_a_category():
  with pytest.raises(ValueError, match="mix the test and validation splits"):
    report.table_2([("A", _summary("Office", 0.1)),
                    ("B", _summary("Office", 0.2, split="validation"))])
  # Other categories may be on other splits: they are other rows.
  report.table_2([("A", _summary("Office", 0.1)),
                  ("A", _summary("Toys", 0.2, split="validation"))])


def _write_run(run_dir, ranks, category="Toys", split="test"):
  run_dir.mkdir()
  pq.write_table(pa.table({
      "user_id": list(ranks),
      "rank_optimistic": [r[0] for r in ranks.values()],
      "rank_pessimistic": [r[1] for r in ranks.values()]}),
                 run_dir / "users-00000-of-00001.parquet")
  (run_dir / "metrics.json").write_text(
      json.dumps(_summary(category, 0.5, split)))


def test_paired_t_test_joins_by_user(tmp_path):
  ranks_a = {"u1": (1, 1), "u2": (2, 4), "u3": (1, 3), "u4": (5, 5),
             "only_a": (1, 1)}
  ranks_b = {"u4": (7, 9), "u3": (2, 3), "u2": (2, 8), "u1": (3, 3)}
  test = report.paired_t_test(ranks_a, ranks_b)
  assert (test["num_users"], test["only_in_a"], test["only_in_b"]) == (4, 1, 0)

  # MRR/opt by hand: differences 1/1-1/3, 1/2-1/2, 1/1-1/2, 1/5-1/7.
  diffs = np.array([2 / 3, 0.0, 0.5, 1 / 5 - 1 / 7])
  t = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(4))
  row = test["metrics"]["MRR/opt"]
  assert row["p_value"] == pytest.approx(2 * scipy.stats.t.sf(abs(t), df=3))
  assert row["a"] == pytest.approx((1 + 0.5 + 1 + 0.2) / 4)
  assert row["improvement"] == pytest.approx(
      row["a"] / ((1 / 3 + 0.5 + 0.5 + 1 / 7) / 4) - 1)
  # Recall@10 is 1 for every user in both runs: no difference, p = 1.
  assert test["metrics"]["Recall@10/opt"]["p_value"] == 1.0

  _write_run(tmp_path / "a", ranks_a)
  _write_run(tmp_path / "b", ranks_b)
  output = tmp_path / "table4.md"
  report.main(["ttest", f"--run_a=W/ Contr.={tmp_path / 'a'}",
               f"--run_b=W/O Contr.={tmp_path / 'b'}", f"--output={output}"])
  lines = output.read_text().splitlines()
  assert lines[0] == "| Metric | W/ Contr. | W/O Contr. | Improv. | p-value |"
  assert lines[5].startswith("| MRR | 0.6750/")
  assert json.loads((tmp_path / "table4.json").read_text())["num_users"] == 4


def test_too_few_shared_users_is_an_error():
  with pytest.raises(ValueError, match="share 1 users"):
    report.paired_t_test({"u1": (1, 1)}, {"u1": (2, 2), "u2": (1, 1)})


def test_cli_rejects_malformed_run_argument(capsys):
  with pytest.raises(SystemExit):
    report.main(["table", "--run=no_equals_sign"])
  assert "expected NAME=DIR" in capsys.readouterr().err


def test_cli_table_refuses_duplicate_runs(tmp_path, capsys):
  _write_run(tmp_path / "calrec", {"u1": (1, 1)})
  _write_run(tmp_path / "lir", {"u1": (2, 2)})
  with pytest.raises(SystemExit):
    report.main(["table", f"--run=A={tmp_path / 'calrec'}",
                 f"--run=A={tmp_path / 'lir'}"])
  assert "error: Two runs named 'A' on Toys" in capsys.readouterr().err


@pytest.mark.parametrize("category,split", [("Office", "test"),
                                            ("Toys", "validation")])
def test_cli_ttest_refuses_runs_on_other_users(tmp_path, capsys, category,
                                               split):
  ranks = {"u1": (1, 1), "u2": (2, 3)}
  _write_run(tmp_path / "a", ranks)
  _write_run(tmp_path / "b", ranks, category=category, split=split)
  with pytest.raises(SystemExit):
    report.main(["ttest", f"--run_a=A={tmp_path / 'a'}",
                 f"--run_b=B={tmp_path / 'b'}"])
  assert "error: The runs differ in " in capsys.readouterr().err


def test_cli_output_creates_its_folder(tmp_path):
  _write_run(tmp_path / "run", {"u1": (1, 1)})
  output = tmp_path / "new" / "folder" / "table.md"
  report.main(["table", f"--run=A={tmp_path / 'run'}", f"--output={output}"])
  assert output.read_text().startswith("| Dataset | Metric")


def test_table_help_describes_only_the_table_output(capsys):
  with pytest.raises(SystemExit):
    report.main(["table", "--help"])
  help_text = capsys.readouterr().out
  assert "Table 2 layout" in help_text
  assert ".json" not in help_text and "ttest" not in help_text
