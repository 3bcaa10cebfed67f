"""Augmentation and input-budget truncation (paper section 4)."""

import collections
import random

import numpy as np
import pytest
import seqio
import tasks_testdata
import tensorflow as tf

from tasks import preprocessors
from pipelines import templates
from tasks import vocab


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory):
  path = tasks_testdata.train_test_vocabulary(
      tmp_path_factory.mktemp("vocab") / "test.model")
  return vocab.get_vocabulary(path)


def _features(vocabulary):
  return {"inputs": seqio.Feature(vocabulary, add_eos=False),
          "targets": seqio.Feature(vocabulary, add_eos=True)}


def _records_dataset(records, max_cut_items):
  """(user_id, item_texts) records as the source would yield them."""
  def generator():
    for user_id, texts in records:
      yield {"user_id": user_id, "category": "Tools", "item_texts": texts,
             "max_cut_items": max_cut_items}
  return tf.data.Dataset.from_generator(generator, output_signature={
      "user_id": tf.TensorSpec([], tf.string),
      "category": tf.TensorSpec([], tf.string),
      "item_texts": tf.TensorSpec([None], tf.string),
      "max_cut_items": tf.TensorSpec([], tf.int32)})


def _budgeted_by_brute_force(history, vocabulary, max_tokens):
  """Tokens of the prompt of the longest history suffix that fits."""
  for start in range(len(history)):
    tokens = vocabulary.encode(templates.user_prompt(history[start:]))
    if len(tokens) <= max_tokens:
      return start, tokens
  return None


def test_budgeted_prompt_drops_oldest_items_whole(vocabulary):
  history = tasks_testdata.random_item_texts(random.Random(1), 8, "Tools")
  keep_three = len(vocabulary.encode(templates.user_prompt(history[-3:])))
  prompt = preprocessors.budgeted_prompt(history, vocabulary, keep_three)
  assert prompt.num_dropped == 5
  assert prompt.text == templates.user_prompt(history[5:])
  assert list(prompt.token_ids) == vocabulary.encode(prompt.text)
  assert len(prompt.token_ids) == keep_three
  tighter = preprocessors.budgeted_prompt(history, vocabulary, keep_three - 1)
  assert tighter.num_dropped == 6
  assert tighter.text.startswith(
      f"{templates.USER_PREFIX} {templates.FIRST_ITEM_PREFIX} {history[6]}")
  assert tighter.text.endswith(f"{history[7]}{templates.NEXT_ITEM_PREFIX}")
  untouched = preprocessors.budgeted_prompt(history, vocabulary, 10_000)
  assert untouched.num_dropped == 0


def test_budget_below_one_item_is_a_clear_error(vocabulary):
  history = tasks_testdata.random_item_texts(random.Random(2), 3, "Tools")
  one_item = len(vocabulary.encode(templates.user_prompt(history[-1:])))
  with pytest.raises(ValueError, match="inputs feature length"):
    preprocessors.budgeted_prompt(history, vocabulary, one_item - 1)


def test_examples_whose_newest_item_cannot_fit_are_dropped_and_logged(
    vocabulary, capfd):
  # One word for the word caps, 3 byte-fallback tokens per character.
  too_long = templates.item_text("光" * 200, "Tools", None, None)
  item_tokens = len(vocabulary.encode(too_long))
  max_tokens = 300
  assert item_tokens > max_tokens
  rng = random.Random(2)
  texts = [tasks_testdata.random_item_texts(rng, 4, "Tools") for _ in range(3)]
  records = [("u0", texts[0]),
             ("newest", [*texts[1][:3], too_long, texts[1][3]]),
             ("oldest", [too_long, *texts[2]]),
             ("u3", texts[1])]
  features = _features(vocabulary)
  ds = preprocessors.tokenize_items(_records_dataset(records, 0), features)
  ds = preprocessors.to_inputs_and_targets(ds, {"inputs": max_tokens},
                                           features)
  examples = list(ds.as_numpy_iterator())
  assert [ex["user_id"] for ex in examples] == [b"u0", b"oldest", b"u3"]
  for (_, item_texts), example in zip(
      [records[0], records[2], records[3]], examples):
    assert example["inputs"].tolist() == list(preprocessors.budgeted_prompt(
        item_texts[:-1], vocabulary, max_tokens).token_ids)
  warnings = [line for line in capfd.readouterr().err.splitlines()
              if "dropped the example" in line]
  assert len(warnings) == 1
  assert warnings[0].startswith(
      'WARNING: dropped the example of user "newest" of category "Tools"')
  assert f" {item_tokens} tokens" in warnings[0]
  assert warnings[0].endswith(f"inputs length of {max_tokens}")


def test_pipeline_prompt_equals_whole_prompt_tokenization(vocabulary):
  rng = random.Random(3)
  records = [(f"u{i}", tasks_testdata.random_item_texts(rng, rng.randint(2, 12),
                                                    "Tools"))
             for i in range(40)]
  features = _features(vocabulary)
  for max_tokens in (300, 600, 5000):
    ds = preprocessors.tokenize_items(_records_dataset(records, 0), features)
    ds = preprocessors.to_inputs_and_targets(ds, {"inputs": max_tokens},
                                             features)
    for (_, texts), example in zip(records, ds.as_numpy_iterator()):
      expected = _budgeted_by_brute_force(texts[:-1], vocabulary, max_tokens)
      assert expected is not None
      _, tokens = expected
      assert example["inputs"].tolist() == tokens
      assert len(tokens) <= max_tokens
      assert example["targets"].tolist() == vocabulary.encode(texts[-1])
      python_prompt = preprocessors.budgeted_prompt(texts[:-1], vocabulary,
                                                    max_tokens)
      assert list(python_prompt.token_ids) == tokens


@pytest.mark.parametrize("sequence_length", [None, {"targets": 64}])
def test_prompts_need_an_inputs_length(vocabulary, sequence_length):
  features = _features(vocabulary)
  ds = preprocessors.tokenize_items(
      _records_dataset([("u0", ["Title: A.", "Title: B."])], 0), features)
  with pytest.raises(ValueError, match="need sequence_length"):
    preprocessors.to_inputs_and_targets(ds, sequence_length, features)


def _cut_lengths(records, max_cut_items, seed, vocabulary, epochs=1):
  ds = preprocessors.tokenize_items(_records_dataset(records, max_cut_items),
                                    _features(vocabulary))
  ds = preprocessors.cut_last_items(ds.repeat(epochs), seed)
  return [len(r["block_lengths"]) for r in ds.as_numpy_iterator()]


def test_cut_is_uniform_over_zero_to_four(vocabulary):
  rng = random.Random(4)
  texts = tasks_testdata.random_item_texts(rng, 10, "Tools")
  records = [(f"user{i}", texts) for i in range(2000)]
  counts = collections.Counter(
      10 - n for n in _cut_lengths(records, 4, 0, vocabulary))
  assert sorted(counts) == [0, 1, 2, 3, 4]
  # Binomial(2000, 0.2): standard deviation 17.9, tolerance 4.5 of them.
  for k in range(5):
    assert abs(counts[k] - 400) <= 80, counts


def test_cut_keeps_one_history_item(vocabulary):
  rng = random.Random(5)
  records = [(f"user{i}", tasks_testdata.random_item_texts(rng, 3, "Tools"))
             for i in range(600)]
  counts = collections.Counter(_cut_lengths(records, 4, 0, vocabulary))
  # n = 3 allows k in {0, 1} only, each with probability 1/2.
  assert sorted(counts) == [2, 3]
  assert abs(counts[2] - 300) <= 60, counts


def test_cut_is_seeded_and_changes_across_epochs(vocabulary):
  texts = tasks_testdata.random_item_texts(random.Random(6), 9, "Tools")
  records = [(f"user{i}", texts) for i in range(200)]
  first = _cut_lengths(records, 4, 7, vocabulary, epochs=2)
  assert first == _cut_lengths(records, 4, 7, vocabulary, epochs=2)
  assert first != _cut_lengths(records, 4, 8, vocabulary, epochs=2)
  assert first[:200] != first[200:]


def test_evaluation_records_are_not_cut(vocabulary):
  texts = tasks_testdata.random_item_texts(random.Random(7), 9, "Tools")
  records = [(f"user{i}", texts) for i in range(100)]
  assert set(_cut_lengths(records, 0, 0, vocabulary)) == {9}


def _one_record_at_a_time(dataset, sequence_length, features, seed):
  """The per-record chain that `user_examples` does on blocks."""
  ds = preprocessors.cut_last_items(dataset, seed)
  ds = preprocessors.to_inputs_and_targets(ds, sequence_length, features)
  return seqio.preprocessors.append_eos_after_trim(ds, features,
                                                   sequence_length)


@pytest.mark.parametrize("max_cut_items,seed", [(4, 0), (4, 9), (0, 0)])
def test_user_examples_equal_the_per_record_chain(vocabulary, capfd,
                                                  max_cut_items, seed):
  rng = random.Random(8)
  catalogue = tasks_testdata.random_item_texts(rng, 30, "Tools")
  too_long = templates.item_text("光" * 120, "Tools", None, None)
  # Shared items (a block tokenizes each distinct text once), records of
  # 2 to 12 items, some whose newest history item cannot fit.
  records = []
  for i in range(300):
    texts = rng.choices(catalogue, k=rng.randint(2, 12))
    if i % 37 == 5:
      texts[-1:-1] = [too_long]
    records.append((f"user{i}", texts))
  features = _features(vocabulary)
  lengths = {"inputs": 200, "targets": 9}

  def examples(preprocess):
    ds = preprocessors.tokenize_items(
        _records_dataset(records, max_cut_items), features)
    # Two epochs of 300: blocks of 256 end with a partial one.
    ds = preprocess(ds.repeat(2))
    found = list(ds.as_numpy_iterator())
    warnings = [line for line in capfd.readouterr().err.splitlines()
                if "dropped the example" in line]
    return found, warnings

  old, old_warnings = examples(
      lambda ds: _one_record_at_a_time(ds, lengths, features, seed))
  new, new_warnings = examples(
      lambda ds: preprocessors.user_examples(ds, lengths, features, seed))
  assert 0 < len(new) < 600
  assert [sorted(ex) for ex in new] == [sorted(ex) for ex in old]
  for new_example, old_example in zip(new, old):
    for name, value in old_example.items():
      assert np.array_equal(new_example[name], value), name
  assert old_warnings and sorted(new_warnings) == sorted(old_warnings)


def test_user_examples_need_an_inputs_length(vocabulary):
  ds = preprocessors.tokenize_items(
      _records_dataset([("u", ["a", "b"])], 0), _features(vocabulary))
  with pytest.raises(ValueError, match="inputs"):
    preprocessors.user_examples(ds, {"targets": 8}, _features(vocabulary), 0)


def test_tokenized_items_equal_their_texts_tokens(vocabulary):
  rng = random.Random(9)
  catalogue = tasks_testdata.random_item_texts(rng, 5, "Tools")
  records = [(f"u{i}", rng.choices(catalogue, k=rng.randint(1, 6)))
             for i in range(100)]
  features = _features(vocabulary)
  ds = preprocessors.tokenize_items(_records_dataset(records, 0), features)
  next_item = vocabulary.encode(vocab.NEWLINE_FIRST.next_item_piece)
  kept = [texts for _, texts in records if len(texts) >= 2]
  found = list(ds.as_numpy_iterator())
  assert len(found) == len(kept)
  for texts, record in zip(kept, found):
    blocks = [next_item +
              vocabulary.encode(vocab.NEWLINE_FIRST.item_piece(text))
              for text in texts]
    assert record["block_lengths"].tolist() == [len(b) for b in blocks]
    assert record["block_tokens"].tolist() == sum(blocks, [])
