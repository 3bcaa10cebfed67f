"""The manifest.json of a preprocessing output: its name and the one check
of its contents every reader applies (docs/contracts.md).

The job writes it last (`pipelines.outputs.write_manifest`): its presence
means the run finished, and its `categories` name each category's corpus and
split files, relative to the output folder. Each reader brings its own file
access (TensorFlow's for seqio tasks, Beam's for the evaluator) and hands the
bytes to `parse`; a missing manifest is reported with `missing_message`.
"""

from __future__ import annotations

import json
from typing import Any

MANIFEST = "manifest.json"


class ManifestError(ValueError):
  """A manifest.json that is not a preprocessing run's."""


def missing_message(data_dir: str) -> str:
  """Why a folder without manifest.json cannot be read, and what to pass."""
  return (f"{data_dir} has no {MANIFEST}: preprocessing did not finish or "
          "this is not its output folder; pass the --output_dir of a "
          f"completed `python -m pipelines.preprocess` run (it writes "
          f"{MANIFEST} last).")


def parse(data: bytes | str, path: str) -> dict[str, Any]:
  """The manifest at `path` from its bytes.

  Raises:
    ManifestError: not JSON, or no `categories` listed.
  """
  try:
    manifest = json.loads(data)
  except ValueError as error:  # Not JSON, or not UTF-8.
    raise ManifestError(f"{path} is not valid JSON: {error}") from None
  if not isinstance(manifest, dict) or not manifest.get("categories"):
    raise ManifestError(f"{path} lists no categories; it is not the manifest "
                        "of a preprocessing run (docs/contracts.md).")
  return manifest
