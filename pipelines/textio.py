"""Line-oriented reading of plain or gzip JSON-lines files in byte ranges.

Plain files are split into ranges read in parallel; a line belongs to the range
its first byte lies in. Gzip files cannot be split and form one range each.
Offsets are positions in the (decompressed) stream, so a reject can be found
again in its source file. A file that cannot be read to its end (a corrupt or
truncated gzip file, a folder) raises InputError naming it: the job fails
rather than reading part of it. So does gzip data (magic bytes 1f 8b) in a
file whose name does not end in .gz: read as text, each of its lines would be
a malformed_line reject; renamed to .gz, it is read as gzip.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
from typing import Iterator, NamedTuple, Sequence
import zlib

from pipelines import files

DEFAULT_RANGE_BYTES = 16 << 20
_GZIP_SUFFIX = ".gz"
_GZIP_MAGIC = b"\x1f\x8b"  # No UTF-8 text starts with these bytes.
_PROBE_BYTES = 4096


# What reading a corrupt, truncated or unreadable file raises (BadGzipFile
# and IsADirectoryError are OSErrors).
_READ_ERRORS = (OSError, EOFError, zlib.error)


class InputError(ValueError):
  """A missing, empty or unreadable input; the message names the pattern or
  file."""


class FileRange(NamedTuple):
  """Lines of `path` starting in [start, end); end -1 means to the end."""

  path: str
  start: int
  end: int


def _open(path: str) -> io.BufferedIOBase:
  # As stored, not decompressed by Beam: a .gz file is decompressed here.
  raw = files.open_read(path)
  if path.endswith(_GZIP_SUFFIX):
    return io.BufferedReader(gzip.GzipFile(fileobj=raw), buffer_size=1 << 20)
  return raw


def _has_content(path: str) -> bool:
  """Whether the file holds a byte other than whitespace."""
  with _open(path) as f:
    while chunk := f.read(_PROBE_BYTES):
      if chunk.strip():
        return True
  return False


def _is_unnamed_gzip(path: str) -> bool:
  """Whether a file not named .gz holds gzip data."""
  if path.endswith(_GZIP_SUFFIX):
    return False
  with _open(path) as f:
    return f.read(len(_GZIP_MAGIC)) == _GZIP_MAGIC


def _same_file_key(path: str) -> str:
  """`path`, resolved if local: two names of one local file share a key."""
  if files.scheme(path) is None:
    return os.path.realpath(path)
  return path


def plan_ranges(patterns: Sequence[str], what: str,
                range_bytes: int = DEFAULT_RANGE_BYTES) -> list[FileRange]:
  """Matches `patterns` and splits the files into ranges.

  A file that several patterns match is read once, under its first name.
  Raises InputError naming the pattern that matches nothing or the file that
  holds no data, cannot be read or holds gzip data under a name not ending in
  .gz; `what` says which input it is (e.g. "reviews of Office").
  """
  ranges = []
  seen = {}
  for pattern in patterns:
    matched = files.matches([pattern])[0]
    if not matched:
      raise InputError(f"no file matches {pattern} ({what})")
    for metadata in matched:
      key = _same_file_key(metadata.path)
      if key in seen:
        logging.warning("%s (%s) matched again by %s: read once, as %s",
                        metadata.path, what, pattern, seen[key])
        continue
      seen[key] = metadata.path
      try:
        empty = metadata.size_in_bytes == 0 or not _has_content(metadata.path)
        gzip_data = not empty and _is_unnamed_gzip(metadata.path)
      except _READ_ERRORS as e:
        raise InputError(f"cannot read input file {metadata.path} ({what}): "
                         f"{e}") from e
      if gzip_data:
        raise InputError(f"input file {metadata.path} holds gzip data but its "
                         f"name does not end in {_GZIP_SUFFIX} ({what}); "
                         f"rename it to end in {_GZIP_SUFFIX}")
      if empty:
        raise InputError(f"input file {metadata.path} is empty ({what})")
      if metadata.path.endswith(_GZIP_SUFFIX):
        ranges.append(FileRange(metadata.path, 0, -1))
        continue
      # Equal ranges of at most range_bytes, so parallel work is balanced.
      size = metadata.size_in_bytes
      count = -(-size // range_bytes)
      bounds = [size * i // count for i in range(count + 1)]
      ranges.extend(FileRange(metadata.path, start, end)
                    for start, end in zip(bounds, bounds[1:]))
  return ranges


def read_lines(file_range: FileRange) -> Iterator[tuple[int, bytes]]:
  """Yields (offset, line) for every line that starts inside the range.

  Raises InputError naming the file and the offset reading failed at.
  """
  path, start, end = file_range
  position = start
  try:
    with _open(path) as f:
      if start > 0:
        # Skip the line that started before the range (it is the previous
        # range's), unless the range begins right after a newline.
        f.seek(start - 1)
        position = start - 1 + len(f.readline())
      for line in f:
        if end >= 0 and position >= end:
          break
        yield position, line
        position += len(line)
  except _READ_ERRORS as e:
    stream = (" of the decompressed data" if path.endswith(_GZIP_SUFFIX)
              else "")
    raise InputError(f"cannot read input file {path} past byte {position}"
                     f"{stream}: {e}") from e
