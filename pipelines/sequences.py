"""User sequences: sampling, ordering, deduplication and role splits.

Implements the sequence handling of paper section 4 ("Dataset", "User Sequence
Deduplication"). Events are `parse.Event` tuples, whose natural order is the
chronological order with a full tie-break.
"""

from __future__ import annotations

import enum
import hashlib
import zlib
from typing import Sequence

from pipelines import parse


class Role(str, enum.Enum):
  """How a category's sequences are used (paper section 4)."""

  STAGE1_ONLY = "stage1_only"  # Whole sequence trains Stage I.
  VALIDATION = "validation"  # First n-1 train; all n validate (CDs).
  EVAL = "eval"  # First n-2 train; n-1 validate; all n test.


TRAIN = "train"
VALIDATION = "validation"
TEST = "test"

# Splits written per role, in the order records are built.
ROLE_SPLITS = {
    Role.STAGE1_ONLY: (TRAIN,),
    Role.VALIDATION: (TRAIN, VALIDATION),
    Role.EVAL: (TRAIN, VALIDATION, TEST),
}

# Events a user needs so that every record written for the role holds at least
# two items: one target and at least one history item (a train record of one
# item would give no training pair). Users below are written as rejects.
MIN_EVENTS = {
    Role.STAGE1_ONLY: 2,
    Role.VALIDATION: 3,
    Role.EVAL: 4,
}

_HASH_SCALE = float(1 << 64)


def sampled(user_id: str, category: str, fraction: float, seed: int) -> bool:
  """Whether the seeded hash of `user_id` keeps the user (never `random`).

  The category is hashed too, so samples of different categories are
  independent of each other.
  """
  if fraction >= 1.0:
    return True
  key = f"{seed}\x00{category}\x00{user_id}".encode("utf-8")
  digest = hashlib.blake2b(key, digest_size=8).digest()
  return int.from_bytes(digest, "big") / _HASH_SCALE < fraction


def id_hash(key: str) -> int:
  """A stable 32-bit hash of a user or item id for shards and buckets."""
  return zlib.crc32(key.encode("utf-8"))


def shard_of(user_id: str, num_shards: int) -> int:
  """The output shard of a user: independent of runner and bundle order."""
  return id_hash(user_id) % num_shards


def dedup_consecutive(
    events: Sequence[parse.Event]) -> tuple[list[parse.Event], int]:
  """Drops events identical to the previous one; returns (kept, dropped).

  `events` must be sorted. Identical means same item, review text, rating and
  timestamp; a repeat of an item at another time or with another rating or
  text is a genuine repeat and stays (paper section 4, Appendix A).
  """
  kept = []
  for event in events:
    if not kept or event != kept[-1]:
      kept.append(event)
  return kept, len(events) - len(kept)


def role_splits(events: Sequence[parse.Event],
                role: Role) -> list[tuple[str, Sequence[parse.Event]]]:
  """The (split, events) records of one user's deduplicated sequence.

  stage1_only: train = all n. validation: train = first n-1, validation = all
  n. eval: train = first n-2, validation = first n-1, test = all n. For
  validation and test the last event is the target.
  """
  if len(events) < MIN_EVENTS[role]:
    raise ValueError(f"{len(events)} events, {role.value} needs "
                     f"{MIN_EVENTS[role]}")
  splits = ROLE_SPLITS[role]
  n = len(events)
  # The i-th split (in train, validation, test order) ends len(splits)-1-i
  # events before the end.
  return [(split, events[:n - (len(splits) - 1 - i)])
          for i, split in enumerate(splits)]
