"""The sample run end to end at a tiny scale: every artifact, tables well-formed."""

import json
import pathlib

from experiments import sample_run
from evaluator import metrics as metrics_lib

EXPECTED_CATEGORIES = ("Electronics", "CDs", "Games", "Pet")


def _table_rows(markdown: str, heading: str) -> list[list[str]]:
  section = markdown.split(heading, 1)[1]
  return [[cell.strip() for cell in line.strip().strip("|").split("|")]
          for line in section.splitlines() if line.startswith("|")]


def test_sample_run_produces_every_artifact(tmp_path: pathlib.Path):
  layout = sample_run.run([
      f"--output_dir={tmp_path / 'run'}", "--num_users=80", "--vocab_size=400",
      "--stage1_steps=2", "--stage2_steps=2", "--num_generations=2",
      "--max_decode_length=8"])

  manifest = json.loads((layout.data / "manifest.json").read_text())
  assert [c["name"] for c in manifest["config"]["categories"]] == list(
      EXPECTED_CATEGORIES)
  assert layout.vocabulary.is_file()
  for name in ("stage1", "stage2"):
    assert (layout.model_dir(name) / "checkpoints" / "2").is_dir()
    assert (layout.model_dir(name) / "config.gin").is_file()
  # Stage II starts from Stage I: its config names the Stage I folder.
  assert str(layout.model_dir("stage1")) in (
      layout.model_dir("stage2") / "config.gin").read_text()

  summaries = {name: json.loads((layout.eval_dir(name) /
                                 "metrics.json").read_text())
               for name in ("calrec", "lir")}
  test_users = manifest["categories"]["Games"]["splits"]["test"]["records"]
  for summary in summaries.values():
    assert summary["category"] == "Games"
    assert summary["num_users"] == test_users
    for key, value in summary["metrics"].items():
      assert 0.0 <= value <= 1.0, key
      if key.endswith("/opt"):
        # Optimistic ranks are never worse than pessimistic ones.
        assert value >= summary["metrics"][key[:-4] + "/pes"]

  markdown = (layout.root / "results.md").read_text()
  stats_lines = markdown.split("```")[1].strip().splitlines()
  assert [line.split()[0] for line in stats_lines[1:]] == list(
      EXPECTED_CATEGORIES)
  rows = _table_rows(markdown, "Test results")
  assert rows[0] == ["Dataset", "Metric (opt)/(pes)", "CALRec", "LIR"]
  body = rows[2:]
  assert [row[1] for row in body] == list(metrics_lib.METRICS)
  for row in body:
    for metric, cell, name in zip([row[1]] * 2, row[2:], ("calrec", "lir")):
      opt, pes = (float(x) for x in cell.split("/"))
      assert opt == round(summaries[name]["metrics"][f"{metric}/opt"], 4)
      assert pes == round(summaries[name]["metrics"][f"{metric}/pes"], 4)

  png = (layout.root / "training_curves.png").read_bytes()
  assert png.startswith(b"\x89PNG")
