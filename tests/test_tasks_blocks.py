"""Blocks of tf.data elements (tasks.blocks) and the converter on them."""

import numpy as np
import tensorflow as tf

from tasks import blocks
from tasks import feature_converters

RNG = np.random.default_rng(0)
# 150 examples: more than two of the converter's blocks of 64.
EXAMPLES = [{"inputs": RNG.integers(2, 50, RNG.integers(1, 12)).tolist(),
             "targets": RNG.integers(2, 50, RNG.integers(1, 6)).tolist() + [1]}
            for _ in range(150)]


def _dense(examples):
  return tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={"inputs": tf.TensorSpec([None], tf.int32),
                        "targets": tf.TensorSpec([None], tf.int32)})


def _ragged(examples):
  """The same examples with ragged (ragged rank 0) features, as the tasks'
  block preprocessors yield them."""
  return _dense(examples).ragged_batch(7).unbatch()


def test_ragged_blocks_of_ragged_elements_equal_ragged_batch():
  assert isinstance(_ragged(EXAMPLES).element_spec["inputs"],
                    tf.RaggedTensorSpec)
  for dataset in (_dense(EXAMPLES), _ragged(EXAMPLES)):
    found = list(blocks.ragged_blocks(dataset, 64))
    expected = list(_dense(EXAMPLES).ragged_batch(64))
    assert len(found) == len(expected) == 3
    for block, want in zip(found, expected):
      for name in want:
        assert block[name].to_list() == want[name].to_list()


def test_padded_blocks_pad_dense_rows_with_zeros_and_keep_ragged_ones():
  (block, *_) = list(blocks.padded_blocks(_dense(EXAMPLES), 64))
  width = max(len(example["inputs"]) for example in EXAMPLES[:64])
  assert block["inputs"].shape == (64, width)
  for row, example in zip(block["inputs"].numpy(), EXAMPLES):
    assert row.tolist() == example["inputs"] + [0] * (width - len(row[row > 0]))
  (block, *_) = list(blocks.padded_blocks(_ragged(EXAMPLES), 64))
  assert block["inputs"].to_list() == [e["inputs"] for e in EXAMPLES[:64]]


def test_converter_gives_the_same_features_for_dense_and_ragged_inputs():
  lengths = {"inputs": 8, "targets": 4}  # Some of each feature are longer.
  converter = feature_converters.CALRecFeatureConverter(
      apply_length_check=False)
  dense = list(converter(_dense(EXAMPLES), lengths).as_numpy_iterator())
  ragged = list(converter(_ragged(EXAMPLES), lengths).as_numpy_iterator())
  assert len(dense) == len(ragged) == len(EXAMPLES)
  for features, other, example in zip(dense, ragged, EXAMPLES):
    assert {k: v.tolist() for k, v in features.items()} == {
        k: v.tolist() for k, v in other.items()}
    num_inputs = min(len(example["inputs"]), 8)
    num_targets = min(len(example["targets"]), 4)
    assert features["decoder_target_tokens"][:num_inputs].tolist() == (
        example["inputs"][:8])
    assert features["item_input_tokens"][:num_targets].tolist() == (
        example["targets"][:4])
    assert features["decoder_loss_weights"].sum() == num_targets
