"""Faults of the preprocessing job (`python -m pipelines.preprocess`) and
what a user sees: each test reproduces one item of the reliability issue."""

import collections
import gzip
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from pipelines import config as config_lib
from pipelines import outputs
from pipelines import preprocess
from pipelines import run_dir
from pipelines import sequences
import pipelines_testdata

_PROG = "python -m pipelines.preprocess"


def _errors(capsys):
  """The lines of stderr that report an error."""
  return [line for line in capsys.readouterr().err.splitlines()
          if "error:" in line]


def _contents(folder):
  """Every file under `folder` by relative name, with its bytes."""
  return {name: (folder / name).read_bytes()
          for name in pipelines_testdata.files(folder)}


def test_item_1_an_input_inside_the_output_dir_is_refused_untouched(
    tmp_path, capsys):
  """Item 1: raw files inside an --output_dir that holds an earlier run are
  refused before anything is deleted, with or without --overwrite; so are
  raw files inside the staging folder the job replaces it from."""
  output = tmp_path / "data"
  config = pipelines_testdata.write_fixture(output / "raw")
  (output / "manifest.json").write_text("{}")
  before = _contents(output)
  for overwrite in ([], ["--overwrite"]):
    with pytest.raises(SystemExit):
      preprocess.run([f"--config={config}", f"--output_dir={output}",
                      *overwrite])
    assert _errors(capsys) == [
        f"{_PROG}: error: Games reviews #0 {output}/raw/Games_5.json lies "
        f"inside --output_dir {output}, which the job replaces; choose an "
        "--output_dir that holds no input"]
    assert _contents(output) == before
  staged = pipelines_testdata.write_fixture(tmp_path / "out.staging" / "raw")
  with pytest.raises(SystemExit):
    preprocess.run([f"--config={staged}", f"--output_dir={tmp_path}/out"])
  assert _errors(capsys) == [
      f"{_PROG}: error: Games reviews #0 {tmp_path}/out.staging/raw/"
      f"Games_5.json lies inside {tmp_path}/out.staging, where the job writes "
      "before it replaces --output_dir; choose an --output_dir that holds no "
      "input"]
  assert pipelines_testdata.files(tmp_path / "out.staging") == [
      "raw/Games_5.json", "raw/config.json", "raw/meta_Games.json.gz"]


@pytest.mark.slow
def test_item_5_a_failed_rerun_leaves_the_earlier_output_intact(
    tmp_path, capsys, monkeypatch):
  """Item 5: --overwrite replaces the output only once the new job has
  succeeded; a rerun without it names what differs from the recorded run."""
  data = tmp_path / "data"
  config = pipelines_testdata.write_fixture(data)
  output = tmp_path / "out"
  staging = tmp_path / "out.staging"
  flags = [f"--config={config}", f"--output_dir={output}"]
  preprocess.run(flags)
  manifest = json.loads((output / "manifest.json").read_text())
  assert json.loads((output / "run.json").read_text()) == {
      "stage": "preprocess", "made_from": {
          "config": manifest["config"],
          "inputs": run_dir.files_fingerprint(
              [str(data / "Games_5.json"), str(data / "meta_Games.json.gz")])}}
  assert not staging.exists()
  before = _contents(output)

  with pytest.raises(SystemExit):
    preprocess.run(flags)
  assert _errors(capsys) == [
      f"{_PROG}: error: --output_dir {output} already holds this very run "
      "(the same config and input files); pass --overwrite to run it again "
      "or choose another folder"]
  raw = json.loads(config.read_text())
  raw["categories"][1]["num_shards"] = 3
  config.write_text(json.dumps(raw))
  with pytest.raises(SystemExit):
    preprocess.run(flags)
  assert _errors(capsys) == [
      f"{_PROG}: error: --output_dir {output} was made from other inputs: "
      "config.categories.1.num_shards: 2 -> 3; pass --overwrite to replace "
      "it or choose another folder"]

  def fail(*args):
    raise OSError("disk full")

  monkeypatch.setattr(outputs, "write_rejects", fail)
  with pytest.raises(Exception, match="disk full"):
    preprocess.run(flags + ["--overwrite"])
  monkeypatch.undo()
  assert _contents(output) == before
  # The failed run's files, left where the next run deletes them.
  assert "_RUN_STARTED" in pipelines_testdata.files(staging)
  assert "Stage1/train-00002-of-00003.tfrecord" in (
      pipelines_testdata.files(staging))

  preprocess.run(flags + ["--overwrite"])
  assert not staging.exists()
  names = pipelines_testdata.files(output)
  assert [name for name in names if name.startswith("Stage1/train")] == [
      f"Stage1/train-0000{i}-of-00003.tfrecord" for i in range(3)]
  assert {"_RUN_STARTED", "Stage1/train-00000-of-00002.tfrecord"}.isdisjoint(
      names)
  record = json.loads((output / "run.json").read_text())
  assert record["made_from"]["config"]["categories"][1]["num_shards"] == 3


def _corrupt_middle(path):
  """Overwrites 256 bytes in the middle of a gzip file, header intact."""
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 256] = bytes(256)
  path.write_bytes(bytes(data))


@pytest.mark.slow
def test_item_6_corrupt_gzip_is_one_line_and_string_times_are_counted(
    tmp_path):
  """Item 6: (a) gzip data corrupt in the middle of a file ends the job with
  one line naming the file and the offset reading stopped at, not Beam's
  traceback; (b) a unixReviewTime given as a digit string or an integral
  float is converted and counted in stats.json as coerced_unixReviewTime."""
  config = pipelines_testdata.write_fixture(tmp_path / "data")
  path = tmp_path / "data" / "Games_5.json.gz"
  path.write_bytes(gzip.compress("".join(
      pipelines_testdata.review(f"U{i}", "B1", i,
                                text=f"{i * 2654435761 % 2**32:08x}" * 4) +
      "\n" for i in range(20000)).encode()))
  _corrupt_middle(path)
  raw = json.loads(config.read_text())
  raw["categories"][0]["reviews"] = "Games_5.json.gz"
  config.write_text(json.dumps(raw))
  process = subprocess.run(
      [sys.executable, "-m", "pipelines.preprocess", f"--config={config}",
       f"--output_dir={tmp_path}/out"], cwd=REPO_ROOT, capture_output=True,
      text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3"))
  assert process.returncode == 1, process.stderr[-3000:]
  assert "Traceback" not in process.stderr, process.stderr[-3000:]
  errors = [line for line in process.stderr.splitlines() if "error" in line]
  assert len(errors) == 1, errors
  assert errors[0].startswith(
      f"{_PROG}: error: cannot read input file {path} past byte "), errors
  assert errors[0].endswith(
      f"; --output_dir {tmp_path}/out is unchanged"), errors
  assert not (tmp_path / "out").exists()

  data = tmp_path / "data"
  with open(data / "Games_5.json", "a") as f:
    f.write(json.dumps({"reviewerID": "U1", "asin": "B5",
                        "unixReviewTime": "1389744000"}) + "\n")
    f.write(json.dumps({"reviewerID": "U1", "asin": "B6",
                        "unixReviewTime": 1389744001.0}) + "\n")
  raw["categories"] = raw["categories"][:1]
  raw["categories"][0]["reviews"] = "Games_5.json"
  config.write_text(json.dumps(raw))
  stats = preprocess.run([f"--config={config}",
                          f"--output_dir={tmp_path}/out"])
  assert stats["Games"]["counts"]["coerced_unixReviewTime"] == 2
  times = pipelines_testdata.read_split(tmp_path / "out" / "Games",
                                        "test")["U1"][1]
  assert times[-2:] == [1389744000, 1389744001]


def test_item_8_word_vocabulary_counts_the_item_texts_as_words_per_item(
    tmp_path):
  """Item 8: Table 1's vocabulary is the set of lowercased whitespace tokens
  of the templated item texts, punctuation attached; the average word
  frequency is total words / vocabulary size. Counted by hand."""
  meta = {"B1": ("Neiko 6-Inch Caliper", "Tools", "Neiko", "$11.22"),
          "B2": ("Caliper", None, "NEIKO", None)}
  category = config_lib.CategoryConfig(
      name="Tools", reviews=("r",), meta=("m",), role=sequences.Role.EVAL)
  stats = outputs.write_category_files(str(tmp_path), category, meta,
                                       collections.Counter(), meta)
  # "Title: Neiko 6-Inch Caliper. Category: Tools. Brand: Neiko. Price:
  # $11.22.": 10 words; "Title: Caliper. Category: Unknown. Brand: NEIKO.
  # Price: Unknown.": 8. Types: title: neiko 6-inch caliper. category:
  # tools. brand: neiko. price: $11.22. unknown. (B2 adds only the last).
  assert stats["words_per_item"] == 18 / 2
  assert stats["word_vocab_size"] == 11
  assert stats["avg_word_freq"] == 18 / 11
