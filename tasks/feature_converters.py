"""Model features of CALRec's decoder-only two-tower training (paper 3.4).

`CALRecFeatureConverter` turns task examples {"inputs": prompt, "targets":
next item + EOS} into prefix-LM features for the joint pass (next-item
generation, v^U, v^{T|U}) plus the target item alone for the item tower (v^T).
Packing is off: every example is one row. Lengths: L = inputs length + targets
length for the joint pass, Li = targets length for the item tower (+ 1 with a
BOS, below).

Token-level example, inputs length 4, targets length 3, prompt [9, 4, 6],
target item [3, 8] + EOS 1 (L = 7, Li = 3):

  position                  0  1  2  3  4  5  6
  decoder_target_tokens     9  4  6  3  8  1  0
  decoder_input_tokens      0  9  4  6  3  8  1
  decoder_loss_weights      0  0  0  1  1  1  0   targets: NIG loss
  decoder_causal_attention  1  1  1  1  0  0  0   prompt inputs, plus one
  history_pool_weights      0  1  1  1  0  0  0   a prompt input: v^U
  target_pool_weights       0  0  0  0  1  1  1   a target input: v^{T|U}

  item_input_tokens         3  8  1
  item_pool_weights         1  1  1                                        v^T

Decoder inputs start with `bos_id`: 0 (t5x's convention, the models trained
here; `tasks.vocab.decoder_start_id` of a vocabulary without BOS) or the
vocabulary's BOS (a pretrained LM such as Gemma 3, which saw <bos> first in
every sequence). With a BOS the item-alone pass starts with it too, and
its pooling skips it, as the joint pass' pooling skips the start position;
same example with BOS 2 (Li = 4):

  decoder_input_tokens      2  9  4  6  3  8  1
  item_input_tokens         2  3  8  1
  item_pool_weights         0  1  1  1

The pooled vectors are means of the final hidden states over the weighted
positions. A hidden state at position p has read decoder_input_tokens[:p+1],
so history_pool_weights covers the states that have read prompt tokens only
and target_pool_weights those that read the target item's tokens (EOS
included, as in the item tower, when it fits in L).
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from tasks import blocks

_INT = seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
# Examples converted together; only throughput depends on it.
_BLOCK_SIZE = 64


class CALRecFeatureConverter(seqio.FeatureConverter):
  """Prefix-LM features plus the item-alone features, without packing."""

  TASK_FEATURES = {"inputs": _INT, "targets": _INT}
  MODEL_FEATURES = {
      "decoder_target_tokens": _INT,
      "decoder_input_tokens": _INT,
      "decoder_loss_weights": _INT,
      "decoder_causal_attention": _INT,
      "history_pool_weights": _INT,
      "target_pool_weights": _INT,
      "item_input_tokens": _INT,
      "item_pool_weights": _INT,
  }
  PACKING_FEATURE_DTYPES = None

  def __init__(self, pack: bool = False, use_custom_packing_ops: bool = False,
               apply_length_check: bool = True, bos_id: int = 0):
    """seqio's arguments, less `passthrough_features` (the model reads only
    MODEL_FEATURES).

    Args:
      pack: must be False.
      use_custom_packing_ops: seqio's; unused without packing.
      apply_length_check: with False, over-long `inputs` and `targets` are
        trimmed to their lengths, as seqio's converters do (`utils.
        trim_and_pad_dataset`): the prompt loses its newest tokens, the
        target its EOS; the pooling spans cover what is kept.
      bos_id: the decoder's start token, `tasks.vocab.decoder_start_id` of
        the tasks' vocabulary: 0 without a BOS, else the BOS, which then
        starts the item-alone pass too. Inference must start prompts with the
        same token (`trainer.models.prompt_batch`'s `start_token`).
    """
    if pack:
      raise ValueError("CALRecFeatureConverter does not pack: each row must "
                       "hold one user for the in-batch contrastive losses.")
    if bos_id < 0:
      raise ValueError(f"bos_id must be 0 (no BOS) or the vocabulary's BOS, "
                       f"got {bos_id}.")
    super().__init__(pack=False, use_custom_packing_ops=use_custom_packing_ops,
                     apply_length_check=apply_length_check, bos_id=bos_id)

  @property
  def _item_offset(self) -> int:
    """Positions before the item in the item-alone pass: 1 for a BOS."""
    return 1 if self.bos_id else 0

  def get_model_feature_lengths(
      self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
    joint = task_feature_lengths["inputs"] + task_feature_lengths["targets"]
    item = task_feature_lengths["targets"] + self._item_offset
    return {name: item if name.startswith("item_") else joint
            for name in self.MODEL_FEATURES}

  def _convert_features(
      self, ds: tf.data.Dataset,
      task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    """Converts blocks of examples at once, then yields them one by one.

    Token 0 is padding (seqio's convention; `tasks.vocab.get_vocabulary`
    requires pad=0) and never a prompt or item token, so the padded blocks
    tell each example's lengths. Features are trimmed to their lengths first
    (a no-op unless the length check is off).
    """
    bos_id = self.bos_id
    item_offset = self._item_offset
    inputs_length = task_feature_lengths["inputs"]
    item_length = task_feature_lengths["targets"]
    joint_length = inputs_length + item_length

    def convert(block):
      inputs = _padded(block["inputs"], "inputs", inputs_length)
      targets = _padded(block["targets"], "targets", item_length)
      num_inputs = tf.math.count_nonzero(inputs, 1, keepdims=True,
                                         dtype=tf.int32)
      num_targets = tf.math.count_nonzero(targets, 1, keepdims=True,
                                          dtype=tf.int32)
      target_end = num_inputs + num_targets
      position = tf.range(joint_length)[tf.newaxis, :]
      from_targets = tf.gather(
          targets, tf.clip_by_value(position - num_inputs, 0, item_length - 1),
          batch_dims=1)
      padded_inputs = tf.pad(inputs, [[0, 0], [0, item_length]])
      tokens = tf.where(position < num_inputs, padded_inputs,
                        tf.where(position < target_end, from_targets, 0))

      def weights(mask):
        return tf.cast(mask, tf.int32)

      item_tokens = tf.pad(targets, [[0, 0], [item_offset, 0]],
                           constant_values=bos_id)
      return {
          "decoder_target_tokens": tokens,
          "decoder_input_tokens": tf.pad(tokens[:, :-1], [[0, 0], [1, 0]],
                                         constant_values=bos_id),
          "decoder_loss_weights": weights(
              (position >= num_inputs) & (position < target_end)),
          "decoder_causal_attention": weights(position <= num_inputs),
          "history_pool_weights": weights(
              (position >= 1) & (position <= num_inputs)),
          "target_pool_weights": weights(
              (position > num_inputs) & (position <= target_end)),
          "item_input_tokens": item_tokens,
          "item_pool_weights": weights(
              (item_tokens != 0) &
              (tf.range(item_length + item_offset) >= item_offset)),
      }

    def _padded(feature, name, length):
      """[block, length]: the rows, checked or trimmed, padded with 0."""
      if isinstance(feature, tf.Tensor):  # Rows padded with 0.
        feature = tf.RaggedTensor.from_tensor(feature, padding=0)
      if self._apply_length_check:
        lengths = feature.row_lengths()
        with tf.control_dependencies([tf.debugging.assert_less_equal(
            lengths, tf.cast(length, lengths.dtype),
            message=f"Feature '{name}' has length not less than or equal to "
            f"the expected length of {length} during input_validation "
            "validation")]):
          feature = tf.identity(feature)
      return feature.to_tensor(shape=[None, length])

    ds = blocks.padded_blocks(ds, _BLOCK_SIZE)
    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE).unbatch()

  def _validate_dataset(
      self, ds: tf.data.Dataset,
      expected_features: Mapping[str, seqio.FeatureConverter.FeatureSpec],
      expected_lengths: Mapping[str, int], strict: bool,
      error_label: str) -> tf.data.Dataset:
    """seqio's checks of the features' names, dtypes and ranks.

    Without seqio's check of every example's lengths, a tf.data call per
    example: `_convert_features` checks the task features' lengths on whole
    blocks (the same message), and the model features it returns have their
    lengths in their static shapes, checked here.
    """
    spec = ds.element_spec
    for name, feature in expected_features.items():
      if name not in spec:
        raise ValueError(
            f"Dataset is missing an expected feature during {error_label} "
            f"validation: '{name}'. Received {spec}, expected "
            f"{expected_features}.")
      if feature.dtype != spec[name].dtype:
        raise ValueError(
            f"Dataset has incorrect type for feature '{name}' during "
            f"{error_label} validation: Got {spec[name].dtype.name}, "
            f"expected {feature.dtype.name}")
      if feature.rank != len(spec[name].shape):
        raise ValueError(
            f"Dataset has incorrect rank for feature '{name}' during "
            f"{error_label} validation: Got {len(spec[name].shape)}, "
            f"expected {feature.rank}")
      length = spec[name].shape[feature.sequence_dim] if feature.rank else None
      if strict and feature.rank and length != expected_lengths[name]:
        raise ValueError(
            f"Feature '{name}' has length {length}, not the expected length "
            f"of {expected_lengths[name]} during {error_label} validation")
    return ds
