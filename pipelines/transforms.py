"""The Beam transforms of the preprocessing job (paper section 4).

Throughput comes from few, large elements: each file range is parsed in one
call and leaves as one dict of user events per output shard; shards are
grouped once, and each shard's files are written by the call that builds them,
from records in user id order. No file's bytes depend on runner order, bundle
split or worker count. Rejects are grouped, sorted and written per (category,
reject bucket), so no worker holds more than one bucket of a category's
rejects. Per category, one more grouping gathers the counts, item ids and meta
rows of bought items that the corpus and statistics files need.

Meta joins reviews by key, never as a whole-category side input: workers hold
only a compact index of asins (`processing.AsinIndex`), one meta bucket while
joining, and one shard's item rows while building it.

Every DoFn that counts adds its counts to Beam counters (`_add_to_counters`)
once per call, so a long run shows its progress on the runner (Dataflow's
job page) at no cost per element.
"""

from __future__ import annotations

import collections
import itertools
import logging
import pickle
from typing import Any, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines import config as config_lib
from pipelines import outputs
from pipelines import processing
from pipelines import textio

# A file range to read: (category name, path, start, end).
RangeTask = tuple[str, str, int, int]
# What the shuffles group: a `_pack`ed value keyed by (category name, shard or
# meta bucket).
_Packed = tuple[tuple[str, int], bytes]
# A key and, by input name, the values CoGroupByKey grouped under it.
_Grouped = tuple[Any, dict[str, Iterable[Any]]]

METRICS_NAMESPACE = "preprocess"


def _describe(task: RangeTask) -> str:
  """`path` for a whole file, `path[start:end]` for a byte range of one."""
  _, path, start, end = task
  return path if end < 0 else f"{path}[{start}:{end}]"


def _range_parts(task: RangeTask, lines_per_call: int
                 ) -> Iterable[tuple[int, Iterable[tuple[int, bytes]]]]:
  """(part number, lines) of a range, streamed `lines_per_call` at a time: a
  gzip file is one range, and its results leave part by part, not at once."""
  _, path, start, end = task
  return enumerate(processing.parts(
      textio.read_lines(textio.FileRange(path, start, end)), lines_per_call))


def _pack(value: dict) -> bytes:
  """User events and meta rows travel through the shuffle as one opaque
  pickle: the runner then groups bytes instead of coding every element."""
  return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _unpack_union(packed: Iterable[bytes]) -> dict:
  """One dict of `_pack`ed dicts whose keys do not overlap."""
  union = {}
  for value in packed:
    union.update(pickle.loads(value))
  return union


def _add_to_counters(category: str, counts: Mapping[str, int]) -> None:
  """Adds each non-zero count to the counter `{category}/{key}`."""
  for key, value in counts.items():
    if value:
      Metrics.counter(METRICS_NAMESPACE, f"{category}/{key}").inc(value)


def _side_outputs(category: config_lib.CategoryConfig,
                  rejects: Sequence[processing.Reject],
                  counts: collections.Counter
                  ) -> Iterator[beam.pvalue.TaggedOutput]:
  """Rejects keyed by (category, reject bucket); counts by category, also
  added to the counters."""
  _add_to_counters(category.name, counts)
  for bucket, part in sorted(processing.bucket_rejects(
      rejects, category.num_shards).items()):
    yield beam.pvalue.TaggedOutput("rejects", ((category.name, bucket), part))
  yield beam.pvalue.TaggedOutput("counts", (category.name, dict(counts)))


class _ParseMetaFn(beam.DoFn):
  """A meta range -> its rows per meta bucket, and the index of its asins."""

  def __init__(self, config: config_lib.Config, lines_per_call: int):
    self._config = config
    self._lines_per_call = lines_per_call

  def process(self, task: RangeTask
              ) -> Iterator[_Packed | beam.pvalue.TaggedOutput]:
    name = task[0]
    category = self._config.category(name)
    for part, lines in _range_parts(task, self._lines_per_call):
      chunk = processing.parse_meta_lines(lines, task[1])
      logging.info("meta of %s: %d lines in part %d of %s", name,
                   chunk.counts["meta_lines"], part, _describe(task))
      for bucket, items in sorted(
          processing.bucket_meta(chunk.items, category.num_shards).items()):
        yield (name, bucket), _pack(items)
      yield beam.pvalue.TaggedOutput(
          "asins", (name, processing.AsinIndex(chunk.items)))
      yield from _side_outputs(category, chunk.rejects, chunk.counts)


class ReadMeta(beam.PTransform):
  """Meta ranges -> packed rows keyed by (category, meta bucket), not yet
  collapsed; (category, AsinIndex); rejects by (category, reject bucket);
  counts."""

  def __init__(self, tasks: Sequence[RangeTask], config: config_lib.Config,
               lines_per_call: int):
    super().__init__()
    self._tasks = list(tasks)
    self._config = config
    self._lines_per_call = lines_per_call

  def expand(self, pbegin: beam.pvalue.PBegin
             ) -> tuple[beam.PCollection, ...]:
    parsed = (pbegin
              | "Ranges" >> beam.Create(self._tasks)
              | "Parse" >> beam.ParDo(
                  _ParseMetaFn(self._config,
                               self._lines_per_call)).with_outputs(
                                   "asins", "rejects", "counts", main="rows"))
    index = parsed.asins | "Index" >> beam.CombinePerKey(
        processing.AsinIndex.union)
    return parsed.rows, index, parsed.rejects, parsed.counts


class _ParseReviewsFn(beam.DoFn):
  """A review range -> packed user events per shard, and the asins each shard
  wants from each meta bucket."""

  def __init__(self, config: config_lib.Config, lines_per_call: int):
    self._config = config
    self._lines_per_call = lines_per_call

  def process(self, task: RangeTask, index: dict[str, processing.AsinIndex]
              ) -> Iterator[_Packed | beam.pvalue.TaggedOutput]:
    name = task[0]
    category = self._config.category(name)
    known_asins = index.get(name, processing.AsinIndex())
    for part, lines in _range_parts(task, self._lines_per_call):
      chunk = processing.parse_review_lines(
          lines, task[1], category, self._config.sampling_seed, known_asins)
      logging.info("reviews of %s: %d lines in part %d of %s", name,
                   chunk.counts["review_lines"], part, _describe(task))
      for shard, users in sorted(chunk.shards.items()):
        yield (name, shard), _pack(users)
      for bucket, wanted in sorted(processing.wanted_asins(
          chunk.shards, category.num_shards).items()):
        yield beam.pvalue.TaggedOutput("wanted", ((name, bucket),
                                                  _pack(wanted)))
      yield from _side_outputs(category, chunk.rejects, chunk.counts)


class _JoinMetaBucketFn(beam.DoFn):
  """One meta bucket: collapses its rows and sends each shard its items';
  the rows of every item bought go on to the category's corpus."""

  def process(self, keyed: _Grouped
              ) -> Iterator[_Packed | beam.pvalue.TaggedOutput]:
    (name, _), grouped = keyed
    meta = processing.merge_meta(map(pickle.loads, grouped["rows"]))
    counts = {"meta_items": len(meta)}
    _add_to_counters(name, counts)
    yield beam.pvalue.TaggedOutput("counts", (name, counts))
    bought = {}
    for shard, rows in processing.meta_for_shards(
        meta, map(pickle.loads, grouped["wanted"])).items():
      yield (name, shard), _pack(rows)
      bought.update(rows)
    yield beam.pvalue.TaggedOutput("bought", (name, _pack(bought)))


class _BuildShardFn(beam.DoFn):
  """One shard: builds its records from its users' events and their items'
  meta rows, and writes its file of every split."""

  def __init__(self, config: config_lib.Config, output_dir: str):
    self._config = config
    self._output_dir = output_dir

  def process(self, keyed: _Grouped
              ) -> Iterator[outputs.ShardFile | beam.pvalue.TaggedOutput]:
    (name, shard), grouped = keyed
    category = self._config.category(name)
    # Rows of several meta buckets: no asin is in two.
    result = processing.build_shard(
        processing.merge_user_events(map(pickle.loads, grouped["users"])),
        category, _unpack_union(grouped["meta"]))
    files = outputs.write_shard(self._output_dir, category, shard,
                                result.records)
    _add_to_counters(name, {"shards_written": 1, **{
        f"{split}_examples_written": count for _, split, _, count in files}})
    yield from files
    logging.info("%s shard %d: %d users", name, shard,
                 result.counts["users"])
    yield beam.pvalue.TaggedOutput("items", (name, result.item_ids))
    yield from _side_outputs(category, result.rejects, result.counts)


class BuildShards(beam.PTransform):
  """Review ranges and meta -> every shard file of every split, written.

  The join of reviews with meta (see `processing`): reviews of asins missing
  from the index are rejected while parsing; each meta bucket then sends every
  shard the rows of its users' items, and each shard is built from its users'
  events and those rows. Returns (`outputs.ShardFile` per file, (category, ids
  of the items a shard's records use), (category, packed meta rows of the
  items sampled users bought, per bucket), rejects by (category, reject
  bucket), counts).
  """

  def __init__(self, tasks: Sequence[RangeTask], config: config_lib.Config,
               lines_per_call: int, output_dir: str,
               meta_rows: beam.PCollection, meta_index: beam.PCollection):
    super().__init__()
    self._tasks = list(tasks)
    self._config = config
    self._lines_per_call = lines_per_call
    self._output_dir = output_dir
    self._meta_rows = meta_rows
    self._meta_index = meta_index

  def expand(self, pbegin: beam.pvalue.PBegin
             ) -> tuple[beam.PCollection, ...]:
    parsed = (pbegin
              | "Ranges" >> beam.Create(self._tasks)
              | "Parse" >> beam.ParDo(
                  _ParseReviewsFn(self._config, self._lines_per_call),
                  index=beam.pvalue.AsDict(self._meta_index)).with_outputs(
                      "wanted", "rejects", "counts", main="users"))
    joined = ({"rows": self._meta_rows, "wanted": parsed.wanted}
              | "GroupMetaBuckets" >> beam.CoGroupByKey()
              | "JoinMeta" >> beam.ParDo(_JoinMetaBucketFn()).with_outputs(
                  "bought", "counts", main="rows"))
    # Every shard is built, and its files written, even when no user has it.
    # The grouping spreads them: no reshuffle (and stage) here.
    every_shard = pbegin | "EveryShard" >> beam.Create(
        [((c.name, shard), None) for c in self._config.categories
         for shard in range(c.num_shards)], reshuffle=False)
    # One grouping of all three, so the events are flattened once.
    built = ({"users": parsed.users, "meta": joined.rows,
              "shard": every_shard}
             | "GroupShards" >> beam.CoGroupByKey()
             | "Build" >> beam.ParDo(_BuildShardFn(
                 self._config, self._output_dir)).with_outputs(
                     "items", "rejects", "counts", main="files"))
    rejects = ((parsed.rejects, built.rejects)
               | "FlattenRejects" >> beam.Flatten())
    counts = ((parsed.counts, joined.counts, built.counts)
              | "FlattenCounts" >> beam.Flatten())
    return built.files, built.items, joined.bought, rejects, counts


class _WriteRejectsFn(beam.DoFn):
  """Writes the rejects file of one (category, reject bucket)."""

  def __init__(self, config: config_lib.Config, output_dir: str):
    self._config = config
    self._output_dir = output_dir

  def process(self, keyed: tuple[tuple[str, int], Iterable[list[tuple]]]
              ) -> Iterator[outputs.RejectFile]:
    (name, bucket), parts = keyed
    written = outputs.write_rejects(
        self._output_dir, self._config.category(name), bucket,
        itertools.chain.from_iterable(parts))
    _, _, count = written
    _add_to_counters(name, {"rejects_written": count})
    yield written


class WriteRejects(beam.PTransform):
  """Rejects keyed by (category, reject bucket) -> one sorted file per bucket,
  empty ones included; returns an `outputs.RejectFile` per file."""

  def __init__(self, config: config_lib.Config, output_dir: str):
    super().__init__()
    self._config = config
    self._output_dir = output_dir

  def expand(self, rejects: beam.PCollection) -> beam.PCollection:
    every_bucket = rejects.pipeline | "EveryBucket" >> beam.Create(
        [((c.name, bucket), []) for c in self._config.categories
         for bucket in range(c.num_shards)], reshuffle=False)
    return ((rejects, every_bucket)
            | "Flatten" >> beam.Flatten()
            | "Group" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(
                _WriteRejectsFn(self._config, self._output_dir)))


class _FinalizeCategoryFn(beam.DoFn):
  """Writes a category's corpus and statistics files."""

  def __init__(self, config: config_lib.Config, output_dir: str):
    self._config = config
    self._output_dir = output_dir

  def process(self, keyed: _Grouped) -> Iterator[tuple[str, dict[str, Any]]]:
    name, grouped = keyed
    counts = collections.Counter()
    for part in grouped["counts"]:
      counts.update(part)
    yield name, outputs.write_category_files(
        self._output_dir, self._config.category(name),
        set().union(*grouped["items"]), counts,
        _unpack_union(grouped["bought"]))


class FinalizeCategories(beam.PTransform):
  """{"counts", "items", "bought"} keyed by category -> files.

  "items" holds the ids of the items the written records use, "bought" packed
  meta rows of (at least) those items. Returns (category, statistics).
  """

  def __init__(self, config: config_lib.Config, output_dir: str):
    super().__init__()
    self._config = config
    self._output_dir = output_dir

  def expand(self, inputs: dict[str, beam.PCollection]) -> beam.PCollection:
    # Categories left without users still get their files.
    every_category = inputs["counts"].pipeline | "EveryCategory" >> beam.Create(
        [(c.name, {}) for c in self._config.categories], reshuffle=False)
    counts = ((inputs["counts"], every_category)
              | "FlattenCounts" >> beam.Flatten())
    return (dict(inputs, counts=counts)
            | "Group" >> beam.CoGroupByKey()
            | "Write" >> beam.ParDo(
                _FinalizeCategoryFn(self._config, self._output_dir)))


class WriteManifest(beam.PTransform):
  """Writes `manifest.json` once every other output exists."""

  def __init__(self, config: config_lib.Config, output_dir: str):
    super().__init__()
    self._config = config
    self._output_dir = output_dir

  def expand(self, files_and_stats: tuple[beam.PCollection, beam.PCollection,
                                          beam.PCollection]
             ) -> beam.PCollection:
    """(`outputs.ShardFile`s, `outputs.RejectFile`s, (category, statistics))
    -> the manifest, written."""
    shard_files, reject_files, stats = files_and_stats

    def write(_: None, shard_files: list[outputs.ShardFile],
              reject_files: list[outputs.RejectFile],
              stats: dict[str, dict[str, Any]]) -> None:
      outputs.write_manifest(self._output_dir, self._config, shard_files,
                             reject_files, stats)
      # The job's last write: a folder with the marker is an unfinished run.
      outputs.delete_run_started(self._output_dir)

    return (shard_files.pipeline | "Once" >> beam.Create([None])
            | "Write" >> beam.Map(write, beam.pvalue.AsList(shard_files),
                                  beam.pvalue.AsList(reject_files),
                                  beam.pvalue.AsDict(stats)))
