"""Checkpoint selection by validation NDCG@10 (paper section 4)."""

import json
import math

import beam_testfs
import evaluator_testdata
import pytest

from evaluator import evaluate
from evaluator import files
from evaluator import report
from evaluator import select_checkpoint

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


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  evaluator_testdata.write_corpus(root / CATEGORY, [_item(i) for i in ITEMS])
  evaluator_testdata.write_split(
      root / CATEGORY, "validation", CATEGORY,
      [(user, [_item(i) for i in items]) for user, items in USERS.items()])
  return root


@pytest.fixture
def model_dir(tmp_path):
  for step in (100, 200, 300):
    (tmp_path / "run" / "checkpoints" / str(step)).mkdir(parents=True)
  return tmp_path / "run"


def _select(data_dir, model_dir, generators, *flags):
  args, passed_on = select_checkpoint.parse_args([
      f"--model_dir={model_dir}", f"--data_dir={data_dir}",
      f"--category={CATEGORY}", "--runner=FnApiRunner", *flags])
  return select_checkpoint.select(args, passed_on,
                                  lambda step: generators[step])


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


def test_ties_go_to_the_earlier_step_and_metric_is_selectable(data_dir,
                                                              model_dir):
  selection = _select(data_dir, model_dir,
                      {200: LastItemGenerator, 300: LastItemGenerator},
                      "--steps=300,200", "--metric=Recall@10/opt")
  assert list(selection["scores"]) == ["200", "300"]
  assert selection["metric"] == "Recall@10/opt"
  assert selection["best_step"] == 200


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
