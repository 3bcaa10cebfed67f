"""The pretrained-LLM experiment's flags, data config and stage plan."""

import json
import pathlib

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
  assert (args.num_generations, args.tiny_steps) == (8, 50)
  args = _args(raw_dir, tmp_path)
  assert (args.num_generations, args.tiny_steps) == (32, 400)


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
  rows = pretrained.model_stages(layout, args, data, epoch_steps=5)
  names = [stage.name for _, stage, _ in rows]
  assert names == ["vocabulary", "tiny", "convert", "gemma_full",
                   "gemma_lora"]
  converted = str(layout.model_dir("gemma3_270m"))
  for _, stage, model_dir in rows[3:]:
    command = " ".join(stage.args)
    assert f"INITIAL_CHECKPOINT_PATH={converted!r}" in command
    assert f"VOCABULARY={converted + '/vocabulary.model'!r}" in command
    assert "TRAIN_STEPS=10" in command  # 2 epochs of 5 steps
    assert stage.done_marker == model_dir / "checkpoints" / "10"
  assert pretrained.LORA_GIN in " ".join(rows[4][1].args)
  assert pretrained.LORA_GIN not in " ".join(rows[3][1].args)
