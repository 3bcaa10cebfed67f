"""Faults of `python -m trainer.train` from the reliability issue.

One test per item of the issue; each failed before its fix.
"""

import dataclasses
import logging
import re
import shutil
import subprocess
import sys

import conftest
import pytest
import tasks_testdata

from pipelines import run_dir
from test_trainer_train import _assert_trees_equal
from test_trainer_train import _examples
from test_trainer_train import _model
from test_trainer_train import _train
from test_trainer_train import persistent_compilation_cache  # pylint: disable=unused-import
from test_trainer_train import straight_run  # pylint: disable=unused-import
from test_trainer_train import task  # pylint: disable=unused-import
from test_trainer_train import TASK
from test_trainer_train import TINY_STAGE1
from test_trainer_train import vocabulary_path  # pylint: disable=unused-import
from trainer import checkpoints
from trainer import model_dir as model_dir_lib
from trainer import models

# The files a refused run must leave as they were.
_RUN_FILES = (model_dir_lib.MODEL_JSON, model_dir_lib.VOCABULARY_FILE,
              model_dir_lib.CONFIG_GIN, run_dir.RUN_RECORD)


def _copy(straight_run, tmp_path):
  """A copy of the 6-step run (checkpoints 3 and 6) to resume."""
  model_dir = tmp_path / "model"
  shutil.copytree(straight_run[0], model_dir)
  return model_dir


def _run_files(model_dir):
  return {name: (model_dir / name).read_bytes() for name in _RUN_FILES
          if (model_dir / name).exists()}


def _refusal(model_dir, **kwargs) -> str:
  """The first line of the error of resuming in model_dir with `kwargs`
  (gin adds the configurable's name below)."""
  with pytest.raises(run_dir.RunDirError) as error:
    _train(model_dir, train_steps=9, **kwargs)
  return str(error.value).splitlines()[0]


def _start_over(model_dir) -> str:
  return (f"; train into a new MODEL_DIR, or delete {model_dir} to start "
          "over.")


@pytest.mark.slow
def test_item_2_resuming_with_another_vocabulary_is_refused(
    straight_run, tmp_path, vocabulary_path):
  """Item 2: a resume with another vocabulary is refused before it writes
  anything, also in a model directory from before run.json."""
  model_dir = _copy(straight_run, tmp_path)
  other = tasks_testdata.train_test_vocabulary(tmp_path / "other.model",
                                               vocab_size=420, seed=1)
  tasks_testdata.register_in_memory_task(TASK, _examples, other)
  try:
    for older in (False, True):
      if older:
        (model_dir / run_dir.RUN_RECORD).unlink()
      before = _run_files(model_dir)
      assert re.fullmatch(
          re.escape(f"{model_dir} was made from other inputs: vocabulary: ") +
          r'"sha256:[0-9a-f]+\.\.\. -> "sha256:[0-9a-f]+\.\.\.' +
          re.escape(_start_over(model_dir)), _refusal(model_dir))
      assert _run_files(model_dir) == before
  finally:
    tasks_testdata.register_in_memory_task(TASK, _examples, vocabulary_path)


@pytest.mark.slow
def test_item_3_resuming_with_another_batch_or_model_size_is_refused(
    straight_run, tmp_path, vocabulary_path):
  """Item 3: a resume with another batch size or model size is refused in
  one line, exit status 1, before config.gin or anything else is written."""
  model_dir = _copy(straight_run, tmp_path)
  before = _run_files(model_dir)
  assert _refusal(model_dir, batch_size=2) == (
      f"{model_dir} was made from other inputs: batch_size: 4 -> 2"
      f"{_start_over(model_dir)}")
  wider = models.CALRecModel(dataclasses.replace(_model().config, emb_dim=32))
  (model_dir / run_dir.RUN_RECORD).unlink()  # A run from before run.json.
  assert _refusal(model_dir, model=wider) == (
      f"{model_dir} was made from other inputs: network.emb_dim: 64 -> 32"
      f"{_start_over(model_dir)}")
  del before[run_dir.RUN_RECORD]
  assert _run_files(model_dir) == before

  data_dir, cli_dir = tmp_path / "data", tmp_path / "cli"
  tasks_testdata.write_category(data_dir, "CDs", num_users=8, seed=0,
                                splits=("train", "validation"))
  tasks_testdata.write_manifest(data_dir)
  args = [sys.executable, "-m", "trainer.train", f"--gin_file={TINY_STAGE1}",
          f"--gin.MODEL_DIR='{cli_dir}'", f"--gin.DATA_DIR='{data_dir}'",
          f"--gin.VOCABULARY='{vocabulary_path}'"]
  first = subprocess.run(args + ["--gin.TRAIN_STEPS=0"], cwd=conftest.REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
  assert first.returncode == 0, first.stderr[-3000:]
  before = _run_files(cli_dir)
  refused = subprocess.run(args + ["--gin.BATCH_SIZE=8"],
                           cwd=conftest.REPO_ROOT, capture_output=True,
                           text=True, timeout=300)
  assert refused.returncode == 1
  assert "Traceback" not in refused.stderr
  errors = [line for line in refused.stderr.splitlines()
            if "Error: " in line]
  assert len(errors) == 1 and errors[0].endswith(
      f"RunDirError: {cli_dir} was made from other inputs: batch_size: 16 -> "
      f"8{_start_over(cli_dir)}"), errors
  assert _run_files(cli_dir) == before


def _truncate_params(step_dir):
  """Cuts the largest file of the step's parameters in half."""
  largest = max((path for path in (step_dir / "params").rglob("*")
                 if path.is_file()), key=lambda path: path.stat().st_size)
  data = largest.read_bytes()
  largest.write_bytes(data[:len(data) // 2])


@pytest.mark.slow
def test_item_4_a_corrupt_latest_checkpoint_falls_back_to_the_previous(
    straight_run, tmp_path, caplog):
  """Item 4: a resume skips a corrupt latest step, saying why, and resumes
  exactly from the one before; with no usable step it says so in one line.
  Loading a corrupt step for inference fails in one line too."""
  model_dir = _copy(straight_run, tmp_path)
  step_dir = model_dir / "checkpoints" / "6"
  _truncate_params(step_dir)
  with pytest.raises(ValueError) as error:
    model_dir_lib.load_for_inference(model_dir, step=6)
  assert str(error.value) == (
      f"The checkpoint {step_dir} is unusable: its parameter files differ "
      "from those it saved (truncated, removed or rewritten).")
  # A step saved before fingerprints: orbax's own error, in one line.
  fingerprint = (step_dir / checkpoints.FINGERPRINT_FILE).read_bytes()
  (step_dir / checkpoints.FINGERPRINT_FILE).unlink()
  with pytest.raises(ValueError) as error:
    model_dir_lib.load_for_inference(model_dir, step=6)
  assert str(error.value).startswith(
      f"The checkpoint {step_dir} is unusable: it does not restore (")
  assert "\n" not in str(error.value)
  (step_dir / checkpoints.FINGERPRINT_FILE).write_bytes(fingerprint)

  caplog.set_level(logging.INFO)
  resumed = _train(model_dir, train_steps=6)
  _assert_trees_equal(resumed.params, straight_run[1].params)
  _assert_trees_equal(resumed.opt_state, straight_run[1].opt_state)
  messages = [record.getMessage() for record in caplog.records]
  assert (f"Skipping checkpoint step 6: The checkpoint {step_dir} is "
          "unusable: its parameter files differ from those it saved "
          "(truncated, removed or rewritten).") in messages
  assert ("Resuming from checkpoint step 3; deleted the unusable newer steps "
          "[6], which this run trains again.") in messages
  assert checkpoints.available_steps(model_dir) == [3, 6]

  for step in (3, 6):
    _truncate_params(model_dir / "checkpoints" / str(step))
  with pytest.raises(ValueError) as error:
    _train(model_dir, train_steps=9)
  assert str(error.value).splitlines()[0] == (
      f"No checkpoint in {model_dir / 'checkpoints'} is usable (steps [3, "
      f"6], each skipped above); delete {model_dir} or train into a new "
      "MODEL_DIR to start over.")
