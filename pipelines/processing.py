"""The per-element work of the preprocessing job, free of Beam.

The job (paper section 4) runs in three steps, each a function here that the
DoFns of `transforms.py` wrap:

1. `parse_meta_lines` / `merge_meta`: meta rows to one cleaned row per asin.
2. `parse_review_lines`: a file range of reviews to events grouped by user and
   user bucket; unsampled users are kept as ids only, bad lines become rejects.
   Reviews of items without a meta row are rejected (`unknown_asin`): an item
   with no text cannot be recommended by text.
3. `build_bucket`: all events of a bucket's users to sorted, deduplicated,
   templated records per (split, shard), sorted by user id.

Counts of everything read, dropped and kept flow out as `collections.Counter`s
whose keys `stats.py` turns into the statistics file.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Container, Iterable, Mapping, NamedTuple

from apache_beam.io.filesystems import FileSystems

from pipelines import config as config_lib
from pipelines import parse
from pipelines import records
from pipelines import sequences
from tasks import templates

# Users whose events are grouped together before sorting; more buckets mean
# smaller units of parallel work.
DEFAULT_NUM_BUCKETS = 16

# Users of one bucket: id -> events; an unsampled user maps to no events.
UserEvents = dict[str, list[parse.Event]]


class Reject(NamedTuple):
  """A record the job could not use, where it came from and why."""

  source: str
  offset: int
  reason: str
  record: str

  def to_json(self, category: str) -> str:
    return json.dumps({"category": category, "source": self.source,
                       "offset": self.offset, "reason": self.reason,
                       "record": self.record}, ensure_ascii=False)


def _line_reject(source: str, offset: int, reason: str, line: bytes) -> Reject:
  return Reject(source, offset, reason,
                line.decode("utf-8", errors="replace").rstrip("\r\n"))


@dataclasses.dataclass
class MetaChunk:
  items: dict[str, parse.ItemMeta]
  rejects: list[Reject]
  counts: collections.Counter


def parse_meta_lines(lines: Iterable[tuple[int, bytes]],
                     source: str) -> MetaChunk:
  """Cleans the meta rows of one file range, collapsing repeated asins."""
  chunk = MetaChunk({}, [], collections.Counter())
  for offset, line in lines:
    if not line.strip():
      chunk.counts["meta_blank_lines"] += 1
      continue
    chunk.counts["meta_lines"] += 1
    try:
      asin, meta = parse.item_meta(parse.load_record(line))
    except parse.RejectError as e:
      chunk.counts[f"meta_rejected_{e.reason}"] += 1
      chunk.rejects.append(_line_reject(source, offset, e.reason, line))
      continue
    chunk.counts["meta_rows"] += 1
    previous = chunk.items.get(asin)
    chunk.items[asin] = meta if previous is None else parse.prefer_meta(
        previous, meta)
  return chunk


def merge_meta(
    chunks: Iterable[Mapping[str, parse.ItemMeta]]) -> dict[str, parse.ItemMeta]:
  """One row per asin over all ranges, independent of their order."""
  merged: dict[str, parse.ItemMeta] = {}
  for items in chunks:
    for asin, meta in items.items():
      previous = merged.get(asin)
      merged[asin] = meta if previous is None else parse.prefer_meta(
          previous, meta)
  return merged


def item_attributes(meta: parse.ItemMeta) -> templates.ItemAttributes:
  """The truncated attributes of an item (paper section 4, "Dataset")."""
  return templates.item_attributes(*meta)


def item_text(meta: parse.ItemMeta) -> str:
  return templates.format_item(item_attributes(meta))


@dataclasses.dataclass
class ReviewChunk:
  buckets: dict[int, UserEvents]
  rejects: list[Reject]
  counts: collections.Counter


def parse_review_lines(lines: Iterable[tuple[int, bytes]], source: str,
                       category: config_lib.CategoryConfig, sampling_seed: int,
                       known_asins: Container[str],
                       num_buckets: int = DEFAULT_NUM_BUCKETS) -> ReviewChunk:
  """Parses the reviews of one file range into per-bucket user events."""
  chunk = ReviewChunk(collections.defaultdict(dict), [], collections.Counter())
  counts = chunk.counts
  is_sampled: dict[str, bool] = {}
  for offset, line in lines:
    if not line.strip():
      counts["review_blank_lines"] += 1
      continue
    counts["review_lines"] += 1
    try:
      user_id, event = parse.review_event(parse.load_record(line))
      if event[1] not in known_asins:
        raise parse.RejectError("unknown_asin")
    except parse.RejectError as e:
      counts[f"reviews_rejected_{e.reason}"] += 1
      chunk.rejects.append(_line_reject(source, offset, e.reason, line))
      continue
    keep = is_sampled.get(user_id)
    if keep is None:
      keep = is_sampled[user_id] = sequences.sampled(
          user_id, category.user_fraction, sampling_seed)
    users = chunk.buckets[sequences.user_hash(user_id) % num_buckets]
    events = users.setdefault(user_id, [])
    if keep:
      events.append(event)
    else:
      counts["reviews_of_unsampled_users"] += 1
  chunk.buckets = dict(chunk.buckets)
  return chunk


def merge_user_events(parts: Iterable[UserEvents]) -> UserEvents:
  merged: UserEvents = {}
  for users in parts:
    for user_id, events in users.items():
      merged.setdefault(user_id, []).extend(events)
  return merged


# Records of one (split, shard): (user id, serialized Example), sorted by id.
ShardRecords = list[tuple[str, bytes]]


@dataclasses.dataclass
class BucketResult:
  shards: dict[tuple[str, int], ShardRecords]
  item_ids: set[str]
  rejects: list[Reject]
  counts: collections.Counter


def build_bucket(users: UserEvents, category: config_lib.CategoryConfig,
                 meta: Mapping[str, parse.ItemMeta]) -> BucketResult:
  """Sorts, deduplicates, splits and templates the sequences of a bucket."""
  result = BucketResult(collections.defaultdict(list), set(), [],
                        collections.Counter())
  counts = result.counts
  texts: dict[str, str] = {}
  min_events = sequences.MIN_EVENTS[category.role]
  for user_id in sorted(users):
    events = users[user_id]
    if not events:
      counts["users_unsampled"] += 1
      continue
    events.sort()
    kept, duplicates = sequences.dedup_consecutive(events)
    counts["users_before_dedup"] += 1
    counts["purchases_before_dedup"] += len(events)
    counts["duplicate_purchases"] += duplicates
    if len(kept) < min_events:
      counts["users_rejected_too_few_events"] += 1
      counts["purchases_of_rejected_users"] += len(kept)
      result.rejects.append(Reject(
          "user_sequence", 0, "too_few_events",
          json.dumps({"reviewerID": user_id, "events": len(kept),
                      "min_events": min_events}, ensure_ascii=False)))
      continue
    counts["users"] += 1
    counts["purchases"] += len(kept)
    item_ids = [event[1] for event in kept]
    result.item_ids.update(item_ids)
    for asin in item_ids:
      if asin not in texts:
        texts[asin] = item_text(meta[asin])
    shard = sequences.shard_of(user_id, category.num_shards)
    for split, part in sequences.role_splits(kept, category.role):
      example = records.sequence_example(
          user_id, category.name, item_ids[:len(part)],
          [texts[asin] for asin in item_ids[:len(part)]],
          [event[0] for event in part])
      result.shards[(split, shard)].append((user_id, example))
  result.shards = dict(result.shards)
  return result


def merge_shard_records(parts: Iterable[ShardRecords]) -> ShardRecords:
  """All records of one shard, sorted by user id (ids are unique)."""
  return sorted((record for part in parts for record in part),
                key=lambda record: record[0])


def shard_file_bytes(shard_records: ShardRecords) -> bytes:
  return b"".join(records.tfrecord_frame(example)
                  for _, example in shard_records)


def shard_path(output_dir: str, category: str, split: str, shard: int,
               num_shards: int) -> str:
  """`{category}/{split}-SSSSS-of-NNNNN.tfrecord` (docs/contracts.md)."""
  return FileSystems.join(
      output_dir, category,
      f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord")
