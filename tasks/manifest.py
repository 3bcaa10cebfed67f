"""Reads the manifest.json of a preprocessing output for the seqio tasks.

Read with `tf.io.gfile`, so gs:// folders work without Beam's GCS extra;
`pipelines.manifest` checks its contents, as for every other reader.
"""

from __future__ import annotations

import os
from typing import Any

import tensorflow as tf

from pipelines import manifest


def read_categories(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
  """Category -> its manifest entry, sorted by category.

  Raises:
    FileNotFoundError: data_dir has no manifest.json.
    pipelines.manifest.ManifestError: it is not a preprocessing run's.
  """
  data_dir = os.fspath(data_dir)
  path = os.path.join(data_dir, manifest.MANIFEST)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(manifest.missing_message(data_dir))
  with tf.io.gfile.GFile(path, "rb") as f:
    return dict(sorted(manifest.parse(f.read(), path)["categories"].items()))
