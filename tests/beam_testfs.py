"""Beam FileSystems of non-local paths for tests, backed by a local folder.

`testfs://` answers only to its URLs, so a code path that reaches for
`os.path`, `open` or `glob` instead of Beam's FileSystems (as gs:// on Dataflow
needs) fails with it. `testobjects://` behaves like an object store such as
GCS (apache_beam/io/gcp/gcsfilesystem.py): there are no folders, only objects
whose names hold slashes. Importing this module registers both schemes;
`set_root` picks the folder they share.
"""

from __future__ import annotations

import os
import posixpath
import shutil

from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.localfilesystem import LocalFileSystem

SCHEME = "testfs"
OBJECT_SCHEME = "testobjects"
_ROOT = {"path": None}


def set_root(path: str | os.PathLike[str]) -> None:
  _ROOT["path"] = os.fspath(path)


def url(relative_path: str) -> str:
  return f"{SCHEME}://{relative_path}"


def object_url(relative_path: str) -> str:
  return f"{OBJECT_SCHEME}://{relative_path}"


class UrlOnlyFileSystem(LocalFileSystem):
  """LocalFileSystem behind `testfs://` URLs."""

  @classmethod
  def scheme(cls):
    return SCHEME

  @classmethod
  def _prefix(cls) -> str:
    return f"{cls.scheme()}://"

  @classmethod
  def _local(cls, path: str) -> str:
    if not path.startswith(cls._prefix()):
      raise ValueError(f"{path} is not a {cls._prefix()} URL")
    if _ROOT["path"] is None:
      raise RuntimeError("beam_testfs.set_root() was not called")
    return os.path.join(_ROOT["path"], path[len(cls._prefix()):])

  @classmethod
  def _url(cls, local_path: str) -> str:
    return cls._prefix() + os.path.relpath(local_path, _ROOT["path"])

  def join(self, basepath, *paths):
    return posixpath.join(basepath, *paths)

  def split(self, path):
    return posixpath.split(path)

  def _url_dirname(self, url_or_path):
    return posixpath.dirname(url_or_path)

  def mkdirs(self, path):
    super().mkdirs(self._local(path))

  def _local_files(self, local_folder: str):
    for folder, _, names in os.walk(local_folder):
      for name in names:
        path = os.path.join(folder, name)
        yield FileMetadata(self._url(path), os.path.getsize(path),
                           os.path.getmtime(path))

  def _list(self, dir_or_prefix):
    yield from self._local_files(self._local(dir_or_prefix))

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


class ObjectStoreFileSystem(UrlOnlyFileSystem):
  """`testobjects://`: GCS semantics over the same local folder.

  Only files are objects: `exists` is false for a folder, `mkdirs` does
  nothing, a pattern lists every object whose name starts with its literal
  prefix, `join` keeps "." and "..", and `delete` removes the objects a path
  matches, or every object under a path that ends in "/". Folders left empty
  are invisible.
  """

  @classmethod
  def scheme(cls):
    return OBJECT_SCHEME

  @classmethod
  def _local(cls, path: str) -> str:
    # On a real store "a/./b" names another object than "a/b"; refused here
    # rather than resolved by the local folder.
    if {".", ".."} & set(path.split("://", 1)[-1].split("/")):
      raise ValueError(f"{path}: '.' and '..' are part of an object name")
    return super()._local(path)

  def join(self, basepath, *paths):
    # GCSFileSystem.join: slashes only, no normalisation ("a/./b" stays).
    for path in paths:
      basepath = basepath.rstrip("/") + "/" + path.lstrip("/")
    return basepath

  def has_dirs(self):
    return False

  def mkdirs(self, path):
    del path

  def rename(self, source_file_names, destination_file_names):
    # An object takes any name: the local folders it needs are made here.
    for path in destination_file_names:
      os.makedirs(os.path.dirname(self._local(path)), exist_ok=True)
    super().rename(source_file_names, destination_file_names)

  def _list(self, dir_or_prefix):
    for metadata in self._local_files(_ROOT["path"]):
      if metadata.path.startswith(dir_or_prefix):
        yield metadata

  def exists(self, path):
    return os.path.isfile(self._local(path))

  def delete(self, paths):
    for path in paths:
      pattern = path + "**" if path.endswith("/") else path
      for metadata in self.match([pattern])[0].metadata_list:
        os.remove(self._local(metadata.path))
