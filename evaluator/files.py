"""File access through Beam's FileSystems.

Local paths, gs:// and any other scheme Beam knows, so that the evaluator and
its reports run on Dataflow unchanged.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence, Union

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
import pyarrow as pa
import pyarrow.parquet as pq

Path = Union[str, os.PathLike]


def exists(path: Path) -> bool:
  return FileSystems.exists(os.fspath(path))


def glob(pattern: Path) -> list[str]:
  """Sorted paths matching `pattern` (none: an empty list)."""
  result = FileSystems.match([os.fspath(pattern)])[0]
  return sorted(metadata.path for metadata in result.metadata_list)


def make_dirs(path: Path) -> None:
  """Creates the folder if missing (object stores have none to create)."""
  if not exists(path):
    FileSystems.mkdirs(os.fspath(path))


def delete(paths: Sequence[str]) -> None:
  if paths:
    FileSystems.delete(list(paths))


def _open(path: Path):
  return FileSystems.open(os.fspath(path),
                          compression_type=CompressionTypes.UNCOMPRESSED)


def read_bytes(path: Path) -> bytes:
  with _open(path) as f:
    return f.read()


def read_json(path: Path) -> Any:
  return json.loads(read_bytes(path).decode("utf-8"))


def read_parquet(path: Path, columns: Sequence[str]) -> pa.Table:
  with _open(path) as f:
    return pq.read_table(f, columns=list(columns))


def write_text(path: Path, text: str) -> None:
  with FileSystems.create(os.fspath(path)) as f:
    f.write(text.encode("utf-8"))
