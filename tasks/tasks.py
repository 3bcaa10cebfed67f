"""One seqio Task per category of a preprocessing output (paper section 3.3).

Task names: `calrec_{category}` (`tasks.names.task_name`), e.g.
`Industrial_and_Scientific` -> `calrec_industrial_and_scientific`.
Splits: those of train / validation / test present on disk (stage1_only
categories have only train). Stage II trains on `calrec_{category}` itself.

Output features: `inputs` (the budgeted user prompt, no EOS) and `targets` (the
next item's text, ending in EOS); `CALRecFeatureConverter` turns them into
model features. Training records are augmented (`preprocessors.cut_last_items`),
validation and test records are not.

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

import seqio
import tensorflow as tf

from pipelines import sequences
from tasks import names
from tasks import preprocessors
from tasks import templates
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

# Probe history for `vocab.check_prompt_additivity`.
_PROBE_HISTORY = (
    templates.item_text("Pro Flex Sealant, 10 Oz.", "Tools & Home Improvement",
                        "Geocel", "$11.22"),
    templates.item_text("Wire Nail (260-Pack)", None, "Hillman", None),
)


class UserRecordSource(seqio.TFExampleDataSource):
  """The TFRecords of one category; marks how many items training may cut.

  Adds the feature `max_cut_items`: `preprocessors.MAX_CUT_ITEMS` on the train
  split, 0 on the others, read by `preprocessors.cut_last_items`.
  """

  def __init__(self, category_dir: str, splits: tuple[str, ...]):
    super().__init__(
        split_to_filepattern={
            split: os.path.join(category_dir, f"{split}-*-of-*.tfrecord")
            for split in splits},
        feature_description=FEATURE_DESCRIPTION)

  def get_dataset(self, split: str = TRAIN_SPLIT, shuffle: bool = True,
                  seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None,
                  **kwargs) -> tf.data.Dataset:
    dataset = super().get_dataset(split, shuffle, seed, shard_info, **kwargs)
    max_cut = preprocessors.MAX_CUT_ITEMS if split == TRAIN_SPLIT else 0
    return dataset.map(lambda record: {
        **record, "max_cut_items": tf.constant(max_cut, tf.int32)})


def find_categories(data_dir: str | os.PathLike[str]) -> dict[str, tuple[str,
                                                                          ...]]:
  """Category folder -> splits with TFRecords, for a preprocessing output."""
  found = {
      (os.path.basename(os.path.dirname(path)), split)
      for split in SPLITS
      for path in tf.io.gfile.glob(os.path.join(
          os.fspath(data_dir), "*", f"{split}-*-of-*.tfrecord"))}
  categories = {
      category: tuple(split for split in SPLITS if (category, split) in found)
      for category in sorted({category for category, _ in found})}
  if not categories:
    raise FileNotFoundError(
        f"No {{category}}/{{split}}-SSSSS-of-NNNNN.tfrecord under "
        f"{os.fspath(data_dir)!r}; pass the output folder of "
        "`python -m pipelines.preprocess`.")
  return categories


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
  """Registers `calrec_{category}` for every category folder of data_dir.

  Re-registering replaces tasks of the same name.

  Args:
    data_dir: output folder of `python -m pipelines.preprocess`.
    vocabulary_path: SentencePiece model (`tasks.vocab`).
    augmentation_seed: global seed of the training augmentation.

  Returns:
    Category folder name -> task name.
  """
  vocabulary = vocab.get_vocabulary(vocabulary_path)
  vocab.check_prompt_additivity(vocabulary, _PROBE_HISTORY)
  features = output_features(vocabulary)
  task_names = {}
  for category, splits in find_categories(data_dir).items():
    name = names.task_name(category)
    if name in task_names.values():
      raise ValueError(f"Two category folders of {os.fspath(data_dir)!r} map "
                       f"to the task name {name!r}; rename one.")
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=UserRecordSource(os.path.join(os.fspath(data_dir), category),
                                splits),
        preprocessors=[
            preprocessors.tokenize_items,
            seqio.CacheDatasetPlaceholder(),
            functools.partial(preprocessors.cut_last_items,
                              seed=augmentation_seed),
            preprocessors.to_inputs_and_targets,
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features=features)
    task_names[category] = name
  return task_names
