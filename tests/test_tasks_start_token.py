"""The decoder's start token comes from the vocabulary, in training and at
inference alike: its BOS when it has one (Gemma 3), 0 otherwise."""

import random

import gemma_testdata
import jax
import numpy as np
import pytest
import seqio
import sentencepiece as spm
import tasks_testdata
import tensorflow as tf

from evaluator import generation
from evaluator import model_handler
from tasks import feature_converters
from tasks import preprocessors
from pipelines import templates
from tasks import vocab
from trainer import models
from trainer import network

LENGTHS = {"inputs": 200, "targets": 48}


def _features(vocabulary, history, target):
  """The converter's features of one (history, target) record."""
  features = {"inputs": seqio.Feature(vocabulary, add_eos=False),
              "targets": seqio.Feature(vocabulary, add_eos=True)}

  def generator():
    yield {"user_id": "u", "category": "c", "item_texts": [*history, target],
           "max_cut_items": 0}

  ds = tf.data.Dataset.from_generator(generator, output_signature={
      "user_id": tf.TensorSpec([], tf.string),
      "category": tf.TensorSpec([], tf.string),
      "item_texts": tf.TensorSpec([None], tf.string),
      "max_cut_items": tf.TensorSpec([], tf.int32)})
  ds = preprocessors.tokenize_items(ds, features)
  ds = preprocessors.to_inputs_and_targets(ds, LENGTHS, features)
  ds = seqio.preprocessors.append_eos_after_trim(ds, features, LENGTHS)
  converter = feature_converters.CALRecFeatureConverter(
      bos_id=vocab.decoder_start_id(vocabulary))
  (example,) = converter(ds, LENGTHS).as_numpy_iterator()
  return example


def _history():
  rng = random.Random(0)
  texts = tasks_testdata.random_item_texts(rng, 3, "Tools")
  return texts[:-1], texts[-1]


@pytest.mark.parametrize("kind", ["trained", "gemma"])
def test_training_and_inference_start_alike(kind, tmp_path):
  if kind == "gemma":
    vocabulary = gemma_testdata.vocabulary()
    expected_start = 2
  else:
    vocabulary = vocab.get_vocabulary(
        tasks_testdata.train_test_vocabulary(tmp_path / "spm.model"))
    expected_start = 0
  start = vocab.decoder_start_id(vocabulary)
  assert start == expected_start
  history, target = _history()
  features = _features(vocabulary, history, target)
  prompt = preprocessors.budgeted_prompt(history, vocabulary,
                                         LENGTHS["inputs"]).token_ids
  batch = models.prompt_batch([prompt], 1, LENGTHS["inputs"] + 1,
                              start_token=start)
  n = len(prompt) + 1
  # The inference batch is the training features' prompt part.
  np.testing.assert_array_equal(batch["decoder_input_tokens"][0, :n],
                                features["decoder_input_tokens"][:n])
  np.testing.assert_array_equal(batch["decoder_causal_attention"][0],
                                features["decoder_causal_attention"][
                                    :LENGTHS["inputs"] + 1])
  assert features["decoder_input_tokens"][0] == start
  item = (vocabulary.encode(vocab.NEWLINE_FIRST.item_piece(target)) +
          [vocabulary.eos_id])
  if start:
    # The item-alone pass starts with BOS, which its pooling skips.
    assert features["item_input_tokens"][:len(item) + 1].tolist() == [
        start, *item]
    assert features["item_pool_weights"].tolist() == (
        [0] + [1] * len(item) + [0] * (LENGTHS["targets"] - len(item)))
  else:
    assert features["item_input_tokens"][:len(item)].tolist() == item
    assert features["item_pool_weights"].sum() == len(item)


def test_prompt_batch_default_start_is_zero():
  default = models.prompt_batch([[4, 5], [6]], batch_size=3, prompt_length=4)
  zero = models.prompt_batch([[4, 5], [6]], batch_size=3, prompt_length=4,
                             start_token=0)
  bos = models.prompt_batch([[4, 5], [6]], batch_size=3, prompt_length=4,
                            start_token=2)
  for name in default:
    np.testing.assert_array_equal(default[name], zero[name])
  np.testing.assert_array_equal(bos["decoder_input_tokens"],
                                [[2, 4, 5, 0], [2, 6, 0, 0], [2, 0, 0, 0]])
  np.testing.assert_array_equal(bos["decoder_causal_attention"],
                                default["decoder_causal_attention"])


@pytest.mark.slow
def test_generator_starts_prompts_with_the_vocabularys_bos(tmp_path,
                                                           monkeypatch):
  sentences = tmp_path / "s.txt"
  sentences.write_text("\n".join(
      tasks_testdata.random_item_texts(random.Random(1), 200, "Tools")))
  spm.SentencePieceTrainer.train(
      input=str(sentences), model_prefix=str(tmp_path / "bos"),
      vocab_size=120, pad_id=0, eos_id=1, bos_id=5, unk_id=2,
      hard_vocab_limit=False, minloglevel=2)
  vocabulary = vocab.get_vocabulary(tmp_path / "bos.model")
  config = network.TransformerConfig(
      vocab_size=vocabulary.vocab_size, emb_dim=16, num_heads=2,
      num_kv_heads=1, head_dim=8, mlp_dim=32, num_layers=1)
  model = models.CALRecModel(config)
  params = models.unboxed_params(model.get_initial_variables(
      jax.random.PRNGKey(0), {"decoder_input_tokens": (1, 8)}))
  batches = []
  original = models.prompt_batch

  def recording_prompt_batch(*args, **kwargs):
    batches.append(original(*args, **kwargs))
    return batches[-1]

  monkeypatch.setattr(models, "prompt_batch", recording_prompt_batch)
  generator = model_handler.JaxGenerator(
      model, params, vocabulary, prompt_length=600, num_generations=2,
      max_decode_length=3, batch_size=2)
  history = (templates.item_text("Red Wire Kit", "Tools", "Hillman", None),)
  outputs = generator.generate(
      [generation.GenerationRequest(history, seed=1)])
  assert len(outputs[0]) == 2
  (batch,) = batches
  assert batch["decoder_input_tokens"][:, 0].tolist() == [5, 5]
