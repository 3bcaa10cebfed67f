"""The preprocessing job's hand-made input fixture, and reading its output
back in tests."""

import gzip
import json
import pathlib

import tensorflow as tf


def read_split(folder: pathlib.Path, split: str) -> dict[str, tuple]:
  """user_id -> (item_ids, timestamps, item_texts, category) of every shard."""
  out = {}
  for path in sorted(folder.glob(f"{split}-*.tfrecord")):
    for record in tf.data.TFRecordDataset(str(path)):
      f = tf.train.Example.FromString(record.numpy()).features.feature
      out[f["user_id"].bytes_list.value[0].decode()] = (
          [v.decode() for v in f["item_ids"].bytes_list.value],
          list(f["timestamps"].int64_list.value),
          [v.decode() for v in f["item_texts"].bytes_list.value],
          f["category"].bytes_list.value[0].decode())
  return out


META_2018 = [
    {"asin": "B1", "title": "Star Saga I", "brand": "Nova",
     "category": ["Video Games", "PC"], "price": "$19.99"},
    {"asin": "B1", "title": "Star Saga I", "category": ["Video Games"]},
    {"asin": "B2", "title": "Star Saga II &amp; More", "brand": "Nova",
     "category": ["Video Games"], "price": ".a{color:red}"},
    {"asin": "B3", "title": "<b>Star</b> Saga III", "brand": "Nova",
     "category": ["Video Games"], "price": "$29.99"},
    {"asin": "B5", "title": "Pad", "brand": "Joy", "category": ["Video Games"]},
    {"asin": "B6", "title": "Cable", "category": ["Video Games"]},
]
# 2014 meta: a Python literal with `categories` and a numeric price.
META_2014 = ("{'asin': 'B4', 'title': 'Star Saga IV', 'brand': 'Nova', "
             "'categories': [['Video Games', 'PC']], 'price': 39.5}")


def review(user, asin, t, text="fun", rating=5.0):
  """One review line."""
  return json.dumps({"reviewerID": user, "asin": asin, "unixReviewTime": t,
                     "reviewText": text, "overall": rating})


REVIEWS = [
    review("U1", "B1", 10), review("U1", "B2", 20), review("U1", "B2", 20),
    review("U1", "B3", 30), review("U1", "B4", 40),
    review("U2", "B5", 5), review("U2", "B6", 6), review("U2", "B5", 7),
    review("U3", "B4", 100), review("U3", "B3", 50), review("U3", "B2", 50),
    review("U3", "B1", 200),
    '{"reviewerID": "U4", "asin": ',  # Malformed.
    json.dumps({"asin": "B1", "unixReviewTime": 3}),  # No reviewer.
    review("U1", "B99", 11),  # No meta.
]


def write_fixture(folder):
  """Writes the hand-made Games fixture into `folder`; returns its config."""
  folder.mkdir(parents=True, exist_ok=True)
  meta = [json.dumps(m) for m in META_2018] + [META_2014, "{oops"]
  (folder / "meta_Games.json.gz").write_bytes(
      gzip.compress(("\n".join(meta) + "\n").encode()))
  (folder / "Games_5.json").write_text("\n".join(REVIEWS) + "\n")
  config = {"sampling_seed": 0, "categories": [
      {"name": "Games", "reviews": "Games_5.json",
       "meta": "meta_Games.json.gz", "role": "eval"},
      {"name": "Stage1", "reviews": "Games_5.json",
       "meta": "meta_Games.json.gz", "role": "stage1_only", "num_shards": 2},
  ]}
  path = folder / "config.json"
  path.write_text(json.dumps(config))
  return path


def reject_files(output, category):
  """File name -> the (source, offset, reason, record) of each line, for
  every rejects file of a category."""
  return {path.name: [(r["source"], r["offset"], r["reason"], r["record"])
                      for r in map(json.loads, path.read_text().splitlines())]
          for path in sorted((output / "rejects").glob(f"{category}-*.jsonl"))}


def files(folder):
  return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                if p.is_file())
