"""Token-level checks of CALRecFeatureConverter and its pooling spans."""

import numpy as np
import pytest
import tensorflow as tf

from tasks import feature_converters


def _convert(examples, lengths, **converter_args):
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={"inputs": tf.TensorSpec([None], tf.int32),
                        "targets": tf.TensorSpec([None], tf.int32)})
  converter = feature_converters.CALRecFeatureConverter(**converter_args)
  return list(converter(ds, lengths).as_numpy_iterator())


def test_docstring_example():
  (features,) = _convert([{"inputs": [9, 4, 6], "targets": [3, 8, 1]}],
                         {"inputs": 4, "targets": 3})
  expected = {
      "decoder_target_tokens": [9, 4, 6, 3, 8, 1, 0],
      "decoder_input_tokens": [0, 9, 4, 6, 3, 8, 1],
      "decoder_loss_weights": [0, 0, 0, 1, 1, 1, 0],
      "decoder_causal_attention": [1, 1, 1, 1, 0, 0, 0],
      "history_pool_weights": [0, 1, 1, 1, 0, 0, 0],
      "target_pool_weights": [0, 0, 0, 0, 1, 1, 1],
      "item_input_tokens": [3, 8, 1],
      "item_pool_weights": [1, 1, 1],
  }
  assert {k: v.tolist() for k, v in features.items()} == expected


def test_docstring_example_with_bos():
  (features,) = _convert([{"inputs": [9, 4, 6], "targets": [3, 8, 1]}],
                         {"inputs": 4, "targets": 3}, bos_id=2)
  expected = {
      "decoder_target_tokens": [9, 4, 6, 3, 8, 1, 0],
      "decoder_input_tokens": [2, 9, 4, 6, 3, 8, 1],
      "decoder_loss_weights": [0, 0, 0, 1, 1, 1, 0],
      "decoder_causal_attention": [1, 1, 1, 1, 0, 0, 0],
      "history_pool_weights": [0, 1, 1, 1, 0, 0, 0],
      "target_pool_weights": [0, 0, 0, 0, 1, 1, 1],
      "item_input_tokens": [2, 3, 8, 1],
      "item_pool_weights": [0, 1, 1, 1],
  }
  assert {k: v.tolist() for k, v in features.items()} == expected


def test_bos_lengthens_only_the_item_features():
  converter = feature_converters.CALRecFeatureConverter(bos_id=2)
  lengths = converter.get_model_feature_lengths({"inputs": 6, "targets": 4})
  assert lengths["item_input_tokens"] == lengths["item_pool_weights"] == 5
  assert lengths["decoder_input_tokens"] == 10
  (f,) = _convert([{"inputs": [7], "targets": [5, 1]}],
                  {"inputs": 6, "targets": 4}, bos_id=2)
  assert f["item_input_tokens"].tolist() == [2, 5, 1, 0, 0]
  assert f["item_pool_weights"].tolist() == [0, 1, 1, 0, 0]


@pytest.mark.parametrize("num_inputs,num_targets", [(1, 1), (5, 2), (6, 4),
                                                    (2, 4)])
def test_spans_select_prompt_and_target_tokens(num_inputs, num_targets):
  lengths = {"inputs": 6, "targets": 4}
  inputs = list(range(10, 10 + num_inputs))
  targets = list(range(50, 50 + num_targets - 1)) + [1]
  (f,) = _convert([{"inputs": inputs, "targets": targets}], lengths)
  # Decoder input tokens read by the pooled positions, in order.
  assert f["decoder_input_tokens"][f["history_pool_weights"] == 1].tolist() \
      == inputs
  # The target's EOS is pooled when it fits in the joint length (10).
  fits = targets if num_inputs + num_targets < 10 else targets[:-1]
  assert f["decoder_input_tokens"][f["target_pool_weights"] == 1].tolist() \
      == fits
  assert f["decoder_target_tokens"][f["decoder_loss_weights"] == 1].tolist() \
      == targets
  assert f["item_input_tokens"][f["item_pool_weights"] == 1].tolist() \
      == targets
  assert f["decoder_causal_attention"].sum() == num_inputs + 1
  assert np.all(f["decoder_input_tokens"][1:]
                == f["decoder_target_tokens"][:-1])
  assert f["decoder_target_tokens"].shape == (10,)
  assert f["item_input_tokens"].shape == (4,)


def test_without_length_check_long_features_are_trimmed_as_in_seqio():
  examples = [{"inputs": [9, 4, 6, 7, 5], "targets": [3, 8, 2, 1]}]
  lengths = {"inputs": 4, "targets": 3}
  with pytest.raises(tf.errors.InvalidArgumentError, match="length"):
    _convert(examples, lengths)
  (features,) = _convert(examples, lengths, apply_length_check=False)
  # Prompt [9, 4, 6, 7] and target [3, 8, 2] (its EOS trimmed), L = 7.
  expected = {
      "decoder_target_tokens": [9, 4, 6, 7, 3, 8, 2],
      "decoder_input_tokens": [0, 9, 4, 6, 7, 3, 8],
      "decoder_loss_weights": [0, 0, 0, 0, 1, 1, 1],
      "decoder_causal_attention": [1, 1, 1, 1, 1, 0, 0],
      "history_pool_weights": [0, 1, 1, 1, 1, 0, 0],
      "target_pool_weights": [0, 0, 0, 0, 0, 1, 1],
      "item_input_tokens": [3, 8, 2],
      "item_pool_weights": [1, 1, 1],
  }
  assert {k: v.tolist() for k, v in features.items()} == expected


def test_packing_is_refused():
  with pytest.raises(ValueError, match="does not pack"):
    feature_converters.CALRecFeatureConverter(pack=True)


def test_settings_the_model_cannot_read_are_refused():
  with pytest.raises(ValueError, match="bos_id must be 0 .* or the"):
    feature_converters.CALRecFeatureConverter(bos_id=-1)
  with pytest.raises(TypeError, match="passthrough_features"):
    feature_converters.CALRecFeatureConverter(
        passthrough_features={"user_id": None})

