"""The output folder of a preprocessing run (docs/contracts.md) and its writers.

  {output_dir}/{category}/{split}-SSSSS-of-NNNNN.tfrecord
  {output_dir}/{category}/corpus.parquet
  {output_dir}/{category}/stats.json
  {output_dir}/rejects/{category}.jsonl
  {output_dir}/manifest.json          (written last: the run completed)

Every writer takes already sorted or order-free inputs, so a file's bytes
depend only on the data.
"""

from __future__ import annotations

import collections
import io
import json
from typing import Any, Iterable, Mapping, Sequence

from apache_beam.io.filesystems import FileSystems
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import config as config_lib
from pipelines import parse
from pipelines import processing
from pipelines import stats as stats_lib

REJECTS_DIR = "rejects"
MANIFEST = "manifest.json"
STATS = "stats.json"
CORPUS = "corpus.parquet"

_CORPUS_SCHEMA = pa.schema([(name, pa.string())
                            for name in processing.CORPUS_COLUMNS])

# One written TFRecord file: (category, split, file name, record count).
ShardFile = tuple[str, str, str, int]


def _write(path: str, data: bytes) -> None:
  with FileSystems.create(path) as f:
    f.write(data)


def _json_bytes(value: Any) -> bytes:
  return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) +
          "\n").encode("utf-8")


def shard_path(output_dir: str, category: str, split: str, shard: int,
               num_shards: int) -> str:
  """The file of one shard of a split (docs/contracts.md)."""
  return FileSystems.join(
      output_dir, category,
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
    _write(path, processing.shard_file_bytes(examples))
    written.append((category.name, split, FileSystems.split(path)[1],
                    len(examples)))
  return written


def write_category_files(output_dir: str,
                         category: config_lib.CategoryConfig,
                         item_ids: Iterable[str],
                         rejects: Iterable[Sequence],
                         counts: collections.Counter,
                         meta: Mapping[str, parse.ItemMeta]) -> dict[str, Any]:
  """Writes the corpus, rejects and statistics; returns a summary."""
  name = category.name
  columns = processing.corpus_columns(item_ids, meta)
  buffer = io.BytesIO()
  pq.write_table(pa.table(columns, schema=_CORPUS_SCHEMA), buffer)
  _write(FileSystems.join(output_dir, name, CORPUS), buffer.getvalue())

  rejects = list(rejects)
  _write(FileSystems.join(output_dir, REJECTS_DIR, f"{name}.jsonl"),
         processing.rejects_file(name, rejects))

  counts = collections.Counter(counts)
  counts["meta_duplicate_rows"] = counts["meta_rows"] - counts["meta_items"]
  total_words, vocabulary = stats_lib.corpus_words(columns["text"])
  stats = stats_lib.category_stats(counts, len(columns["item_id"]),
                                   total_words, len(vocabulary),
                                   category.user_fraction)
  _write(FileSystems.join(output_dir, name, STATS), _json_bytes(stats))
  return {"stats": stats, "rejects": len(rejects)}


def manifest(config: config_lib.Config, shard_files: Iterable[ShardFile],
             summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  """The run's config and counts."""
  categories = {}
  for category in config.categories:
    summary = summaries[category.name]
    categories[category.name] = {
        "role": category.role.value,
        "splits": {split: {"files": [], "records": 0}
                   for split in category.splits},
        "num_users": summary["stats"]["num_users"],
        "num_items": summary["stats"]["num_items"],
        "rejects": summary["rejects"],
        "corpus": f"{category.name}/{CORPUS}",
        "stats": f"{category.name}/{STATS}",
    }
  for name, split, file_name, count in sorted(shard_files):
    entry = categories[name]["splits"][split]
    entry["files"].append(f"{name}/{file_name}")
    entry["records"] += count
  return {"config": config.to_json(), "categories": categories,
          "rejects_dir": REJECTS_DIR}


def write_manifest(output_dir: str, config: config_lib.Config,
                   shard_files: Iterable[ShardFile],
                   summaries: Mapping[str, Mapping[str, Any]]) -> None:
  """Writes `manifest.json`: last, once every other file exists."""
  _write(FileSystems.join(output_dir, MANIFEST),
         _json_bytes(manifest(config, shard_files, summaries)))


def read_stats(output_dir: str,
               config: config_lib.Config) -> dict[str, dict[str, Any]]:
  """The statistics files of a finished run, by category."""
  stats = {}
  for category in config.categories:
    with FileSystems.open(FileSystems.join(output_dir, category.name,
                                           STATS)) as f:
      stats[category.name] = json.loads(f.read())
  return stats
