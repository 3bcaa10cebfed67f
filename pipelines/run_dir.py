"""The run-directory contract shared by every stage (docs/contracts.md).

A stage's output folder (preprocessing's `--output_dir`, training's
MODEL_DIR, evaluation's `--output_dir`) holds `run.json`: the stage and what
the run was made from (`made_from`: its configuration, the digests of its
vocabulary and inputs, its model config), each a JSON value. A rerun or a
resume into the folder calls `check_made_from` before it writes anything: any
difference stops it with one line naming the difference and what starts
over, so that outputs of two different runs never mix.

`--overwrite` never deletes an output before its replacement is complete: the
job writes into `staging_dir(output_dir)` and `swap_in` replaces the output
folder once the job has succeeded (a rename of folders where the file system
has folders; on an object store, the old objects are deleted and the new
ones renamed into place only then, the manifest or record last).

Paths go through Beam's FileSystems: local folders and gs:// alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from typing import Any, Mapping, Optional, Sequence

from apache_beam.io.filesystems import FileSystems

RUN_RECORD = "run.json"
_STAGING_SUFFIX = ".staging"
_DIGEST_CHUNK = 1 << 22
_SHOWN_CHARS = 72


class RunDirError(ValueError):
  """A folder the run must not write into as asked."""


def _local(path: str) -> bool:
  return FileSystems.get_filesystem(path).has_dirs()


def _strip(path: str) -> str:
  return path.rstrip("/") or path


def _absolute(path: str) -> str:
  """A local path made absolute ("." names its folder), others as given,
  without a trailing "/"."""
  return _strip(path if "://" in path else os.path.abspath(path))


def file_digest(path: str) -> str:
  """"sha256:HEX" of the file's bytes."""
  digest = hashlib.sha256()
  with FileSystems.open(path) as f:
    while chunk := f.read(_DIGEST_CHUNK):
      digest.update(chunk)
  return f"sha256:{digest.hexdigest()}"


def files_fingerprint(patterns: Sequence[str]) -> str:
  """"files:HEX": a digest of the names, sizes and modification times of
  every file the patterns match, in sorted order. Cheap for raw dumps of
  tens of GB, which a content digest would read whole; a file rewritten
  with other bytes changes its time."""
  digest = hashlib.sha256()
  for result in FileSystems.match(list(patterns)):
    for metadata in sorted(result.metadata_list, key=lambda m: m.path):
      digest.update(f"{metadata.path}\0{metadata.size_in_bytes}\0"
                    f"{metadata.last_updated_in_seconds}\n".encode())
  return f"files:{digest.hexdigest()}"


def _record_path(run_dir: str) -> str:
  return FileSystems.join(run_dir, RUN_RECORD)


def read_record(run_dir: str) -> Optional[dict[str, Any]]:
  """The folder's `run.json`, or None where it has none."""
  path = _record_path(run_dir)
  if not FileSystems.exists(path):
    return None
  with FileSystems.open(path) as f:
    return json.loads(f.read().decode("utf-8"))


def write_record(run_dir: str, stage: str,
                 made_from: Mapping[str, Any]) -> None:
  """Writes `run.json`: {"stage", "made_from"}."""
  text = json.dumps({"stage": stage, "made_from": dict(made_from)},
                    indent=2, sort_keys=True, ensure_ascii=False) + "\n"
  with FileSystems.create(_record_path(run_dir)) as f:
    f.write(text.encode("utf-8"))


def _shown(value: Any) -> str:
  text = "(none)" if value is None else json.dumps(value, sort_keys=True)
  return (text if len(text) <= _SHOWN_CHARS else
          text[:_SHOWN_CHARS - 3] + "...")


def flat(value: Any, name: str = "") -> dict[str, Any]:
  """Nested JSON as {dotted path: leaf}, e.g. {"config.categories.1.name":
  "CDs"}, so that a difference names the field that differs."""
  if isinstance(value, Mapping):
    items = value.items()
  elif isinstance(value, (list, tuple)):
    items = enumerate(value)
  else:
    return {name: value}
  leaves = {}
  for key, item in items:
    leaves.update(flat(item, f"{name}.{key}" if name else str(key)))
  return leaves


def differences(recorded: Mapping[str, Any],
                current: Mapping[str, Any]) -> list[str]:
  """"NAME: RECORDED -> CURRENT" for every leaf that differs (`flat`), by
  name."""
  recorded, current = flat(recorded), flat(current)
  return [f"{name}: {_shown(recorded.get(name))} -> "
          f"{_shown(current.get(name))}"
          for name in sorted(set(recorded) | set(current))
          if recorded.get(name) != current.get(name)]


def check_made_from(run_dir: str, stage: str,
                    made_from: Mapping[str, Any], start_over: str) -> None:
  """Passes where `run_dir` has no record or one of the same stage made
  from the same things.

  Args:
    run_dir: the output folder.
    stage: the stage writing it, e.g. "train".
    made_from: what this run is made from, as `write_record` records it.
    start_over: what the user does instead, for the message, e.g. "pass
      --overwrite".

  Raises:
    RunDirError: one line naming the first difference (and how many more).
  """
  record = read_record(run_dir)
  if record is None:
    return
  if record.get("stage") != stage:
    raise RunDirError(
        f"{run_dir} holds the output of another stage "
        f"({record.get('stage')!r}, not {stage!r}); {start_over}.")
  check_same(run_dir, record.get("made_from", {}), made_from, start_over)


def check_same(run_dir: str, recorded: Mapping[str, Any],
               made_from: Mapping[str, Any], start_over: str) -> None:
  """Raises RunDirError, as `check_made_from` does, where `made_from`
  differs from `recorded` (a record, or what an older folder without one
  tells of its inputs)."""
  found = differences(recorded, made_from)
  if found:
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    raise RunDirError(f"{run_dir} was made from other inputs: {found[0]}"
                      f"{more}; {start_over}.")


def is_file(path: str) -> bool:
  """Whether `path` is a file rather than a folder. Only a file system with
  folders can tell: in an object store, a name can be both."""
  # "file/" does not exist where "file" does; "folder/" does.
  path = _strip(path)
  return (_local(path) and FileSystems.exists(path) and
          not FileSystems.exists(FileSystems.join(path, "")))


def is_inside(path: str, folder: str) -> bool:
  """Whether `path` (a file or pattern) lies in `folder` or is it."""
  if "://" not in folder and "://" not in path:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return os.path.commonpath([path, folder]) == folder
  folder = _strip(folder) + "/"
  return (_strip(path) + "/").startswith(folder)


def staging_dir(output_dir: str) -> str:
  """The sibling folder a replacing run writes into: OUTPUT.staging (beside
  the absolute path of a local folder, so that "." gets "../NAME.staging")."""
  return _absolute(output_dir) + _STAGING_SUFFIX


def _files_under(folder: str) -> list[str]:
  pattern = FileSystems.join(folder, "**")
  return sorted(metadata.path for metadata in
                FileSystems.match([pattern])[0].metadata_list)


def delete_folder(folder: str) -> None:
  """Deletes the folder and everything under it, if present."""
  if _local(folder):
    # "folder/" exists where a folder does, not where a file of its name does.
    if FileSystems.exists(FileSystems.join(folder, "")):
      FileSystems.delete([folder])
    return
  files = _files_under(folder)
  if files:
    FileSystems.delete(files)


def swap_in(staging: str, output_dir: str,
            last: Sequence[str] = (RUN_RECORD,)) -> None:
  """Replaces `output_dir` by the finished `staging` folder.

  Locally: the old folder is renamed aside, the staging folder renamed into
  its place, then the old one deleted, so a crash at any point leaves a
  complete output under one of the two names. On an object store: the old
  objects are deleted and the staged ones renamed into place, the names in
  `last` (relative, e.g. the manifest) after all others.
  """
  staging, output_dir = _absolute(staging), _absolute(output_dir)
  if _local(output_dir):
    # Through FileSystems, which renames folders on any file system that
    # has them (local, and Beam's others).
    aside = output_dir + ".old"
    delete_folder(aside)
    if FileSystems.exists(output_dir):
      FileSystems.rename([output_dir], [aside])
    FileSystems.rename([staging], [output_dir])
    delete_folder(aside)
    return
  delete_folder(output_dir)
  staged = _files_under(staging)
  relative = [posixpath.relpath(path, staging) for path in staged]
  for batch in ([i for i, name in enumerate(relative) if name not in last],
                [i for i, name in enumerate(relative) if name in last]):
    if batch:
      FileSystems.rename([staged[i] for i in batch],
                         [FileSystems.join(output_dir, relative[i])
                          for i in batch])
