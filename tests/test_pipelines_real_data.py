"""Conformance on real Amazon 2018 files, checked against a straightforward
computation written here independently of the job's code."""

import collections
import gzip
import json

import conftest
import pytest

from pipelines import preprocess
import pipelines_testdata


GIFT_REVIEWS = conftest.SHARED_DATA / "Gift_Cards_5.json.gz"
GIFT_META = conftest.SHARED_DATA / "meta_Gift_Cards.json.gz"
BEAUTY_REVIEWS = conftest.SHARED_DATA / "All_Beauty_5.json.gz"

pytestmark = [
    # Runs the preprocessing job on the real files.
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(p.exists() for p in (GIFT_REVIEWS, GIFT_META, BEAUTY_REVIEWS)),
        reason=f"real Amazon 2018 samples not found under "
               f"{conftest.SHARED_DATA} (set CALREC_SHARED_DATA)"),
]


def _rows(path):
  with gzip.open(path, "rt", encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _expected_sequences(reviews, known_asins, min_events):
  """Join, sort, drop consecutive exact duplicates, keep long sequences."""
  by_user = collections.defaultdict(list)
  for r in reviews:
    if r["asin"] in known_asins:
      by_user[r["reviewerID"]].append(
          (r["unixReviewTime"], r["asin"], r["overall"],
           r.get("reviewText", "")))
  duplicates = 0
  kept = {}
  for user, events in by_user.items():
    events.sort()
    deduped = [e for i, e in enumerate(events) if i == 0 or e != events[i - 1]]
    duplicates += len(events) - len(deduped)
    if len(deduped) >= min_events:
      kept[user] = deduped
  return kept, duplicates, len(by_user)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  folder = tmp_path_factory.mktemp("real")
  # All_Beauty ships without meta: give every reviewed asin a bare meta row.
  beauty_asins = sorted({r["asin"] for r in _rows(BEAUTY_REVIEWS)})
  beauty_meta = folder / "meta_All_Beauty.json"
  beauty_meta.write_text("".join(json.dumps({"asin": a}) + "\n"
                                 for a in beauty_asins))
  config = folder / "config.json"
  config.write_text(json.dumps({"categories": [
      {"name": "Gift_Cards", "reviews": str(GIFT_REVIEWS),
       "meta": str(GIFT_META), "role": "eval", "num_shards": 3},
      {"name": "All_Beauty", "reviews": str(BEAUTY_REVIEWS),
       "meta": str(beauty_meta), "role": "stage1_only"},
  ]}))
  output = folder / "out"
  stats = preprocess.run([f"--config={config}", f"--output_dir={output}"])
  return output, stats


def test_gift_cards_counts_and_sequences_match_independent_computation(run):
  output, stats = run
  meta_asins = {m["asin"] for m in _rows(GIFT_META)}
  expected, duplicates, users_before = _expected_sequences(
      _rows(GIFT_REVIEWS), meta_asins, min_events=4)
  gift = stats["Gift_Cards"]
  items = {e[1] for events in expected.values() for e in events}
  purchases = sum(len(events) for events in expected.values())
  assert gift["num_users"] == len(expected)
  assert gift["num_items"] == len(items)
  assert gift["total_purchases"] == purchases
  assert gift["users_before_dedup"] == users_before
  assert gift["counts"]["duplicate_purchases"] == duplicates
  test = pipelines_testdata.read_split(output / "Gift_Cards", "test")
  assert {user: record[:2] for user, record in test.items()} == {
      user: ([e[1] for e in events], [e[0] for e in events])
      for user, events in expected.items()}
  # Validation and train hold the first n-1 and n-2 events, every field cut.
  for split, held_out in (("validation", 1), ("train", 2)):
    records = pipelines_testdata.read_split(output / "Gift_Cards", split)
    assert records == {
        user: tuple(field[:-held_out] for field in record[:3]) + record[3:]
        for user, record in test.items()}


def test_all_beauty_duplicate_count_matches_independent_computation(run):
  _, stats = run
  reviews = _rows(BEAUTY_REVIEWS)
  expected, duplicates, _ = _expected_sequences(
      reviews, {r["asin"] for r in reviews}, min_events=2)
  beauty = stats["All_Beauty"]
  assert duplicates > 0.1 * len(reviews)  # The duplicate-heavy sample.
  assert beauty["counts"]["duplicate_purchases"] == duplicates
  assert beauty["pct_duplicate_purchases"] == pytest.approx(
      100 * duplicates / len(reviews))
  assert beauty["num_users"] == len(expected)
  assert beauty["total_purchases"] == sum(len(e) for e in expected.values())
