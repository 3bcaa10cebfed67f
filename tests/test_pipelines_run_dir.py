"""Tests of the run-directory contract shared by every stage."""

import hashlib
import os

import beam_testfs
import pytest

from pipelines import run_dir


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


def test_file_digest_is_sha256_of_bytes(tmp_path):
  path = tmp_path / "vocab.model"
  path.write_bytes(b"\x00\x01 pieces" * 1000)
  expected = hashlib.sha256(b"\x00\x01 pieces" * 1000).hexdigest()
  assert run_dir.file_digest(str(path)) == f"sha256:{expected}"


def test_files_fingerprint_changes_with_size_and_set_of_files(tmp_path):
  _write(str(tmp_path / "a.json"), "1\n")
  pattern = str(tmp_path / "*.json")
  first = run_dir.files_fingerprint([pattern])
  assert run_dir.files_fingerprint([pattern]) == first
  _write(str(tmp_path / "a.json"), "12\n")
  grown = run_dir.files_fingerprint([pattern])
  assert grown != first
  _write(str(tmp_path / "b.json"), "1\n")
  assert run_dir.files_fingerprint([pattern]) != grown


def test_check_passes_without_record_and_for_same_inputs(tmp_path):
  folder = str(tmp_path / "run")
  run_dir.check_made_from(folder, "train", {"a": 1}, "start over")
  os.makedirs(folder)
  run_dir.write_record(folder, "train", {"a": 1, "b": [1, 2]})
  run_dir.check_made_from(folder, "train", {"a": 1, "b": [1, 2]},
                          "start over")
  assert run_dir.read_record(folder) == {"stage": "train",
                                         "made_from": {"a": 1, "b": [1, 2]}}


def test_check_names_first_difference_and_how_to_start_over(tmp_path):
  folder = str(tmp_path)
  run_dir.write_record(folder, "train", {"batch_size": 8, "vocabulary":
                                         "sha256:aa", "seed": 0})
  with pytest.raises(run_dir.RunDirError) as error:
    run_dir.check_made_from(folder, "train", {"batch_size": 16, "vocabulary":
                                              "sha256:bb", "seed": 0},
                            "pass --overwrite")
  message = str(error.value)
  assert "\n" not in message
  assert "batch_size: 8 -> 16" in message
  assert "(and 1 more)" in message
  assert message.endswith("; pass --overwrite.")


def test_check_refuses_another_stage(tmp_path):
  run_dir.write_record(str(tmp_path), "preprocess", {})
  with pytest.raises(run_dir.RunDirError, match="another stage"):
    run_dir.check_made_from(str(tmp_path), "evaluate", {}, "pick another")


def test_differences_shows_missing_entries_and_shortens_long_values():
  found = run_dir.differences({"a": "x" * 200}, {"b": 1})
  assert found[0].startswith('a: "xxx') and found[0].endswith("-> (none)")
  assert len(found[0]) < 200
  assert found[1] == "b: (none) -> 1"


def test_swap_in_replaces_output_and_leaves_no_staging(tmp_path):
  output = str(tmp_path / "out")
  _write(os.path.join(output, "old.txt"), "old")
  _write(os.path.join(output, "sub", "kept_name.txt"), "old")
  staging = run_dir.staging_dir(output)
  assert staging == output + ".staging"
  _write(os.path.join(staging, "sub", "kept_name.txt"), "new")
  run_dir.write_record(staging, "evaluate", {"x": 1})
  run_dir.swap_in(staging, output)
  assert sorted(os.listdir(output)) == ["run.json", "sub"]
  with open(os.path.join(output, "sub", "kept_name.txt")) as f:
    assert f.read() == "new"
  assert not os.path.exists(staging)
  assert not os.path.exists(output + ".old")


def test_swap_in_into_absent_output(tmp_path):
  output = str(tmp_path / "absent")
  staging = run_dir.staging_dir(output + "/")
  _write(os.path.join(staging, "a.txt"), "a")
  run_dir.swap_in(staging, output + "/")
  assert os.listdir(output) == ["a.txt"]


def test_differences_name_the_nested_field_that_differs():
  recorded = {"config": {"categories": [{"name": "CDs", "num_shards": 2}]},
              "inputs": "files:aa"}
  current = {"config": {"categories": [{"name": "CDs", "num_shards": 3}]},
             "inputs": "files:aa"}
  assert run_dir.differences(recorded, current) == [
      "config.categories.0.num_shards: 2 -> 3"]
  assert run_dir.flat({"a": [1, {"b": None}]}) == {"a.0": 1, "a.1.b": None}


def test_the_current_folder_stages_and_swaps_beside_itself(tmp_path,
                                                          monkeypatch):
  output = tmp_path / "out"
  output.mkdir()
  (output / "old.txt").write_text("old")
  monkeypatch.chdir(output)
  staging = run_dir.staging_dir(".")
  assert staging == str(tmp_path / "out.staging")
  _write(os.path.join(staging, "new.txt"), "new")
  run_dir.swap_in(staging, ".")
  assert sorted(os.listdir(output)) == ["new.txt"]
  assert sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("remote", [beam_testfs.url, beam_testfs.object_url],
                         ids=["folders", "objects"])
def test_swap_in_on_remote_paths(tmp_path, remote):
  beam_testfs.set_root(tmp_path)
  _write(str(tmp_path / "out" / "old.txt"), "old")
  staging = run_dir.staging_dir(remote("out"))
  assert staging == remote("out.staging")
  _write(str(tmp_path / "out.staging" / "sub" / "new.txt"), "new")
  run_dir.write_record(staging, "evaluate", {"x": 1})
  run_dir.swap_in(staging, remote("out") + "/")
  assert sorted(os.listdir(tmp_path / "out")) == ["run.json", "sub"]
  assert run_dir.read_record(remote("out")) == {"stage": "evaluate",
                                                "made_from": {"x": 1}}
  # An object store leaves the staging prefix's empty local folders behind.
  assert not [files for _, _, files in os.walk(tmp_path / "out.staging")
              if files]
