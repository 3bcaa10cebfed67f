"""One seqio Task per category of a preprocessing output (paper section 3.3).

Task names: `calrec_{category}` (`tasks.names.task_name`), e.g.
`Industrial_and_Scientific` -> `calrec_industrial_and_scientific`.
Categories, splits and their TFRecord files come from the output's
`manifest.json`, which the preprocessing job writes last: registration refuses
a folder without one (an unfinished run would give a Stage-I mixture over
fewer categories). stage1_only categories have only train. Stage II trains on
`calrec_{category}` itself.

Output features: `inputs` (the budgeted user prompt, no EOS) and `targets` (the
next item's text, ending in EOS); `CALRecFeatureConverter` turns them into
model features. An example whose newest history item alone exceeds the inputs
length is dropped with a warning (`preprocessors.to_inputs_and_targets`).
Training records are augmented (`preprocessors.cut_last_items`), validation
and test records are not. The tasks run both, and the EOS, as one block
preprocessor (`preprocessors.user_examples`).

The augmentation's seed is `augmentation_seed` of `register_tasks` (the
trainer's gin binds it to RANDOM_SEED), not the `seed` of `get_dataset`, which
seeds only seqio's shuffling (and the mixture's sampling). seqio's idiom,
`map_over_dataset(num_seeds=...)`, would draw from `get_dataset`'s seed; here a
cut is a stateless function of the registration seed, the user id and the
example's position in the task's stream (`preprocessors.example_seed`), so
that it holds no random state: the trainer's input checkpoint carries the
position, a resumed run draws the cuts an uninterrupted one would, and
`get_dataset(seed=None)` cuts deterministically too. `get_dataset`'s seed
still reaches the cuts through the order of the files it shuffles: with
several files per split another seed puts users at other positions.

The tasks have no `metric_fns`: the paper's metrics need BM25 retrieval over
the category's corpus, which `evaluator.evaluate` runs on the model's samples.
Any seqio feature converter for decoder-only models reads them (seqio's
`DecoderFeatureConverter` gives the prefix-LM features), but `CALRecModel`'s
loss also needs the pooling and item-alone features only
`CALRecFeatureConverter` adds (docs/contracts.md). Caching works with seqio's
`cache_tasks_main` (`--module_import=tasks.mixtures`) and
`train.use_cached_tasks`.

Register for a folder and a SentencePiece model (local paths or any filesystem
of `tf.io.gfile`, e.g. gs://):

  tasks.tasks.register_tasks(data_dir, vocabulary_path)

`tasks.mixtures.register_mixtures` does this and adds the Stage-I mixture.
"""

from __future__ import annotations

import functools
import os
from typing import Mapping, Sequence

import seqio
import tensorflow as tf

from pipelines import sequences
from tasks import manifest
from tasks import names
from tasks import preprocessors
from pipelines import templates
from tasks import vocab

# The splits the preprocessing job writes (docs/contracts.md).
SPLITS = (sequences.TRAIN, sequences.VALIDATION, sequences.TEST)
TRAIN_SPLIT = sequences.TRAIN

# The TFRecord features the tasks read (docs/contracts.md).
FEATURE_DESCRIPTION = {
    "user_id": tf.io.FixedLenFeature([], tf.string),
    "category": tf.io.FixedLenFeature([], tf.string),
    "item_texts": tf.io.RaggedFeature(tf.string),
}

# Records each file gives in turn, seqio.FileDataSource's default
# block_length: the source reads them as one block.
_INTERLEAVE_BLOCK_SIZE = 16

# Probe history for `vocab.check_prompt_additivity`.
_PROBE_HISTORY = (
    templates.item_text("Pro Flex Sealant, 10 Oz.", "Tools & Home Improvement",
                        "Geocel", "$11.22"),
    templates.item_text("Wire Nail (260-Pack)", None, "Hillman", None),
)


class UserRecordSource(seqio.FileDataSource):
  """The TFRecords of one category; marks how many items training may cut.

  Yields the records parsed by FEATURE_DESCRIPTION, as
  `seqio.TFExampleDataSource` would, plus the feature `max_cut_items`:
  `preprocessors.MAX_CUT_ITEMS` on the train split, 0 on the others, read by
  `preprocessors.user_examples`. Files are listed, shuffled and interleaved
  by `seqio.FileDataSource`, 16 at a time, as blocks of 16 records of each
  file in turn: one tf.data hand-off and one parse per block rather than per
  record. seqio interleaves the records themselves, 16 of a file in turn: the
  same order except where a file ends (with one file, the same order).
  """

  def __init__(self, split_to_files: Mapping[str, Sequence[str]]):
    super().__init__(read_file_fn=_record_blocks,
                     split_to_filepattern=split_to_files, block_length=1)

  def get_dataset(self, split: str = TRAIN_SPLIT, shuffle: bool = True,
                  seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None,
                  **kwargs) -> tf.data.Dataset:
    serialized = super().get_dataset(split, shuffle, seed, shard_info,
                                     **kwargs)
    max_cut = preprocessors.MAX_CUT_ITEMS if split == TRAIN_SPLIT else 0

    def parse(block: tf.Tensor) -> dict[str, tf.Tensor]:
      records = tf.io.parse_example(block, FEATURE_DESCRIPTION)
      # int64 row splits, those of the blocks the preprocessors batch.
      records["item_texts"] = records["item_texts"].with_row_splits_dtype(
          tf.int64)
      records["max_cut_items"] = tf.fill(tf.shape(block), max_cut)
      return records

    return serialized.map(
        parse, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def _record_blocks(path: tf.Tensor) -> tf.data.Dataset:
  """The serialized records of one TFRecord file, in blocks."""
  return tf.data.TFRecordDataset(path).batch(_INTERLEAVE_BLOCK_SIZE)


def read_categories(data_dir: str | os.PathLike[str]
                    ) -> dict[str, dict[str, tuple[str, ...]]]:
  """Category -> split -> TFRecord files, from data_dir's manifest.json.

  Raises:
    FileNotFoundError: data_dir has no manifest.json.
    ValueError: the manifest lists no category.
  """
  data_dir = os.fspath(data_dir)
  return {
      category: {split: tuple(os.path.join(data_dir, file)
                              for file in entry["splits"][split]["files"])
                 for split in SPLITS if split in entry["splits"]}
      for category, entry in manifest.read_categories(data_dir).items()}


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """`inputs`: the prompt, no EOS; `targets`: EOS.

  The prompt ends open so that the target completes it (paper section 3.2,
  next-item generation as sentence completion).
  """
  return {
      "inputs": seqio.Feature(vocabulary, add_eos=False),
      "targets": seqio.Feature(vocabulary, add_eos=True),
  }


def register_tasks(data_dir: str | os.PathLike[str],
                   vocabulary_path: str | os.PathLike[str],
                   augmentation_seed: int = 0) -> dict[str, str]:
  """Registers `calrec_{category}` for every category of data_dir's manifest.

  Re-registering replaces tasks of the same name.

  Args:
    data_dir: output folder of a completed `python -m pipelines.preprocess`
      run (with its manifest.json).
    vocabulary_path: a SentencePiece model or a byte-level BPE
      vocabulary.json (`tasks.vocab.get_vocabulary`).
    augmentation_seed: seed of the training augmentation
      (`preprocessors.cut_last_items`), fixed here: `get_dataset`'s seed does
      not replace it (module docstring). The trainer's gin binds it to
      RANDOM_SEED.

  Returns:
    Category folder name -> task name.

  Raises:
    FileNotFoundError: data_dir has no manifest.json.
  """
  vocabulary = vocab.get_vocabulary(vocabulary_path)
  vocab.check_prompt_additivity(vocabulary, _PROBE_HISTORY)
  features = output_features(vocabulary)
  task_names = {}
  for category, split_to_files in read_categories(data_dir).items():
    name = names.task_name(category)
    if name in task_names.values():
      raise ValueError(f"Two categories of {os.fspath(data_dir)!r} map to the "
                       f"task name {name!r}; rename one.")
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=UserRecordSource(split_to_files),
        preprocessors=[
            preprocessors.tokenize_items,
            seqio.CacheDatasetPlaceholder(),
            functools.partial(preprocessors.user_examples,
                              seed=augmentation_seed),
        ],
        output_features=features)
    task_names[category] = name
  return task_names
