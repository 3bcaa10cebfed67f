"""A SentencePiece model rebuilt from the tokenizer metadata of a GGUF file.

A pretrained backbone (DESIGN.md, "Pretrained backbones") must be trained and
prompted with its own tokenizer. A GGUF file carries that tokenizer as
metadata; `sentencepiece_model_from_gguf` turns it into a serialized
SentencePiece `ModelProto`, which `tasks.vocab.get_vocabulary` (and so seqio,
the tasks and the evaluator) reads like any other SentencePiece model:

  proto = tasks.gguf_vocab.sentencepiece_model_from_gguf(path)
  pathlib.Path("vocabulary.model").write_bytes(proto)

Supported: `tokenizer.ggml.model` 'llama' (SentencePiece vocabularies, e.g.
Gemma 3): BPE merged by piece score, byte fallback, the identity normalizer,
a dummy prefix unless `tokenizer.ggml.add_space_prefix` is false, and the
special ids the file names. Gemma's files spell whitespace-run pieces with
literal spaces; they are spelled with "▁" here, as SentencePiece (and
transformers) look them up. Byte-level BPE vocabularies ('gpt2': SmolLM2,
Llama 3, Qwen2.5) are not SentencePiece ones: `tasks.bpe_vocab` builds them,
with `read_gguf_metadata` of this module.

The metadata is read with a small parser of the GGUF header that stops before
the tensor data (about 0.3 s for Gemma 3's 262,144 pieces).
"""

from __future__ import annotations

import dataclasses
import os
import struct
from typing import Any, BinaryIO

import numpy as np
from sentencepiece import sentencepiece_model_pb2

# GGUF metadata value types (the GGUF specification's numbering).
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL = range(8)
_STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(8, 13)
_SCALAR_FORMATS = {
    _UINT8: "<B", _INT8: "<b", _UINT16: "<H", _INT16: "<h", _UINT32: "<I",
    _INT32: "<i", _FLOAT32: "<f", _BOOL: "<?", _UINT64: "<Q", _INT64: "<q",
    _FLOAT64: "<d",
}
_NUMPY_TYPES = {
    _UINT8: "<u1", _INT8: "<i1", _UINT16: "<u2", _INT16: "<i2",
    _UINT32: "<u4", _INT32: "<i4", _FLOAT32: "<f4", _BOOL: "<u1",
    _UINT64: "<u8", _INT64: "<i8", _FLOAT64: "<f8",
}

# Token types of llama.cpp, which uses SentencePiece's numbering.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = range(1, 7)

SUPPORTED_TOKENIZER_MODELS = ("llama",)
_PREFIX = "tokenizer.ggml."
_SPACE = "\u2581"


def read_gguf_metadata(gguf_path: str | os.PathLike[str]) -> dict[str, Any]:
  """The key/value metadata of a GGUF file (versions 2 and 3).

  Scalars come back as Python values, arrays of numbers as numpy arrays and
  arrays of strings as lists of str. The tensor data is not read.

  Raises:
    ValueError: not a little-endian GGUF file of version 2 or 3.
  """
  with open(gguf_path, "rb") as f:
    magic, version = struct.unpack("<4sI", f.read(8))
    if magic != b"GGUF" or version not in (2, 3):
      raise ValueError(
          f"{os.fspath(gguf_path)} is not a little-endian GGUF file of "
          f"version 2 or 3 (magic {magic!r}, version {version}).")
    _, num_values = struct.unpack("<QQ", f.read(16))
    metadata = {}
    for _ in range(num_values):
      key = _read_string(f)
      (value_type,) = struct.unpack("<I", f.read(4))
      metadata[key] = _read_value(f, value_type)
  return metadata


def _read_string(f: BinaryIO) -> str:
  (length,) = struct.unpack("<Q", f.read(8))
  return f.read(length).decode("utf-8")


def _read_value(f: BinaryIO, value_type: int) -> Any:
  if value_type == _STRING:
    return _read_string(f)
  if value_type == _ARRAY:
    item_type, count = struct.unpack("<IQ", f.read(12))
    if item_type in _NUMPY_TYPES:
      dtype = np.dtype(_NUMPY_TYPES[item_type])
      return np.frombuffer(f.read(count * dtype.itemsize), dtype)
    return [_read_value(f, item_type) for _ in range(count)]
  if value_type in _SCALAR_FORMATS:
    fmt = _SCALAR_FORMATS[value_type]
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
  raise ValueError(f"Unknown GGUF metadata value type {value_type}.")


@dataclasses.dataclass(frozen=True)
class _SpecialIds:
  """Special token ids named by the file's metadata (-1 when absent)."""

  pad: int
  eos: int
  bos: int
  unk: int

  @classmethod
  def of(cls, metadata: dict[str, Any]) -> _SpecialIds:
    def get(name: str) -> int:
      value = metadata.get(_PREFIX + name)
      return -1 if value is None else int(value)
    return cls(pad=get("padding_token_id"), eos=get("eos_token_id"),
               bos=get("bos_token_id"), unk=get("unknown_token_id"))


def _piece_text(token: str) -> str:
  """A token as SentencePiece spells it: spaces as "▁", one per space."""
  return token.replace(" ", _SPACE)


def sentencepiece_model_from_gguf(gguf_path: str | os.PathLike[str]) -> bytes:
  """A serialized SentencePiece ModelProto of a GGUF file's tokenizer.

  Pieces, scores and token types are the file's; whitespace in a piece is
  spelled "▁". The unknown piece gets SentencePiece's UNKNOWN type (Gemma's
  file marks it CONTROL), the pad, EOS and BOS pieces CONTROL. The model is
  BPE (merges by piece score), with byte fallback, the identity normalizer,
  no removal of extra whitespace and a dummy prefix unless the file's
  `tokenizer.ggml.add_space_prefix` is false (Gemma 3: false; llama.cpp's
  default is true). No BOS or EOS
  is added by encoding; the tasks place them (docs/contracts.md).

  Raises:
    ValueError: the file's tokenizer is not a SentencePiece one ('llama'; see
      `tasks.bpe_vocab` for 'gpt2'), or its metadata lacks the tokens or an
      unknown-token id.
  """
  metadata = read_gguf_metadata(gguf_path)
  kind = metadata.get(_PREFIX + "model")
  if kind not in SUPPORTED_TOKENIZER_MODELS:
    raise ValueError(
        f"{os.fspath(gguf_path)}: tokenizer.ggml.model {kind!r} is not a "
        "SentencePiece vocabulary; supported here: "
        f"{', '.join(map(repr, SUPPORTED_TOKENIZER_MODELS))} (such as Gemma "
        "3's); byte-level BPE ('gpt2') is read by tasks.bpe_vocab.")
  tokens = metadata.get(_PREFIX + "tokens")
  if not tokens:
    raise ValueError(f"{os.fspath(gguf_path)}: no tokenizer.ggml.tokens.")
  scores = metadata.get(_PREFIX + "scores")
  if scores is None:
    scores = np.zeros(len(tokens), np.float32)
  types = metadata.get(_PREFIX + "token_type")
  if types is None:
    types = np.full(len(tokens), _NORMAL, np.int32)
  if not len(tokens) == len(scores) == len(types):
    raise ValueError(
        f"{os.fspath(gguf_path)}: {len(tokens)} tokens, {len(scores)} scores "
        f"and {len(types)} token types.")
  special = _SpecialIds.of(metadata)
  if not 0 <= special.unk < len(tokens):
    raise ValueError(f"{os.fspath(gguf_path)}: no valid "
                     "tokenizer.ggml.unknown_token_id.")

  model = sentencepiece_model_pb2.ModelProto()
  piece_type = sentencepiece_model_pb2.ModelProto.SentencePiece.Type
  for token_id, (token, score, token_type) in enumerate(
      zip(tokens, scores.tolist(), types.tolist())):
    if token_id == special.unk:
      token_type = _UNKNOWN
    elif token_id in (special.pad, special.eos, special.bos):
      token_type = _CONTROL
    elif token_type not in piece_type.values():
      token_type = _NORMAL
    model.pieces.add(piece=_piece_text(token), score=score,
                     type=token_type)

  trainer = model.trainer_spec
  trainer.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
  trainer.vocab_size = len(tokens)
  trainer.byte_fallback = bool(np.any(types == _BYTE))
  for name, token_id in dataclasses.asdict(special).items():
    setattr(trainer, f"{name}_id", token_id)
    if token_id >= 0:
      setattr(trainer, f"{name}_piece", _piece_text(tokens[token_id]))

  normalizer = model.normalizer_spec
  normalizer.name = "identity"
  # llama.cpp adds a space prefix unless the file says otherwise.
  normalizer.add_dummy_prefix = bool(
      metadata.get(_PREFIX + "add_space_prefix", True))
  normalizer.remove_extra_whitespaces = False
  normalizer.escape_whitespaces = True
  return model.SerializeToString()
