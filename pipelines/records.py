"""Serialized `tf.train.Example`s and TFRecord framing, without TensorFlow.

The schema is the one of docs/contracts.md: `user_id` bytes, `category` bytes,
`item_ids` bytes list, `item_texts` bytes list, `timestamps` int64 list.
Encoding the protobuf wire format directly keeps TensorFlow out of the Beam
workers and makes the bytes deterministic (features are written sorted by name).
"""

from __future__ import annotations

import functools
import struct
from typing import Sequence

import crcmod.predefined

_crc32c = crcmod.predefined.mkPredefinedCrcFun("crc-32c")

_UINT64_MASK = (1 << 64) - 1
_ONE_BYTE = [bytes((i,)) for i in range(0x80)]


def _varint(value: int) -> bytes:
  if 0 <= value < 0x80:
    return _ONE_BYTE[value]
  value &= _UINT64_MASK  # Negative int64: 10 bytes of two's complement.
  out = bytearray()
  while value > 0x7F:
    out.append((value & 0x7F) | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _tag(field_number: int) -> bytes:
  """The key of a length-delimited field (wire type 2)."""
  return _varint(field_number << 3 | 2)


# Field keys of example.proto and feature.proto.
_EXAMPLE_FEATURES = _tag(1)  # Example.features
_FEATURES_ENTRY = _tag(1)  # Features.feature, a map<string, Feature>
_ENTRY_KEY = _tag(1)
_ENTRY_VALUE = _tag(2)
_FEATURE_BYTES_LIST = _tag(1)  # Feature.bytes_list
_FEATURE_INT64_LIST = _tag(3)  # Feature.int64_list
_LIST_VALUE = _tag(1)  # BytesList.value / Int64List.value (packed)


def _field(key: bytes, payload: bytes) -> bytes:
  return key + _varint(len(payload)) + payload


# Item ids, texts and day-granular timestamps repeat across the records of a
# category; their encodings are cached (bounded, so memory stays flat).
@functools.lru_cache(maxsize=1 << 17)
def _bytes_value(value: str) -> bytes:
  return _field(_LIST_VALUE, value.encode("utf-8"))


@functools.lru_cache(maxsize=1 << 16)
def _int64_value(value: int) -> bytes:
  return _varint(value)


def _bytes_feature(values: Sequence[str]) -> bytes:
  return _field(_FEATURE_BYTES_LIST, b"".join(map(_bytes_value, values)))


def _int64_feature(values: Sequence[int]) -> bytes:
  packed = b"".join(map(_int64_value, values))
  return _field(_FEATURE_INT64_LIST,
                _field(_LIST_VALUE, packed) if packed else b"")


@functools.lru_cache(maxsize=64)
def _entry_key(name: str) -> bytes:
  return _field(_ENTRY_KEY, name.encode("utf-8"))


def encode_example(features: dict[str, bytes]) -> bytes:
  """An Example from already encoded Feature messages, sorted by name."""
  entries = b"".join(
      _field(_FEATURES_ENTRY,
             _entry_key(name) + _field(_ENTRY_VALUE, features[name]))
      for name in sorted(features))
  return _field(_EXAMPLE_FEATURES, entries)


def sequence_example(user_id: str, category: str, item_ids: Sequence[str],
                     item_texts: Sequence[str],
                     timestamps: Sequence[int]) -> bytes:
  """The serialized record of one user sequence (docs/contracts.md)."""
  return encode_example({
      "category": _bytes_feature((category,)),
      "item_ids": _bytes_feature(item_ids),
      "item_texts": _bytes_feature(item_texts),
      "timestamps": _int64_feature(timestamps),
      "user_id": _bytes_feature((user_id,)),
  })


def _masked_crc(data: bytes) -> bytes:
  crc = _crc32c(data)
  masked = ((crc >> 15) | (crc << 17)) + 0xA282EAD8
  return struct.pack("<I", masked & 0xFFFFFFFF)


def tfrecord_frame(record: bytes) -> bytes:
  """One TFRecord: length, masked CRC-32C of the length, data, its CRC."""
  length = struct.pack("<Q", len(record))
  return length + _masked_crc(length) + record + _masked_crc(record)
