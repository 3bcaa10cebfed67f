"""Small preprocessing outputs (docs/contracts.md) for the tests.

Folders may be local or on any filesystem of `tf.io.gfile` (e.g. ram://).
Write the categories, then `write_manifest`, as the preprocessing job does.
"""

from __future__ import annotations

import io
import json
import os
import random
from typing import Callable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import seqio
import tensorflow as tf

from pipelines import config as config_lib
from pipelines import outputs
from pipelines import sequences
from tasks import tasks as tasks_lib
from pipelines import templates
from tasks import vocab

_WORDS = ("Pro", "Flex", "Sealant", "Clear", "Paper", "Red", "Wire", "Nail",
          "Brad", "Assortment", "Rosin", "Flooring", "Acrylic", "Paintable",
          "Small", "Large", "Kit", "Pack", "Oz", "Inch", "Blue", "Steel")
_BRANDS = ("Hillman", "Geocel", "Trimaco", None)
_PRICES = ("$11.22", "$3.99", "$120.00", None)


def random_item_texts(rng: random.Random, count: int,
                      category: str) -> list[str]:
  """`count` templated item texts with random titles, brands and prices."""
  return [templates.item_text(
      " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 12))),
      category, rng.choice(_BRANDS), rng.choice(_PRICES))
          for _ in range(count)]


def user_record(user_id: str, category: str,
                item_texts: Sequence[str]) -> tf.train.Example:
  """One `tf.train.Example` of the preprocessing output's schema."""
  def bytes_feature(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[v.encode("utf-8") for v in values]))
  return tf.train.Example(features=tf.train.Features(feature={
      "user_id": bytes_feature([user_id]),
      "category": bytes_feature([category]),
      "item_ids": bytes_feature([f"B{i:09d}" for i in range(len(item_texts))]),
      "item_texts": bytes_feature(item_texts),
      "timestamps": tf.train.Feature(int64_list=tf.train.Int64List(
          value=list(range(1_500_000_000, 1_500_000_000 + len(item_texts))))),
  }))


def history_records(histories: Sequence[tuple[Sequence[str], str]]
                    ) -> tf.data.Dataset:
  """One source record per (history, target): its items then its target,
  none cut (`max_cut_items` 0), user ids u0, u1, ..."""
  def generator():
    for index, (history, target) in enumerate(histories):
      yield {"user_id": f"u{index}", "category": "Gift_Cards",
             "item_texts": [*history, target], "max_cut_items": 0}
  return tf.data.Dataset.from_generator(generator, output_signature={
      "user_id": tf.TensorSpec([], tf.string),
      "category": tf.TensorSpec([], tf.string),
      "item_texts": tf.TensorSpec([None], tf.string),
      "max_cut_items": tf.TensorSpec([], tf.int32)})


def write_split(data_dir: str | os.PathLike[str], category: str, split: str,
                records: Sequence[tuple[str, Sequence[str]]],
                num_shards: int = 1) -> None:
  """Writes (user_id, item_texts) records as `{category}/{split}-*.tfrecord`."""
  category_dir = os.path.join(os.fspath(data_dir), category)
  tf.io.gfile.makedirs(category_dir)
  for shard in range(num_shards):
    path = os.path.join(category_dir,
                        f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
      for user_id, texts in records[shard::num_shards]:
        writer.write(user_record(user_id, category, texts).SerializeToString())


def write_stats(data_dir: str | os.PathLike[str], category: str,
                num_users: int, num_items: int) -> None:
  """Writes `{category}/stats.json` with `num_users` and `num_items`."""
  category_dir = os.path.join(os.fspath(data_dir), category)
  tf.io.gfile.makedirs(category_dir)
  with tf.io.gfile.GFile(os.path.join(category_dir, "stats.json"), "w") as f:
    json.dump({"num_users": num_users, "num_items": num_items}, f)


def write_corpus(data_dir: str | os.PathLike[str], category: str,
                 texts: Sequence[str]) -> None:
  """Writes `{category}/corpus.parquet` with item_id and text columns."""
  category_dir = os.path.join(os.fspath(data_dir), category)
  tf.io.gfile.makedirs(category_dir)
  # pyarrow cannot write to a GFile (no `closed`); write the bytes instead.
  parquet = io.BytesIO()
  pq.write_table(pa.table({"item_id": [f"B{i}" for i in range(len(texts))],
                           "text": list(texts)}), parquet)
  with tf.io.gfile.GFile(os.path.join(category_dir, "corpus.parquet"),
                         "wb") as f:
    f.write(parquet.getvalue())


def write_category(data_dir: str | os.PathLike[str], category: str,
                   num_users: int, seed: int,
                   splits: Sequence[str] = ("train",), min_items: int = 3,
                   max_items: int = 12, num_shards: int = 1,
                   stats_num_users: int | None = None) -> dict[str, list]:
  """A random category: every split gets one record per user, and stats.json.

  `stats_num_users` is the |U| written to stats.json (default: num_users).
  Returns split -> the written (user_id, item_texts) records.
  """
  rng = random.Random(seed)
  written = {}
  for split in splits:
    records = [(f"{category}-user{u}", random_item_texts(
        rng, rng.randint(min_items, max_items), category))
               for u in range(num_users)]
    write_split(data_dir, category, split, records, num_shards)
    written[split] = records
  items = {text for records in written.values() for _, texts in records
           for text in texts}
  write_stats(data_dir, category, stats_num_users or num_users, len(items))
  return written


def _num_records(path: str) -> int:
  return sum(1 for _ in tf.data.TFRecordDataset(path))


def _category_files(data_dir: str, category: str
                    ) -> tuple[config_lib.CategoryConfig,
                               list[outputs.ShardFile]]:
  """The category's config, its role told by the splits on disk, and files."""
  found = {split: sorted(tf.io.gfile.glob(os.path.join(
      data_dir, category, f"{split}-*-of-*.tfrecord")))
           for split in tasks_lib.SPLITS}
  splits = tuple(split for split, paths in found.items() if paths)
  roles = {role_splits: role
           for role, role_splits in sequences.ROLE_SPLITS.items()}
  config = config_lib.CategoryConfig(
      name=category, reviews=(), meta=(), role=roles[splits],
      num_shards=len(found[sequences.TRAIN]))
  return config, [(category, split, os.path.basename(path), _num_records(path))
                  for split in splits for path in found[split]]


def write_manifest(data_dir: str | os.PathLike[str]) -> None:
  """Writes `manifest.json` (`pipelines.outputs.manifest`) for every category
  folder with a stats.json, as the preprocessing job does last."""
  data_dir = os.fspath(data_dir)
  configs, shard_files, stats = [], [], {}
  for path in sorted(tf.io.gfile.glob(os.path.join(data_dir, "*",
                                                   "stats.json"))):
    category = os.path.basename(os.path.dirname(path))
    with tf.io.gfile.GFile(path) as f:
      stats[category] = json.load(f)
    config, files = _category_files(data_dir, category)
    configs.append(config)
    shard_files += files
  manifest = outputs.manifest(config_lib.Config(tuple(configs)), shard_files,
                              [], stats)
  with tf.io.gfile.GFile(os.path.join(data_dir, outputs.MANIFEST), "w") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)


def train_test_vocabulary(output: str | os.PathLike[str],
                          vocab_size: int = 400, seed: int = 0) -> str:
  """A tiny SentencePiece model trained on random item texts; its path."""
  texts = random_item_texts(random.Random(seed), 300, "Tools & Home")
  return vocab.train_sentencepiece(texts, output, vocab_size, seed)


def register_in_memory_task(
    name: str, dataset_fn: Callable[..., tf.data.Dataset],
    vocabulary_path: str | os.PathLike[str],
    preprocessors_after_tokenize: Sequence[Callable[..., tf.data.Dataset]] = (),
) -> None:
  """(Re-)registers a seqio task of in-memory 'inputs'/'targets' texts.

  `dataset_fn(split, shuffle_files, seed=None)` serves the 'train' and
  'validation' splits; texts are tokenized and EOS-terminated like the
  CALRec tasks' (tasks.tasks.output_features), with any given preprocessors
  run in between.
  """
  from tasks import tasks  # pylint: disable=g-import-not-at-top
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn,
                                      splits=["train", "validation"]),
      preprocessors=[seqio.preprocessors.tokenize,
                     *preprocessors_after_tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      output_features=tasks.output_features(
          seqio.SentencePieceVocabulary(os.fspath(vocabulary_path))))
