"""Reading the preprocessing output: split records and the item corpus.

See docs/contracts.md: `manifest.json` lists each category's split files and
their record counts; each validation/test `tf.train.Example` holds a user's
chronological `item_ids` and `item_texts`, the LAST one the target and the
rest the history; `{category}/corpus.parquet` holds every item of a category.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import numpy as np

from pipelines import files
from pipelines import manifest as manifest_lib

CORPUS_COLUMNS = ("item_id", "text")
# The preprocessing job's manifest, read here through Beam's FileSystems.
MANIFEST = manifest_lib.MANIFEST


class DataError(ValueError):
  """A preprocessing output that cannot be evaluated; one line says why."""


@dataclasses.dataclass(frozen=True)
class SplitFiles:
  """A category's split as the preprocessing output's manifest lists it."""

  paths: tuple[str, ...]
  num_records: int | None  # None when the manifest does not count them.
  manifest_sha256: str  # Of the manifest's contents: names the data.


def _read_manifest(data_dir: str) -> dict[str, Any]:
  path = os.path.join(data_dir, MANIFEST)
  if not files.exists(path):
    raise DataError(manifest_lib.missing_message(data_dir))
  try:
    return manifest_lib.parse(files.read_bytes(path), path)
  except manifest_lib.ManifestError as error:
    raise DataError(str(error)) from None


def split_files(data_dir: str, category: str, split: str) -> SplitFiles:
  """The split's files that `{data_dir}/manifest.json` lists, each present.

  Raises:
    DataError: naming data_dir, when it has no manifest, the manifest is not
      JSON or lacks the category, its split or the split's files, a listed
      file is missing, or the split holds no users.
  """
  manifest = _read_manifest(data_dir)
  categories = manifest["categories"]
  if category not in categories:
    raise DataError(f"{data_dir}/{MANIFEST} lists no category {category!r}; "
                    f"it has {', '.join(sorted(categories))}.")
  splits = categories[category].get("splits", {})
  if split not in splits:
    raise DataError(f"{data_dir}/{MANIFEST} lists no {split} split of "
                    f"{category}; it has {', '.join(sorted(splits))}.")
  names = splits[split].get("files")
  if not isinstance(names, list) or not names:
    raise DataError(f"{data_dir}/{MANIFEST} lists no files of the {split} "
                    f"split of {category}.")
  num_records = splits[split].get("records")
  if num_records == 0:
    raise DataError(f"{data_dir}: the {split} split of {category} holds no "
                    "users (preprocessing left none; see its rejects/).")
  paths = tuple(os.path.join(data_dir, name) for name in names)
  missing = [path for path in paths if not files.exists(path)]
  if missing:
    raise DataError(f"{data_dir} lacks {len(missing)} of the {len(paths)} "
                    f"{split} files of {category} that {MANIFEST} lists, "
                    f"e.g. {missing[0]}.")
  digest = hashlib.sha256(
      json.dumps(manifest, sort_keys=True).encode("utf-8")).hexdigest()
  return SplitFiles(paths, num_records, digest)


@dataclasses.dataclass(frozen=True)
class UserExample:
  """One evaluation user: history items, then the target item."""

  user_id: str
  history_ids: tuple[str, ...]
  history_texts: tuple[str, ...]
  target_id: str
  target_text: str


class BadRecordError(ValueError):
  """A split record that cannot be evaluated; the message says why."""


def parse_example(serialized: bytes) -> UserExample:
  """A `tf.train.Example` of a validation/test split as a `UserExample`."""
  # pylint: disable-next=g-import-not-at-top
  from tensorflow.core.example import example_pb2
  example = example_pb2.Example()
  try:
    example.ParseFromString(serialized)
  except Exception as error:  # protobuf raises its own DecodeError.
    raise BadRecordError(f"not a tf.train.Example: {error}") from error
  features = example.features.feature

  def strings(name: str) -> list[str]:
    if name not in features:
      raise BadRecordError(f"missing feature {name!r}")
    try:
      return [value.decode("utf-8")
              for value in features[name].bytes_list.value]
    except UnicodeDecodeError as error:
      raise BadRecordError(f"feature {name!r} is not UTF-8: {error}") from error

  user_ids, item_ids, item_texts = (strings("user_id"), strings("item_ids"),
                                    strings("item_texts"))
  if len(user_ids) != 1:
    raise BadRecordError(f"expected one user_id, got {len(user_ids)}")
  if len(item_ids) != len(item_texts):
    raise BadRecordError(f"{len(item_ids)} item_ids but {len(item_texts)} "
                         "item_texts")
  if len(item_ids) < 2:
    raise BadRecordError(f"user {user_ids[0]} has {len(item_ids)} items; "
                         "evaluation needs a history item and a target")
  return UserExample(user_id=user_ids[0], history_ids=tuple(item_ids[:-1]),
                     history_texts=tuple(item_texts[:-1]),
                     target_id=item_ids[-1], target_text=item_texts[-1])


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Every item of a category, in corpus order."""

  item_ids: tuple[str, ...]
  texts: tuple[str, ...]

  def __post_init__(self):
    rows = {}
    for row, item_id in enumerate(self.item_ids):
      if item_id in rows:
        raise ValueError(f"Item id {item_id!r} appears twice in the corpus "
                         f"(rows {rows[item_id]} and {row}).")
      rows[item_id] = row
    object.__setattr__(self, "_rows", rows)

  def __len__(self) -> int:
    return len(self.item_ids)

  def row(self, item_id: str) -> int | None:
    """The corpus row of `item_id`, or None when the corpus lacks it."""
    return self._rows.get(item_id)

  def ids_at(self, rows: np.ndarray) -> list[str]:
    return [self.item_ids[row] for row in rows]


def load_corpus(path: files.Path) -> Corpus:
  """Reads `corpus.parquet` (item_id, text, ...), local or remote."""
  if not files.exists(path):
    raise FileNotFoundError(f"No corpus at {path}; run the preprocessing "
                            "pipeline first (docs/contracts.md).")
  table = files.read_parquet(path, CORPUS_COLUMNS)
  item_ids = table.column("item_id").to_pylist()
  texts = table.column("text").to_pylist()
  if any(value is None for value in item_ids + texts):
    raise ValueError(f"{path} has null item ids or texts.")
  if not item_ids:
    raise ValueError(f"{path} holds no items.")
  return Corpus(tuple(item_ids), tuple(texts))
