"""seqio preprocessors from user records to (prompt, next item) pairs.

A record holds a user's chronological `item_texts` (docs/contracts.md). The
Task pipeline (see `tasks.tasks`) runs `tokenize_items` before the cache and
`user_examples` after it, which does the three steps after `tokenize_items`
below on blocks of records at once (the same examples; one tf.data call per
block instead of five per record, the pipeline's main cost):

  tokenize_items       (before the cache) item texts -> item blocks: each
                       item's tokens preceded by the tokens of the next-item
                       prefix, one after the other in `block_tokens`, with
                       `block_lengths` tokens per block;
  cut_last_items       (after the cache) training augmentation of paper
                       section 4: drop the last k items, k uniform in
                       {0, ..., min(max_cut_items, n - 2)};
  to_inputs_and_targets  the last item becomes `targets`, the others the user
                       prompt of paper section 3.2 (`inputs`), its oldest items
                       dropped whole until it fits the inputs length; an
                       example whose newest history item alone does not fit
                       is dropped, with a warning on stderr;
  seqio.preprocessors.append_eos_after_trim  EOS ends `targets` even when the
                       item text is cut to the targets length.

The prompt's tokens are the concatenation of the tokens of its pieces (user
prefix, " " + first-item prefix, " " + item text, next-item prefix, ...,
trailing next-item prefix, the "\n" before each next-item prefix in it or
ending the item before it; see `tasks.vocab.PromptLayout`): strings that
concatenate to the prompt exactly and meet where the vocabulary never merges
across (`tasks.vocab.check_prompt_additivity`), so the token count of any
choice of kept items is a sum and the truncation gives exactly the tokens of
the whole prompt string, for vocabularies with a dummy prefix (trained here)
and without (Gemma 3, which keeps "\n") alike, and for byte-level BPE
ones (SmolLM2; Llama 3 and Qwen2.5 with the "\n" ending the item). With the
blocks, the prompt of history items s.. is user prefix + first-item prefix +
the blocks from s on without block s's next-item prefix + the trailing
next-item prefix: a slice. `budgeted_prompt` is the same computation in
plain Python for inference. Items (the target too) are tokenized as the
prompt holds them, leading space and suffix: the target is what the model
continues the prompt with.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Mapping, Sequence

import seqio
import tensorflow as tf

from pipelines import templates
from tasks import blocks
from tasks import stateless_random
from tasks import vocab

# Paper section 4: the last k items are cut, k in {0, 1, 2, 3, 4}.
MAX_CUT_ITEMS = 4
_TOKENIZE_BLOCK_SIZE = 256


@dataclasses.dataclass(frozen=True)
class _PrefixTokens:
  """Tokens of the fixed prompt pieces under one vocabulary, and the layout
  of its pieces (`vocab.prompt_layout`)."""

  user: tuple[int, ...]
  first_item: tuple[int, ...]
  next_item: tuple[int, ...]
  layout: vocab.PromptLayout

  @classmethod
  def of(cls, vocabulary: seqio.Vocabulary) -> _PrefixTokens:
    layout = vocab.prompt_layout(vocabulary)
    return cls(
        user=tuple(vocabulary.encode(templates.USER_PREFIX)),
        first_item=tuple(vocabulary.encode(vocab.first_item_prefix_piece())),
        next_item=tuple(vocabulary.encode(layout.next_item_piece)),
        layout=layout)

  @property
  def fixed_length(self) -> int:
    """Tokens of a prompt besides its items and their "next" prefixes."""
    return len(self.user) + len(self.first_item) + len(self.next_item)


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
  item_tokens = [tuple(vocabulary.encode(prefixes.layout.item_piece(text)))
                 for text in history_texts]
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
    raise ValueError(
        f"The newest history item alone does not fit an inputs length of "
        f"{max_tokens} tokens; raise the inputs feature length.")
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
  """Tokenizes `item_texts` with the targets vocabulary into item blocks.

  Replaces `item_texts` by `block_tokens` (int32: for every item, the tokens
  of the next-item prefix's piece then those of the item's piece, its text
  after a space and before the layout's suffix, no EOS; `vocab.PromptLayout`)
  and
  `block_lengths` (int32, tokens per block). Records with fewer than two
  items hold no (history, target) pair and are skipped (preprocessing emits
  none for the paper's 5-core data).
  """
  vocabulary = output_features["targets"].vocabulary
  prompt_tokens = _PrefixTokens.of(vocabulary)
  next_item = tf.constant(prompt_tokens.next_item, tf.int32)
  item_suffix = prompt_tokens.layout.item_suffix

  def tokenize(records):
    records = _rows_with_two_items(records)
    texts = records.pop("item_texts")
    # Each distinct text of the block is tokenized once: the records of a
    # block share many items.
    distinct, index = tf.unique(texts.values)
    distinct_tokens = vocabulary.encode_tf(tf.strings.join(
        [vocab.ITEM_SEPARATOR, distinct, item_suffix]))
    # [items of the block of records, (tokens)]
    items = tf.cast(tf.gather(distinct_tokens, index), tf.int32
                    ).with_row_splits_dtype(texts.row_splits.dtype)
    prefixes = tf.RaggedTensor.from_uniform_row_length(
        tf.tile(next_item, [items.nrows()]), tf.size(next_item)
    ).with_row_splits_dtype(items.row_splits.dtype)
    blocks = texts.with_values(tf.concat([prefixes, items], axis=1))
    records["block_tokens"] = blocks.merge_dims(1, 2)
    records["block_lengths"] = tf.cast(blocks.row_lengths(axis=2), tf.int32)
    return records

  # Blocks of records share one tokenizer call; only throughput depends on
  # their size. The short records leave in the block, not by a filter that
  # would cost a call per record.
  dataset = blocks.ragged_blocks(dataset, _TOKENIZE_BLOCK_SIZE)
  return dataset.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def _rows_with_two_items(records: Mapping[str, tf.Tensor]
                         ) -> dict[str, tf.Tensor]:
  """The rows of a block of records that hold at least two items."""
  keep = records["item_texts"].row_lengths() >= 2
  return {name: tf.ragged.boolean_mask(value, keep)
          for name, value in records.items()}


def _keep_first_items(record: Mapping[str, tf.Tensor],
                      num_items: tf.Tensor) -> dict[str, tf.Tensor]:
  """The record restricted to its first num_items items."""
  record = dict(record)
  lengths = record["block_lengths"][:num_items]
  record["block_tokens"] = record["block_tokens"][:tf.reduce_sum(lengths)]
  record["block_lengths"] = lengths
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
    num_items = tf.size(record["block_lengths"])
    max_cut = tf.minimum(tf.cast(record["max_cut_items"], tf.int32),
                         num_items - 2)
    k = tf.random.stateless_uniform(
        [], seed=example_seed(seed, record["user_id"], stream_index),
        minval=0, maxval=max_cut + 1, dtype=tf.int32)
    return _keep_first_items(record, num_items - k)

  return dataset.enumerate().map(cut, num_parallel_calls=tf.data.AUTOTUNE)


def _prompt_budget(sequence_length: Mapping[str, int],
                   output_features: Mapping[str, seqio.Feature]
                   ) -> tuple[int, _PrefixTokens]:
  """(the inputs length, the prompt's prefix tokens) of the Tasks' examples.

  Raises:
    ValueError: `sequence_length` has no "inputs" length.
  """
  if not sequence_length or not sequence_length.get("inputs"):
    raise ValueError(
        "CALRec tasks need sequence_length={'inputs': ..., 'targets': ...}: "
        "the prompt keeps the newest history items that fit 'inputs' tokens "
        f"(got {sequence_length!r}).")
  return (sequence_length["inputs"],
          _PrefixTokens.of(output_features["inputs"].vocabulary))


def to_inputs_and_targets(dataset: tf.data.Dataset,
                          sequence_length: Mapping[str, int],
                          output_features: Mapping[str, seqio.Feature]
                          ) -> tf.data.Dataset:
  """Last item -> `targets`; the items before it -> the prompt, `inputs`.

  Keeps the newest history items that fit `sequence_length["inputs"]`
  together with the user prefix, their item prefixes and the trailing
  next-item prefix; older items are dropped whole. The token layout equals
  `budgeted_prompt(...).token_ids`.

  An example whose newest history item alone does not fit (word caps do not
  bound tokens: a title without spaces is one word) is dropped instead of
  stopping the run, and each drop prints a warning line to stderr with the
  user id, the item's token count and the inputs length, every time the
  example is read. tf.print keeps the pipeline checkpointable (a
  tf.py_function would not); it runs after seqio's cache, so cached tasks
  drop and warn alike. `budgeted_prompt` raises ValueError for such a
  history instead.
  """
  max_tokens, prefixes = _prompt_budget(sequence_length, output_features)
  head = tf.constant(prefixes.user + prefixes.first_item, tf.int32)
  next_item = tf.constant(prefixes.next_item, tf.int32)
  next_length = len(prefixes.next_item)

  def fits(record):
    # A prompt of the newest history item alone: head, the item's tokens and
    # the trailing next-item prefix, as many tokens as head and its block.
    newest_block = record["block_lengths"][-2]
    newest_fits = len(head) + newest_block <= max_tokens

    def warn():
      item_tokens = newest_block - next_length
      with tf.control_dependencies([tf.print(
          "WARNING: dropped the example of user", record["user_id"],
          "of category", record["category"], "as its newest history item has",
          item_tokens, "tokens, which with the prompt's", prefixes.fixed_length,
          "fixed tokens exceed the inputs length of", max_tokens,
          output_stream=sys.stderr)]):
        return tf.identity(newest_fits)

    return tf.cond(newest_fits, lambda: newest_fits, warn)

  def convert(record):
    lengths = record["block_lengths"]
    tokens = record["block_tokens"]
    target_start = tf.size(tokens) - lengths[-1]
    # Prompt length when keeping history items s.., for every s.
    prompt_lengths = len(head) + tf.cumsum(lengths[:-1], reverse=True)
    num_kept = tf.reduce_sum(tf.cast(prompt_lengths <= max_tokens, tf.int32))
    kept_length = tf.reduce_sum(lengths[tf.size(lengths) - 1 - num_kept:-1])
    return {
        "inputs": tf.concat([
            head, tokens[target_start - kept_length + next_length:target_start],
            next_item], 0),
        "targets": tokens[target_start + next_length:],
        "user_id": record["user_id"],
        "category": record["category"],
    }

  return dataset.filter(fits).map(convert,
                                  num_parallel_calls=tf.data.AUTOTUNE)


# Records converted together by `user_examples`; only throughput depends on
# it (the vectorised seeds cost about the same per block whatever its size).
_EXAMPLE_BLOCK_SIZE = 256


def example_seeds(seed: int, user_ids: tf.Tensor,
                  stream_indexes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """`example_seed` of a vector of examples, as the seeds' (first, second)
  words (`tasks.stateless_random`)."""
  user_hashes = tf.strings.to_hash_bucket_fast(user_ids, 2**31 - 1)
  user_seeds = stateless_random.fold_in(
      tf.constant([seed], tf.int64), tf.constant([0], tf.int64), user_hashes)
  return stateless_random.fold_in(*user_seeds, stream_indexes)


def _ragged_slices(values: tf.Tensor, starts: tf.Tensor,
                   limits: tf.Tensor) -> tf.RaggedTensor:
  """Row i: values[starts[i]:limits[i]]."""
  return tf.gather(values, tf.ragged.range(starts, limits))


def _rows_of(tokens: Sequence[int], num_rows: tf.Tensor) -> tf.RaggedTensor:
  """num_rows copies of the same tokens, as a ragged [num_rows, len] tensor."""
  return tf.RaggedTensor.from_tensor(
      tf.tile(tf.constant([tokens], tf.int32), [num_rows, 1]),
      row_splits_dtype=tf.int64)


def user_examples(dataset: tf.data.Dataset,
                  sequence_length: Mapping[str, int],
                  output_features: Mapping[str, seqio.Feature],
                  seed: int) -> tf.data.Dataset:
  """`cut_last_items`, `to_inputs_and_targets` and seqio's
  `append_eos_after_trim`, in that order, on blocks of records at once.

  The same examples, in the same order, with the same warnings for the
  examples it drops, as the three one record at a time: the cut of the
  record at stream position p is drawn from `example_seed(seed, user, p)`
  (`example_seeds`, by `tasks.stateless_random`), the prompt keeps the same
  blocks and EOS ends every feature whose output feature adds one, after the
  feature is trimmed to its length less one. A tf.data call per block instead
  of five per record: the Tasks' pipeline (`tasks.tasks`) runs this.
  """
  max_tokens, prefixes = _prompt_budget(sequence_length, output_features)
  head = prefixes.user + prefixes.first_item
  next_length = len(prefixes.next_item)

  def with_eos(name: str, feature: tf.RaggedTensor) -> tf.RaggedTensor:
    output = output_features.get(name)
    if output is None or not output.add_eos:
      return feature
    length = sequence_length.get(name)
    if length is not None:
      feature = feature[:, :length - 1]
    return tf.concat(
        [feature, _rows_of([output.vocabulary.eos_id], feature.nrows())],
        axis=1)

  def warn(records, block_lengths, dropped):
    """tf.print of `to_inputs_and_targets` for each dropped row."""

    def warn_row(i):
      row = dropped[i]
      with tf.control_dependencies([tf.print(
          "WARNING: dropped the example of user", records["user_id"][row],
          "of category", records["category"][row],
          "as its newest history item has",
          block_lengths[row] - next_length, "tokens, which with the prompt's",
          prefixes.fixed_length, "fixed tokens exceed the inputs length of",
          max_tokens, output_stream=sys.stderr)]):
        return (i + 1,)

    return tf.while_loop(lambda i: i < tf.size(dropped), warn_row,
                         (tf.constant(0),))[0]

  def convert(block_index, records):
    lengths = records["block_lengths"]
    tokens = records["block_tokens"]
    num_rows = lengths.nrows()
    stream_indexes = (block_index * _EXAMPLE_BLOCK_SIZE +
                      tf.range(num_rows, dtype=tf.int64))
    num_items = tf.cast(lengths.row_lengths(), tf.int32)
    max_cut = tf.minimum(records["max_cut_items"], num_items - 2)
    cut = stateless_random.uniform_int32(
        *example_seeds(seed, records["user_id"], stream_indexes), max_cut + 1)
    # Items of all rows, one after the other, as in tokens.values: the
    # target's item and token positions there.
    block_lengths = tf.cast(lengths.values, tf.int64)
    block_starts = tf.cumsum(block_lengths, exclusive=True)
    target_item = lengths.row_starts() + tf.cast(num_items - cut - 1,
                                                 tf.int64)
    target_start = tf.gather(block_starts, target_item)
    target_end = target_start + tf.gather(block_lengths, target_item)
    newest_length = tf.gather(block_lengths, target_item - 1)
    fits = len(head) + newest_length <= max_tokens
    # A history item is kept when the prompt from it on fits.
    item_row = lengths.value_rowids()
    kept = ((tf.range(tf.size(block_starts), dtype=tf.int64) <
             tf.gather(target_item, item_row)) &
            (len(head) + tf.gather(target_start, item_row) - block_starts <=
             max_tokens))
    num_kept = tf.math.unsorted_segment_sum(
        tf.cast(kept, tf.int64), item_row, num_rows)
    kept_start = tf.gather(block_starts, target_item - num_kept)
    examples = {
        "inputs": tf.concat([
            _rows_of(head, num_rows),
            _ragged_slices(tokens.values, kept_start + next_length,
                           target_start),
            _rows_of(prefixes.next_item, num_rows)], axis=1),
        "targets": _ragged_slices(tokens.values, target_start + next_length,
                                  target_end),
    }
    examples = {name: with_eos(name, feature)
                for name, feature in examples.items()}
    dropped = tf.cast(tf.where(~fits)[:, 0], tf.int32)
    with tf.control_dependencies([warn(records, newest_length, dropped)]):
      fits = tf.identity(fits)
    examples.update(user_id=records["user_id"], category=records["category"])
    return {name: tf.ragged.boolean_mask(value, fits)
            for name, value in examples.items()}

  dataset = blocks.ragged_blocks(dataset, _EXAMPLE_BLOCK_SIZE).enumerate()
  return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
