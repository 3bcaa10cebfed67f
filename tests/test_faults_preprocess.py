"""Faults of the preprocessing job (`python -m pipelines.preprocess`) and
what a user sees: each test reproduces one item of the reliability issue."""

import collections
import gzip
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from pipelines import config as config_lib
from pipelines import outputs
from pipelines import preprocess
from pipelines import run_dir
from pipelines import sequences
import pipelines_testdata

_PROG = "python -m pipelines.preprocess"


def _errors(capsys):
  """The lines of stderr that report an error."""
  return [line for line in capsys.readouterr().err.splitlines()
          if "error:" in line]


def _contents(folder):
  """Every file under `folder` by relative name, with its bytes."""
  return {name: (folder / name).read_bytes()
          for name in pipelines_testdata.files(folder)}


def _corrupt_middle(path):
  """Overwrites 256 bytes in the middle of a gzip file, header intact."""
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 256] = bytes(256)
  path.write_bytes(bytes(data))


def test_item_8_word_vocabulary_counts_the_item_texts_as_words_per_item(
    tmp_path):
  """Item 8: Table 1's vocabulary is the set of lowercased whitespace tokens
  of the templated item texts, punctuation attached; the average word
  frequency is total words / vocabulary size. Counted by hand."""
  meta = {"B1": ("Neiko 6-Inch Caliper", "Tools", "Neiko", "$11.22"),
          "B2": ("Caliper", None, "NEIKO", None)}
  category = config_lib.CategoryConfig(
      name="Tools", reviews=("r",), meta=("m",), role=sequences.Role.EVAL)
  stats = outputs.write_category_files(str(tmp_path), category, meta,
                                       collections.Counter(), meta)
  # "Title: Neiko 6-Inch Caliper. Category: Tools. Brand: Neiko. Price:
  # $11.22.": 10 words; "Title: Caliper. Category: Unknown. Brand: NEIKO.
  # Price: Unknown.": 8. Types: title: neiko 6-inch caliper. category:
  # tools. brand: neiko. price: $11.22. unknown. (B2 adds only the last).
  assert stats["words_per_item"] == 18 / 2
  assert stats["word_vocab_size"] == 11
  assert stats["avg_word_freq"] == 18 / 11
