"""Generated sample -> preprocessing -> vocabulary -> Stage-I batches."""

import collections

import pyarrow.parquet as pq
import pytest
import seqio
import tensorflow as tf

from experiments import sample_data
from pipelines import preprocess
from pipelines import templates
from tasks import feature_converters
from tasks import mixtures
from tasks import vocab

LENGTHS = {"inputs": 256, "targets": 64}
BATCH = 32


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
  folder = tmp_path_factory.mktemp("e2e")
  sample_data.generate(str(folder / "raw"), seed=1, num_users=400,
                       compress=False)
  output = folder / "out"
  preprocess.run([f"--config={folder / 'raw' / 'config.json'}",
                  f"--output_dir={output}"])
  model = folder / "vocab" / "calrec.model"
  vocab.main([f"--data_dir={output}", f"--output={model}",
              "--vocab_size=1000"])
  names = mixtures.register_mixtures(output, model)
  return output, vocab.get_vocabulary(model), names


def _corpus_texts(output):
  texts = set()
  for corpus in output.glob("*/corpus.parquet"):
    texts.update(pq.read_table(corpus, columns=["text"]).column(0).to_pylist())
  return texts


@pytest.mark.slow
def test_stage1_batches_hold_prompts_and_catalogue_items(registered):
  output, vocabulary, names = registered
  assert sorted(names.values()) == [
      "calrec_cds", "calrec_electronics", "calrec_games", "calrec_pet"]
  ds = seqio.get_dataset(
      mixtures.STAGE1_MIXTURE, LENGTHS, dataset_split="train", shuffle=True,
      seed=0, num_epochs=None,
      feature_converter=feature_converters.CALRecFeatureConverter())
  corpus = _corpus_texts(output)
  batches = list(ds.batch(BATCH).take(4).as_numpy_iterator())
  for batch in batches:
    assert batch["decoder_target_tokens"].shape == (BATCH, 320)
    assert batch["item_input_tokens"].shape == (BATCH, 64)
    for row in range(BATCH):
      item = batch["item_input_tokens"][row]
      assert item[batch["item_pool_weights"][row] == 1][-1] == vocab.EOS_ID
      assert vocabulary.decode(item.tolist()) in corpus
      history = batch["decoder_input_tokens"][row][
          batch["history_pool_weights"][row] == 1]
      prompt = vocabulary.decode(history.tolist())
      assert prompt.startswith(
          f"{templates.USER_PREFIX} {templates.FIRST_ITEM_PREFIX} Title: ")
      # "\n" of the item prefixes is a space in these tokens (nmt_nfkc).
      assert prompt.endswith(templates.NEXT_ITEM_PREFIX.replace("\n", " "))
      assert len(history) <= LENGTHS["inputs"]


@pytest.mark.slow
def test_validation_split_predicts_the_last_item(registered):
  output, vocabulary, _ = registered
  ds = seqio.get_mixture_or_task("calrec_cds").get_dataset(
      LENGTHS, split="validation", shuffle=False)
  records = {}
  for path in output.glob("CDs/validation-*.tfrecord"):
    for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
      example = tf.train.Example.FromString(raw)
      feature = example.features.feature
      records[feature["user_id"].bytes_list.value[0]] = [
          t.decode() for t in feature["item_texts"].bytes_list.value]
  seen = collections.Counter()
  for example in ds.as_numpy_iterator():
    texts = records[example["user_id"]]
    expected = vocabulary.encode(texts[-1])[:LENGTHS["targets"] - 1]
    assert example["targets"].tolist() == expected + [vocab.EOS_ID]
    prompt = vocabulary.decode(example["inputs"].tolist())
    assert texts[-2] in prompt
    seen[example["user_id"]] += 1
  assert set(seen) == set(records) and set(seen.values()) == {1}
