"""Faults of `python -m evaluator.evaluate` from the reliability issue.

One test per item of the issue; each failed before its fix.
"""

import re
import subprocess
import sys

import conftest
import pytest

from test_evaluator_evaluate import CATEGORY
from test_evaluator_evaluate import data_dir  # pylint: disable=unused-import

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
