"""seqio preprocessors from user records to (prompt, next item) pairs.

A record holds a user's chronological `item_texts` (docs/contracts.md). The
Task pipeline (see `tasks.tasks`) runs

  tokenize_items       (before the cache) item texts -> `item_tokens`, a flat
                       token list, and `item_lengths`, tokens per item;
  cut_last_items       (after the cache) training augmentation of paper
                       section 4: drop the last k items, k uniform in
                       {0, ..., min(max_cut_items, n - 2)};
  to_inputs_and_targets  the last item becomes `targets`, the others the user
                       prompt of paper section 3.2 (`inputs`), its oldest items
                       dropped whole until it fits the inputs length;
  seqio.preprocessors.append_eos_after_trim  EOS ends `targets` even when the
                       item text is cut to the targets length.

The prompt's tokens are the concatenation of the tokens of its pieces (user
prefix, item prefix, item text, ..., trailing prefix; see
`tasks.vocab.prompt_pieces`), so the token count of any choice of kept items
is a sum and the truncation is exact. `budgeted_prompt` is the same
computation in plain Python for inference.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import seqio
import tensorflow as tf

from tasks import templates

# Paper section 4: the last k items are cut, k in {0, 1, 2, 3, 4}.
MAX_CUT_ITEMS = 4


@dataclasses.dataclass(frozen=True)
class _PrefixTokens:
  """Tokens of the fixed prompt pieces under one vocabulary."""

  user: tuple[int, ...]
  first_item: tuple[int, ...]
  next_item: tuple[int, ...]

  @classmethod
  def of(cls, vocabulary: seqio.Vocabulary) -> _PrefixTokens:
    return cls(user=tuple(vocabulary.encode(templates.USER_PREFIX)),
               first_item=tuple(vocabulary.encode(templates.FIRST_ITEM_PREFIX)),
               next_item=tuple(vocabulary.encode(templates.NEXT_ITEM_PREFIX)))

  @property
  def fixed_length(self) -> int:
    """Tokens of a prompt besides its items and their "next" prefixes."""
    return len(self.user) + len(self.first_item) + len(self.next_item)


def _too_long_message(max_tokens: int) -> str:
  return (f"The newest history item alone does not fit an inputs length of "
          f"{max_tokens} tokens; raise the inputs feature length.")


@dataclasses.dataclass(frozen=True)
class BudgetedPrompt:
  """A user prompt that fits an input budget.

  Attributes:
    text: `templates.user_prompt` of the kept history items.
    token_ids: its tokens, at most the budget.
    num_dropped: how many of the oldest history items were dropped.
  """

  text: str
  token_ids: tuple[int, ...]
  num_dropped: int


def budgeted_prompt(history_texts: Sequence[str],
                    vocabulary: seqio.Vocabulary,
                    max_tokens: int) -> BudgetedPrompt:
  """The prompt of a history, oldest items dropped whole to fit max_tokens.

  The same truncation as the training pipeline (`to_inputs_and_targets`), for
  validation and test records at inference: pass the history (every item but
  the target) and the inputs feature length.

  Raises:
    ValueError: history is empty, or its newest item alone does not fit.
  """
  if not history_texts:
    raise ValueError("A user prompt needs at least one history item.")
  prefixes = _PrefixTokens.of(vocabulary)
  item_tokens = [tuple(vocabulary.encode(text)) for text in history_texts]
  # Cost of keeping items start..end: each item plus a "next" prefix per item
  # after the first (the first item's prefix is in fixed_length).
  cost = prefixes.fixed_length - len(prefixes.next_item)
  start = len(item_tokens)
  while start > 0:
    item_cost = len(item_tokens[start - 1]) + len(prefixes.next_item)
    if cost + item_cost > max_tokens:
      break
    cost += item_cost
    start -= 1
  if start == len(item_tokens):
    raise ValueError(_too_long_message(max_tokens))
  token_ids = list(prefixes.user)
  for position, tokens in enumerate(item_tokens[start:]):
    token_ids += prefixes.first_item if position == 0 else prefixes.next_item
    token_ids += tokens
  token_ids += prefixes.next_item
  return BudgetedPrompt(text=templates.user_prompt(history_texts[start:]),
                        token_ids=tuple(token_ids), num_dropped=start)


def tokenize_items(dataset: tf.data.Dataset,
                   output_features: Mapping[str, seqio.Feature]
                   ) -> tf.data.Dataset:
  """Tokenizes `item_texts` with the targets vocabulary.

  Replaces `item_texts` by `item_tokens` (int32, every item's tokens one after
  the other, no EOS) and `item_lengths` (int32, tokens per item). Records
  with fewer than two items hold no (history, target) pair and are skipped
  (preprocessing emits none for the paper's 5-core data).
  """
  vocabulary = output_features["targets"].vocabulary

  def tokenize(record):
    record = dict(record)
    tokens = vocabulary.encode_tf(record.pop("item_texts"))
    record["item_tokens"] = tf.cast(tokens.flat_values, tf.int32)
    record["item_lengths"] = tf.cast(tokens.row_lengths(), tf.int32)
    return record

  dataset = dataset.filter(lambda record: tf.size(record["item_texts"]) >= 2)
  return dataset.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)


def _keep_first_items(record: Mapping[str, tf.Tensor],
                      num_items: tf.Tensor) -> dict[str, tf.Tensor]:
  """The record restricted to its first num_items items."""
  record = dict(record)
  lengths = record["item_lengths"][:num_items]
  record["item_tokens"] = record["item_tokens"][:tf.reduce_sum(lengths)]
  record["item_lengths"] = lengths
  return record


def example_seed(seed: int, user_id: tf.Tensor,
                 stream_index: tf.Tensor) -> tf.Tensor:
  """A stateless seed from the global seed, the user and the stream position.

  The position counts examples across epochs (seqio repeats the dataset
  before post-cache preprocessing), so a user's cut differs between epochs
  and is the same for the same seed.
  """
  user_hash = tf.strings.to_hash_bucket_fast(user_id, 2**31 - 1)
  user_seed = tf.random.experimental.stateless_fold_in(
      tf.constant([seed, 0], tf.int64), user_hash)
  return tf.random.experimental.stateless_fold_in(user_seed, stream_index)


def cut_last_items(dataset: tf.data.Dataset, seed: int) -> tf.data.Dataset:
  """Training augmentation (paper section 4): drops the last k items.

  k is uniform in {0, ..., min(max_cut_items, n - 2)}, n the record's item
  count, so at least one history item stays before the new last item (the
  target). `max_cut_items` is a feature of the record: 4 (`MAX_CUT_ITEMS`)
  for training splits, 0 for validation and test, whose records are used as
  they are.
  """

  def cut(stream_index, record):
    num_items = tf.size(record["item_lengths"])
    max_cut = tf.minimum(tf.cast(record["max_cut_items"], tf.int32),
                         num_items - 2)
    k = tf.random.stateless_uniform(
        [], seed=example_seed(seed, record["user_id"], stream_index),
        minval=0, maxval=max_cut + 1, dtype=tf.int32)
    return _keep_first_items(record, num_items - k)

  return dataset.enumerate().map(cut, num_parallel_calls=tf.data.AUTOTUNE)


def to_inputs_and_targets(dataset: tf.data.Dataset,
                          sequence_length: Mapping[str, int],
                          output_features: Mapping[str, seqio.Feature]
                          ) -> tf.data.Dataset:
  """Last item -> `targets`; the items before it -> the prompt, `inputs`.

  Keeps the newest history items that fit `sequence_length["inputs"]`
  together with the user prefix, their item prefixes and the trailing
  next-item prefix; older items are dropped whole. The token layout equals
  `budgeted_prompt(...).token_ids`.
  """
  max_tokens = sequence_length["inputs"]
  prefixes = _PrefixTokens.of(output_features["inputs"].vocabulary)
  user = tf.constant(prefixes.user, tf.int32)
  first_item = tf.constant(prefixes.first_item, tf.int32)
  next_item = tf.constant(prefixes.next_item, tf.int32)
  next_length = len(prefixes.next_item)
  fixed_length = prefixes.fixed_length

  def convert(record):
    lengths = record["item_lengths"]
    tokens = record["item_tokens"]
    history_lengths = lengths[:-1]
    history_tokens = tokens[:tf.size(tokens) - lengths[-1]]
    # Prompt length when keeping items s.. of the history, for every s.
    prompt_lengths = fixed_length - next_length + tf.cumsum(
        history_lengths + next_length, reverse=True)
    num_kept = tf.reduce_sum(tf.cast(prompt_lengths <= max_tokens, tf.int32))
    with tf.control_dependencies([tf.debugging.assert_positive(
        num_kept, message=_too_long_message(max_tokens))]):
      num_kept = tf.identity(num_kept)
    kept_lengths = history_lengths[tf.size(history_lengths) - num_kept:]
    kept_tokens = history_tokens[tf.size(history_tokens)
                                 - tf.reduce_sum(kept_lengths):]
    item_prefixes = tf.RaggedTensor.from_row_lengths(
        tf.concat([first_item, tf.tile(next_item, [num_kept - 1])], 0),
        tf.concat([[len(prefixes.first_item)],
                   tf.fill([num_kept - 1], next_length)], 0))
    items = tf.RaggedTensor.from_row_lengths(kept_tokens, kept_lengths)
    blocks = tf.concat([item_prefixes, items], axis=1)
    return {
        "inputs": tf.concat([user, blocks.flat_values, next_item], 0),
        "targets": tokens[tf.size(tokens) - lengths[-1]:],
        "user_id": record["user_id"],
        "category": record["category"],
    }

  return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
