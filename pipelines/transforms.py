"""The Beam transforms of the preprocessing job (paper section 4).

Throughput comes from few, large elements: each file range is parsed in one
call and leaves as one dict of user events per output shard; shards are
grouped once, and each shard's files are written by the call that builds them,
from records in user id order. No file's bytes depend on runner order, bundle
split or worker count. Per category, one more grouping gathers the counts,
item ids and rejects that the corpus, rejects and statistics files need.
"""

from __future__ import annotations

import collections
import logging
import pickle
from typing import Iterable, Sequence

import apache_beam as beam

from pipelines import config as config_lib
from pipelines import outputs
from pipelines import processing
from pipelines import textio

# A file range to read: (category name, path, start, end).
RangeTask = tuple[str, str, int, int]


def _read_range(task: RangeTask) -> Iterable[tuple[int, bytes]]:
  _, path, start, end = task
  return textio.read_lines(textio.FileRange(path, start, end))


def _pack(users: processing.UserEvents) -> bytes:
  """User events travel through the shuffle as one opaque pickle: the runner
  then groups bytes instead of decoding and re-encoding every event."""
  return pickle.dumps(users, protocol=pickle.HIGHEST_PROTOCOL)


def _category(config: config_lib.Config,
              name: str) -> config_lib.CategoryConfig:
  return next(c for c in config.categories if c.name == name)


def _side_outputs(name: str, rejects: Sequence[processing.Reject],
                  counts: collections.Counter):
  if rejects:
    yield beam.pvalue.TaggedOutput("rejects",
                                   (name, [tuple(r) for r in rejects]))
  yield beam.pvalue.TaggedOutput("counts", (name, dict(counts)))


class _MergeMeta(beam.CombineFn):
  """Collapses repeated asin rows with the order-free `parse.prefer_meta`."""

  def create_accumulator(self) -> dict:
    return {}

  def add_input(self, accumulator, items):
    processing.add_meta_rows(accumulator, items)
    return accumulator

  def merge_accumulators(self, accumulators):
    return processing.merge_meta(accumulators)

  def extract_output(self, accumulator):
    return accumulator


class _ParseMetaFn(beam.DoFn):

  def process(self, task: RangeTask):
    name = task[0]
    chunk = processing.parse_meta_lines(_read_range(task), task[1])
    logging.info("meta of %s: %d lines from %s[%d:%d]", name,
                 chunk.counts["meta_lines"], *task[1:])
    yield name, chunk.items
    yield from _side_outputs(name, chunk.rejects, chunk.counts)


class ReadMeta(beam.PTransform):
  """Meta ranges -> (category, {asin: cleaned meta}); rejects; counts."""

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

  def __init__(self, config: config_lib.Config):
    self._config = config

  def process(self, task: RangeTask, meta: dict[str, dict]):
    name = task[0]
    chunk = processing.parse_review_lines(
        _read_range(task), task[1], _category(self._config, name),
        self._config.sampling_seed, meta.get(name, {}))
    logging.info("reviews of %s: %d lines from %s[%d:%d]", name,
                 chunk.counts["review_lines"], *task[1:])
    for shard, users in sorted(chunk.shards.items()):
      yield (name, shard), _pack(users)
    yield from _side_outputs(name, chunk.rejects, chunk.counts)


class _BuildShardFn(beam.DoFn):

  def __init__(self, config: config_lib.Config, output_dir: str):
    self._config = config
    self._output_dir = output_dir

  def process(self, keyed_parts, meta: dict[str, dict]):
    (name, shard), parts = keyed_parts
    category = _category(self._config, name)
    result = processing.build_shard(
        processing.merge_user_events(map(pickle.loads, parts)), category,
        meta.get(name, {}))
    yield from outputs.write_shard(self._output_dir, category, shard,
                                   result.records)
    logging.info("%s shard %d: %d users", name, shard,
                 result.counts["users"])
    yield beam.pvalue.TaggedOutput("items", (name, result.item_ids))
    yield from _side_outputs(name, result.rejects, result.counts)


class BuildShards(beam.PTransform):
  """Review ranges -> every shard file of every split, written.

  Returns ((category, split, file name, records) per file, item ids used per
  shard, rejects, counts).
  """

  def __init__(self, tasks: Sequence[RangeTask], config: config_lib.Config,
               output_dir: str, meta: beam.PCollection):
    super().__init__()
    self._tasks = list(tasks)
    self._config = config
    self._output_dir = output_dir
    self._meta = meta

  def expand(self, pbegin):
    meta_view = beam.pvalue.AsDict(self._meta)
    parsed = (pbegin
              | "Ranges" >> beam.Create(self._tasks)
              | "Parse" >> beam.ParDo(_ParseReviewsFn(self._config),
                                      meta=meta_view).with_outputs(
                                          "rejects", "counts", main="users"))
    # Every shard is built, and its files written, even when no user has it.
    every_shard = pbegin | "EveryShard" >> beam.Create(
        [((c.name, shard), _pack({})) for c in self._config.categories
         for shard in range(c.num_shards)])
    built = ((parsed.users, every_shard)
             | "FlattenUsers" >> beam.Flatten()
             | "GroupShards" >> beam.GroupByKey()
             | "Build" >> beam.ParDo(_BuildShardFn(self._config,
                                                   self._output_dir),
                                     meta=meta_view).with_outputs(
                                         "items", "rejects", "counts",
                                         main="files"))
    rejects = ((parsed.rejects, built.rejects)
               | "FlattenRejects" >> beam.Flatten())
    counts = (parsed.counts, built.counts) | "FlattenCounts" >> beam.Flatten()
    return built.files, built.items, rejects, counts


class _FinalizeCategoryFn(beam.DoFn):
  """Writes a category's corpus, rejects and statistics files."""

  def __init__(self, config: config_lib.Config, output_dir: str):
    self._config = config
    self._output_dir = output_dir

  def process(self, keyed, meta: dict[str, dict]):
    name, grouped = keyed
    counts = collections.Counter()
    for part in grouped["counts"]:
      counts.update(part)
    yield name, outputs.write_category_files(
        self._output_dir, _category(self._config, name),
        set().union(*grouped["items"]),
        [reject for part in grouped["rejects"] for reject in part], counts,
        meta.get(name, {}))


class FinalizeCategories(beam.PTransform):
  """{"counts", "items", "rejects"} keyed by category -> files written.

  Returns (category, {"stats": ..., "rejects": count}).
  """

  def __init__(self, config: config_lib.Config, output_dir: str,
               meta: beam.PCollection):
    super().__init__()
    self._config = config
    self._output_dir = output_dir
    self._meta = meta

  def expand(self, inputs):
    # Categories left without users or rejects still get their files.
    every_category = inputs["counts"].pipeline | "EveryCategory" >> beam.Create(
        [(c.name, {}) for c in self._config.categories])
    counts = ((inputs["counts"], every_category)
              | "FlattenCounts" >> beam.Flatten())
    return (dict(inputs, counts=counts)
            | "Group" >> beam.CoGroupByKey()
            | "Write" >> beam.ParDo(
                _FinalizeCategoryFn(self._config, self._output_dir),
                meta=beam.pvalue.AsDict(self._meta)))


class WriteManifest(beam.PTransform):
  """Writes `manifest.json` once every other output exists."""

  def __init__(self, config: config_lib.Config, output_dir: str):
    super().__init__()
    self._config = config
    self._output_dir = output_dir

  def expand(self, files_and_summaries):
    shard_files, summaries = files_and_summaries

    def write(_, shard_files, summaries):
      outputs.write_manifest(self._output_dir, self._config, shard_files,
                             summaries)

    return (shard_files.pipeline | "Once" >> beam.Create([None])
            | "Write" >> beam.Map(write, beam.pvalue.AsList(shard_files),
                                  beam.pvalue.AsDict(summaries)))
