"""Faults of `python -m evaluator.evaluate` from the reliability issue.

One test per item of the issue; each failed before its fix.
"""

import glob
import json
import logging
import re
import shutil
import subprocess
import sys

import conftest
import evaluator_testdata
import pyarrow.parquet as pq
import pytest

from evaluator import evaluate
from evaluator import report
from evaluator import transforms
from pipelines import run_dir
from test_evaluator_evaluate import _copied_users
from test_evaluator_evaluate import _data_users
from test_evaluator_evaluate import _item
from test_evaluator_evaluate import _resolved
from test_evaluator_evaluate import _run
from test_evaluator_evaluate import _write_data
from test_evaluator_evaluate import CATEGORY
from test_evaluator_evaluate import data_dir  # pylint: disable=unused-import
from test_evaluator_evaluate import ITEMS

# A log4j line in Anserini's layout: "2026-01-01 12:00:00,000 INFO  [main] ...".
_LOG4J_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} +[A-Z]+ +\[",
                         re.MULTILINE)


@pytest.mark.slow
def test_lucene_logs_stay_off_stdout(data_dir, tmp_path):
  """Item 10: with --bm25_backend=lucene, stdout carries the results alone.

  Anserini's log4j2.xml logs INFO lines (e.g. SimpleIndexer's "Using
  DefaultEnglishAnalyzer") to stdout, where they mixed with results.md.
  """
  output_dir = tmp_path / "eval"
  completed = subprocess.run(
      [sys.executable, "-m", "evaluator.evaluate", f"--data_dir={data_dir}",
       f"--category={CATEGORY}", "--split=test", f"--output_dir={output_dir}",
       "--model=lir", "--bm25_backend=lucene"],
      capture_output=True, text=True, check=True, cwd=conftest.REPO_ROOT)
  assert not _LOG4J_LINE.search(completed.stdout), completed.stdout
  assert completed.stdout == (output_dir / "results.md").read_text()


# Table 2's NDCG@10 row with its optimistic value marked.
_MARKED_NDCG = re.compile(r"\| Toys \| NDCG@10 \| [0-9.]+!/[0-9.]+ \|")


def _ranked(user_id, optimistic, pessimistic):
  """A per-user result of `transforms.evaluate_users` with these ranks."""
  return {"user_id": user_id, "rank_optimistic": optimistic,
          "rank_pessimistic": pessimistic,
          "match_counts": {"outputs": 1, "format_errors": 1, "all_four": 0,
                           "title_only": 0}}


def _summary_of(ranks):
  """MeanMetrics over (optimistic, pessimistic) ranks, in two merged parts."""
  combine = transforms.MeanMetrics()
  parts = [combine.create_accumulator(), combine.create_accumulator()]
  for number, (optimistic, pessimistic) in enumerate(ranks):
    parts[number % 2] = combine.add_input(
        parts[number % 2], _ranked(f"u{number}", optimistic, pessimistic))
  return combine.extract_output(combine.merge_accumulators(parts))


def test_a_run_of_tied_targets_warns_beside_its_optimistic_metrics(
    tmp_path, capsys, caplog):
  """Item 7: many targets tied with other items make the optimistic metrics
  meaningless (an empty output ties every item); metrics.json counts them
  and results.md, `evaluator.report table` and the log warn where the ties
  lift the optimistic NDCG@10 over 5 % above the pessimistic one."""
  # 3 of 20 users have their target tied with other items: 15 %. By hand,
  # NDCG@10 opt (17 + 1 + 1/log2(4) + 1/log2(10)) / 20 = 0.9401, pes
  # (17 + 0 + 1/log2(5) + 0) / 20 = 0.8715: 7.9 % above.
  tied = _summary_of([(1, 1)] * 17 + [(1, 20), (3, 4), (9, 12)])
  assert tied["tied_target_share"] == pytest.approx(0.15)
  assert tied["metrics"]["NDCG@10/opt"] == pytest.approx(0.94005, abs=1e-5)
  assert tied["metrics"]["NDCG@10/pes"] == pytest.approx(0.87154, abs=1e-5)
  # 1 of 20 tied, opt 1.0 and pes (19 + 1/log2(3)) / 20 = 0.9815: 1.9 %.
  fair = _summary_of([(1, 1)] * 19 + [(1, 2)])
  assert fair["tied_target_share"] == pytest.approx(0.05)

  run = {"data_dir": "data", "num_records": None, "category": CATEGORY,
         "split": "test", "model": "lir", "retrieval": "bm25"}
  warning = ("! lir (bm25) on Toys: optimistic NDCG@10 0.9401 against "
             "pessimistic 0.8715 (over 5% above it): 15.0% of the ranked "
             "users have their target tied with other items")
  for name, summary in (("tied", tied), ("fair", fair)):
    output_dir = tmp_path / name
    output_dir.mkdir()
    evaluate.write_summary(summary, num_read=20, num_rejected=0,
                           num_unranked=0, run=run, output_dir=str(output_dir))
    written = json.loads((output_dir / "metrics.json").read_text())
    assert written["tied_target_share"] == summary["tied_target_share"]

  results_md = (tmp_path / "tied" / "results.md").read_text()
  assert _MARKED_NDCG.search(results_md)
  assert warning in results_md
  assert "!" not in (tmp_path / "fair" / "results.md").read_text()

  report.main(["table", f"--run=A={tmp_path / 'tied'}",
               f"--run=B={tmp_path / 'fair'}"])
  table = capsys.readouterr().out
  assert _MARKED_NDCG.search(table)
  assert ("! A on Toys: optimistic NDCG@10 0.9401 against pessimistic "
          "0.8715") in table
  assert "B on Toys" not in table

  caplog.set_level(logging.INFO)
  for name in ("fair", "tied"):
    evaluate.log_outcome(report.load_summary(str(tmp_path / name)))
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and warnings[0].startswith(warning[2:])


def _ranked_users(output_dir):
  return sorted(pq.read_table(glob.glob(str(output_dir / "users-*.parquet")),
                              columns=["user_id"]).column("user_id").to_pylist())


@pytest.mark.slow
def test_max_users_scores_a_seeded_subset_whatever_the_input_order(tmp_path):
  """Item 9: --max_users N --user_sample_seed S keeps the N users of the
  smallest hash of (S, user id): the same on any workers and input order."""
  users = _copied_users(10)
  in_order, shuffled = tmp_path / "in_order", tmp_path / "shuffled"
  _write_data(in_order, [_item(i) for i in ITEMS], users)
  # The users in reverse order, dealt over two files.
  _write_data(shuffled, [_item(i) for i in ITEMS], users[::-1], num_shards=2)

  first = _run(in_order, tmp_path / "first", "--model=lir", "--max_users=10",
               "--user_sample_seed=7")
  assert (first["max_users"], first["user_sample_seed"]) == (10, 7)
  # All 40 records were read (the manifest's count holds), 10 ranked.
  assert (first["num_records"], first["num_users"]) == (40, 10)
  subset = _ranked_users(tmp_path / "first")
  assert subset == sorted(sorted(
      (user for user, _ in users),
      key=lambda user: transforms.user_sample_key(7, user))[:10])

  _run(shuffled, tmp_path / "again", "--model=lir", "--max_users=10",
       "--user_sample_seed=7", "--direct_num_workers=2",
       "--direct_running_mode=multi_threading")
  assert _ranked_users(tmp_path / "again") == subset
  _run(in_order, tmp_path / "other_seed", "--model=lir", "--max_users=10",
       "--user_sample_seed=8")
  other = _ranked_users(tmp_path / "other_seed")
  assert len(other) == 10 and other != subset
  everyone = _run(in_order, tmp_path / "everyone", "--model=lir",
                  "--max_users=40")
  assert everyone["num_users"] == 40


def _contents(folder):
  return {path.relative_to(folder): path.read_bytes()
          for path in sorted(folder.rglob("*")) if path.is_file()}


def _refusal(flags, capsys):
  """The last line the command writes to stderr when it refuses `flags`."""
  with pytest.raises(SystemExit):
    _resolved(flags)
  return capsys.readouterr().err.splitlines()[-1]


@pytest.mark.slow
def test_overwrite_replaces_the_results_only_once_the_new_run_succeeded(
    data_dir, tmp_path, capsys):
  """Item 5: the job writes into OUTPUT.staging (Beam's temp folders too)
  and swaps it in after success, with run.json; a failed rerun leaves the
  old results byte-identical; a killed run's staging folder goes first."""
  output_dir = tmp_path / "eval"
  staging = tmp_path / "eval.staging"
  (staging / "beam-temp-users-killed").mkdir(parents=True)
  (staging / "beam-temp-users-killed" / "part").write_text("partial")
  first = _run(data_dir, output_dir, "--model=lir")
  assert not staging.exists()
  assert not list(output_dir.glob("beam-temp-*"))
  assert run_dir.read_record(str(output_dir)) == {
      "stage": "evaluate", "made_from": {
          "manifest_sha256": first["manifest_sha256"], "category": CATEGORY,
          "split": "test", "model": "lir", "retrieval": "bm25",
          "bm25_backend": "fast", "num_preds": 10, "epsilon": 1 / 5000,
          "recommendations_k": 0, "max_users": None}}

  flags = [f"--data_dir={data_dir}", f"--category={CATEGORY}",
           f"--output_dir={output_dir}", "--model=lir"]
  assert _refusal(flags, capsys).endswith(
      f"error: {output_dir} already holds the results of this very run; "
      "pass --overwrite to redo it or pick another --output_dir.")
  assert _refusal(flags + ["--num_preds=5"], capsys).endswith(
      f"error: {output_dir} was made from other inputs: num_preds: 10 -> 5; "
      "pass --overwrite to replace its results or pick another "
      "--output_dir.")

  # The split changed since the manifest: the rerun fails in the pipeline.
  changed = tmp_path / "changed"
  shutil.copytree(data_dir, changed)
  evaluator_testdata.write_split(changed / CATEGORY, "test", CATEGORY,
                                 _data_users()[:-1])
  before = _contents(output_dir)
  with pytest.raises(Exception, match="manifest.json counts 6"):
    _run(changed, output_dir, "--model=lir", "--overwrite")
  assert _contents(output_dir) == before
  assert not staging.exists()

  _run(data_dir, output_dir, "--model=lir", "--overwrite",
       "--recommendations_k=2")
  assert run_dir.read_record(str(output_dir))["made_from"][
      "recommendations_k"] == 2
  assert list(output_dir.glob("recommendations-*.jsonl"))

  # A run replaces the whole folder: one holding other files is refused.
  mixed = tmp_path / "mixed"
  mixed.mkdir()
  (mixed / "notes.txt").write_text("mine")
  assert _refusal([*flags[:2], f"--output_dir={mixed}", "--model=lir",
                   "--overwrite"], capsys).endswith(
      f"error: {mixed} holds files that no evaluation writes, e.g. "
      f"{mixed / 'notes.txt'}; a run replaces the whole folder: pick another "
      "--output_dir.")
  # Nor does a run replace a file by its folder.
  assert _refusal([*flags[:2], f"--output_dir={mixed / 'notes.txt'}",
                   "--model=lir", "--overwrite"], capsys).endswith(
      f"error: {mixed / 'notes.txt'} is a file, not a folder: pick another "
      "--output_dir.")
