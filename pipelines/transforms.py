"""The Beam transforms of the preprocessing job (paper section 4).

Throughput comes from few, large elements: each file range is parsed in one
call and leaves as one dict of user events per user bucket; buckets are grouped
once; each bucket leaves as one sorted list of records per output shard. Every
output file is written from a sorted list, so its bytes never depend on runner
order, bundle split or worker count.
"""

from __future__ import annotations

import collections
import io
import json
import logging
from typing import Any, Iterable, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import config as config_lib
from pipelines import processing
from pipelines import stats as stats_lib
from pipelines import textio
from tasks import templates

# A file range to read: (category name, path, start, end).
RangeTask = tuple[str, str, int, int]

REJECTS_DIR = "rejects"
MANIFEST = "manifest.json"
STATS = "stats.json"
CORPUS = "corpus.parquet"

_CORPUS_SCHEMA = pa.schema([(name, pa.string()) for name in (
    "item_id", "text", "title", "category", "brand", "price")])


def _write(path: str, data: bytes) -> None:
  with FileSystems.create(path) as f:
    f.write(data)


def _json_bytes(value: Any) -> bytes:
  return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) +
          "\n").encode("utf-8")


def _read_range(task: RangeTask) -> Iterable[tuple[int, bytes]]:
  _, path, start, end = task
  return textio.read_lines(textio.FileRange(path, start, end))


class _SumCounts(beam.CombineFn):
  """Adds up count dicts."""

  def create_accumulator(self) -> collections.Counter:
    return collections.Counter()

  def add_input(self, accumulator, counts):
    accumulator.update(counts)
    return accumulator

  def merge_accumulators(self, accumulators):
    total = collections.Counter()
    for accumulator in accumulators:
      total.update(accumulator)
    return total

  def extract_output(self, accumulator) -> dict[str, int]:
    return dict(accumulator)


class _MergeMeta(beam.CombineFn):
  """Collapses repeated asin rows with the order-free `parse.prefer_meta`."""

  def create_accumulator(self) -> dict:
    return {}

  def add_input(self, accumulator, items):
    return processing.merge_meta([accumulator, items])

  def merge_accumulators(self, accumulators):
    return processing.merge_meta(accumulators)

  def extract_output(self, accumulator):
    return accumulator


class _UnionItems(beam.CombineFn):
  """The set of item ids used by a category's written sequences."""

  def create_accumulator(self) -> set:
    return set()

  def add_input(self, accumulator, item_ids):
    accumulator.update(item_ids)
    return accumulator

  def merge_accumulators(self, accumulators):
    return set().union(*accumulators)

  def extract_output(self, accumulator) -> list[str]:
    return sorted(accumulator)


class _ParseMetaFn(beam.DoFn):

  def process(self, task: RangeTask):
    chunk = processing.parse_meta_lines(_read_range(task), task[1])
    name = task[0]
    logging.info("meta of %s: %d lines from %s[%d:%d]", name,
                 chunk.counts["meta_lines"], *task[1:])
    yield name, chunk.items
    for reject in chunk.rejects:
      yield beam.pvalue.TaggedOutput("rejects", (name, tuple(reject)))
    yield beam.pvalue.TaggedOutput("counts", (name, dict(chunk.counts)))


class ReadMeta(beam.PTransform):
  """Meta ranges -> (category, {asin: cleaned meta}), rejects, counts."""

  def __init__(self, tasks: Sequence[RangeTask]):
    super().__init__()
    self._tasks = list(tasks)

  def expand(self, pbegin):
    parsed = (pbegin
              | "Ranges" >> beam.Create(self._tasks)
              | "Parse" >> beam.ParDo(_ParseMetaFn()).with_outputs(
                  "rejects", "counts", main="items"))
    items = parsed.items | "Collapse" >> beam.CombinePerKey(_MergeMeta())
    item_counts = items | "CountItems" >> beam.MapTuple(
        lambda name, meta: (name, {"meta_items": len(meta)}))
    counts = ((parsed.counts, item_counts)
              | "FlattenCounts" >> beam.Flatten())
    return items, parsed.rejects, counts


class _ParseReviewsFn(beam.DoFn):

  def __init__(self, config: config_lib.Config, num_buckets: int):
    self._config = config
    self._num_buckets = num_buckets

  def process(self, task: RangeTask, meta: dict[str, dict]):
    name = task[0]
    chunk = processing.parse_review_lines(
        _read_range(task), task[1], _category(self._config, name),
        self._config.sampling_seed, meta.get(name, {}), self._num_buckets)
    logging.info("reviews of %s: %d lines from %s[%d:%d]", name,
                 chunk.counts["review_lines"], *task[1:])
    for bucket, users in sorted(chunk.buckets.items()):
      yield (name, bucket), users
    for reject in chunk.rejects:
      yield beam.pvalue.TaggedOutput("rejects", (name, tuple(reject)))
    yield beam.pvalue.TaggedOutput("counts", (name, dict(chunk.counts)))


class _BuildBucketFn(beam.DoFn):

  def __init__(self, config: config_lib.Config):
    self._config = config

  def process(self, keyed_parts, meta: dict[str, dict]):
    (name, _), parts = keyed_parts
    users = processing.merge_user_events(parts)
    result = processing.build_bucket(users, _category(self._config, name),
                                     meta.get(name, {}))
    for (split, shard), shard_records in sorted(result.shards.items()):
      yield (name, split, shard), shard_records
    yield beam.pvalue.TaggedOutput("items", (name, result.item_ids))
    for reject in result.rejects:
      yield beam.pvalue.TaggedOutput("rejects", (name, tuple(reject)))
    yield beam.pvalue.TaggedOutput("counts", (name, dict(result.counts)))


def _category(config: config_lib.Config,
              name: str) -> config_lib.CategoryConfig:
  return next(c for c in config.categories if c.name == name)


class BuildSequences(beam.PTransform):
  """Review ranges -> ((category, split, shard), sorted records) and more.

  Returns (shard records, item ids used per bucket, rejects, counts).
  """

  def __init__(self, tasks: Sequence[RangeTask], config: config_lib.Config,
               num_buckets: int, meta: beam.PCollection):
    super().__init__()
    self._tasks = list(tasks)
    self._config = config
    self._num_buckets = num_buckets
    self._meta = meta

  def expand(self, pbegin):
    meta_view = beam.pvalue.AsDict(self._meta)
    parsed = (pbegin
              | "Ranges" >> beam.Create(self._tasks)
              | "Parse" >> beam.ParDo(
                  _ParseReviewsFn(self._config, self._num_buckets),
                  meta=meta_view).with_outputs("rejects", "counts",
                                               main="users"))
    built = (parsed.users
             | "GroupBuckets" >> beam.GroupByKey()
             | "Build" >> beam.ParDo(_BuildBucketFn(self._config),
                                     meta=meta_view).with_outputs(
                                         "items", "rejects", "counts",
                                         main="shards"))
    rejects = ((parsed.rejects, built.rejects)
               | "FlattenRejects" >> beam.Flatten())
    counts = (parsed.counts, built.counts) | "FlattenCounts" >> beam.Flatten()
    return built.shards, built.items, rejects, counts


class _WriteShardFn(beam.DoFn):

  def __init__(self, output_dir: str, config: config_lib.Config):
    self._output_dir = output_dir
    self._config = config

  def process(self, keyed_parts):
    (name, split, shard), parts = keyed_parts
    shard_records = processing.merge_shard_records(parts)
    num_shards = _category(self._config, name).num_shards
    path = processing.shard_path(self._output_dir, name, split, shard,
                                 num_shards)
    _write(path, processing.shard_file_bytes(shard_records))
    yield name, split, FileSystems.split(path)[1], len(shard_records)


class WriteShards(beam.PTransform):
  """Writes every shard of every split, empty ones included."""

  def __init__(self, output_dir: str, config: config_lib.Config):
    super().__init__()
    self._output_dir = output_dir
    self._config = config

  def expand(self, shards):
    every_shard = [((c.name, split, shard), [])
                   for c in self._config.categories for split in c.splits
                   for shard in range(c.num_shards)]
    return ((shards, shards.pipeline | "EveryShard" >> beam.Create(
        every_shard)) | "FlattenShards" >> beam.Flatten()
            | "GroupShards" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(_WriteShardFn(self._output_dir,
                                                  self._config)))


class _WriteCorpusFn(beam.DoFn):

  def __init__(self, output_dir: str):
    self._output_dir = output_dir

  def process(self, name_and_items, meta: dict[str, dict]):
    name, item_ids = name_and_items
    rows = {column: [] for column in _CORPUS_SCHEMA.names}
    for item_id in item_ids:
      attributes = processing.item_attributes(meta[name][item_id])
      rows["item_id"].append(item_id)
      rows["text"].append(templates.format_item(attributes))
      for column, value in zip(("title", "category", "brand", "price"),
                               attributes.as_tuple()):
        rows[column].append(value)
    buffer = io.BytesIO()
    pq.write_table(pa.table(rows, schema=_CORPUS_SCHEMA), buffer)
    _write(FileSystems.join(self._output_dir, name, CORPUS),
           buffer.getvalue())
    total_words, vocabulary = stats_lib.corpus_words(rows["text"])
    yield name, {"num_items": len(item_ids), "total_words": total_words,
                 "vocabulary_size": len(vocabulary)}


class WriteCorpus(beam.PTransform):
  """Writes `{category}/corpus.parquet`; returns its word statistics."""

  def __init__(self, output_dir: str, config: config_lib.Config):
    super().__init__()
    self._output_dir = output_dir
    self._config = config

  def expand(self, items_and_meta):
    items, meta = items_and_meta
    # Categories left without users still get an (empty) corpus.
    every_category = items.pipeline | "EveryCategory" >> beam.Create(
        [(c.name, []) for c in self._config.categories])
    return ((items, every_category) | "Flatten" >> beam.Flatten()
            | "Union" >> beam.CombinePerKey(_UnionItems())
            | "Write" >> beam.ParDo(_WriteCorpusFn(self._output_dir),
                                    meta=beam.pvalue.AsDict(meta)))


class _WriteStatsFn(beam.DoFn):

  def __init__(self, output_dir: str, config: config_lib.Config):
    self._output_dir = output_dir
    self._config = config

  def process(self, keyed):
    name, grouped = keyed
    counts = collections.Counter()
    for part in grouped["counts"]:
      counts.update(part)
    counts["meta_duplicate_rows"] = (counts["meta_rows"] -
                                     counts["meta_items"])
    (corpus,) = grouped["corpus"]
    result = stats_lib.category_stats(
        counts, corpus["num_items"], corpus["total_words"],
        corpus["vocabulary_size"], _category(self._config, name).user_fraction)
    _write(FileSystems.join(self._output_dir, name, STATS),
           _json_bytes(result))
    yield name, result


class WriteStats(beam.PTransform):
  """Writes `{category}/stats.json` from counts and corpus statistics."""

  def __init__(self, output_dir: str, config: config_lib.Config):
    super().__init__()
    self._output_dir = output_dir
    self._config = config

  def expand(self, counts_and_corpus):
    counts, corpus = counts_and_corpus
    summed = counts | "Sum" >> beam.CombinePerKey(_SumCounts())
    return ({"counts": summed, "corpus": corpus}
            | "Join" >> beam.CoGroupByKey()
            | "Write" >> beam.ParDo(_WriteStatsFn(self._output_dir,
                                                  self._config)))


class _WriteRejectsFn(beam.DoFn):

  def __init__(self, output_dir: str):
    self._output_dir = output_dir

  def process(self, keyed):
    name, rejects = keyed
    ordered = sorted(processing.Reject(*reject) for reject in rejects)
    path = FileSystems.join(self._output_dir, REJECTS_DIR, f"{name}.jsonl")
    _write(path, "".join(reject.to_json(name) + "\n"
                         for reject in ordered).encode("utf-8"))
    yield name, len(ordered)


class WriteRejects(beam.PTransform):
  """Writes `rejects/{category}.jsonl`, sorted by source and offset."""

  def __init__(self, output_dir: str, config: config_lib.Config):
    super().__init__()
    self._output_dir = output_dir
    self._config = config

  def expand(self, rejects):
    every_category = rejects.pipeline | "EveryCategory" >> beam.Create(
        [(c.name, None) for c in self._config.categories])
    return ((rejects, every_category) | "Flatten" >> beam.Flatten()
            | "Group" >> beam.GroupByKey()
            | "DropMarkers" >> beam.MapTuple(
                lambda name, rejects: (name, [r for r in rejects if r]))
            | "Write" >> beam.ParDo(_WriteRejectsFn(self._output_dir)))


def manifest(config: config_lib.Config, shard_files: Iterable[tuple],
             stats: dict[str, dict], rejects: dict[str, int]) -> dict:
  """The run's config and counts; `manifest.json` is written last."""
  categories = {}
  for category in config.categories:
    splits = {split: {"files": [], "records": 0} for split in category.splits}
    categories[category.name] = {
        "role": category.role.value, "splits": splits,
        "num_users": stats[category.name]["num_users"],
        "num_items": stats[category.name]["num_items"],
        "rejects": rejects[category.name],
        "corpus": f"{category.name}/{CORPUS}",
        "stats": f"{category.name}/{STATS}",
    }
  for name, split, file_name, count in sorted(shard_files):
    entry = categories[name]["splits"][split]
    entry["files"].append(f"{name}/{file_name}")
    entry["records"] += count
  return {"config": config.to_json(), "categories": categories,
          "rejects_dir": REJECTS_DIR}


class WriteManifest(beam.PTransform):
  """Writes `manifest.json` once every other output exists."""

  def __init__(self, output_dir: str, config: config_lib.Config):
    super().__init__()
    self._output_dir = output_dir
    self._config = config

  def expand(self, outputs):
    shard_files, stats, rejects = outputs

    def write(_, shard_files, stats, rejects):
      content = manifest(self._config, shard_files, stats, rejects)
      _write(FileSystems.join(self._output_dir, MANIFEST), _json_bytes(content))
      return content

    return (shard_files.pipeline | "Once" >> beam.Create([None])
            | "Write" >> beam.Map(write, beam.pvalue.AsList(shard_files),
                                  beam.pvalue.AsDict(stats),
                                  beam.pvalue.AsDict(rejects)))
