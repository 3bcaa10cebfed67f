"""Reading split files, records and the corpus, with bad input."""

import json
import re
import shutil

import evaluator_testdata
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tasks_testdata
from tensorflow.core.example import example_pb2

from evaluator import data


def _example(**features):
  example = example_pb2.Example()
  for name, values in features.items():
    example.features.feature[name].bytes_list.value.extend(values)
  return example.SerializeToString(deterministic=True)


def test_last_item_is_the_target():
  user = data.parse_example(_example(
      user_id=[b"u1"], item_ids=[b"a", b"b", b"c"],
      item_texts=[b"A text", b"B text", "C t\u00e9xt".encode()]))
  assert user == data.UserExample("u1", ("a", "b"), ("A text", "B text"), "c",
                                  "C t\u00e9xt")


@pytest.mark.parametrize("serialized, reason", [
    (b"\xff\xfe not a proto", "not a tf.train.Example"),
    (_example(user_id=[b"u"], item_ids=[b"a", b"b"]), "missing feature"),
    (_example(user_id=[b"u"], item_ids=[b"a", b"b"], item_texts=[b"x"]),
     "2 item_ids but 1 item_texts"),
    (_example(user_id=[b"u"], item_ids=[b"a"], item_texts=[b"x"]),
     "needs a history item and a target"),
    (_example(user_id=[b"u"], item_ids=[b"a", b"b"],
              item_texts=[b"x", b"\xc3("]), "not UTF-8"),
])
def test_bad_records_raise_with_a_reason(serialized, reason):
  with pytest.raises(data.BadRecordError, match=reason):
    data.parse_example(serialized)


def test_corpus_rows_and_bad_corpora(tmp_path):
  items = evaluator_testdata.generated_items(5)
  corpus = data.load_corpus(evaluator_testdata.write_corpus(tmp_path, items))
  assert len(corpus) == 6 and corpus.row("I00003") == 3
  assert corpus.row("missing") is None
  assert corpus.ids_at([5, 0]) == ["DUP00000", "I00000"]
  with pytest.raises(FileNotFoundError, match="preprocessing"):
    data.load_corpus(tmp_path / "nothing.parquet")
  pq.write_table(pa.table({"item_id": ["a", "a"], "text": ["x", "y"]}),
                 tmp_path / "dup.parquet")
  with pytest.raises(ValueError, match="appears twice"):
    data.load_corpus(tmp_path / "dup.parquet")


def _write_output(root, num_users):
  """Toys, an evaluation category with 3 shards, and CDs, a validation one."""
  tasks_testdata.write_category(root, "Toys", num_users, seed=0,
                            splits=("train", "validation", "test"),
                            num_shards=3)
  tasks_testdata.write_category(root, "CDs", 2, seed=1,
                            splits=("train", "validation"))
  tasks_testdata.write_manifest(root)


def test_split_files_come_from_the_manifest(tmp_path):
  _write_output(tmp_path / "a", num_users=6)
  split = data.split_files(str(tmp_path / "a"), "Toys", "test")
  assert split.paths == tuple(
      str(tmp_path / "a" / "Toys" / f"test-{shard:05d}-of-00003.tfrecord")
      for shard in range(3))
  assert split.num_records == 6
  # The digest names the manifest's contents, wherever the folder is.
  shutil.copytree(tmp_path / "a", tmp_path / "copy")
  assert data.split_files(str(tmp_path / "copy"), "Toys",
                          "test").manifest_sha256 == split.manifest_sha256
  _write_output(tmp_path / "b", num_users=7)
  assert data.split_files(str(tmp_path / "b"), "Toys",
                          "test").manifest_sha256 != split.manifest_sha256


def test_split_files_refused_naming_the_folder(tmp_path):
  root = str(tmp_path)
  with pytest.raises(data.DataError, match=re.escape(
      f"{root} has no manifest.json: preprocessing did not finish")):
    data.split_files(root, "Toys", "test")
  _write_output(tmp_path, num_users=6)
  with pytest.raises(data.DataError, match=re.escape(
      f"{root}/manifest.json lists no category 'Nope'; it has CDs, Toys.")):
    data.split_files(root, "Nope", "test")
  with pytest.raises(data.DataError, match=re.escape(
      f"{root}/manifest.json lists no test split of CDs; it has train, "
      "validation.")):
    data.split_files(root, "CDs", "test")
  (tmp_path / "Toys" / "test-00001-of-00003.tfrecord").unlink()
  with pytest.raises(data.DataError, match=re.escape(
      f"{root} lacks 1 of the 3 test files of Toys that manifest.json lists, "
      f"e.g. {root}/Toys/test-00001-of-00003.tfrecord.")):
    data.split_files(root, "Toys", "test")
  manifest_path = tmp_path / "manifest.json"
  manifest = json.loads(manifest_path.read_text())
  del manifest["categories"]["Toys"]["splits"]["test"]["files"]
  manifest_path.write_text(json.dumps(manifest))
  with pytest.raises(data.DataError, match=re.escape(
      f"{root}/manifest.json lists no files of the test split of Toys.")):
    data.split_files(root, "Toys", "test")
  manifest_path.write_text("{bad")
  with pytest.raises(data.DataError, match=re.escape(
      f"{root}/manifest.json is not valid JSON: ")):
    data.split_files(root, "Toys", "test")
