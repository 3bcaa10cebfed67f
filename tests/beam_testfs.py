"""`testfs://`: a Beam FileSystem of non-local paths for tests.

It stores files in a local folder but only answers to `testfs://` URLs, so a
code path that reaches for `os.path`, `open` or `glob` instead of Beam's
FileSystems (as gs:// on Dataflow needs) fails with it. Importing this module
registers the scheme; `set_root` picks the folder.
"""

from __future__ import annotations

import os
import posixpath
import shutil

from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.localfilesystem import LocalFileSystem

SCHEME = "testfs"
_PREFIX = f"{SCHEME}://"
_ROOT = {"path": None}


def set_root(path: str | os.PathLike[str]) -> None:
  _ROOT["path"] = os.fspath(path)


def url(relative_path: str) -> str:
  return _PREFIX + relative_path


class UrlOnlyFileSystem(LocalFileSystem):
  """LocalFileSystem behind `testfs://` URLs."""

  @classmethod
  def scheme(cls):
    return SCHEME

  @staticmethod
  def _local(path: str) -> str:
    if not path.startswith(_PREFIX):
      raise ValueError(f"{path} is not a {_PREFIX} URL")
    if _ROOT["path"] is None:
      raise RuntimeError("beam_testfs.set_root() was not called")
    return os.path.join(_ROOT["path"], path[len(_PREFIX):])

  @staticmethod
  def _url(local_path: str) -> str:
    return _PREFIX + os.path.relpath(local_path, _ROOT["path"])

  def join(self, basepath, *paths):
    return posixpath.join(basepath, *paths)

  def split(self, path):
    return posixpath.split(path)

  def _url_dirname(self, url_or_path):
    return posixpath.dirname(url_or_path)

  def mkdirs(self, path):
    super().mkdirs(self._local(path))

  def _list(self, dir_or_prefix):
    for folder, _, names in os.walk(self._local(dir_or_prefix)):
      for name in names:
        path = os.path.join(folder, name)
        yield FileMetadata(self._url(path), os.path.getsize(path),
                           os.path.getmtime(path))

  def create(self, path, *args, **kwargs):
    return super().create(self._local(path), *args, **kwargs)

  def open(self, path, *args, **kwargs):
    return super().open(self._local(path), *args, **kwargs)

  def copy(self, source_file_names, destination_file_names):
    super().copy([self._local(p) for p in source_file_names],
                 [self._local(p) for p in destination_file_names])

  def rename(self, source_file_names, destination_file_names):
    super().rename([self._local(p) for p in source_file_names],
                   [self._local(p) for p in destination_file_names])

  def exists(self, path):
    return os.path.exists(self._local(path))

  def size(self, path):
    return os.path.getsize(self._local(path))

  def last_updated(self, path):
    return os.path.getmtime(self._local(path))

  def checksum(self, path):
    return str(self.size(path))

  def metadata(self, path):
    return FileMetadata(path, self.size(path), self.last_updated(path))

  def delete(self, paths):
    for path in paths:
      local = self._local(path)
      if os.path.isdir(local):
        shutil.rmtree(local)
      else:
        os.remove(local)

  def report_lineage(self, path, lineage):
    del path, lineage
