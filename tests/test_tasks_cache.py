"""seqio's Beam cache script runs on the CALRec tasks (local FnApiRunner)."""

import os
import subprocess
import sys

import pytest
import seqio
import tasks_testdata

from pipelines import templates
from tasks import mixtures
from tasks import preprocessors
from tasks import vocab
from test_trainer_train import _cli
from test_trainer_train import TINY_STAGE1
from trainer import checkpoints

CATEGORY = "Cached_Cat"
TASK = "calrec_cached_cat"
LENGTHS = {"inputs": 512, "targets": 64}

# Runs the Beam cache job and training in subprocesses.
pytestmark = pytest.mark.slow


def _by_user(ds):
  return {ex["user_id"].decode(): (ex["inputs"].tolist(), ex["targets"].tolist())
          for ex in ds.as_numpy_iterator()}


def _cache(data_dir, model, cache_dir, task):
  """Runs seqio's cache script on `task` of the tasks of `data_dir`."""
  env = dict(os.environ, **{mixtures.DATA_DIR_ENV: str(data_dir),
                            mixtures.VOCABULARY_ENV: model})
  subprocess.run(
      [sys.executable, "-m", "seqio.scripts.cache_tasks_main",
       "--module_import=tasks.mixtures", f"--tasks={task}",
       f"--output_cache_dir={cache_dir}",
       "--pipeline_options=--runner=FnApiRunner"],
      env=env, check=True, capture_output=True, timeout=300)


def test_cache_tasks_main_matches_uncached(tmp_path, capfd):
  data_dir, cache_dir = tmp_path / "data", tmp_path / "cache"
  written = tasks_testdata.write_category(data_dir, CATEGORY, num_users=8, seed=0,
                                      splits=("train", "validation"))
  # Its newest history item has a title of one word (no spaces) but of over
  # 512 tokens (byte fallback), so the user is dropped with a warning.
  too_long = templates.item_text("光" * 200, CATEGORY, None, None)
  tasks_testdata.write_split(data_dir, CATEGORY, "validation", [
      *written["validation"],
      ("long-user", [*written["validation"][0][1][:2], too_long,
                     written["validation"][0][1][-1]])])
  tasks_testdata.write_manifest(data_dir)
  model = tasks_testdata.train_test_vocabulary(tmp_path / "test.model")
  _cache(data_dir, model, cache_dir, TASK)
  mixtures.register_mixtures(data_dir, model)
  seqio.add_global_cache_dirs([str(cache_dir)])
  task = seqio.get_mixture_or_task(TASK)
  assert task.cache_dir == str(cache_dir / TASK)
  cached = _by_user(task.get_dataset(LENGTHS, split="validation",
                                     use_cached=True, shuffle=False))
  uncached = _by_user(task.get_dataset(LENGTHS, split="validation",
                                       shuffle=False))
  assert cached == uncached
  assert capfd.readouterr().err.count(
      'dropped the example of user "long-user"') == 2
  vocabulary = vocab.get_vocabulary(model)
  assert {user: vocabulary.decode(targets[:-1])
          for user, (_, targets) in cached.items()} == {
              user: texts[-1] for user, texts in written["validation"]}
  # Training examples are augmented after the cache, from cached records:
  # each is its user's record cut by k in {0, ..., min(4, n - 2)} items (the
  # cut also depends on the position in the stream, which the cache changes).
  train = _by_user(task.get_dataset(LENGTHS, split="train", use_cached=True,
                                    shuffle=False))
  assert len(train) == 8
  for user, texts in written["train"]:
    allowed = [
        (list(preprocessors.budgeted_prompt(texts[:-1 - k], vocabulary,
                                            LENGTHS["inputs"]).token_ids),
         vocabulary.encode(texts[-1 - k]) + [vocab.EOS_ID])
        for k in range(min(preprocessors.MAX_CUT_ITEMS, len(texts) - 2) + 1)]
    assert train[user] in allowed


def test_training_reads_the_cache_dirs_it_is_given_not_the_records(
    tmp_path):
  """`trainer.train` with USE_CACHED_TASKS reads the seqio cache of the
  directories `--seqio_additional_cache_dirs` names (the records are
  unreadable), and without one it stops with a one-line error."""
  data_dir, cache_dir = tmp_path / "data", tmp_path / "cache"
  tasks_testdata.write_category(data_dir, "CDs", num_users=8, seed=0,
                                splits=("train", "validation"))
  tasks_testdata.write_manifest(data_dir)
  model = tasks_testdata.train_test_vocabulary(tmp_path / "test.model")
  _cache(data_dir, model, cache_dir, "calrec_cds")
  for record in (data_dir / "CDs").glob("*.tfrecord"):
    record.write_bytes(b"not a TFRecord")
  args = [f"--gin_file={TINY_STAGE1}",
          f"--gin.MODEL_DIR='{tmp_path / 'model'}'",
          f"--gin.DATA_DIR='{data_dir}'", f"--gin.VOCABULARY='{model}'",
          "--gin.USE_CACHED_TASKS=True", "--gin.TRAIN_STEPS=1",
          "--gin.BATCH_SIZE=4"]
  uncached = _cli(*args)
  assert uncached.returncode == 1
  assert "Traceback" not in uncached.stderr
  assert ("ValueError: USE_CACHED_TASKS is True but calrec_cds has no seqio "
          "cache in any cache directory: write it with") in uncached.stderr
  cached = _cli(*args, f"--seqio_additional_cache_dirs={cache_dir}")
  assert cached.returncode == 0, cached.stderr[-3000:]
  assert checkpoints.available_steps(tmp_path / "model") == [1]
