r"""Byte-level BPE vocabularies (SmolLM2, Llama 3, Qwen2.5) as seqio ones.

A byte-level BPE tokenizer (GPT-2's scheme) writes every byte of the text as
one character of a 256-character alphabet, splits the text into pre-tokens
by the model's regular expressions, and merges each pre-token's characters by
the rank of its merges. Added tokens (the file's special and user-defined
ones, such as "<|im_end|>") are matched whole first.

The vocabulary is stored as one JSON file in the layout of a Hugging Face
`tokenizer.json` (model type "BPE", vocab, merges, pre_tokenizer,
added_tokens), so that it can be read by eye and loaded by `tokenizers`:

  text = tasks.bpe_vocab.vocabulary_json_from_gguf(path)  # or _from_hf
  pathlib.Path("vocabulary.json").write_text(text)
  vocabulary = tasks.vocab.get_vocabulary("vocabulary.json")

Ids follow the project's contract (docs/contracts.md): pad=0 and eos=1.
Byte-level files number their tokens otherwise (SmolLM2: 0 <|endoftext|>,
1 <|im_start|>, 2 <|im_end|>; Llama 3 and Qwen2.5: "!" is 0), so the file's
ids are renumbered by swapping its pad token with id 0 and its EOS token with
id 1; every other id keeps its number. The pad token is the file's padding
token when that is not its EOS, else its first special token that is neither
EOS nor BOS (SmolLM2: <|endoftext|>, which stays 0). The moved ids are
recorded in the JSON (`model.calrec.source_ids`: new id -> the file's id;
`tokenizers` ignores the key), and `trainer.convert` moves the embedding rows
alike and moves them back on export.

BOS: the vocabulary's `bos_id` is the file's BOS only where the tokenizer
adds it to every text (GGUF `tokenizer.ggml.add_bos_token`, a
`TemplateProcessing` post-processor); SmolLM2 and Qwen2.5 have none.

Encoding and decoding run in Python; the TF path (`encode_tf`, `decode_tf`)
calls the same Python code through `tf.numpy_function`. Both are
deterministic functions of the text, so a resumed run (seqio's cached or
replayed input pipeline) gets the same tokens as the first one. Decoding
writes special tokens as "" (as SentencePiece does with control pieces);
a byte the vocabulary has no token for is dropped by encoding.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import unicodedata
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import regex
import seqio
import tensorflow as tf

from tasks import gguf_vocab

PAD_ID = 0
EOS_ID = 1

# GPT-2's split (as Hugging Face's ByteLevel pre-tokenizer has it, with the
# trailing `\s+`).
GPT2_SPLIT = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+"
              r"| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+"
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                r"|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+"
               r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DIGITS = r"\p{N}"

# The splits of GGUF `tokenizer.ggml.pre` names (llama.cpp's), applied in
# order, and whether a pre-token that is a whole token skips the merges
# (llama.cpp's `ignore_merges`, set for Llama 3 as its tokenizer.json does).
PRE_TOKENIZERS: Mapping[str, tuple[tuple[str, ...], bool]] = {
    "gpt-2": ((GPT2_SPLIT,), False),
    "smollm": ((_DIGITS, GPT2_SPLIT), False),
    "llama-bpe": ((LLAMA3_SPLIT,), True),
    "llama3": ((LLAMA3_SPLIT,), True),
    "qwen2": ((QWEN2_SPLIT,), False),
}

_GGUF_PREFIX = "tokenizer.ggml."
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4
_RECORD = "calrec"


@functools.cache
def byte_alphabet() -> tuple[str, ...]:
  """GPT-2's character of each byte: printable Latin-1 bytes are themselves,
  the others (control bytes, space, ...) 256, 257, ... in byte order."""
  printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD),
               *range(0xAE, 0x100)]
  chars, extra = {}, 0
  for byte in range(256):
    if byte in printable:
      chars[byte] = chr(byte)
    else:
      chars[byte] = chr(256 + extra)
      extra += 1
  return tuple(chars[byte] for byte in range(256))


@functools.cache
def _alphabet_bytes() -> Mapping[str, int]:
  return {char: byte for byte, char in enumerate(byte_alphabet())}


def _token_bytes(token: str) -> bytes:
  """The bytes a vocabulary token stands for (its characters' bytes; a
  character outside the alphabet stands for its UTF-8)."""
  table = _alphabet_bytes()
  return b"".join(bytes([table[char]]) if char in table else
                  char.encode("utf-8") for char in token)


@dataclasses.dataclass(frozen=True)
class _Tokenizer:
  """A byte-level BPE tokenizer in the source's ids."""

  tokens: dict[str, int]
  merges: list[tuple[str, str]]
  splits: tuple[str, ...]
  ignore_merges: bool
  nfc: bool
  added: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class _SourceIds:
  """The source's special ids (None: absent)."""

  pad: int | None
  eos: int | None
  bos: int | None


def _renumbering(source: _SourceIds, special_ids: Sequence[int],
                 where: str) -> dict[int, int]:
  """New id -> source id of the ids that move (pad to 0, EOS to 1)."""
  if source.eos is None:
    raise ValueError(f"{where}: the tokenizer names no EOS token; the "
                     "project needs one (eos id 1).")
  pad = source.pad
  if pad is None or pad == source.eos:
    free = sorted(set(special_ids) - {source.eos, source.bos})
    if not free:
      raise ValueError(
          f"{where}: no padding token distinct from EOS and no unused "
          "special token to pad with; the project needs one (pad id 0).")
    pad = free[0]
  order = list(range(max(pad, source.eos, 1) + 1))
  for new, old in ((PAD_ID, pad), (EOS_ID, source.eos)):
    at = order.index(old)
    order[new], order[at] = order[at], order[new]
  return {new: old for new, old in enumerate(order) if new != old}


def _vocabulary_json(tokenizer: _Tokenizer, source: _SourceIds,
                     where: str) -> str:
  """The stored JSON of a tokenizer, renumbered (module docstring)."""
  special = [entry["id"] for entry in tokenizer.added if entry["special"]]
  moved = _renumbering(source, special, where)
  new_of = {old: new for new, old in moved.items()}
  renumber = lambda i: new_of.get(i, i)
  bos = None if source.bos is None else renumber(source.bos)
  added = sorted((dict(entry, id=renumber(entry["id"]))
                  for entry in tokenizer.added), key=lambda e: e["id"])
  document = {
      "version": "1.0",
      "truncation": None,
      "padding": None,
      "added_tokens": added,
      "normalizer": {"type": "NFC"} if tokenizer.nfc else None,
      "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
          *({"type": "Split", "pattern": {"Regex": split},
             "behavior": "Isolated", "invert": False}
            for split in tokenizer.splits),
          {"type": "ByteLevel", "add_prefix_space": False,
           "trim_offsets": True, "use_regex": False}]},
      "post_processor": None,
      "decoder": {"type": "ByteLevel", "add_prefix_space": True,
                  "trim_offsets": True, "use_regex": True},
      "model": {
          "type": "BPE", "dropout": None, "unk_token": None,
          "continuing_subword_prefix": None, "end_of_word_suffix": None,
          "fuse_unk": False, "byte_fallback": False,
          "ignore_merges": tokenizer.ignore_merges,
          "vocab": {token: renumber(i) for token, i in
                    tokenizer.tokens.items()},
          "merges": [list(pair) for pair in tokenizer.merges],
          _RECORD: {"bos_id": bos,
                    "source_ids": {str(new): old for new, old in
                                   sorted(moved.items())}},
      },
  }
  return json.dumps(document, ensure_ascii=False, indent=1) + "\n"


def vocabulary_json_from_gguf(gguf_path: str | os.PathLike[str]) -> str:
  """The vocabulary JSON (module docstring) of a GGUF file's byte-level BPE
  tokenizer (`tokenizer.ggml.model` 'gpt2').

  Raises:
    ValueError: another tokenizer model, a `tokenizer.ggml.pre` not in
      `PRE_TOKENIZERS`, missing tokens or merges, or no EOS or pad.
  """
  where = os.fspath(gguf_path)
  metadata = gguf_vocab.read_gguf_metadata(gguf_path)
  get = lambda name, default=None: metadata.get(_GGUF_PREFIX + name, default)
  if get("model") != "gpt2":
    raise ValueError(f"{where}: tokenizer.ggml.model {get('model')!r} is not "
                     "byte-level BPE ('gpt2').")
  pre = get("pre", "default")
  if pre not in PRE_TOKENIZERS:
    raise ValueError(
        f"{where}: tokenizer.ggml.pre {pre!r} is not supported; supported: "
        f"{', '.join(map(repr, PRE_TOKENIZERS))}.")
  tokens, merges = get("tokens"), get("merges")
  if not tokens or not merges:
    raise ValueError(f"{where}: no tokenizer.ggml.tokens or "
                     "tokenizer.ggml.merges.")
  types = get("token_type")
  types = [1] * len(tokens) if types is None else types.tolist()
  splits, ignore_merges = PRE_TOKENIZERS[pre]
  added = [_added_token(i, token, kind == _GGUF_CONTROL)
           for i, (token, kind) in enumerate(zip(tokens, types))
           if kind in (_GGUF_CONTROL, _GGUF_USER_DEFINED)]
  tokenizer = _Tokenizer(
      tokens={token: i for i, token in enumerate(tokens)},
      merges=[_merge_pair(merge) for merge in merges], splits=splits,
      ignore_merges=ignore_merges, nfc=False, added=added)
  optional = lambda name: None if get(name) is None else int(get(name))
  source = _SourceIds(pad=optional("padding_token_id"),
                      eos=optional("eos_token_id"),
                      bos=optional("bos_token_id"))
  if not get("add_bos_token", False):
    source = dataclasses.replace(source, bos=None)
  return _vocabulary_json(tokenizer, source, where)


def _added_token(token_id: int, content: str, special: bool
                ) -> dict[str, Any]:
  return {"id": token_id, "content": content, "single_word": False,
          "lstrip": False, "rstrip": False, "normalized": False,
          "special": special}


def _merge_pair(merge: str | Sequence[str]) -> tuple[str, str]:
  left, right = merge.split(" ") if isinstance(merge, str) else merge
  return left, right


def vocabulary_json_from_hf(tokenizer_json: str | os.PathLike[str],
                            eos_id: int | None,
                            pad_id: int | None = None) -> str:
  """The vocabulary JSON of a transformers `tokenizer.json` (byte-level BPE).

  Args:
    tokenizer_json: the file's path.
    eos_id: the model's EOS (config.json's `eos_token_id`).
    pad_id: its padding token (`pad_token_id`), if any.

  Raises:
    ValueError: not a byte-level BPE tokenizer of the supported shape (split
      and digit pre-tokenizers, a byte-level one without prefix space, no
      normalizer or NFC), or no EOS or pad.
  """
  where = os.fspath(tokenizer_json)
  with tf.io.gfile.GFile(where) as f:
    document = json.load(f)
  tokenizer, bos = _parse_tokenizer(document, where)
  return _vocabulary_json(tokenizer, _SourceIds(pad=pad_id, eos=eos_id,
                                                bos=bos), where)


def _parse_tokenizer(document: Mapping[str, Any], where: str
                    ) -> tuple[_Tokenizer, int | None]:
  """A tokenizer.json's tokenizer and the BOS its post-processor adds."""
  model = document.get("model") or {}
  if model.get("type") != "BPE" or model.get("byte_fallback"):
    raise ValueError(f"{where}: not a byte-level BPE tokenizer (model type "
                     f"{model.get('type')!r}).")
  normalizer = document.get("normalizer")
  if normalizer not in (None, {"type": "NFC"}):
    raise ValueError(f"{where}: normalizer {normalizer.get('type')!r} is not "
                     "supported (none or NFC).")
  added = []
  for entry in document.get("added_tokens", []):
    if entry.get("lstrip") or entry.get("rstrip") or entry.get(
        "single_word"):
      raise ValueError(f"{where}: added token {entry['content']!r} strips "
                       "or matches single words, which is not supported.")
    added.append(_added_token(int(entry["id"]), entry["content"],
                              bool(entry.get("special"))))
  tokenizer = _Tokenizer(
      tokens=dict(model["vocab"]),
      merges=[_merge_pair(merge) for merge in model["merges"]],
      splits=tuple(_splits(document.get("pre_tokenizer"), where)),
      ignore_merges=bool(model.get("ignore_merges")),
      nfc=normalizer is not None, added=added)
  return tokenizer, _added_bos(document)


def _splits(pre_tokenizer: Mapping[str, Any] | None,
            where: str) -> Iterator[str]:
  """The split regexes of a tokenizer.json pre-tokenizer, in order."""
  kind = (pre_tokenizer or {}).get("type")
  if kind == "Sequence":
    for part in pre_tokenizer["pretokenizers"]:
      yield from _splits(part, where)
  elif (kind == "Split" and pre_tokenizer.get("behavior") == "Isolated" and
        not pre_tokenizer.get("invert")):
    pattern = pre_tokenizer["pattern"]
    yield pattern["Regex"] if "Regex" in pattern else regex.escape(
        pattern["String"])
  elif kind == "Digits":
    yield _DIGITS if pre_tokenizer.get("individual_digits") else r"\p{N}+"
  elif kind == "ByteLevel" and not pre_tokenizer.get("add_prefix_space"):
    if pre_tokenizer.get("use_regex", True):
      yield GPT2_SPLIT
  else:
    raise ValueError(f"{where}: pre-tokenizer {pre_tokenizer!r} is not "
                     "supported (Split 'Isolated', Digits, ByteLevel "
                     "without prefix space).")


def _added_bos(document: Mapping[str, Any]) -> int | None:
  """The id of the special token a TemplateProcessing post-processor puts
  before every text, if any."""
  processor = document.get("post_processor") or {}
  parts = (processor.get("processors", []) if processor.get("type") ==
           "Sequence" else [processor])
  for part in parts:
    if part.get("type") == "TemplateProcessing" and part.get("single"):
      first = part["single"][0].get("SpecialToken")
      if first is not None:
        return int(part["special_tokens"][first["id"]]["ids"][0])
  return None


def renumbering_of(vocabulary_json: Mapping[str, Any]) -> np.ndarray:
  """The id permutation of a stored vocabulary: entry i is the source id of
  new id i (rows of a source embedding, taken in this order, are the
  renumbered model's)."""
  record = vocabulary_json["model"][_RECORD]["source_ids"]
  size = vocabulary_size(vocabulary_json)
  order = np.arange(size)
  for new, old in record.items():
    order[int(new)] = old
  return order


def vocabulary_size(vocabulary_json: Mapping[str, Any]) -> int:
  """One more than the largest id of the vocabulary."""
  ids = [*vocabulary_json["model"]["vocab"].values(),
         *(entry["id"] for entry in vocabulary_json["added_tokens"])]
  return max(ids) + 1


def source_tokenizer_json(vocabulary_json: Mapping[str, Any]) -> str:
  """A stored vocabulary with the source's ids again (a transformers
  `tokenizer.json`, as `trainer.convert` exports it)."""
  order = renumbering_of(vocabulary_json)
  model = {key: value for key, value in vocabulary_json["model"].items()
           if key != _RECORD}
  model["vocab"] = {token: int(order[i]) for token, i in
                    model["vocab"].items()}
  document = dict(vocabulary_json, model=model, added_tokens=sorted(
      (dict(entry, id=int(order[entry["id"]]))
       for entry in vocabulary_json["added_tokens"]),
      key=lambda e: e["id"]))
  return json.dumps(document, ensure_ascii=False, indent=1) + "\n"


class ByteLevelBPEVocabulary(seqio.Vocabulary):
  """A `seqio.Vocabulary` of a stored byte-level BPE vocabulary JSON.

  pad=0 and eos=1; `bos_id` as the module docstring says; no unknown id
  (every byte has a token). See the module docstring for the TF path.
  """

  def __init__(self, path: str | os.PathLike[str], extra_ids: int = 0):
    """Reads the JSON file at `path` (local or any `tf.io.gfile` path).

    Raises:
      ValueError: not a vocabulary JSON written by this module.
    """
    super().__init__(extra_ids=extra_ids)
    self._path = os.fspath(path)
    with tf.io.gfile.GFile(self._path, "rb") as f:
      self._text = f.read()
    self._load()

  def _load(self) -> None:
    document = json.loads(self._text)
    record = (document.get("model") or {}).get(_RECORD)
    if record is None:
      raise ValueError(
          f"{self._path}: not a vocabulary JSON of tasks.bpe_vocab (no "
          f"model.{_RECORD}); build one with vocabulary_json_from_gguf or "
          "vocabulary_json_from_hf.")
    tokenizer, _ = _parse_tokenizer(document, self._path)
    self._bos_id = record["bos_id"]
    self._size = vocabulary_size(document)
    self._nfc = tokenizer.nfc
    self._tokens = tokenizer.tokens
    self._ranks = {pair: rank for rank, pair in
                   enumerate(tokenizer.merges)}
    self._ignore_merges = tokenizer.ignore_merges
    self._splits = [regex.compile(split) for split in tokenizer.splits]
    added = sorted(tokenizer.added, key=lambda e: -len(e["content"]))
    self._added_ids = {e["content"]: e["id"] for e in added}
    self._added = (regex.compile("|".join(regex.escape(e["content"])
                                          for e in added))
                   if added else None)
    self._bytes = self._id_bytes(tokenizer)
    self._encode_pre_token = functools.lru_cache(maxsize=1 << 16)(
        self._bpe_ids)

  def _id_bytes(self, tokenizer: _Tokenizer) -> list[bytes]:
    """The bytes each id decodes to (b"" for special tokens)."""
    table = [b""] * self._size
    for token, i in tokenizer.tokens.items():
      table[i] = _token_bytes(token)
    for entry in tokenizer.added:
      table[entry["id"]] = (b"" if entry["special"] else
                            entry["content"].encode("utf-8"))
    return table

  def __getstate__(self) -> dict[str, Any]:
    return {"path": self._path, "text": self._text,
            "extra_ids": self._extra_ids}

  def __setstate__(self, state: Mapping[str, Any]) -> None:
    self._path, self._text = state["path"], state["text"]
    self._extra_ids = state["extra_ids"]
    self._load()

  def __eq__(self, other: object) -> bool:
    return (isinstance(other, ByteLevelBPEVocabulary) and
            self._text == other._text and
            self.extra_ids == other.extra_ids)

  def __hash__(self) -> int:
    return hash((self._text, self.extra_ids))

  @property
  def text(self) -> bytes:
    """The stored JSON, as read."""
    return self._text

  @property
  def bos_id(self) -> int | None:
    return self._bos_id

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def unk_id(self) -> None:
    return None

  @property
  def _base_vocab_size(self) -> int:
    return self._size

  def id_bytes(self, token_id: int) -> bytes:
    """The bytes a token decodes to (b"" for special tokens)."""
    return self._bytes[token_id]

  def pre_tokens(self, text: str) -> list[str]:
    """The pre-tokens of a text without added tokens: each split regex in
    turn cuts every piece into its matches and the text between them."""
    pieces = [text]
    for split in self._splits:
      pieces = [part for piece in pieces for part in _isolate(split, piece)]
    return pieces

  def _encode(self, s: str) -> list[int]:
    if self._nfc:
      s = unicodedata.normalize("NFC", s)
    ids = []
    for text, added_id in self._added_parts(s):
      if added_id is not None:
        ids.append(added_id)
        continue
      for pre_token in self.pre_tokens(text):
        ids.extend(self._encode_pre_token(pre_token))
    return ids

  def _added_parts(self, s: str) -> Iterator[tuple[str, int | None]]:
    """The text between added tokens (id None) and the added tokens."""
    start = 0
    if self._added is not None:
      for match in self._added.finditer(s):
        if match.start() > start:
          yield s[start:match.start()], None
        yield match.group(), self._added_ids[match.group()]
        start = match.end()
    if start < len(s):
      yield s[start:], None

  def _bpe_ids(self, pre_token: str) -> tuple[int, ...]:
    """The ids of one pre-token: its bytes' characters merged by rank, the
    lowest-ranked pair first (every occurrence, left to right). A byte
    without a token is dropped before merging, as `tokenizers` does without
    an unknown token (SmolLM2 has no token for 21 bytes: control bytes and
    bytes UTF-8 never uses)."""
    alphabet = byte_alphabet()
    word = "".join(alphabet[byte] for byte in pre_token.encode("utf-8"))
    if self._ignore_merges and word in self._tokens:
      return (self._tokens[word],)
    symbols = [char for char in word if char in self._tokens]
    while len(symbols) > 1:
      ranked = [(self._ranks[pair], i) for i, pair in
                enumerate(zip(symbols, symbols[1:])) if pair in self._ranks]
      if not ranked:
        break
      _, first = min(ranked)
      symbols = _merge(symbols, (symbols[first], symbols[first + 1]))
    return tuple(self._tokens[symbol] for symbol in symbols)

  def _decode(self, ids: Sequence[int]) -> str:
    data = b"".join(self._bytes[i] for i in map(int, ids)
                    if 0 <= i < self._size)
    return data.decode("utf-8", errors="replace")

  def _encode_batch(self, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    encoded = [self._encode(text.decode("utf-8")) for text in texts]
    values = np.array([i for ids in encoded for i in ids], np.int32)
    return values, np.array([len(ids) for ids in encoded], np.int64)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
    """A scalar string's ids (1-D), or a vector's (ragged, 2-D)."""
    s = tf.convert_to_tensor(s, tf.string)
    if s.shape.rank not in (0, 1):
      raise ValueError(f"encode_tf takes a scalar or a vector of strings, "
                       f"got shape {s.shape}.")
    values, lengths = tf.numpy_function(
        self._encode_batch, [tf.reshape(s, [-1])], [tf.int32, tf.int64],
        stateful=False)
    values.set_shape([None])
    lengths.set_shape([None])
    if s.shape.rank == 0:
      return values
    return tf.RaggedTensor.from_row_lengths(values, lengths)

  def _decode_rows(self, ids: np.ndarray) -> np.ndarray:
    return np.array([self._decode(row).encode("utf-8") for row in ids],
                    dtype=object)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """The strings of a 1-D (one string) or 2-D (one per row) id tensor."""
    ids = tf.convert_to_tensor(ids)
    if ids.shape.rank not in (1, 2):
      raise ValueError(f"decode_tf takes 1-D or 2-D ids, got shape "
                       f"{ids.shape}.")
    rows = tf.reshape(ids, [-1, tf.shape(ids)[-1]])
    texts = tf.numpy_function(self._decode_rows, [rows], tf.string,
                              stateful=False)
    texts.set_shape([None])
    return texts[0] if ids.shape.rank == 1 else texts


def _isolate(split: regex.Pattern, text: str) -> Iterator[str]:
  """The matches of `split` in `text` and the non-empty text between."""
  end = 0
  for match in split.finditer(text):
    if match.start() > end:
      yield text[end:match.start()]
    if match.end() > match.start():
      yield match.group()
    end = match.end()
  if end < len(text):
    yield text[end:]


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
  """`symbols` with every occurrence of `pair` joined, left to right."""
  merged, i = [], 0
  while i < len(symbols):
    if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
      merged.append(pair[0] + pair[1])
      i += 2
    else:
      merged.append(symbols[i])
      i += 1
  return merged
