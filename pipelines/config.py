"""The category list a preprocessing run reads (paper section 4, "Dataset").

A config is a JSON file:

  {
    "sampling_seed": 0,                # seeds the user-sampling hash
    "data_dir": "amazon2018",          # optional; relative to this file
    "categories": [
      {"name": "Office",                             # [A-Za-z0-9_]+
       "reviews": "Office_Products_5.json.gz",       # pattern or list of them
       "meta": "meta_Office_Products.json.gz",
       "role": "eval",              # stage1_only | validation | eval
       "user_fraction": 0.5,        # optional, default 1.0
       "num_shards": 2}             # optional TFRecord shards per split
    ]
  }

`num_shards` also sets how many buckets the category's meta is joined in
(`processing.meta_bucket`) and its rejects are written in
(`processing.reject_bucket`): a worker holds one bucket at a time, so give a
category with millions of meta rows enough shards.

Relative file patterns are resolved against `--data_dir` when given, else the
config's `data_dir`, else the folder holding the config file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
from typing import Any

from pipelines import files
from pipelines import sequences

_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_CATEGORY_KEYS = {"name", "reviews", "meta", "role", "user_fraction",
                  "num_shards"}
_CONFIG_KEYS = {"sampling_seed", "data_dir", "categories"}


class ConfigError(ValueError):
  """A config that cannot be used; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class CategoryConfig:
  """One category of the run, with its file patterns already resolved."""

  name: str
  reviews: tuple[str, ...]
  meta: tuple[str, ...]
  role: sequences.Role
  user_fraction: float = 1.0
  num_shards: int = 1

  @property
  def splits(self) -> tuple[str, ...]:
    """The splits written for the category's role, in build order."""
    return sequences.ROLE_SPLITS[self.role]

  def to_json(self) -> dict[str, Any]:
    return {"name": self.name, "reviews": list(self.reviews),
            "meta": list(self.meta), "role": self.role.value,
            "user_fraction": self.user_fraction, "num_shards": self.num_shards}


@dataclasses.dataclass(frozen=True)
class Config:
  """A validated run config: its categories and the user-sampling seed."""

  categories: tuple[CategoryConfig, ...]
  sampling_seed: int = 0

  def category(self, name: str) -> CategoryConfig:
    """The category called `name`; raises KeyError naming the known ones."""
    for category in self.categories:
      if category.name == name:
        return category
    raise KeyError(f"no category {name!r} in the config; known: "
                   f"{[c.name for c in self.categories]}")

  def to_json(self) -> dict[str, Any]:
    return {"sampling_seed": self.sampling_seed,
            "categories": [c.to_json() for c in self.categories]}


def _join_url(base: str, path: str) -> str:
  """`path` under the `scheme://` URL `base`, normalised as a POSIX path.

  Object stores name objects by the whole string: `gs://b/in/./x` is not
  `gs://b/in/x` (GCSFileSystem.join keeps the dot), so "." and ".." are
  resolved here, and the scheme kept.

  Raises:
    ConfigError: `path` is absolute or climbs out of `base`'s bucket.
  """
  scheme, rest = base.split("://", 1)
  bucket = rest.split("/", 1)[0]
  joined = posixpath.normpath(posixpath.join(rest, path))
  if posixpath.isabs(path) or joined.split("/", 1)[0] != bucket:
    raise ConfigError(f"{path!r} under {base} is outside {scheme}://{bucket}; "
                      "give a full URL instead")
  return f"{scheme}://{joined}"


def _resolve(pattern: str, data_dir: str) -> str:
  if "://" in pattern:
    return pattern
  if "://" in data_dir:
    return _join_url(data_dir, pattern)
  return os.path.normpath(os.path.join(data_dir, pattern))


def _patterns(entry: dict[str, Any], key: str, where: str,
              data_dir: str) -> tuple[str, ...]:
  value = entry.get(key)
  patterns = [value] if isinstance(value, str) else value
  if (not isinstance(patterns, list) or not patterns or
      not all(isinstance(p, str) and p for p in patterns)):
    raise ConfigError(f"{where}: '{key}' must be a file pattern or a "
                      "non-empty list of them")
  return tuple(_resolve(p, data_dir) for p in patterns)


def _category(entry: Any, index: int, data_dir: str) -> CategoryConfig:
  where = f"categories[{index}]"
  if not isinstance(entry, dict):
    raise ConfigError(f"{where} must be an object")
  unknown = set(entry) - _CATEGORY_KEYS
  if unknown:
    raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: "
                      f"{sorted(_CATEGORY_KEYS)}")
  name = entry.get("name")
  if not isinstance(name, str) or not _NAME.match(name):
    raise ConfigError(f"{where}: 'name' must match [A-Za-z0-9_]+ (it names "
                      f"the output folder), got {name!r}")
  where = f"category {name!r}"
  roles = [r.value for r in sequences.Role]
  if entry.get("role") not in roles:
    raise ConfigError(f"{where}: 'role' must be one of {roles}, got "
                      f"{entry.get('role')!r}")
  fraction = entry.get("user_fraction", 1.0)
  if (isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or
      not 0.0 < fraction <= 1.0):
    raise ConfigError(f"{where}: 'user_fraction' must be in (0, 1], got "
                      f"{fraction!r}")
  shards = entry.get("num_shards", 1)
  if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
    raise ConfigError(f"{where}: 'num_shards' must be an integer >= 1, got "
                      f"{shards!r}")
  return CategoryConfig(
      name=name, reviews=_patterns(entry, "reviews", where, data_dir),
      meta=_patterns(entry, "meta", where, data_dir),
      role=sequences.Role(entry["role"]), user_fraction=float(fraction),
      num_shards=shards)


def parse_config(raw: Any, config_dir: str,
                 data_dir: str | None = None) -> Config:
  """Validates a loaded config; relative patterns resolve as documented."""
  if not isinstance(raw, dict):
    raise ConfigError("the config must be a JSON object")
  unknown = set(raw) - _CONFIG_KEYS
  if unknown:
    raise ConfigError(f"unknown top-level keys {sorted(unknown)}; allowed: "
                      f"{sorted(_CONFIG_KEYS)}")
  seed = raw.get("sampling_seed", 0)
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise ConfigError(f"'sampling_seed' must be an integer, got {seed!r}")
  if data_dir is None:
    data_dir = _resolve(raw.get("data_dir", "."), config_dir)
  entries = raw.get("categories")
  if not isinstance(entries, list) or not entries:
    raise ConfigError("'categories' must be a non-empty list")
  categories = tuple(_category(e, i, data_dir) for i, e in enumerate(entries))
  names = [c.name for c in categories]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ConfigError(f"category names must be unique; repeated: {duplicates}")
  return Config(categories=categories, sampling_seed=seed)


def load_config(path: str, data_dir: str | None = None) -> Config:
  """Reads and validates a config file."""
  try:
    text = files.read_bytes(path, decompress=True)
  # ValueError: no file system for the path's scheme (gs:// needs [gcp]).
  except (OSError, ValueError) as e:
    raise ConfigError(f"cannot read config {path}: {e}") from None
  try:
    raw = json.loads(text)
  except ValueError as e:  # JSONDecodeError or UnicodeDecodeError.
    raise ConfigError(f"config {path} is not valid JSON: {e}") from None
  return parse_config(raw, os.path.dirname(path) or ".", data_dir)
