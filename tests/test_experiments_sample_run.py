"""The sample run and the ablations end to end at a tiny scale."""

import json
import pathlib

import pytest

from evaluator import metrics as metrics_lib
from experiments import ablations
from experiments import sample_run

EXPECTED_CATEGORIES = ("Electronics", "CDs", "Games", "Pet")
TINY_RUN_FLAGS = ("--num_users=80", "--vocab_size=400", "--stage1_steps=2",
                  "--stage2_steps=2", "--num_generations=2",
                  "--max_decode_length=8")


def _table_rows(markdown: str, heading: str) -> list[list[str]]:
  section = markdown.split(heading, 1)[1].split("\n## ", 1)[0]
  return [[cell.strip() for cell in line.strip().strip("|").split("|")]
          for line in section.splitlines() if line.startswith("|")]


def _cell(summary: dict, metric: str) -> str:
  return (f"{summary['metrics'][metric + '/opt']:.4f}/"
          f"{summary['metrics'][metric + '/pes']:.4f}")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> pathlib.Path:
  output = tmp_path_factory.mktemp("sample_run") / "run"
  sample_run.run([f"--output_dir={output}", *TINY_RUN_FLAGS])
  return output


def _summary(run_dir: pathlib.Path, name: str) -> dict:
  return json.loads((run_dir / "eval" / name / "metrics.json").read_text())


def test_sample_run_produces_every_artifact(run_dir: pathlib.Path):
  manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
  assert [c["name"] for c in manifest["config"]["categories"]] == list(
      EXPECTED_CATEGORIES)
  assert (run_dir / "vocab" / "spm.model").is_file()
  for name in ("stage1", "stage2"):
    assert (run_dir / name / "checkpoints" / "2").is_dir()
    assert (run_dir / name / "config.gin").is_file()
  # Stage II starts from Stage I: its config names the Stage I folder.
  assert str(run_dir / "stage1") in (run_dir / "stage2" /
                                     "config.gin").read_text()

  summaries = {name: _summary(run_dir, name) for name in ("calrec", "lir")}
  test_users = manifest["categories"]["Games"]["splits"]["test"]["records"]
  for summary in summaries.values():
    assert summary["category"] == "Games"
    assert summary["num_users"] == test_users
    for key, value in summary["metrics"].items():
      assert 0.0 <= value <= 1.0, key
      if key.endswith("/opt"):
        # Optimistic ranks are never worse than pessimistic ones.
        assert value >= summary["metrics"][key[:-4] + "/pes"]

  markdown = (run_dir / "results.md").read_text()
  stats_lines = markdown.split("```")[1].strip().splitlines()
  assert [line.split()[0] for line in stats_lines[1:]] == list(
      EXPECTED_CATEGORIES)
  rows = _table_rows(markdown, "Test results")
  assert rows[0] == ["Dataset", "Metric (opt)/(pes)", "CALRec", "LIR"]
  assert [row[1] for row in rows[2:]] == list(metrics_lib.METRICS)
  for row in rows[2:]:
    assert row[2:] == [_cell(summaries["calrec"], row[1]),
                       _cell(summaries["lir"], row[1])]

  png = (run_dir / "training_curves.png").read_bytes()
  assert png.startswith(b"\x89PNG")


def test_ablations_reuse_the_run_and_add_each_variant(run_dir: pathlib.Path):
  stage1_checkpoint = run_dir / "stage1" / "checkpoints" / "2"
  before = stage1_checkpoint.stat().st_mtime_ns
  markdown = ablations.run([f"--output_dir={run_dir}", *TINY_RUN_FLAGS])
  # The full model's training was reused, not redone.
  assert stage1_checkpoint.stat().st_mtime_ns == before
  # Without Stage I, Stage II trains from scratch for both stages' steps.
  assert (run_dir / "stage2_no_stage1" / "checkpoints" / "4").is_dir()
  assert "INITIAL_CHECKPOINT_PATH = None" in (
      run_dir / "stage2_no_stage1" / "config.gin").read_text()
  assert "alpha = 0.0" in (run_dir / "stage1_no_contrastive" /
                           "config.gin").read_text()
  # Without Stage II, the Stage I model itself is evaluated.
  assert _summary(run_dir, "no_stage2")["model_dir"] == str(run_dir / "stage1")

  rows = _table_rows(markdown, "Ablations")
  assert rows[0][2:] == [name for name, _ in ablations.COLUMNS]
  for row in rows[2:]:
    assert row[2:] == [_cell(_summary(run_dir, folder), row[1])
                       for _, folder in ablations.COLUMNS]
  t_test_rows = _table_rows(markdown, "paired t-test")
  assert [row[0] for row in t_test_rows[2:]] == list(metrics_lib.METRICS)
  for row in t_test_rows[2:]:
    # Every test user is in both runs, so the paired means are the metrics.
    assert row[1:3] == [_cell(_summary(run_dir, "calrec"), row[0]),
                        _cell(_summary(run_dir, "no_contrastive"), row[0])]
  assert (run_dir / "ablations.md").read_text() == markdown
