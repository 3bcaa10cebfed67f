"""Reading split records and the corpus, with bad input."""

import evaluator_testdata
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tensorflow.core.example import example_pb2

from evaluator import data


def _example(**features):
  example = example_pb2.Example()
  for name, values in features.items():
    example.features.feature[name].bytes_list.value.extend(values)
  return example.SerializeToString()


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
