"""Tests of ordering, deduplication, sampling and role splits."""

import hashlib
import json
import os
import subprocess
import sys
import zlib

import conftest
import pytest

from pipelines import parse
from pipelines import sequences


def _event(asin, text, rating, timestamp):
  return (timestamp, asin, float(rating), parse.text_digest(text))


def test_appendix_a_example_keeps_first_and_one_copy_of_the_repeat():
  # Paper Appendix A: B00002NC3K then four identical B0001MSC84 events, all
  # with the same text, rating and timestamp.
  text = "Warped when exposed to the sun."
  asins = ["B00002NC3K"] + ["B0001MSC84"] * 4
  events = sorted(_event(a, text, 3, 1508544000) for a in asins)
  kept, dropped = sequences.dedup_consecutive(events)
  assert [e[1] for e in kept] == ["B00002NC3K", "B0001MSC84"]
  assert dropped == 3


def test_genuine_repeats_survive():
  base = _event("B1", "good", 5, 100)
  events = sorted([
      base,
      _event("B1", "good", 5, 200),  # Another time.
      _event("B1", "good", 4, 200),  # Another rating.
      _event("B1", "better", 4, 200),  # Another text.
      _event("B1", "better", 4, 200),  # Exact duplicate of the previous.
  ])
  kept, dropped = sequences.dedup_consecutive(events)
  assert dropped == 1
  assert len(kept) == 4
  assert kept[0] == base


def test_only_consecutive_duplicates_are_dropped():
  a, b = _event("A", "x", 5, 100), _event("B", "x", 5, 200)
  kept, dropped = sequences.dedup_consecutive([a, b, a])
  assert kept == [a, b, a] and dropped == 0


def test_event_order_is_chronological_with_full_tie_break():
  events = [_event("B2", "t", 5, 20), _event("B9", "t", 5, 10),
            _event("B1", "t", 4, 20), _event("B1", "t", 3, 20),
            _event("B1", "s", 3, 20)]
  ordered = sorted(events)
  assert [e[0] for e in ordered] == [10, 20, 20, 20, 20]
  # Same time: by asin, then rating, then text digest.
  assert [(e[1], e[2]) for e in ordered[1:]] == [
      ("B1", 3.0), ("B1", 3.0), ("B1", 4.0), ("B2", 5.0)]
  digests = sorted([parse.text_digest("t"), parse.text_digest("s")])
  assert [ordered[1][3], ordered[2][3]] == digests
  # Any input permutation gives the same order.
  assert sorted(reversed(events)) == ordered


def test_sampling_is_a_seeded_hash_of_category_and_user_id():
  users = [f"U{i}" for i in range(4000)]
  kept = [u for u in users if sequences.sampled(u, "Pet", 0.2, seed=7)]
  assert kept == [u for u in users if sequences.sampled(u, "Pet", 0.2, 7)]
  assert abs(len(kept) / len(users) - 0.2) < 0.03
  # Independent implementation of the documented rule.
  def expected(user, fraction, seed):
    digest = hashlib.blake2b(f"{seed}\x00Pet\x00{user}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64
  assert kept == [u for u in users if expected(u, 0.2, 7)]
  assert kept != [u for u in users if sequences.sampled(u, "Pet", 0.2, 8)]
  # Another category draws its own sample: the 20 % is no subset of a 50 %.
  office = {u for u in users if sequences.sampled(u, "Office", 0.5, 7)}
  assert not set(kept) <= office
  assert all(sequences.sampled(u, "Pet", 1.0, 7) for u in users[:10])


# Ids with non-ASCII characters: the hash is of the UTF-8 bytes.
_SHARD_USERS = [f"U{i}" for i in range(1000)] + ["Ünïcødé", "ユーザー", ""]


def _shards_in_subprocess(hash_seed):
  """`shard_of` of _SHARD_USERS in a fresh interpreter with PYTHONHASHSEED."""
  code = ("import json, sys; from pipelines import sequences; "
          "users = json.load(sys.stdin); "
          "print(json.dumps([[sequences.id_hash(u), sequences.shard_of(u, 7)] "
          "for u in users]))")
  env = dict(os.environ, PYTHONHASHSEED=str(hash_seed))
  completed = subprocess.run(
      [sys.executable, "-c", code], input=json.dumps(_SHARD_USERS),
      capture_output=True, text=True, check=True, env=env,
      cwd=conftest.REPO_ROOT)
  return [tuple(pair) for pair in json.loads(completed.stdout)]


def test_shards_are_crc32_of_the_utf8_id_in_every_process():
  # Independent implementation of the documented rule: CRC-32 of the id's
  # UTF-8 bytes, modulo the number of shards (Python's hash() is salted per
  # process, so shards built on it would differ from one worker to the next).
  expected = [(zlib.crc32(u.encode("utf-8")) & 0xFFFFFFFF,
               (zlib.crc32(u.encode("utf-8")) & 0xFFFFFFFF) % 7)
              for u in _SHARD_USERS]
  assert [(sequences.id_hash(u), sequences.shard_of(u, 7))
          for u in _SHARD_USERS] == expected
  # Golden values of the standard CRC-32 (check value of "123456789").
  assert sequences.id_hash("123456789") == 0xCBF43926
  assert {sequences.shard_of(u, 4) for u in _SHARD_USERS} == {0, 1, 2, 3}
  # Other interpreters, with other string-hash salts, agree.
  assert _shards_in_subprocess(1) == expected
  assert _shards_in_subprocess(2) == expected


def _events(n):
  return [_event(f"B{i}", "t", 5, i) for i in range(n)]


def test_role_splits_stage1_only():
  events = _events(5)
  assert sequences.role_splits(events, sequences.Role.STAGE1_ONLY) == [
      ("train", events)]


def test_role_splits_validation():
  events = _events(5)
  assert sequences.role_splits(events, sequences.Role.VALIDATION) == [
      ("train", events[:4]), ("validation", events)]


def test_role_splits_eval():
  events = _events(5)
  assert sequences.role_splits(events, sequences.Role.EVAL) == [
      ("train", events[:3]), ("validation", events[:4]), ("test", events)]


@pytest.mark.parametrize("role", list(sequences.Role))
def test_minimum_lengths_leave_every_record_a_history_and_a_target(role):
  minimum = sequences.MIN_EVENTS[role]
  splits = sequences.role_splits(_events(minimum), role)
  assert min(len(events) for _, events in splits) == 2
  with pytest.raises(ValueError, match="needs"):
    sequences.role_splits(_events(minimum - 1), role)
