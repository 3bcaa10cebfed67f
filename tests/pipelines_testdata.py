"""Reading the preprocessing job's TFRecords back in tests."""

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
