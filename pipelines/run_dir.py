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

Paths go through `pipelines.files` (Beam's FileSystems): local folders and
gs:// alike.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Any, Mapping, Optional, Sequence

from pipelines import files

RUN_RECORD = "run.json"
_STAGING_SUFFIX = ".staging"
_DIGEST_CHUNK = 1 << 22
_SHOWN_CHARS = 72


class RunDirError(ValueError):
  """A folder the run must not write into as asked."""


def file_digest(path: str) -> str:
  """"sha256:HEX" of the file's bytes."""
  digest = hashlib.sha256()
  # Beam's default: decompressed as the name's extension says (.gz, ...).
  with files.open_read(path, decompress=True) as f:
    while chunk := f.read(_DIGEST_CHUNK):
      digest.update(chunk)
  return f"sha256:{digest.hexdigest()}"


def files_fingerprint(patterns: Sequence[str]) -> str:
  """"files:HEX": a digest of the names, sizes and modification times of
  every file the patterns match, in sorted order. Cheap for raw dumps of
  tens of GB, which a content digest would read whole; a file rewritten
  with other bytes changes its time."""
  digest = hashlib.sha256()
  for matched in files.matches(patterns):
    for metadata in matched:
      digest.update(f"{metadata.path}\0{metadata.size_in_bytes}\0"
                    f"{metadata.last_updated_in_seconds}\n".encode())
  return f"files:{digest.hexdigest()}"


def _record_path(run_dir: str) -> str:
  return files.join(run_dir, RUN_RECORD)


def read_record(run_dir: str) -> Optional[dict[str, Any]]:
  """The folder's `run.json`, or None where it has none."""
  path = _record_path(run_dir)
  if not files.exists(path):
    return None
  return files.read_json(path)


def write_record(run_dir: str, stage: str,
                 made_from: Mapping[str, Any]) -> None:
  """Writes `run.json`: {"stage", "made_from"}."""
  text = json.dumps({"stage": stage, "made_from": dict(made_from)},
                    indent=2, sort_keys=True, ensure_ascii=False) + "\n"
  files.write_text(_record_path(run_dir), text)


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


def staging_dir(output_dir: str) -> str:
  """The sibling folder a replacing run writes into: OUTPUT.staging (beside
  the absolute path of a local folder, so that "." gets "../NAME.staging")."""
  return files.absolute(output_dir) + _STAGING_SUFFIX


def swap_in(staging: str, output_dir: str,
            last: Sequence[str] = (RUN_RECORD,)) -> None:
  """Replaces `output_dir` by the finished `staging` folder.

  Locally: the old folder is renamed aside, the staging folder renamed into
  its place, then the old one deleted, so a crash at any point leaves a
  complete output under one of the two names. On an object store: the old
  objects are deleted and the staged ones renamed into place, the names in
  `last` (relative, e.g. the manifest) after all others.
  """
  staging, output_dir = files.absolute(staging), files.absolute(output_dir)
  if files.has_dirs(output_dir):
    # Through FileSystems, which renames folders on any file system that
    # has them (local, and Beam's others).
    aside = output_dir + ".old"
    files.delete_folder(aside)
    if files.exists(output_dir):
      files.rename([output_dir], [aside])
    files.rename([staging], [output_dir])
    files.delete_folder(aside)
    return
  files.delete_folder(output_dir)
  staged = files.files_under(staging)
  relative = [posixpath.relpath(path, staging) for path in staged]
  for batch in ([i for i, name in enumerate(relative) if name not in last],
                [i for i, name in enumerate(relative) if name in last]):
    if batch:
      files.rename([staged[i] for i in batch],
                   [files.join(output_dir, relative[i]) for i in batch])
