"""Small corpora and split files for the evaluator's tests."""

from __future__ import annotations

import gzip
import math
import pathlib
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tasks_testdata

from pipelines import processing
from pipelines import templates

def gift_cards_items(meta_path: pathlib.Path) -> list[dict[str, str]]:
  """Items of a real meta file, cleaned and templated by the pipeline."""
  with gzip.open(meta_path, "rb") as lines:
    chunk = processing.parse_meta_lines(enumerate(lines), str(meta_path))
  columns = processing.corpus_columns(chunk.items, chunk.items)
  return [dict(zip(columns, row)) for row in zip(*columns.values())]


_WORDS = ("red blue green gold silver classic deluxe mini card gift box set "
          "pack holiday birthday coffee movie music game book travel spa "
          "dinner pizza store online digital premium basic").split()


def generated_items(num_items: int, seed: int = 0) -> list[dict[str, str]]:
  """A seeded synthetic corpus in the item template, duplicates included."""
  rng = np.random.default_rng(seed)
  items = []
  for i in range(num_items):
    title = " ".join(rng.choice(_WORDS, size=rng.integers(1, 30)))
    brand = str(rng.choice(["Acme", "Zenith", "Orbit", None]))
    price = None if rng.random() < 0.3 else f"${rng.integers(5, 200)}.00"
    attributes = templates.item_attributes(title, "Gift Cards", brand, price)
    items.append({"item_id": f"I{i:05d}",
                  "text": templates.format_item(attributes),
                  **dict(zip(("title", "category", "brand", "price"),
                             attributes.as_tuple()))})
  items += [dict(items[0], item_id="DUP00000")]  # Same text, distinct id.
  return items


def write_corpus(directory: pathlib.Path, items: Sequence[dict[str, str]]
                 ) -> pathlib.Path:
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / "corpus.parquet"
  pq.write_table(pa.table({column: [item[column] for item in items]
                           for column in processing.CORPUS_COLUMNS}), path)
  return path


def write_split(directory: pathlib.Path, split: str, category: str,
                users: Sequence[tuple[str, Sequence[dict[str, str]]]],
                shard: int = 0, num_shards: int = 1) -> None:
  """Writes `{split}-SSSSS-of-NNNNN.tfrecord`; each user: (id, items)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"

  def bytes_feature(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[v.encode("utf-8") for v in values]))

  with tf.io.TFRecordWriter(str(path)) as writer:
    for user_id, items in users:
      example = tf.train.Example(features=tf.train.Features(feature={
          "user_id": bytes_feature([user_id]),
          "category": bytes_feature([category]),
          "item_ids": bytes_feature([item["item_id"] for item in items]),
          "item_texts": bytes_feature([item["text"] for item in items]),
          "timestamps": tf.train.Feature(int64_list=tf.train.Int64List(
              value=list(range(len(items))))),
      }))
      writer.write(example.SerializeToString())


def write_output(data_dir: pathlib.Path, category: str,
                 items: Sequence[dict[str, str]],
                 users: Sequence[tuple[str, Sequence[dict[str, str]]]],
                 splits: Sequence[str], num_shards: int = 1) -> None:
  """A preprocessing output of one category: the corpus, `users` in each of
  `splits` (dealt round-robin over `num_shards` files), stats.json and
  manifest.json (written last, as the job does)."""
  write_corpus(data_dir / category, items)
  for split in splits:
    for shard in range(num_shards):
      write_split(data_dir / category, split, category,
                  users[shard::num_shards], shard, num_shards)
  tasks_testdata.write_stats(data_dir, category, len(users), len(items))
  tasks_testdata.write_manifest(data_dir)


def quantized_length(length: int) -> int:
  """Lengths below 40 are exact; above, length - 24 keeps 4 leading bits."""
  if length < 24:
    return length
  excess = length - 24
  shift = max(excess.bit_length() - 4, 0)
  return 24 + (excess >> shift << shift)


def textbook_lucene_bm25(docs: Sequence[Sequence[str]], query: Sequence[str],
                         k1: float = 1.5, b: float = 0.75,
                         quantize: bool = True) -> np.ndarray:
  """Straightforward per-document BM25 in Lucene's variant, float64."""
  lengths = [len(doc) for doc in docs]
  doc_count = sum(1 for n in lengths if n)
  avgdl = sum(lengths) / doc_count
  scores = []
  for doc in docs:
    total = 0.0
    for term in query:  # Repeated query terms count again.
      df = sum(1 for other in docs if term in other)
      freq = doc.count(term)
      if not df or not freq:
        continue
      idf = math.log(1 + (doc_count - df + 0.5) / (df + 0.5))
      length = quantized_length(len(doc)) if quantize else len(doc)
      norm = k1 * (1 - b + b * length / avgdl)
      total += idf * freq / (freq + norm)
    scores.append(total)
  return np.array(scores)
