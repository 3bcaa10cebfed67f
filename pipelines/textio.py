"""Line-oriented reading of plain or gzip JSON-lines files in byte ranges.

Plain files are split into ranges read in parallel; a line belongs to the range
its first byte lies in. Gzip files cannot be split and form one range each.
Offsets are positions in the (decompressed) stream, so a reject can be found
again in its source file.
"""

from __future__ import annotations

import gzip
import io
from typing import Iterator, NamedTuple, Sequence

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

DEFAULT_RANGE_BYTES = 16 << 20
_GZIP_SUFFIX = ".gz"
_PROBE_BYTES = 4096


class InputError(ValueError):
  """A missing or empty input; the message names the pattern or file."""


class FileRange(NamedTuple):
  """Lines of `path` starting in [start, end); end -1 means to the end."""

  path: str
  start: int
  end: int


def _open(path: str) -> io.BufferedIOBase:
  raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
  if path.endswith(_GZIP_SUFFIX):
    return io.BufferedReader(gzip.GzipFile(fileobj=raw), buffer_size=1 << 20)
  return raw


def _has_content(path: str) -> bool:
  with _open(path) as f:
    return bool(f.read(_PROBE_BYTES).strip())


def plan_ranges(patterns: Sequence[str], what: str,
                range_bytes: int = DEFAULT_RANGE_BYTES) -> list[FileRange]:
  """Matches `patterns` and splits the files into ranges.

  Raises InputError naming the pattern that matches nothing or the file that
  holds no data; `what` says which input it is (e.g. "reviews of Office").
  """
  ranges = []
  for pattern in patterns:
    files = sorted(FileSystems.match([pattern])[0].metadata_list,
                   key=lambda m: m.path)
    if not files:
      raise InputError(f"no file matches {pattern} ({what})")
    for metadata in files:
      if metadata.size_in_bytes == 0 or not _has_content(metadata.path):
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
  """Yields (offset, line) for every line that starts inside the range."""
  path, start, end = file_range
  with _open(path) as f:
    position = 0
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
