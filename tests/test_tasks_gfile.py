"""Tasks and vocabulary on a non-local tf.io.gfile filesystem (ram://)."""

import random
import uuid

import pytest
import seqio
import tasks_testdata
import tensorflow as tf

from tasks import mixtures
from tasks import vocab


@pytest.fixture(scope="module")
def output():
  """A preprocessing output and a vocabulary trained on it, in ram://."""
  root = f"ram://calrec-{uuid.uuid4().hex}"
  data_dir = f"{root}/data"
  written = tasks_testdata.write_category(data_dir, "Arts", num_users=4, seed=0,
                                      splits=("train", "validation"))
  tasks_testdata.write_corpus(data_dir, "Arts", tasks_testdata.random_item_texts(
      random.Random(0), 300, "Arts"))
  tasks_testdata.write_manifest(data_dir)
  model = f"{root}/vocab/calrec.model"
  vocab.main([f"--data_dir={data_dir}", f"--output={model}",
              "--vocab_size=400"])
  yield data_dir, model, written
  tf.io.gfile.rmtree(root)


def test_vocab_cli_writes_model_and_vocab(output):
  _, model, _ = output
  assert tf.io.gfile.exists(model.replace(".model", ".vocab"))
  vocabulary = vocab.get_vocabulary(model)
  assert vocabulary.tokenizer.eos_id() == vocab.EOS_ID
  assert 259 < vocabulary.tokenizer.get_piece_size() <= 400  # > bytes + 3
  # Trained on the corpus: its texts round-trip, each in fewer pieces than
  # it has characters (merged pieces, not bytes alone).
  for text in tasks_testdata.random_item_texts(random.Random(0), 20, "Arts"):
    ids = vocabulary.encode(text)
    assert vocabulary.decode(ids) == text
    assert len(ids) < len(text)


def test_tasks_read_the_records(output):
  data_dir, model, written = output
  assert mixtures.register_mixtures(data_dir, model) == {"Arts": "calrec_arts"}
  vocabulary = vocab.get_vocabulary(model)
  ds = seqio.get_mixture_or_task("calrec_arts").get_dataset(
      {"inputs": 1024, "targets": 128}, split="validation", shuffle=False)
  targets = {ex["user_id"].decode(): vocabulary.decode(ex["targets"].tolist())
             for ex in ds.as_numpy_iterator()}
  assert targets == {user: texts[-1] for user, texts in written["validation"]}
  assert [task.name for task in seqio.get_mixture_or_task(
      mixtures.STAGE1_MIXTURE).tasks] == ["calrec_arts"]
