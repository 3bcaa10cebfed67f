"""Tests of the file layer over Beam's FileSystems, local and remote."""

import gzip
import os

import beam_testfs
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import files


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


@pytest.fixture(name="remote", params=[beam_testfs.url, beam_testfs.object_url],
                ids=["folders", "objects"])
def _remote(request, tmp_path):
  """A URL maker of a remote scheme (with folders, or an object store)
  backed by `tmp_path`."""
  beam_testfs.set_root(tmp_path)
  return request.param


@pytest.mark.parametrize("path, folder, inside", [
    ("data/raw/reviews.json.gz", "data", True),
    ("data/raw/*.json.gz", "data/", True),
    ("data", "data", True),
    ("data2/raw.json", "data", False),
    ("raw.json", "data", False),
    ("gs://b/data/raw/r.json", "gs://b/data", True),
    ("gs://b/data2/r.json", "gs://b/data", False),
])
def test_is_inside(tmp_path, monkeypatch, path, folder, inside):
  monkeypatch.chdir(tmp_path)
  assert files.is_inside(path, folder) is inside


def test_absolute_resolves_local_paths_only(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert files.absolute(".") == str(tmp_path)
  assert files.absolute("out/") == str(tmp_path / "out")
  assert files.absolute("gs://b/out/") == "gs://b/out"
  assert files.absolute("/") == "/"


def test_scheme_and_file_systems(tmp_path):
  assert files.scheme(str(tmp_path)) is None
  assert files.scheme("gs://b/x") == "gs"
  assert files.has_filesystem(str(tmp_path))
  assert not files.has_filesystem("nosuchscheme://b/x")
  assert files.has_dirs(str(tmp_path))
  assert files.has_dirs(beam_testfs.url("x"))
  assert not files.has_dirs(beam_testfs.object_url("x"))


def test_is_file_tells_files_from_folders(tmp_path):
  (tmp_path / "f.txt").write_text("x")
  assert files.is_file(str(tmp_path / "f.txt"))
  assert not files.is_file(str(tmp_path))
  assert not files.is_file(str(tmp_path / "absent"))


def test_an_object_store_cannot_tell_a_file(tmp_path):
  beam_testfs.set_root(tmp_path)
  (tmp_path / "f.txt").write_text("x")
  assert files.exists(beam_testfs.object_url("f.txt"))
  assert not files.is_file(beam_testfs.object_url("f.txt"))


def test_delete_folder_removes_tree_and_ignores_absent(tmp_path):
  _write(str(tmp_path / "f" / "g" / "h.txt"), "x")
  files.delete_folder(str(tmp_path / "f"))
  assert not os.path.exists(tmp_path / "f")
  files.delete_folder(str(tmp_path / "f"))


def test_delete_folder_leaves_a_file_of_its_name(tmp_path):
  (tmp_path / "f").write_text("x")
  files.delete_folder(str(tmp_path / "f"))
  assert (tmp_path / "f").read_text() == "x"


def test_remote_glob_files_under_and_delete_folder(tmp_path, remote):
  _write(str(tmp_path / "out" / "b.txt"), "b")
  _write(str(tmp_path / "out" / "sub" / "a.txt"), "a")
  _write(str(tmp_path / "other.txt"), "o")
  assert files.files_under(remote("out")) == [remote("out/b.txt"),
                                              remote("out/sub/a.txt")]
  assert files.glob(remote("out/*.txt")) == [remote("out/b.txt")]
  assert files.glob(remote("out/*.json")) == []
  files.delete_folder(remote("out"))
  assert files.files_under(remote("out")) == []
  assert files.exists(remote("other.txt"))
  files.delete_folder(remote("out"))


def test_matches_lists_metadata_per_pattern_sorted(tmp_path):
  _write(str(tmp_path / "b.json"), "12")
  _write(str(tmp_path / "a.json"), "1")
  found = files.matches([str(tmp_path / "*.json"), str(tmp_path / "*.txt")])
  assert [[m.path for m in matched] for matched in found] == [
      [str(tmp_path / "a.json"), str(tmp_path / "b.json")], []]
  assert [m.size_in_bytes for m in found[0]] == [1, 2]


def test_write_read_rename_and_delete_remote(tmp_path, remote):
  files.make_dirs(remote("out"))
  files.write_text(remote("out/a.json"), '{"ü": 1}')
  assert files.read_json(remote("out/a.json")) == {"ü": 1}
  assert files.read_bytes(remote("out/a.json")) == '{"ü": 1}'.encode()
  files.rename([remote("out/a.json")], [remote("out/c.json")])
  assert not files.exists(remote("out/a.json"))
  assert files.join(remote("out"), "c.json") == remote("out/c.json")
  assert files.glob(remote("out/*")) == [remote("out/c.json")]
  files.delete([remote("out/c.json")])
  files.delete([])
  assert not files.exists(remote("out/c.json"))


def test_read_bytes_decompresses_only_when_asked(tmp_path):
  path = tmp_path / "a.json.gz"
  path.write_bytes(gzip.compress(b"{}"))
  assert files.read_bytes(str(path)) == path.read_bytes()
  assert files.read_bytes(str(path), decompress=True) == b"{}"


def test_read_parquet_columns(tmp_path, remote):
  pq.write_table(pa.table({"item_id": [1, 2], "text": ["a", "b"],
                           "extra": [0, 0]}), str(tmp_path / "c.parquet"))
  table = files.read_parquet(remote("c.parquet"), ["item_id", "text"])
  assert table.column_names == ["item_id", "text"]
  assert table.column("text").to_pylist() == ["a", "b"]


def test_write_bytes_split_and_open_write_remote(tmp_path, remote):
  files.write_bytes(remote("b.bin"), b"\x00\xff")
  assert files.read_bytes(remote("b.bin")) == b"\x00\xff"
  with files.open_write(remote("c.txt")) as f:
    f.write(b"c")
    f.write(b"d")
  assert files.read_bytes(remote("c.txt")) == b"cd"
  assert files.split(remote("c.txt"))[1] == "c.txt"
  assert files.split(str(tmp_path / "c.txt")) == (str(tmp_path), "c.txt")


def test_write_bytes_compresses_by_name(tmp_path):
  path = tmp_path / "a.json.gz"
  files.write_bytes(str(path), b"{}")
  assert gzip.decompress(path.read_bytes()) == b"{}"
