"""Seeded test strings for the tokenizers, and the golden files of their ids.

The strings depend on nothing but this module (no project code, no data), so
scripts/make_transformers_goldens.py and the tests build the same ones; the
golden files hold transformers' ids of them (`IdsGolden`). The real
Gift_Cards strings are compared with transformers in the `live` tier only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import random
from typing import Sequence

import numpy as np

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"
GEMMA_IDS_GOLDEN = DATA_DIR / "gemma3_270m_tokenizer_golden.npz"
SMOLLM2_IDS_GOLDEN = DATA_DIR / "smollm2_135m_tokenizer_golden.npz"

_GEMMA_WORDS = (
    "Gift", "card", "Amazon.com", "$25.00", "1234567890", "naïve",
    "Crème brûlée", "東京", "Привет", "مرحبا", "नमस्ते", "🎁", "👍🏽",
    "👨‍👩‍👧", "&amp;", "&#39;", "&nbsp;", "<b>", "</td>", "™", "®",
    "½", "x²", "e-mail", "don't", "U.S.A.", "3.5\"", "50%", "#1",
    "C++", "~", "\t", "\u00a0", "\u200b", "ﬁ", "Ｆｕｌｌ", "Ⅻ")
_GEMMA_SEPS = (" ", "  ", "   ", "\n", "\n\n", " \n ", "\t", "", ". ", ", ")
_FIELDS = ("Title: ", "Category: ", "Brand: ", "Price: ", "Description: ")


def varied_strings(rng: random.Random, count: int) -> list[str]:
  """Digits, accents, scripts, emoji, entities, whitespace runs, edges.

  Args:
    rng: the generator to draw from (its state advances).
    count: how many strings.

  Returns:
    `count` strings of 1 to 12 words and separators.
  """
  strings = []
  for _ in range(count):
    parts = [rng.choice(_GEMMA_WORDS) + rng.choice(_GEMMA_SEPS)
             for _ in range(rng.randint(1, 12))]
    text = "".join(parts)
    if rng.random() < 0.3:
      text = " " * rng.randint(1, 3) + text
    if rng.random() < 0.3:
      text = text.rstrip() + rng.choice([" ", "  ", "\n", " \n"])
    strings.append(text)
  return strings


def _prompt_like(rng: random.Random) -> str:
  """Lines of field-labelled varied strings, as long as a short prompt."""
  lines = [rng.choice(_FIELDS) + text
           for text in varied_strings(rng, rng.randint(5, 25))]
  return "A user bought, in this order:\n" + "\n".join(lines) + (
      "\nThe next item they buy is")


def gemma_strings() -> list[str]:
  """The strings Gemma's ids are compared with transformers' on (1,710)."""
  rng = random.Random(1)
  return (varied_strings(rng, 1600) + [_prompt_like(rng) for _ in range(100)]
          + ["", " ", "\n", "  lead", "trail  ", "a\u00a0b", "\x01\x7f",
             "x" * 300, "1234567890" * 5, "\n" * 40])


_SMOLLM2_POOLS = (
    ["Gift", "card", "Amazon", "don't", "I'll", "WE'RE", "naïve", "café",
     "Ünïcödé", "Straße", "ﬁne", "Ω", "δοκιμή", "тест", "日本語", "한국어",
     "مرحبا", "שלום", "हिन्दी", "🎁", "👍🏽", "🇯🇵", "e\u0301", "\u200b",
     "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<file_sep>", "\x04"],
    ["0", "7", "42", "2018", "3.99", "$120.00", "1,000,000", "½", "٣",
     "१२", "(555)", "#1"],
    [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000",
     "      \n"],
    [".", ",", "!?", "...", "--", "'", "\"", "(", ")", "&", "@", "://", "™",
     "€", "*", "_", "|"],
)


def _smollm2_string(rng: random.Random) -> str:
  parts = [rng.choice(rng.choice(_SMOLLM2_POOLS))
           for _ in range(rng.randint(1, 14))]
  return "".join(part + rng.choice(("", "", " ")) for part in parts)


def smollm2_strings(count: int = 1200) -> list[str]:
  """Random strings of SmolLM2's pools, then 10 edge cases.

  Args:
    count: how many random strings (the golden file holds the default's).

  Returns:
    `count` + 10 strings.
  """
  rng = random.Random(0)
  return ([_smollm2_string(rng) for _ in range(count)] +
          ["", " ", "\n", "a", "  leading", "trailing  ", "x" * 300,
           "1234567890" * 5, "!\x04!", "a\x04\x04 b"])


def sha256_of(text: str) -> str:
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class IdsGolden:
  """Token ids of strings, as a golden file stores them.

  Attributes:
    strings_sha256: per string, the sha256 of its UTF-8 bytes.
    ids: per string, its token ids.
    gguf_sha256: the sha256 of the GGUF file the tokenizer was read from.
    transformers_version: the transformers that gave the ids.
  """
  strings_sha256: list[str]
  ids: list[list[int]]
  gguf_sha256: str
  transformers_version: str


def ids_arrays(ids: Sequence[Sequence[int]], prefix: str = ""
              ) -> dict[str, np.ndarray]:
  """`{prefix}ids` (all ids, concatenated) and `{prefix}offsets` (N + 1)."""
  lengths = [len(row) for row in ids]
  return {f"{prefix}ids": np.array([i for row in ids for i in row],
                                   dtype=np.int32),
          f"{prefix}offsets": np.concatenate(
              [[0], np.cumsum(lengths)]).astype(np.int64)}


def write_ids_golden(path: pathlib.Path, strings: Sequence[str],
                     ids_by_name: dict[str, Sequence[Sequence[int]]],
                     gguf_sha256: str, transformers_version: str) -> None:
  """Writes strings' sha256s and one or more id lists of them to `path`.

  Args:
    path: the .npz file to write.
    strings: the strings.
    ids_by_name: name -> per string, its ids (`{name}_ids`, `{name}_offsets`
      in the file).
    gguf_sha256: the GGUF file's sha256.
    transformers_version: transformers' version.
  """
  arrays = {"strings_sha256": np.array([sha256_of(s) for s in strings]),
            "gguf_sha256": np.array(gguf_sha256),
            "transformers_version": np.array(transformers_version)}
  for name, ids in ids_by_name.items():
    assert len(ids) == len(strings), name
    arrays.update(ids_arrays(ids, prefix=f"{name}_"))
  np.savez_compressed(path, **arrays)


def read_ids_golden(path: pathlib.Path, name: str) -> IdsGolden:
  """The `name` ids of a file `write_ids_golden` wrote."""
  with np.load(path) as data:
    flat = data[f"{name}_ids"].tolist()
    offsets = data[f"{name}_offsets"].tolist()
    return IdsGolden(
        strings_sha256=data["strings_sha256"].tolist(),
        ids=[flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])],
        gguf_sha256=str(data["gguf_sha256"]),
        transformers_version=str(data["transformers_version"]))


def strings_mismatch(strings: Sequence[str], golden: IdsGolden,
                     script: str) -> str | None:
  """None if `strings` are the golden file's, else why not, in words."""
  if [sha256_of(s) for s in strings] == golden.strings_sha256:
    return None
  return (f"the test strings ({len(strings)}) are not the golden file's "
          f"({len(golden.strings_sha256)}): tests/tokenizer_strings.py "
          f"changed? Regenerate with {script}")


def first_mismatch(strings: Sequence[str], ids: Sequence[Sequence[int]],
                   golden: IdsGolden, script: str) -> str | None:
  """Where `ids` of `strings` first differ from the golden's, in words.

  Args:
    strings: the strings, as the golden file's script built them.
    ids: per string, the ids to check.
    golden: the golden file's contents.
    script: the command that regenerates the golden file (for the message).

  Returns:
    None when all ids are equal; otherwise a message naming the count of
    differing strings and the first one, with both id lists.
  """
  stale = strings_mismatch(strings, golden, script)
  if stale:
    return stale
  differing = [i for i, (got, want) in enumerate(zip(ids, golden.ids))
               if list(got) != want]
  if not differing:
    return None
  i = differing[0]
  return (f"ids differ from transformers' {golden.transformers_version} "
          f"(golden file) on {len(differing)} of {len(strings)} strings; "
          f"first, string {i} {strings[i]!r}: got {list(ids[i])}, "
          f"transformers {golden.ids[i]}")


def transformers_tokenizer(path: pathlib.Path, smollm_digits: bool = False):
  """transformers' tokenizer of a GGUF file (source ids).

  Args:
    path: the GGUF file.
    smollm_digits: give it SmolLM2's split of every digit before GPT-2's
      byte-level split. transformers knows no split for the file's
      `tokenizer.ggml.pre` 'smollm' and falls back to GPT-2's alone; llama.cpp
      (and SmolLM2's own tokenizer.json) split digits first.

  Returns:
    The tokenizer.
  """
  import transformers  # pylint: disable=g-import-not-at-top
  from tokenizers import pre_tokenizers  # pylint: disable=g-import-not-at-top

  tokenizer = transformers.AutoTokenizer.from_pretrained(
      str(path.parent), gguf_file=path.name)
  if smollm_digits:
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  return tokenizer


def transformers_ids(tokenizer, strings: Sequence[str]) -> list[list[int]]:
  """The tokenizer's ids of each string, without special tokens."""
  return [tokenizer.encode(s, add_special_tokens=False) for s in strings]
