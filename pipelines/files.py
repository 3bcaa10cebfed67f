"""File access through Beam's FileSystems: the project's Beam-side file layer.

Local paths, gs:// and any other scheme Beam knows, so that the Beam jobs
(preprocessing, evaluation), the run directories of every stage and the
evaluator's reports run on Dataflow unchanged. Folders exist only where the
file system has them (`has_dirs`: local disks); on an object store such as
GCS a "folder" is the prefix of its objects' names.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence, Union

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.filesystems import FileSystems
import pyarrow as pa
import pyarrow.parquet as pq

Path = Union[str, os.PathLike]


def scheme(path: Path) -> Optional[str]:
  """The path's scheme ("gs" for gs://...), None for a local path."""
  return FileSystems.get_scheme(os.fspath(path))


def has_filesystem(path: Path) -> bool:
  """Whether Beam has a file system for the path here (gs:// needs
  apache-beam[gcp]; a mistyped scheme has none)."""
  try:
    FileSystems.get_filesystem(os.fspath(path))
  except ValueError:
    return False
  return True


def has_dirs(path: Path) -> bool:
  """Whether the path's file system has folders (local disks do; object
  stores do not)."""
  return FileSystems.get_filesystem(os.fspath(path)).has_dirs()


def join(path: Path, *paths: str) -> str:
  """The paths joined as the file system of `path` joins them."""
  return FileSystems.join(os.fspath(path), *paths)


def split(path: Path) -> tuple[str, str]:
  """(folder, last component) as the file system of `path` splits it."""
  return FileSystems.split(os.fspath(path))


def _strip(path: str) -> str:
  return path.rstrip("/") or path


def absolute(path: str) -> str:
  """A local path made absolute ("." names its folder), others as given,
  without a trailing "/"."""
  return _strip(path if "://" in path else os.path.abspath(path))


def is_inside(path: str, folder: str) -> bool:
  """Whether `path` (a file or pattern) lies in `folder` or is it."""
  if "://" not in folder and "://" not in path:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return os.path.commonpath([path, folder]) == folder
  folder = _strip(folder) + "/"
  return (_strip(path) + "/").startswith(folder)


def exists(path: Path) -> bool:
  return FileSystems.exists(os.fspath(path))


def is_file(path: str) -> bool:
  """Whether `path` is a file rather than a folder. Only a file system with
  folders can tell: in an object store, a name can be both."""
  # "file/" does not exist where "file" does; "folder/" does.
  path = _strip(path)
  return has_dirs(path) and exists(path) and not exists(join(path, ""))


def matches(patterns: Sequence[Path]) -> list[list[FileMetadata]]:
  """For each pattern, the metadata (path, size, modification time) of the
  files it matches, sorted by path."""
  results = FileSystems.match([os.fspath(pattern) for pattern in patterns])
  return [sorted(result.metadata_list, key=lambda metadata: metadata.path)
          for result in results]


def glob(pattern: Path) -> list[str]:
  """Sorted paths matching `pattern` (none: an empty list)."""
  return [metadata.path for metadata in matches([pattern])[0]]


def files_under(folder: Path) -> list[str]:
  """Sorted paths of every file under `folder`, at any depth."""
  return glob(join(folder, "**"))


def make_dirs(path: Path) -> None:
  """Creates the folder if missing (object stores have none to create)."""
  if not exists(path):
    FileSystems.mkdirs(os.fspath(path))


def delete(paths: Sequence[str]) -> None:
  if paths:
    FileSystems.delete(list(paths))


def delete_folder(folder: str) -> None:
  """Deletes the folder and everything under it, if present."""
  if has_dirs(folder):
    # "folder/" exists where a folder does, not where a file of its name does.
    if exists(join(folder, "")):
      delete([folder])
    return
  delete(files_under(folder))


def rename(sources: Sequence[str], destinations: Sequence[str]) -> None:
  """Renames each source to its destination (folders too, where the file
  system has them)."""
  FileSystems.rename(list(sources), list(destinations))


def open_read(path: Path, decompress: bool = False):
  """The file opened for reading: its bytes as stored, or with `decompress`
  decompressed as its name's extension says (.gz, .bz2, ...: Beam's
  default)."""
  compression = (CompressionTypes.AUTO if decompress else
                 CompressionTypes.UNCOMPRESSED)
  return FileSystems.open(os.fspath(path), compression_type=compression)


def read_bytes(path: Path, decompress: bool = False) -> bytes:
  """The file's bytes (`decompress`: as `open_read`)."""
  with open_read(path, decompress) as f:
    return f.read()


def read_json(path: Path) -> Any:
  return json.loads(read_bytes(path).decode("utf-8"))


def read_parquet(path: Path, columns: Sequence[str]) -> pa.Table:
  with open_read(path) as f:
    return pq.read_table(f, columns=list(columns))


def open_write(path: Path):
  """The file created (replaced if present) for writing; compressed as its
  name's extension says (.gz, .bz2, ...: Beam's default)."""
  return FileSystems.create(os.fspath(path))


def write_bytes(path: Path, data: bytes) -> None:
  """Writes the file (`open_write`)."""
  with open_write(path) as f:
    f.write(data)


def write_text(path: Path, text: str) -> None:
  """Writes the text as UTF-8 (`write_bytes`)."""
  write_bytes(path, text.encode("utf-8"))
