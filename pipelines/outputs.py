"""The output folder of a preprocessing run (docs/contracts.md) and its writers.

  {output_dir}/{category}/{split}-SSSSS-of-NNNNN.tfrecord
  {output_dir}/{category}/corpus.parquet
  {output_dir}/{category}/stats.json
  {output_dir}/rejects/{category}-SSSSS-of-NNNNN.jsonl
  {output_dir}/manifest.json          (the job's last file: it completed)
  {output_dir}/run.json               (what the run was made from, `run_dir`)

The job writes into `{output_dir}.staging`, `_RUN_STARTED` first (deleted
after manifest.json; found without it: a run that failed or was cancelled);
once it has succeeded, the launcher (`preprocess`) adds run.json and puts that
folder in place of `output_dir`.

Every writer takes already sorted or order-free inputs, so a file's bytes
depend only on the data.
"""

from __future__ import annotations

import collections
import io
import json
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import config as config_lib
from pipelines import files
from pipelines import manifest as manifest_lib
from pipelines import parse
from pipelines import processing
from pipelines import stats as stats_lib

REJECTS_DIR = "rejects"
MANIFEST = manifest_lib.MANIFEST
STATS = "stats.json"
CORPUS = "corpus.parquet"
RUN_STARTED = "_RUN_STARTED"
_RUN_STARTED_TEXT = (b"python -m pipelines.preprocess started writing here; "
                     b"manifest.json marks a completed run.\n")

_CORPUS_SCHEMA = pa.schema([(name, pa.string())
                            for name in processing.CORPUS_COLUMNS])

# One written TFRecord file: (category, split, file name, record count).
ShardFile = tuple[str, str, str, int]
# One written rejects file: (category, file name, reject count).
RejectFile = tuple[str, str, int]

# Rejects encoded per write: bounds the bytes held besides the rejects.
_REJECTS_PER_WRITE = 4096


def _json_bytes(value: Any) -> bytes:
  return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) +
          "\n").encode("utf-8")


def write_run_started(output_dir: str) -> None:
  """Marks the folder the job writes as the output of a run of this job,
  before any other file: proof for the next run, which deletes it, of a run
  that failed before its rejects/."""
  files.write_bytes(files.join(output_dir, RUN_STARTED), _RUN_STARTED_TEXT)


def delete_run_started(output_dir: str) -> None:
  """Removes the marker of `write_run_started`, if any, once the manifest is
  written (a pipeline built without the launcher has none)."""
  path = files.join(output_dir, RUN_STARTED)
  if files.exists(path):
    files.delete([path])


def shard_path(output_dir: str, category: str, split: str, shard: int,
               num_shards: int) -> str:
  """The file of one shard of a split (docs/contracts.md)."""
  return files.join(output_dir, category,
                    f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord")


def write_shard(output_dir: str, category: config_lib.CategoryConfig,
                shard: int,
                records: Mapping[str, Sequence[bytes]]) -> list[ShardFile]:
  """Writes one shard of every split of the category's role."""
  written = []
  for split in category.splits:
    examples = records.get(split, ())
    path = shard_path(output_dir, category.name, split, shard,
                      category.num_shards)
    files.write_bytes(path, processing.shard_file_bytes(examples))
    written.append((category.name, split, files.split(path)[1],
                    len(examples)))
  return written


def rejects_path(output_dir: str, category: str, bucket: int,
                 num_buckets: int) -> str:
  """The rejects file of one bucket (docs/contracts.md)."""
  return files.join(output_dir, REJECTS_DIR,
                    f"{category}-{bucket:05d}-of-{num_buckets:05d}.jsonl")


def rejects_pattern(output_dir: str, category: str) -> str:
  """A pattern that matches every rejects file of a category (names hold no
  "-")."""
  return files.join(output_dir, REJECTS_DIR, f"{category}-*.jsonl")


def write_rejects(output_dir: str, category: config_lib.CategoryConfig,
                  bucket: int, rejects: Iterable[Sequence]) -> RejectFile:
  """Writes one bucket of the category's rejects, sorted, a slice at a time:
  the rejects are held once, their lines never all at once."""
  path = rejects_path(output_dir, category.name, bucket, category.num_shards)
  ordered = processing.sort_rejects(rejects)
  with files.open_write(path) as f:
    for start in range(0, len(ordered), _REJECTS_PER_WRITE):
      f.write(processing.rejects_jsonl(
          category.name, ordered[start:start + _REJECTS_PER_WRITE]))
  return category.name, files.split(path)[1], len(ordered)


def write_category_files(output_dir: str,
                         category: config_lib.CategoryConfig,
                         item_ids: Iterable[str],
                         counts: collections.Counter,
                         meta: Mapping[str, parse.ItemMeta]) -> dict[str, Any]:
  """Writes the corpus and statistics; returns the statistics."""
  name = category.name
  columns = processing.corpus_columns(item_ids, meta)
  buffer = io.BytesIO()
  pq.write_table(pa.table(columns, schema=_CORPUS_SCHEMA), buffer)
  files.write_bytes(files.join(output_dir, name, CORPUS), buffer.getvalue())

  counts = collections.Counter(counts)
  counts["meta_duplicate_rows"] = counts["meta_rows"] - counts["meta_items"]
  total_words, vocabulary = stats_lib.corpus_words(columns["text"])
  stats = stats_lib.category_stats(counts, len(columns["item_id"]),
                                   total_words, len(vocabulary),
                                   category.user_fraction)
  files.write_bytes(files.join(output_dir, name, STATS), _json_bytes(stats))
  return stats


def _add_file(entry: dict[str, Any], path: str, count: int) -> None:
  entry["files"].append(path)
  entry["records"] += count


def manifest(config: config_lib.Config, shard_files: Iterable[ShardFile],
             reject_files: Iterable[RejectFile],
             stats: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  """The run's config, files and counts."""
  categories = {}
  for category in config.categories:
    category_stats = stats[category.name]
    categories[category.name] = {
        "role": category.role.value,
        "splits": {split: {"files": [], "records": 0}
                   for split in category.splits},
        "num_users": category_stats["num_users"],
        "num_items": category_stats["num_items"],
        "rejects": {"files": [], "records": 0},
        "corpus": f"{category.name}/{CORPUS}",
        "stats": f"{category.name}/{STATS}",
    }
  for name, split, file_name, count in sorted(shard_files):
    _add_file(categories[name]["splits"][split], f"{name}/{file_name}", count)
  for name, file_name, count in sorted(reject_files):
    _add_file(categories[name]["rejects"], f"{REJECTS_DIR}/{file_name}",
              count)
  return {"config": config.to_json(), "categories": categories,
          "rejects_dir": REJECTS_DIR}


def write_manifest(output_dir: str, config: config_lib.Config,
                   shard_files: Iterable[ShardFile],
                   reject_files: Iterable[RejectFile],
                   stats: Mapping[str, Mapping[str, Any]]) -> None:
  """Writes `manifest.json`: last, once every other file exists."""
  written = manifest(config, shard_files, reject_files, stats)
  files.write_bytes(files.join(output_dir, MANIFEST), _json_bytes(written))


def read_stats(output_dir: str,
               config: config_lib.Config) -> dict[str, dict[str, Any]]:
  """The statistics files of a finished run, by category."""
  stats = {}
  for category in config.categories:
    stats[category.name] = files.read_json(
        files.join(output_dir, category.name, STATS))
  return stats
