"""The pretrained-LLM experiment's flags, data config and stage plan."""

import json
import pathlib
import threading
import time

import pytest

from experiments import pretrained
from experiments.layout import RunLayout


@pytest.fixture
def raw_dir(tmp_path):
  folder = tmp_path / "raw_in"
  folder.mkdir()
  for name in (pretrained.REVIEWS, pretrained.META):
    (folder / name).write_bytes(b"")
  return folder


def _args(raw_dir, tmp_path, *flags):
  return pretrained.parse_args([f"--raw_dir={raw_dir}",
                                f"--output_dir={tmp_path / 'run'}", *flags])


def test_missing_raw_files_are_named(tmp_path, capsys):
  with pytest.raises(SystemExit):
    pretrained.parse_args([f"--raw_dir={tmp_path}"])
  error = capsys.readouterr().err
  assert pretrained.REVIEWS in error and pretrained.META in error


def test_a_folder_of_other_files_is_refused(raw_dir, tmp_path, capsys):
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "notes.txt").write_text("mine")
  with pytest.raises(SystemExit):
    _args(raw_dir, tmp_path)
  assert "holds no earlier run" in capsys.readouterr().err


def test_quick_mode_defaults(raw_dir, tmp_path):
  args = _args(raw_dir, tmp_path, "--quick")
  assert (args.num_generations, args.tiny_steps, args.lanes) == (8, 50, 2)
  args = _args(raw_dir, tmp_path)
  assert (args.num_generations, args.tiny_steps, args.lanes) == (32, 400, 1)


def test_raw_config_is_one_eval_category_sampled_only_when_quick(
    raw_dir, tmp_path):
  layout = RunLayout(tmp_path / "run", marker_name=".pretrained")
  layout.open()
  full = json.loads(pretrained.write_raw_config(
      layout, _args(raw_dir, tmp_path)).read_text())
  (category,) = full["categories"]
  assert category["role"] == "eval" and "user_fraction" not in category
  assert pathlib.Path(category["reviews"]) == (
      raw_dir / pretrained.REVIEWS).resolve()
  quick = json.loads(pretrained.write_raw_config(
      layout, _args(raw_dir, tmp_path, "--quick")).read_text())
  assert quick["categories"][0]["user_fraction"] == (
      pretrained.QUICK_USER_FRACTION)


def test_every_gemma_run_starts_from_the_converted_model(raw_dir, tmp_path,
                                                         monkeypatch):
  args = _args(raw_dir, tmp_path, "--epochs=2", "--gemma_batch_size=4")
  layout = RunLayout(tmp_path / "run", marker_name=".pretrained")
  monkeypatch.setattr(pretrained, "gguf_file",
                      lambda layout: layout.root / "model.gguf")
  data = pretrained.commands.preprocess(layout.raw / "config.json",
                                        layout.data, [])
  steps = pretrained.gemma_steps(args, train_records=18)
  assert steps == 10  # 2 epochs of ceil(18 / 4) steps
  period = pretrained.gemma_checkpoint_period(args, train_records=18)
  assert period == 5  # A checkpoint, and its validation, per epoch.
  runs = pretrained.model_runs(layout, args, data, steps, period)
  assert [run.stage.name for run in runs] == [
      "vocabulary", "tiny", "convert", "gemma_full", "gemma_lora"]
  converted = str(layout.model_dir("gemma3_270m"))
  for run in runs[3:]:
    command = " ".join(run.stage.args)
    assert f"INITIAL_CHECKPOINT_PATH={converted!r}" in command
    assert f"VOCABULARY={converted + '/vocabulary.model'!r}" in command
    assert "TRAIN_STEPS=10" in command and "BATCH_SIZE=4" in command
    # A tenth of the steps, not the Stage II config's 1,000.
    assert ("--gin.train_lib.create_optimizer.warmup_steps=1"
            in run.stage.args)
    assert run.stage.done_marker == run.model_dir / "checkpoints" / "10"
    assert "--gin.train.checkpoint_period=5" in run.stage.args
    assert ("--gin.train.validation_batches="
            f"{pretrained.GEMMA_VALIDATION_BATCHES}" in run.stage.args)
  assert pretrained.LORA_GIN in " ".join(runs[4].stage.args)
  assert pretrained.LORA_GIN not in " ".join(runs[3].stage.args)
  # Full fine-tuning at 1e-4 * sqrt(4 / 512), LoRA at the paper's 1e-4.
  assert f"--gin.LEARNING_RATE={1e-4 / 8 / 2 ** 0.5!r}" in runs[3].stage.args
  assert "--gin.LEARNING_RATE=0.0001" in runs[4].stage.args


def test_full_fine_tuning_scales_the_papers_learning_rate_to_its_batch():
  assert pretrained.full_fine_tuning_learning_rate(512) == 1e-4
  assert pretrained.full_fine_tuning_learning_rate(8) == pytest.approx(
      1.25e-5, rel=1e-12)


def _complete(stage, logs, cpu_seconds):
  """Records `stage` as completed at that CPU cost, as `stages.run_stage`
  does."""
  logs.mkdir(parents=True, exist_ok=True)
  (logs / f"{stage.name}.json").write_text(json.dumps({
      "stage": stage.record(), "complete": True,
      "cost": {"wall_seconds": cpu_seconds / 2, "cpu_seconds": cpu_seconds}}))


def _plan(raw_dir, tmp_path, monkeypatch, *flags):
  args = _args(raw_dir, tmp_path, "--tiny_steps=50", *flags)
  layout = RunLayout(tmp_path / "run", marker_name=".pretrained")
  monkeypatch.setattr(pretrained, "gguf_file",
                      lambda layout: layout.root / "model.gguf")
  data = pretrained.commands.preprocess(layout.raw / "config.json",
                                        layout.data, [])
  runs = pretrained.model_runs(layout, args, data, steps=6,
                               checkpoint_period=6)
  return args, layout, data, runs


def test_the_tiny_model_gets_gemmas_steps_and_its_cpu_seconds(
    raw_dir, tmp_path, monkeypatch):
  args, layout, data, runs = _plan(raw_dir, tmp_path, monkeypatch,
                                   "--gemma_batch_size=8")
  by_name = {run.stage.name: run for run in runs}
  with pytest.raises(ValueError, match="records no completed run's cost"):
    pretrained.budget_runs(layout, args, data, runs, steps=6)
  # 50 tiny steps took 100 CPU seconds (2 a step); Gemma's 6 took 700.
  _complete(by_name["tiny"].stage, layout.logs, 100.0)
  _complete(by_name["gemma_full"].stage, layout.logs, 700.0)
  equal_steps, equal_cpu = pretrained.budget_runs(layout, args, data, runs,
                                                  steps=6)
  assert equal_steps.row == "tiny, equal steps (6 of 8)"
  assert equal_cpu.row == "tiny, equal CPU (350 steps)"
  for run, steps in ((equal_steps, 6), (equal_cpu, 350)):
    command = " ".join(run.stage.args)
    assert pretrained.commands.TINY_STAGE2_GIN in command
    assert "INITIAL_CHECKPOINT_PATH=None" in command
    assert f"TRAIN_STEPS={steps}" in command
    assert run.stage.done_marker == run.model_dir / "checkpoints" / str(steps)
    assert run.stage.inputs == [data, by_name["vocabulary"].stage]
  assert "BATCH_SIZE=8" in " ".join(equal_steps.stage.args)
  # The equal-CPU run keeps the tiny model's own batch size.
  assert "BATCH_SIZE" not in " ".join(equal_cpu.stage.args)


def _evaluation(folder, pessimistic_ranks, checkpoint_step=None):
  """An evaluation's metrics.json and users file for the given ranks (the
  optimistic ranks are the pessimistic ones: no ties); a model's evaluation
  names its `checkpoint_step`."""
  from evaluator import metrics  # pylint: disable=g-import-not-at-top
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  folder.mkdir(parents=True)
  users = [f"u{i}" for i in range(len(pessimistic_ranks))]
  per_user = [metrics.user_metrics(metrics.TargetRanks(rank, rank))
              for rank in pessimistic_ranks]
  means = {key: sum(user[key] for user in per_user) / len(per_user)
           for key in metrics.metric_keys()}
  (folder / "metrics.json").write_text(json.dumps(
      {"category": pretrained.CATEGORY, "split": "test", "metrics": means,
       "tied_target_share": 0.0, "num_users": len(pessimistic_ranks) - 1,
       "num_unranked": 1,
       **({} if checkpoint_step is None else
          {"checkpoint_step": checkpoint_step})}))
  pq.write_table(pa.table({"user_id": users,
                           "rank_optimistic": pessimistic_ranks,
                           "rank_pessimistic": pessimistic_ranks}),
                 folder / "users-00000-of-00001.parquet")


def test_the_budget_table_shows_each_runs_budget_and_its_test_against_gemma(
    raw_dir, tmp_path, monkeypatch):
  from pipelines import run_dir  # pylint: disable=g-import-not-at-top
  args, layout, data, runs = _plan(raw_dir, tmp_path, monkeypatch,
                                   "--gemma_batch_size=8")
  by_name = {run.stage.name: run for run in runs}
  _complete(by_name["tiny"].stage, layout.logs, 100.0)
  _complete(by_name["gemma_full"].stage, layout.logs, 700.0)
  budgets = pretrained.budget_runs(layout, args, data, runs, steps=6)
  folders = {}
  for run, cpu, batch, ranks in (
      (by_name["gemma_full"], 700.0, 8, [1, 1, 2, 1]),
      (budgets[0], 12.0, 8, [11, 30, 2, 11]),
      (budgets[1], 690.0, 16, [3, 11, 11, 11])):
    _complete(run.stage, layout.logs, cpu)
    run_dir.write_record(str(run.model_dir), "train", {"batch_size": batch})
    folders[run.row] = tmp_path / "eval" / run.stage.name
    _evaluation(folders[run.row], ranks)
  markdown = pretrained.budget_markdown(layout, by_name["gemma_full"],
                                       budgets, folders)
  lines = markdown.splitlines()
  budget_rows = [line for line in lines if line.startswith("| ")][1:4]
  assert budget_rows == [
      f"| {pretrained.GEMMA_FULL_ROW} | 6 | 8 | 48 | 700 |",
      "| tiny, equal steps (6 of 8) | 6 | 8 | 48 | 12 |",
      "| tiny, equal CPU (350 steps) | 350 | 16 | 5600 | 690 |"]
  # Recall@1 (pes): Gemma's 3 of 4 users against 0 of 4 for each tiny run.
  tests = [line for line in lines if line.startswith("| Recall@1 |")]
  assert len(tests) == 2 and all(
      line.split(" | ")[1:3] == ["0.7500/0.7500", "0.0000/0.0000"]
      for line in tests)
  assert markdown.count("(paired t-test)") == 2


def test_the_results_state_users_settings_and_each_test_against_lir(
    raw_dir, tmp_path):
  args = _args(raw_dir, tmp_path, "--gemma_batch_size=8",
               "--inputs_length=256", "--num_generations=8")
  folders = [tmp_path / "eval" / name for name in ("lir", "tiny", "lora")]
  for folder, ranks, step in zip(
      folders, ([2, 11, 1], [1, 1, 11], [1, 11, 11]), (None, 400, 29)):
    _evaluation(folder, ranks, step)
  markdown = pretrained.results_markdown(
      list(zip(["LIR", "tiny", "LoRA"], folders)), args, steps=58)
  lines = markdown.splitlines()
  assert lines[0] == "## Gift_Cards: 3 test users, N_gen 8"
  assert lines[2] == (
      "Prompts of at most 256 tokens, seed 0. Gemma fine-tuned for 58 steps "
      "of 8 examples (full at 1.25e-05, LoRA at 0.0001, warm-up 5 steps); "
      "the tiny model trained for 400 steps. No model had Stage I (one "
      "category here).")
  assert lines[4] == ("Checkpoint steps evaluated (each run's lowest "
                      "validation loss): tiny 400, LoRA 29.")
  assert [line for line in lines if line.startswith("### ")] == [
      "### tiny against LIR (paired t-test)",
      "### LoRA against LIR (paired t-test)"]
  # Recall@1 (pes): tiny 2 of 3 users, LIR 1 of 3.
  (tiny_test, _) = [line for line in lines if line.startswith("| Recall@1 |")]
  assert tiny_test.split(" | ")[1:3] == ["0.6667/0.6667", "0.3333/0.3333"]


def test_quick_mode_fine_tunes_gemma_briefly(raw_dir, tmp_path):
  args = _args(raw_dir, tmp_path, "--quick")
  assert (args.gemma_batch_size, args.inputs_length) == (
      pretrained.QUICK_GEMMA_BATCH_SIZE, pretrained.QUICK_INPUTS_LENGTH)
  assert pretrained.gemma_steps(args, train_records=458) == (
      pretrained.QUICK_GEMMA_STEPS)
  # One checkpoint, at the end: the run is shorter than an epoch.
  assert pretrained.gemma_checkpoint_period(args, train_records=50) == (
      pretrained.QUICK_GEMMA_STEPS)
  args = _args(raw_dir, tmp_path)
  assert (args.gemma_batch_size, args.inputs_length) == (8, 512)
  assert pretrained.gemma_steps(args, train_records=458) == 58
  assert pretrained.gemma_checkpoint_period(args, train_records=458) == 58


def test_every_gemma_is_sampled_in_float32_on_one_worker_with_one_cache(
    raw_dir, tmp_path):
  args = _args(raw_dir, tmp_path)
  layout = RunLayout(tmp_path / "run", marker_name=".pretrained")
  gemma = [pretrained._evaluation(layout, args, name, layout.model_dir(name),
                                  4, [], gemma=True).args
           for name in ("gemma3_270m", "gemma_full")]
  for flags in gemma:
    assert "--dtype=float32" in flags and "--batch_size=4" in flags
    assert f"--compilation_cache_dir={layout.root / 'jax_cache'}" in flags
    # One worker: each would load Gemma and compile its sampler.
    assert "--direct_num_workers=1" in flags
    assert not any(flag.startswith("--direct_num_workers=2")
                   for flag in flags)
  tiny = pretrained._evaluation(layout, args, "tiny", layout.model_dir("tiny"),
                                32, []).args
  assert not any(flag.startswith(("--dtype", "--compilation_cache_dir"))
                 for flag in tiny)
  assert "--direct_num_workers=2" in tiny
  for flags in (*gemma, tiny):
    assert "--sampler=inverse_cdf" in flags
  assert not any(flag.startswith("--max_decode_length") for flag in tiny)
  lir = pretrained._evaluation(layout, args, "lir", None, 32, []).args
  assert not any(flag.startswith("--sampler") for flag in lir)
  quick = _args(raw_dir, tmp_path, "--quick")
  assert "--max_decode_length=48" in pretrained._evaluation(
      layout, quick, "tiny", layout.model_dir("tiny"), 32, []).args


def test_the_lanes_keep_gemma_apart_and_wait_for_what_they_read(
    raw_dir, tmp_path, monkeypatch):
  """`run`'s plan with --quick (two lanes), each stage's command replaced by
  writing what it would: Gemma's conversion, fine-tunings and their
  evaluations in one lane; the zero-shot evaluation waits for the conversion
  and the budget runs for the full fine-tuning's cost, although the Gemma
  lane is the slower one here."""
  from pipelines import run_dir  # pylint: disable=g-import-not-at-top
  from experiments import stages  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(pretrained, "gguf_file",
                      lambda layout: layout.root / "model.gguf")
  events, finished, lock = [], set(), threading.Lock()

  def run_stage(self, stage, log_dir):
    self.check()
    with lock:
      events.append(("start", stage.name, threading.get_ident()))
      missing = [needed.name for needed in stage.inputs
                 if needed.name not in finished]
    assert not missing, (stage.name, missing)
    if stage.name.startswith(("convert", "gemma")):
      time.sleep(0.3)  # The Gemma lane is the slower one.
    marker = stage.done_marker
    if stage.name == "preprocess":
      marker.parent.mkdir(parents=True)
      marker.write_text(json.dumps({"categories": {pretrained.CATEGORY: {
          "splits": {"train": {"records": 458}}}}}))
    elif stage.module == "trainer.train":
      marker.mkdir(parents=True)
      batch = next((arg.split("=")[1] for arg in stage.args
                    if arg.startswith("--gin.BATCH_SIZE=")), "16")
      run_dir.write_record(str(stage.resume_dir), "train",
                           {"batch_size": int(batch)})
    elif stage.module == "evaluator.evaluate":
      _evaluation(marker.parent, [1, 11, 2])
    else:
      marker.parent.mkdir(parents=True, exist_ok=True)
      marker.touch()
    _complete(stage, log_dir, 10.0)
    with lock:
      finished.add(stage.name)
      events.append(("end", stage.name, threading.get_ident()))
    return 0.0

  monkeypatch.setattr(stages.Lanes, "run_stage", run_stage)
  layout = pretrained.run([f"--raw_dir={raw_dir}",
                           f"--output_dir={tmp_path / 'run'}", "--quick"])
  lane_of = {name: lane for kind, name, lane in events if kind == "start"}
  order = [name for kind, name, _ in events if kind == "start"]
  gemma_lane = [name for name in order
                if lane_of[name] == lane_of["gemma_full"]]
  assert gemma_lane == ["convert", "gemma_full", "gemma_lora",
                        "eval_gemma_full", "eval_gemma_lora"]
  assert [name for name in order if name not in gemma_lane] == [
      "preprocess", "vocabulary", "tiny", "eval_lir", "eval_tiny",
      "eval_gemma3_270m", "tiny_equal_steps", "eval_tiny_equal_steps",
      "tiny_equal_cpu", "eval_tiny_equal_cpu"]
  assert lane_of["tiny"] != lane_of["gemma_full"]
  position = {event[:2]: index for index, event in enumerate(events)}
  assert position["end", "convert"] < position["start", "eval_gemma3_270m"]
  assert position["end", "gemma_full"] < position["start", "tiny_equal_steps"]
  results = layout.results.read_text()
  for row in ("tiny (from scratch)", "Gemma 3 270M zero-shot",
              pretrained.GEMMA_FULL_ROW, "Gemma 3 270M LoRA"):
    assert f"### {row} against LIR (paired t-test)" in results
  # 10 CPU seconds each: the tiny model's 50 steps fit Gemma's cost.
  for row in ("tiny, equal steps (2 of 4)", "tiny, equal CPU (50 steps)"):
    assert (f"### {pretrained.GEMMA_FULL_ROW} against {row} (paired t-test)"
            in results)
