"""Tests of ordering, deduplication, sampling and role splits."""

import hashlib

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


def test_shards_cover_range_and_do_not_depend_on_order():
  users = [f"U{i}" for i in range(1000)]
  shards = [sequences.shard_of(u, 4) for u in users]
  assert set(shards) == {0, 1, 2, 3}
  assert shards == [sequences.shard_of(u, 4) for u in users]


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
