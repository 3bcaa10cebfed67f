"""The sample run and the ablations end to end at a tiny scale."""

import json
import math
import pathlib
import re

import evaluator_testdata
import numpy as np
import pipelines_testdata
import pyarrow.parquet as pq
import pytest

from evaluator import lucene
from evaluator import metrics as metrics_lib
from evaluator import report
from experiments import ablations
from experiments import sample_run
from experiments import stages

EXPECTED_CATEGORIES = ("Electronics", "CDs", "Games", "Pet")
# One Beam worker: each evaluation worker loads the model and compiles.
TINY_RUN_FLAGS = ("--num_users=80", "--vocab_size=400", "--stage1_steps=2",
                  "--stage2_steps=2", "--num_generations=2",
                  "--max_decode_length=8", "--beam_workers=1")


def _table_rows(markdown: str, heading: str) -> list[list[str]]:
  section = markdown.split(heading, 1)[1].split("\n## ", 1)[0]
  return [[cell.strip() for cell in line.strip().strip("|").split("|")]
          for line in section.splitlines() if line.startswith("|")]


def _cell(summary: dict, metric: str, marked: bool = True) -> str:
  """"opt/pes" as the tables print it: Table 2's layout puts "!" after the
  optimistic figure of a run whose ties lift it (`report.tie_warning`)."""
  mark = (report.TIE_MARK if marked and report.tie_warning("run", summary)
          else "")
  return (f"{summary['metrics'][metric + '/opt']:.4f}{mark}/"
          f"{summary['metrics'][metric + '/pes']:.4f}")


def _json_tool(name: str, source: pathlib.Path, output: pathlib.Path,
               *flags: str, **fields) -> stages.Stage:
  """A stage copying the JSON file `source` to `output`, its done marker."""
  return stages.Stage(name=name, module="json.tool",
                      args=[*flags, str(source), str(output)],
                      done_marker=output, **fields)


def _ran(capsys) -> list[str]:
  """The stages that ran a command since the last call."""
  return re.findall(r"^\[(\w+)\] \$ ", capsys.readouterr().out, re.MULTILINE)


def test_a_step_reruns_when_its_or_its_inputs_flags_change(tmp_path, capsys):
  (tmp_path / "in.json").write_text('{"b": 1, "a": 2}')

  def run(*first_flags: str) -> list[str]:
    first = _json_tool("first", tmp_path / "in.json", tmp_path / "first.json",
                       *first_flags)
    second = _json_tool("second", tmp_path / "first.json",
                        tmp_path / "second.json", inputs=[first])
    other = _json_tool("other", tmp_path / "in.json", tmp_path / "other.json")
    for stage in (first, second, other):
      stages.run_stage(stage, tmp_path / "logs")
    return _ran(capsys)

  assert run() == ["first", "second", "other"]
  assert not run()  # Resumed with the same flags: every step is skipped.
  assert run("--sort-keys") == ["first", "second"]
  assert list(json.loads((tmp_path / "second.json").read_text())) == ["a", "b"]


def test_every_step_reruns_when_the_code_changes(tmp_path, capsys,
                                                monkeypatch):
  (tmp_path / "in.json").write_text('{"b": 1}')

  def run() -> list[str]:
    first = _json_tool("first", tmp_path / "in.json", tmp_path / "first.json")
    stages.run_stage(first, tmp_path / "logs")
    return _ran(capsys)

  assert run() == ["first"]
  assert not run()
  monkeypatch.setattr(stages, "code_digest", lambda: "other code")
  assert run() == ["first"]


def test_the_code_digest_covers_code_and_configs_only(tmp_path):
  (tmp_path / "trainer" / "configs").mkdir(parents=True)
  (tmp_path / "trainer" / "configs" / "run.gin").write_text("A = 1")
  (tmp_path / "pipelines").mkdir()
  (tmp_path / "pipelines" / "job.py").write_text("x = 1")
  digest = stages.tree_digest(tmp_path)
  (tmp_path / "pipelines" / "job.cpython-311.pyc").write_bytes(b"compiled")
  (tmp_path / "output").mkdir()
  (tmp_path / "output" / "stats.json").write_text("{}")
  assert stages.tree_digest(tmp_path) == digest
  (tmp_path / "trainer" / "configs" / "run.gin").write_text("A = 2")
  assert stages.tree_digest(tmp_path) != digest
  (tmp_path / "trainer" / "configs" / "run.gin").write_text("A = 1")
  (tmp_path / "pipelines" / "job.py").rename(tmp_path / "pipelines" / "j.py")
  assert stages.tree_digest(tmp_path) != digest


def test_an_interrupted_step_resumes_unless_its_flags_changed(tmp_path,
                                                              capsys):
  source, output = tmp_path / "in.json", tmp_path / "out.json"
  model = tmp_path / "model"

  def run(*flags: str) -> None:
    stages.run_stage(_json_tool("train", source, output, *flags,
                                resume_dir=model), tmp_path / "logs")

  with pytest.raises(stages.StageError):
    run()  # Interrupted (here: no input yet) ...
  model.mkdir()
  (model / "checkpoint").touch()  # ... after some progress.
  source.write_text("{}")
  run()
  assert (model / "checkpoint").exists()  # Same flags: resumed.
  source.unlink()
  with pytest.raises(stages.StageError):
    run("--compact")
  assert not model.exists()  # Other flags: started afresh.
  source.write_text("{}")
  _ran(capsys)
  run("--compact")
  # The output of the first flags is no finished run with the others.
  assert _ran(capsys) == ["train"]


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_a_folder_holding_other_files_is_refused(tmp_path, capsys, force):
  (tmp_path / "notes.txt").write_text("keep")
  with pytest.raises(SystemExit):
    sample_run.open_layout(
        sample_run.parse_args([f"--output_dir={tmp_path}", *force]))
  assert "holds no earlier run" in capsys.readouterr().err
  assert (tmp_path / "notes.txt").read_text() == "keep"


def test_force_empties_an_earlier_run(tmp_path):
  (tmp_path / "run").mkdir()  # An empty folder is accepted.
  layout = sample_run.open_layout(
      sample_run.parse_args([f"--output_dir={tmp_path / 'run'}"]))
  (layout.root / "stage1").mkdir()
  sample_run.open_layout(
      sample_run.parse_args([f"--output_dir={layout.root}", "--force"]))
  assert [path.name for path in layout.root.iterdir()] == [".sample_run"]


@pytest.mark.parametrize("flag, message", [
    # A category the sample has no test split for would fail at the end.
    ("--category=games", "invalid choice: 'games'"),
    ("--category=CDs", "invalid choice: 'CDs'"),
    # Abbreviations are not expanded: --forc would otherwise mean --force.
    ("--forc", "unrecognized arguments: --forc"),
])
def test_flags_are_checked_before_any_step(tmp_path, capsys, flag, message):
  with pytest.raises(SystemExit):
    sample_run.parse_args([f"--output_dir={tmp_path}", flag])
  assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> pathlib.Path:
  output = tmp_path_factory.mktemp("sample_run") / "run"
  sample_run.run([f"--output_dir={output}", *TINY_RUN_FLAGS])
  return output


def _summary(run_dir: pathlib.Path, name: str) -> dict:
  return json.loads((run_dir / "eval" / name / "metrics.json").read_text())


@pytest.mark.slow
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


@pytest.mark.slow
def test_lir_ranks_and_metrics_equal_an_independent_computation(
    run_dir: pathlib.Path):
  """Every Games test user's LIR ranks from textbook BM25 over the corpus,
  and the metrics of those ranks computed by hand (paper section 4)."""
  corpus = pq.read_table(run_dir / "data" / "Games" /
                         "corpus.parquet").to_pylist()
  row_of = {row["item_id"]: row_number
            for row_number, row in enumerate(corpus)}
  analyzer = lucene.LuceneAnalyzer()
  docs = analyzer.tokenize([row["text"] for row in corpus])
  test = pipelines_testdata.read_split(run_dir / "data" / "Games", "test")
  expected = {}
  for user_id, (item_ids, _, item_texts, _) in test.items():
    # LIR's one query: the last history item's text.
    scores = evaluator_testdata.textbook_lucene_bm25(
        docs, analyzer.tokenize([item_texts[-2]])[0])
    target = scores[row_of[item_ids[-1]]]
    expected[user_id] = (1 + int(np.sum(scores > target)),
                         int(np.sum(scores >= target)))
  users = pq.read_table(
      list((run_dir / "eval" / "lir").glob("users-*.parquet"))).to_pylist()
  assert {user["user_id"]: (user["rank_optimistic"], user["rank_pessimistic"])
          for user in users} == expected

  def means(ranks):
    return {"NDCG@10": np.mean([1 / math.log2(r + 1) if r <= 10 else 0.0
                                for r in ranks]),
            "Recall@1": np.mean([r == 1 for r in ranks]),
            "Recall@10": np.mean([r <= 10 for r in ranks]),
            "MRR": np.mean([1 / r for r in ranks])}

  summary = _summary(run_dir, "lir")
  for variant, ranks in (("opt", [opt for opt, _ in expected.values()]),
                         ("pes", [pes for _, pes in expected.values()])):
    for metric, value in means(ranks).items():
      assert summary["metrics"][f"{metric}/{variant}"] == pytest.approx(
          value, rel=1e-12), (metric, variant)


@pytest.mark.slow
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
    assert row[1:3] == [
        _cell(_summary(run_dir, name), row[0], marked=False)
        for name in ("calrec", "no_contrastive")]
  assert (run_dir / "ablations.md").read_text() == markdown


@pytest.mark.slow
def test_a_rerun_with_other_flags_reruns_what_they_change(
    run_dir: pathlib.Path):
  checkpoint = run_dir / "stage2" / "checkpoints" / "2"
  before = checkpoint.stat().st_mtime_ns
  flags = [flag for flag in TINY_RUN_FLAGS
           if not flag.startswith("--num_generations")]
  sample_run.run([f"--output_dir={run_dir}", "--num_generations=3", *flags])
  assert checkpoint.stat().st_mtime_ns == before  # Training was skipped.
  calrec = _summary(run_dir, "calrec")
  assert calrec["num_generations"] == 3
  rows = _table_rows((run_dir / "results.md").read_text(), "Test results")
  for row in rows[2:]:
    assert row[2] == _cell(calrec, row[1])


def test_a_completed_step_records_the_cpu_its_command_used(tmp_path):
  """The record of a completed step holds its command's CPU seconds (the
  equal-CPU comparison of experiments.pretrained reads them), also after a
  rerun that skipped it; a step that has not completed has none."""
  busy = stages.Stage(name="busy", module="timeit",
                      args=["-n", "1", "-r", "1", "sum(range(30_000_000))"],
                      done_marker=None)
  logs = tmp_path / "logs"
  with pytest.raises(ValueError, match="records no completed run's cost"):
    stages.stage_cost(busy, logs)
  stages.run_stage(busy, logs)
  cost = stages.stage_cost(busy, logs)
  # Summing 30M integers takes a few tenths of a CPU second in the child;
  # the parent only waits.
  assert 0.2 <= cost["cpu_seconds"] <= 2 * cost["wall_seconds"] + 0.2
  source = tmp_path / "in.json"
  source.write_text("{}")
  copy = _json_tool("copy", source, tmp_path / "out.json")
  stages.run_stage(copy, logs)
  first = stages.stage_cost(copy, logs)
  stages.run_stage(copy, logs)  # Skipped: its record stays.
  assert stages.stage_cost(copy, logs) == first
