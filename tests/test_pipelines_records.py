"""Hand-encoded Examples and TFRecord frames, checked against TensorFlow."""

import pytest

from pipelines import records

tf = pytest.importorskip("tensorflow")


def _decode(serialized):
  example = tf.train.Example.FromString(serialized)
  features = example.features.feature
  return {
      "user_id": features["user_id"].bytes_list.value[0].decode(),
      "category": features["category"].bytes_list.value[0].decode(),
      "item_ids": [v.decode() for v in features["item_ids"].bytes_list.value],
      "item_texts": [v.decode()
                     for v in features["item_texts"].bytes_list.value],
      "timestamps": list(features["timestamps"].int64_list.value),
      "names": sorted(features.keys()),
  }


def test_sequence_example_parses_in_tensorflow():
  texts = ["Title: Caf\u00e9 Vol. 1. Category: CDs. Brand: X. Price: $1.00.",
           "Title: " + "long " * 40 + ". Category: C. Brand: B. Price: P."]
  serialized = records.sequence_example(
      "A3SFSFJZFI0OQN", "CDs", ["B00002NC3K", "B0001MSC84"], texts,
      [1508544000, 2**40 + 3])
  assert _decode(serialized) == {
      "user_id": "A3SFSFJZFI0OQN", "category": "CDs",
      "item_ids": ["B00002NC3K", "B0001MSC84"], "item_texts": texts,
      "timestamps": [1508544000, 2**40 + 3],
      "names": ["category", "item_ids", "item_texts", "timestamps", "user_id"],
  }


def test_int64_edge_values_and_empty_lists_round_trip():
  serialized = records.sequence_example("u", "c", [], [],
                                        [0, -1, 2**63 - 1, -2**63, 127, 128])
  decoded = _decode(serialized)
  assert decoded["timestamps"] == [0, -1, 2**63 - 1, -2**63, 127, 128]
  assert decoded["item_ids"] == [] and decoded["item_texts"] == []


def test_encoding_matches_tensorflow_bytes():
  # TensorFlow serializes map entries in no fixed order, so compare one
  # feature at a time: each Feature message must be byte-identical.
  serialized = records.sequence_example("u1", "Games", ["B1", "B2"],
                                        ["t1", "t2"], [5, 300])
  ours = tf.train.Example.FromString(serialized).features.feature
  reference = {
      "user_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"u1"])),
      "category": tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[b"Games"])),
      "item_ids": tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[b"B1", b"B2"])),
      "item_texts": tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[b"t1", b"t2"])),
      "timestamps": tf.train.Feature(
          int64_list=tf.train.Int64List(value=[5, 300])),
  }
  for name, feature in reference.items():
    assert ours[name].SerializeToString() == feature.SerializeToString()


def test_tfrecord_frames_read_back_with_checksums(tmp_path):
  payloads = [b"", b"a", b"x" * 1000, bytes(range(256))]
  path = tmp_path / "f.tfrecord"
  path.write_bytes(b"".join(records.tfrecord_frame(p) for p in payloads))
  read = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
  assert read == payloads
  # A flipped byte inside the third payload must fail its checksum. Frames
  # are 12 header bytes, the payload, then 4 checksum bytes.
  third_payload = (16 + 0) + (16 + 1) + 12
  data = bytearray(path.read_bytes())
  data[third_payload + 500] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(tf.errors.DataLossError):
    list(tf.data.TFRecordDataset(str(path)))
