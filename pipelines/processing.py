"""The per-element work of the preprocessing job, free of Beam.

The job (paper section 4) runs in five steps, each a function here that the
DoFns of `transforms.py` wrap (and that a plain single-process loop can call):

1. `parse_meta_lines` / `merge_meta`: meta rows to one cleaned row per asin;
   `AsinIndex`: the asins that have a row, compactly.
2. `parse_review_lines`: a file range of reviews to events grouped by output
   shard and user; unsampled users are kept as ids only, bad lines become
   rejects. Reviews of items without a meta row are rejected (`unknown_asin`):
   an item with no text cannot be recommended by text.
3. `wanted_asins` / `meta_for_shards`: the join of reviews with meta. Meta is
   split into buckets by asin (`meta_bucket`); each bucket hands every output
   shard the rows of the items its users bought, so no worker ever holds more
   than one bucket of a category's meta.
4. `build_shard`: all events of one shard's users to sorted, deduplicated,
   templated records per split, in user id order: the shard's file contents.
5. `corpus_columns`, `stats.category_stats`: the category's item corpus and
   statistics. Rejects are split into buckets by a hash of their contents
   (`bucket_rejects`), and each bucket is written as one file in
   `sort_rejects` order (`rejects_jsonl`), so that no worker holds more than
   one bucket of a category's rejects.

Counts of everything read, dropped and kept flow out as `collections.Counter`s
whose keys `stats.py` turns into the statistics file.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import json
from typing import (Callable, Iterable, Iterator, Mapping, NamedTuple,
                    Sequence)

import numpy as np

from pipelines import config as config_lib
from pipelines import parse
from pipelines import records
from pipelines import sequences
from pipelines import templates

# Users of one shard: id -> events; an unsampled user maps to no events.
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


def _add_meta(items: dict[str, parse.ItemMeta], asin: str,
              meta: parse.ItemMeta) -> None:
  previous = items.get(asin)
  items[asin] = (meta if previous is None
                 else parse.prefer_meta(previous, meta))


@dataclasses.dataclass
class MetaChunk:
  """The meta of one file range: asin -> its row (repeats collapsed), the
  lines rejected, and counts."""

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
    _add_meta(chunk.items, asin, meta)
  return chunk


def merge_meta(chunks: Iterable[Mapping[str, parse.ItemMeta]]
               ) -> dict[str, parse.ItemMeta]:
  """One row per asin over all ranges, independent of their order."""
  merged: dict[str, parse.ItemMeta] = {}
  for items in chunks:
    for asin, meta in items.items():
      _add_meta(merged, asin, meta)
  return merged


def meta_bucket(asin: str, num_buckets: int) -> int:
  """The meta bucket of an item: independent of runner and bundle order."""
  return sequences.id_hash(asin) % num_buckets


def bucket_meta(items: Mapping[str, parse.ItemMeta],
                num_buckets: int) -> dict[int, dict[str, parse.ItemMeta]]:
  """Meta rows split by `meta_bucket`."""
  buckets: dict[int, dict[str, parse.ItemMeta]] = collections.defaultdict(dict)
  for asin, meta in items.items():
    buckets[meta_bucket(asin, num_buckets)][asin] = meta
  return dict(buckets)


# Ends every key of `AsinIndex`: numpy byte strings drop trailing NUL bytes,
# so "B1\0" would match "B1" without it. 0xFF is never part of UTF-8.
_KEY_END = b"\xff"


def _index_keys(asins: Iterable[str]) -> np.ndarray:
  return np.array([a.encode("utf-8") + _KEY_END for a in asins], dtype=bytes)


class AsinIndex:
  """The asins that have a meta row, as one sorted byte-string array.

  About 11 bytes an item, against about 350 for the parsed rows: small enough
  for every worker to hold a category's index for the `unknown_asin` check.
  Matches exact strings only.
  """

  def __init__(self, asins: Iterable[str] = ()):
    self._sorted = np.unique(_index_keys(asins))

  @classmethod
  def union(cls, indexes: Iterable["AsinIndex"]) -> "AsinIndex":
    """One index of every asin in `indexes` (associative and commutative)."""
    union = cls()
    union._sorted = np.unique(np.concatenate(
        [union._sorted] + [index._sorted for index in indexes]))
    return union

  def __len__(self) -> int:
    return len(self._sorted)

  def contains(self, asins: Sequence[str]) -> np.ndarray:
    """Whether each of `asins` is in the index, in one vectorised lookup."""
    if not len(self._sorted) or not asins:
      return np.zeros(len(asins), bool)
    keys = _index_keys(asins)
    positions = np.minimum(np.searchsorted(self._sorted, keys),
                           len(self._sorted) - 1)
    return self._sorted[positions] == keys


def item_attributes(meta: parse.ItemMeta) -> templates.ItemAttributes:
  """The truncated attributes of an item (paper section 4, "Dataset")."""
  return templates.item_attributes(*meta)


@functools.lru_cache(maxsize=1 << 17)
def item_text(meta: parse.ItemMeta) -> str:
  """The templated text of an item (`pipelines.templates`), cached per meta row."""
  return templates.format_item(item_attributes(meta))


@dataclasses.dataclass
class ReviewChunk:
  """The reviews of one file range: shard -> user id -> events (no events for
  an unsampled user), the lines rejected, and counts."""

  shards: dict[int, UserEvents]
  rejects: list[Reject]
  counts: collections.Counter


# Review lines parsed before their asins are looked up in one batch.
_LOOKUP_BATCH = 4096


def parts(lines: Iterable[tuple[int, bytes]],
          size: int) -> Iterator[Iterator[tuple[int, bytes]]]:
  """Consecutive parts of at most `size` lines, streamed: each part must be
  read to its end before the next is asked for."""
  iterator = iter(lines)
  for first in iterator:
    yield itertools.chain([first], itertools.islice(iterator, size - 1))


# A review line that parsed: (offset, line, user id, event).
_ParsedReview = tuple[int, bytes, str, parse.Event]


def _parse_reviews(batch: Iterable[tuple[int, bytes]],
                   parsed: list[_ParsedReview],
                   reject: Callable[[int, bytes, str], None],
                   counts: collections.Counter) -> None:
  """Appends the lines of `batch` that parse to `parsed`; the others go to
  `reject`, or count as blank. A unixReviewTime converted to an integer (a
  digit string, an integral float) counts as `coerced_unixReviewTime`."""
  for offset, line in batch:
    try:
      record = parse.load_record(line)
      parsed.append((offset, line, *parse.review_event(record)))
    except parse.RejectError as e:
      if line.strip():
        reject(offset, line, e.reason)
      else:
        counts["review_blank_lines"] += 1
      continue
    if type(record["unixReviewTime"]) is not int:
      counts["coerced_unixReviewTime"] += 1


def parse_review_lines(lines: Iterable[tuple[int, bytes]], source: str,
                       category: config_lib.CategoryConfig, sampling_seed: int,
                       known_asins: AsinIndex) -> ReviewChunk:
  """Parses the reviews of one file range into per-shard user events."""
  rejects: list[Reject] = []
  counts = collections.Counter()
  # User id -> events, or None for a user the sample leaves out.
  users: dict[str, list[parse.Event] | None] = {}

  def reject(offset: int, line: bytes, reason: str) -> None:
    counts[f"reviews_rejected_{reason}"] += 1
    rejects.append(_line_reject(source, offset, reason, line))

  num_lines = 0
  for batch in map(list, parts(lines, _LOOKUP_BATCH)):
    num_lines += len(batch)
    # Filled in place, not returned: the previous batch's list is freed
    # before this one is parsed, and its memory reused (about 2% faster).
    parsed: list[_ParsedReview] = []
    _parse_reviews(batch, parsed, reject, counts)
    known = known_asins.contains([event[1] for *_, event in parsed])
    for (offset, line, user_id, event), is_known in zip(parsed, known):
      if not is_known:
        reject(offset, line, "unknown_asin")
        continue
      if user_id in users:
        events = users[user_id]
      else:
        events = users[user_id] = [] if sequences.sampled(
            user_id, category.name, category.user_fraction,
            sampling_seed) else None
      if events is None:
        counts["reviews_of_unsampled_users"] += 1
      else:
        events.append(event)
  counts["review_lines"] = num_lines - counts["review_blank_lines"]
  shards: dict[int, UserEvents] = collections.defaultdict(dict)
  for user_id, events in users.items():
    shards[sequences.shard_of(user_id, category.num_shards)][user_id] = (
        events or [])
  return ReviewChunk(dict(shards), rejects, counts)


def wanted_asins(shards: Mapping[int, UserEvents],
                 num_buckets: int) -> dict[int, dict[int, list[str]]]:
  """Meta bucket -> shard -> the sorted asins its users bought."""
  wanted = collections.defaultdict(dict)
  for shard, users in shards.items():
    by_bucket = collections.defaultdict(list)
    for asin in sorted({event[1] for events in users.values()
                        for event in events}):
      by_bucket[meta_bucket(asin, num_buckets)].append(asin)
    for bucket, asins in by_bucket.items():
      wanted[bucket][shard] = asins
  return dict(wanted)


def meta_for_shards(meta: Mapping[str, parse.ItemMeta],
                    wanted: Iterable[Mapping[int, Sequence[str]]]
                    ) -> dict[int, dict[str, parse.ItemMeta]]:
  """Shard -> the rows of `meta` (one bucket) that its users bought.

  `wanted` holds `wanted_asins` parts of the same bucket; every asin in them
  passed the `AsinIndex` check, so it has a row.
  """
  by_shard: dict[int, set[str]] = collections.defaultdict(set)
  for part in wanted:
    for shard, asins in part.items():
      by_shard[shard].update(asins)
  return {shard: {asin: meta[asin] for asin in sorted(asins)}
          for shard, asins in sorted(by_shard.items())}


def merge_user_events(parts: Iterable[UserEvents]) -> UserEvents:
  """One shard's users from parts of it, their events concatenated."""
  merged: UserEvents = {}
  for users in parts:
    for user_id, events in users.items():
      merged.setdefault(user_id, []).extend(events)
  return merged


@dataclasses.dataclass
class ShardResult:
  """One shard: split -> serialized Examples in user id order, and more."""

  records: dict[str, list[bytes]]
  item_ids: set[str]
  rejects: list[Reject]
  counts: collections.Counter


def build_shard(users: UserEvents, category: config_lib.CategoryConfig,
                meta: Mapping[str, parse.ItemMeta]) -> ShardResult:
  """Sorts, deduplicates, splits and templates the sequences of a shard."""
  result = ShardResult({split: [] for split in category.splits}, set(), [],
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
    item_texts = [texts[asin] for asin in item_ids]
    timestamps = [event[0] for event in kept]
    for split, part in sequences.role_splits(kept, category.role):
      n = len(part)
      result.records[split].append(records.sequence_example(
          user_id, category.name, item_ids[:n], item_texts[:n],
          timestamps[:n]))
  return result


def shard_file_bytes(examples: Iterable[bytes]) -> bytes:
  """A TFRecord file of `examples`, in their order."""
  return b"".join(map(records.tfrecord_frame, examples))


# The four item attributes of paper section 3.2, in template order.
ATTRIBUTE_COLUMNS = ("title", "category", "brand", "price")
CORPUS_COLUMNS = ("item_id", "text") + ATTRIBUTE_COLUMNS


def corpus_columns(item_ids: Iterable[str],
                   meta: Mapping[str, parse.ItemMeta]) -> dict[str, list[str]]:
  """The corpus, column by column, sorted by item id: every item the
  category's written sequences use, with its text and truncated attributes."""
  columns: dict[str, list[str]] = {name: [] for name in CORPUS_COLUMNS}
  for item_id in sorted(item_ids):
    attributes = item_attributes(meta[item_id])
    row = (item_id, templates.format_item(attributes), *attributes.as_tuple())
    for name, value in zip(CORPUS_COLUMNS, row):
      columns[name].append(value)
  return columns


def reject_bucket(reject: Sequence, num_buckets: int) -> int:
  """The rejects file of a reject: a stable hash of all its fields, so that
  `too_few_events` rejects, which share source and offset, spread too."""
  return sequences.id_hash("\0".join(map(str, reject))) % num_buckets


def bucket_rejects(rejects: Iterable[Sequence],
                   num_buckets: int) -> dict[int, list[tuple]]:
  """Rejects, as plain tuples, split by `reject_bucket`."""
  buckets: dict[int, list[tuple]] = collections.defaultdict(list)
  for reject in rejects:
    buckets[reject_bucket(reject, num_buckets)].append(tuple(reject))
  return dict(buckets)


def sort_rejects(rejects: Iterable[Sequence]) -> list[Sequence]:
  """Rejects in file order: by source, offset, reason, record. The order is
  total: rejects that tie are equal, and so are their lines."""
  return sorted(rejects)


def rejects_jsonl(category: str, rejects: Iterable[Sequence]) -> bytes:
  """JSON lines of `rejects`, in their order."""
  return "".join(Reject(*reject).to_json(category) + "\n"
                 for reject in rejects).encode("utf-8")
