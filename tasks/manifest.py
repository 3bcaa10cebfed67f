"""The manifest.json of a preprocessing output, which the job writes last.

Its presence means the run finished (docs/contracts.md); its `categories` name
each category's corpus and split files, relative to the output folder. Read
with `tf.io.gfile`, so gs:// folders work; `pipelines.outputs` writes it (a
module that imports Beam, which reading does not need).
"""

from __future__ import annotations

import json
import os
from typing import Any

import tensorflow as tf

MANIFEST = "manifest.json"


def read_categories(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
  """Category -> its manifest entry, sorted by category.

  Raises:
    FileNotFoundError: data_dir has no manifest.json.
    ValueError: the manifest lists no category.
  """
  path = os.path.join(os.fspath(data_dir), MANIFEST)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(
        f"{path} is missing: preprocessing did not finish or this is not its "
        "output folder. Pass the --output_dir of a completed "
        "`python -m pipelines.preprocess` run (it writes manifest.json last).")
  with tf.io.gfile.GFile(path) as f:
    manifest = json.load(f)
  entries = manifest.get("categories") if isinstance(manifest, dict) else None
  if not entries:
    raise ValueError(f"{path} lists no categories; it is not the manifest of "
                     "a preprocessing run (docs/contracts.md).")
  return dict(sorted(entries.items()))
