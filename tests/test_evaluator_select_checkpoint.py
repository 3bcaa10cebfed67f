"""Checkpoint selection by validation NDCG@10 (paper section 4)."""

import dataclasses
import json
import math

import beam_testfs
import evaluator_testdata
import pytest

from evaluator import evaluate
from evaluator import report
from evaluator import select_checkpoint
from pipelines import files
from pipelines import sequences

CATEGORY = "CDs"
ITEMS = {"A": "alpha beta", "B": "gamma delta", "C": "epsilon zeta",
         "D": "eta theta", "E": "iota kappa"}
USERS = {"u1": "ABB", "u2": "CDE", "u3": "EAC", "u4": "BDD"}


class LastItemGenerator:
  """A 'good' checkpoint: recommends the last history item."""

  def generate(self, requests):
    return [[(request.history_texts[-1], -1.0)] for request in requests]


class UnmatchableGenerator:
  """A 'bad' checkpoint: its text matches no item, every score is 0."""

  def generate(self, requests):
    return [[("qqqq zzzz", -1.0)] for _ in requests]


class NoGenerator:
  """Fails when a reused evaluation would be recomputed."""

  def generate(self, requests):
    raise AssertionError("this step should have been reused")


def _item(item_id):
  return {"item_id": item_id, "text": ITEMS[item_id], "title": ITEMS[item_id],
          "category": CATEGORY, "brand": "Unknown", "price": "Unknown"}


def _write_data(root, users):
  """CATEGORY, a validation category, with `users` ({id: item letters})."""
  evaluator_testdata.write_output(
      root, CATEGORY, [_item(i) for i in ITEMS],
      [(user, [_item(i) for i in items]) for user, items in users.items()],
      sequences.ROLE_SPLITS[sequences.Role.VALIDATION])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  _write_data(root, USERS)
  return root


@pytest.fixture
def model_dir(tmp_path):
  for step in (100, 200, 300):
    (tmp_path / "run" / "checkpoints" / str(step)).mkdir(parents=True)
  return tmp_path / "run"


def _select(data_dir, model_dir, generators, *flags):
  selection, beam_argv = select_checkpoint.parse_args([
      f"--model_dir={model_dir}", f"--data_dir={data_dir}",
      f"--category={CATEGORY}", "--runner=FnApiRunner", *flags])
  return select_checkpoint.select(selection, beam_argv,
                                  lambda step: generators[step])


@pytest.mark.slow
def test_best_step_by_pessimistic_ndcg_and_reuse(data_dir, model_dir,
                                                 tmp_path):
  selection = _select(data_dir, model_dir, {100: UnmatchableGenerator,
                                            200: LastItemGenerator,
                                            300: UnmatchableGenerator})
  lir = evaluate.run([f"--data_dir={data_dir}", f"--category={CATEGORY}",
                      "--split=validation", "--model=lir",
                      f"--output_dir={tmp_path / 'lir'}",
                      "--runner=FnApiRunner"])
  # All-zero scores: every target ranks last of the 5 items when pessimistic.
  unmatched = 1 / math.log2(len(ITEMS) + 1)
  assert selection["scores"] == pytest.approx(
      {"100": unmatched, "200": lir["metrics"]["NDCG@10/pes"],
       "300": unmatched})
  assert lir["metrics"]["NDCG@10/pes"] > unmatched
  assert selection["best_step"] == 200
  assert selection["best_checkpoint"] == str(model_dir.absolute() /
                                             "checkpoints" / "200")
  output_dir = model_dir / f"selection_{CATEGORY}_validation"
  assert json.loads((output_dir / "selection.json").read_text()) == selection
  assert report.load_summary(str(output_dir / "200"))["checkpoint_step"] == 200

  # Same settings: every step is reused. Other settings: recomputed.
  again = _select(data_dir, model_dir, dict.fromkeys((100, 200, 300),
                                                     NoGenerator))
  assert again == selection
  with pytest.raises(Exception, match="should have been reused"):
    _select(data_dir, model_dir, dict.fromkeys((100, 200, 300), NoGenerator),
            "--num_preds=5")
  # A step retrained since (other parameter files) is evaluated again.
  params = model_dir / "checkpoints" / "200" / "params"
  params.mkdir()
  (params / "d").write_bytes(b"retrained")
  with pytest.raises(Exception, match="should have been reused"):
    _select(data_dir, model_dir, {100: NoGenerator, 200: NoGenerator,
                                  300: NoGenerator}, "--steps=200")
  assert _select(data_dir, model_dir, {200: LastItemGenerator},
                 "--steps=200")["scores"] == {"200": selection["scores"]["200"]}


def test_each_step_is_evaluated_in_python_with_its_config(data_dir, model_dir,
                                                          monkeypatch):
  """The flags are parsed once; each step's evaluation gets a config, not a
  command line: the one parsed with the step's checkpoint and folder."""
  selection, beam_argv = select_checkpoint.parse_args([
      f"--model_dir={model_dir}", f"--data_dir={data_dir}",
      f"--category={CATEGORY}", "--num_preds=5", "--runner=FnApiRunner"])
  evaluated = []

  def run_resolved(resolved, beam_argv, load_generator):
    evaluated.append((resolved.config, beam_argv, load_generator))
    score = {100: 0.1, 200: 0.3, 300: 0.2}[resolved.config.checkpoint_step]
    return {"metrics": {"NDCG@10/pes": score}}

  def parse_flags(*args, **kwargs):
    raise AssertionError(f"flags parsed for a step: {args} {kwargs}")

  monkeypatch.setattr(evaluate, "run_resolved", run_resolved)
  monkeypatch.setattr(evaluate, "parse_flags", parse_flags)
  generators = {100: UnmatchableGenerator, 200: LastItemGenerator,
                300: NoGenerator}
  result = select_checkpoint.select(selection, beam_argv, generators.get)
  output_dir = model_dir / f"selection_{CATEGORY}_validation"
  assert [(config.checkpoint_step, config.output_dir, config.overwrite,
           argv, generator) for config, argv, generator in evaluated] == [
               (step, str(output_dir / str(step)), True,
                ["--runner=FnApiRunner"], generators[step])
               for step in (100, 200, 300)]
  # Every other setting is the one parsed at the start.
  base = selection.evaluation
  assert (base.num_preds, base.split, base.model_dir) == (
      5, "validation", str(model_dir))
  assert {dataclasses.replace(config, checkpoint_step=None,
                              output_dir=base.output_dir, overwrite=False)
          for config, _, _ in evaluated} == {base}
  assert result["best_step"] == 200


@pytest.mark.slow
def test_a_step_is_evaluated_again_on_other_data(data_dir, model_dir,
                                                 tmp_path):
  """The data folder, and the data in it, are settings of the evaluation."""
  four_users = _select(data_dir, model_dir, {200: LastItemGenerator},
                       "--steps=200")["scores"]["200"]
  # Another folder with one user, whose last item is the target: NDCG 1.
  other = tmp_path / "other"
  _write_data(other, {"u4": USERS["u4"]})
  assert _select(other, model_dir, {200: LastItemGenerator},
                 "--steps=200")["scores"] == {"200": 1.0} != four_users
  # The same folder preprocessed again (its manifest.json differs): each
  # target ties the 4 other items at 0 and comes last, pessimistically.
  _write_data(other, {"u2": USERS["u2"], "u3": USERS["u3"]})
  again = _select(other, model_dir, {200: LastItemGenerator}, "--steps=200")
  assert again["scores"] == {"200": pytest.approx(1 / math.log2(len(ITEMS)
                                                                + 1))}
  assert _select(other, model_dir, {200: NoGenerator}, "--steps=200") == again


@pytest.mark.parametrize("flags", [["--batch_size=4"],
                                   ["--recommendations_k=3"]])
@pytest.mark.slow
def test_a_step_is_evaluated_again_with_other_batches_or_outputs(
    data_dir, model_dir, flags):
  _select(data_dir, model_dir, {200: LastItemGenerator}, "--steps=200")
  with pytest.raises(Exception, match="should have been reused"):
    _select(data_dir, model_dir, {200: NoGenerator}, "--steps=200", *flags)


@pytest.mark.slow
def test_an_evaluation_that_recorded_fewer_settings_is_replaced(data_dir,
                                                                model_dir):
  """metrics.json of a version that did not record the data or batches."""
  selection = _select(data_dir, model_dir, {200: LastItemGenerator},
                      "--steps=200")
  metrics_path = (model_dir / f"selection_{CATEGORY}_validation" / "200" /
                  report.METRICS_FILE)
  summary = json.loads(metrics_path.read_text())
  for key in ("data_dir", "manifest_sha256", "num_records", "batch_size",
              "recommendations_k"):
    del summary[key]
  metrics_path.write_text(json.dumps(summary))
  with pytest.raises(Exception, match="should have been reused"):
    _select(data_dir, model_dir, {200: NoGenerator}, "--steps=200")
  assert _select(data_dir, model_dir, {200: LastItemGenerator},
                 "--steps=200") == selection


@pytest.mark.slow
def test_ties_go_to_the_earlier_step_and_metric_is_selectable(data_dir,
                                                              model_dir):
  selection = _select(data_dir, model_dir,
                      {200: LastItemGenerator, 300: LastItemGenerator},
                      "--steps=300,200", "--metric=Recall@10/opt")
  assert list(selection["scores"]) == ["200", "300"]
  assert selection["metric"] == "Recall@10/opt"
  assert selection["best_step"] == 200


@pytest.mark.slow
def test_selection_written_to_a_remote_folder(data_dir, model_dir, tmp_path):
  beam_testfs.set_root(tmp_path)
  output_dir = beam_testfs.url("selection")
  selection = _select(data_dir, model_dir, {100: LastItemGenerator},
                      "--steps=100", f"--output_dir={output_dir}")
  assert files.read_json(f"{output_dir}/selection.json") == selection
  assert report.load_summary(f"{output_dir}/100")["checkpoint_step"] == 100


@pytest.mark.parametrize("flags,message", [
    (["--steps=150"], "are not checkpoints"),
    (["--checkpoint_step=100"], "is set per step here"),
    (["--steps=1,x"], "comma-separated steps"),
])
def test_bad_flags_say_what_to_fix(data_dir, model_dir, capsys, flags,
                                   message):
  with pytest.raises(SystemExit):
    select_checkpoint.parse_args([f"--model_dir={model_dir}",
                                  f"--data_dir={data_dir}",
                                  f"--category={CATEGORY}", *flags])
  assert message in capsys.readouterr().err


def test_a_run_without_checkpoints_is_refused(data_dir, tmp_path, capsys):
  with pytest.raises(SystemExit):
    select_checkpoint.parse_args([f"--model_dir={tmp_path}",
                                  f"--data_dir={data_dir}",
                                  f"--category={CATEGORY}"])
  assert "No checkpoints in" in capsys.readouterr().err


def test_flags_passed_on_are_checked_before_any_step(data_dir, model_dir,
                                                     capsys):
  with pytest.raises(SystemExit):
    select_checkpoint.parse_args([f"--model_dir={model_dir}",
                                  f"--data_dir={data_dir}",
                                  f"--category={CATEGORY}",
                                  "--num_generation=8"])
  error = capsys.readouterr().err
  assert "--num_generation=8 (did you mean --num_generations?)" in error
  assert ("python -m evaluator.select_checkpoint (flags of evaluator.evaluate)"
          ": error:") in error
