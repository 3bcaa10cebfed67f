"""Tests of the job's per-element steps and the statistics, without Beam."""

import collections
import json

import pytest

from pipelines import config as config_lib
from pipelines import outputs
from pipelines import parse
from pipelines import processing
from pipelines import sequences
from pipelines import stats
from pipelines import templates

tf = pytest.importorskip("tensorflow")


def _category(role="eval", fraction=1.0, shards=1):
  return config_lib.CategoryConfig(name="Games", reviews=("r",), meta=("m",),
                                   role=sequences.Role(role),
                                   user_fraction=fraction, num_shards=shards)


def _lines(records):
  offset, out = 0, []
  for record in records:
    line = (record if isinstance(record, str) else json.dumps(record)) + "\n"
    out.append((offset, line.encode()))
    offset += len(line.encode())
  return out


def _review(user, asin, t, text="ok", rating=5.0):
  return {"reviewerID": user, "asin": asin, "unixReviewTime": t,
          "reviewText": text, "overall": rating}


def test_parse_meta_lines_collapses_repeats_and_rejects_bad_rows():
  lines = _lines([
      {"asin": "B1", "title": "Short"},
      {"asin": "B1", "title": "Short", "brand": "Acme"},
      "{'asin': 'B2', 'title': 'Old &amp; format', 'price': 2}",
      '{"title": "no asin"}',
      "{broken",
      "",
  ])
  chunk = processing.parse_meta_lines(lines, "meta.json")
  assert chunk.items == {"B1": ("Short", None, "Acme", None),
                         "B2": ("Old & format", None, None, "$2.00")}
  assert [(r.offset, r.reason) for r in chunk.rejects] == [
      (lines[3][0], "missing_asin"), (lines[4][0], "malformed_line")]
  assert chunk.rejects[1].record == "{broken"
  assert chunk.counts == {"meta_lines": 5, "meta_rows": 3,
                          "meta_blank_lines": 1,
                          "meta_rejected_missing_asin": 1,
                          "meta_rejected_malformed_line": 1}


def test_merge_meta_is_independent_of_chunk_order():
  a = {"B1": ("T", None, None, None), "B2": ("X", "C", None, None)}
  b = {"B1": ("T", "C", None, None)}
  assert processing.merge_meta([a, b]) == processing.merge_meta([b, a]) == {
      "B1": ("T", "C", None, None), "B2": ("X", "C", None, None)}


def test_asin_index_matches_whole_asins_only():
  index = processing.AsinIndex(["B12", "B3", "Ä7", "B3"])
  assert len(index) == 3
  queries = ["B12", "B1", "B123", "B3", "B", "Ä7", "A7", "", "C9"]
  assert index.contains(queries).tolist() == [q in {"B12", "B3", "Ä7"}
                                              for q in queries]
  assert processing.AsinIndex().contains(["B1"]).tolist() == [False]
  assert index.contains([]).tolist() == []


def test_asin_index_tells_trailing_nul_bytes_apart():
  # numpy byte strings drop trailing NULs: "B1\0" must still not be "B1".
  index = processing.AsinIndex(["B1", "B2\0", "\0"])
  queries = ["B1", "B1\0", "B2", "B2\0", "B2\0\0", "\0", ""]
  assert index.contains(queries).tolist() == [
      True, False, False, True, False, True, False]
  union = processing.AsinIndex.union([processing.AsinIndex(["B1\0"]), index])
  assert union.contains(["B1", "B1\0", "B1\0\0"]).tolist() == [
      True, True, False]


def test_asin_index_union_is_order_free():
  parts = [processing.AsinIndex(["B1", "B20"]), processing.AsinIndex([]),
           processing.AsinIndex(["B20", "B300"])]
  queries = ["B1", "B20", "B300", "B2", "B30"]
  expected = [True, True, True, False, False]
  for order in (parts, parts[::-1]):
    union = processing.AsinIndex.union(order)
    assert len(union) == 3
    assert union.contains(queries).tolist() == expected


def test_meta_join_gives_each_shard_exactly_its_items_rows():
  """The keyed join equals looking every bought item up in the whole meta."""
  meta = {f"B{i}": (f"Item {i}", "Games", None, None) for i in range(40)}
  shards = {
      0: {"U1": [(1, "B1", 5.0, b""), (2, "B7", 5.0, b"")], "U2": []},
      2: {"U3": [(1, "B7", 5.0, b""), (2, "B39", 5.0, b""),
                 (3, "B1", 5.0, b"")]},
  }
  num_buckets = 3
  buckets = processing.bucket_meta(meta, num_buckets)
  assert {asin for rows in buckets.values() for asin in rows} == set(meta)
  wanted = processing.wanted_asins(shards, num_buckets)
  joined = {}
  for bucket, rows in buckets.items():
    assert all(processing.meta_bucket(asin, num_buckets) == bucket
               for asin in rows)
    # Two parse ranges may ask a bucket for the same shard's items.
    parts = [wanted.get(bucket, {}), wanted.get(bucket, {})]
    for shard, shard_rows in processing.meta_for_shards(rows, parts).items():
      assert not joined.get(shard, {}).keys() & shard_rows.keys()
      joined.setdefault(shard, {}).update(shard_rows)
  assert joined == {0: {a: meta[a] for a in ("B1", "B7")},
                    2: {a: meta[a] for a in ("B1", "B7", "B39")}}


def test_parse_review_lines_groups_by_shard_and_rejects():
  lines = _lines([
      _review("U1", "B1", 10),
      _review("U1", "B2", 20),
      _review("U2", "B9", 30),  # No meta row.
      {"asin": "B1", "unixReviewTime": 5},  # No reviewer.
      _review("U2", "B1", 40),
      "not json",
  ])
  chunk = processing.parse_review_lines(
      lines, "reviews.json", _category(shards=4), sampling_seed=0,
      known_asins=processing.AsinIndex(["B1", "B2"]))
  users = processing.merge_user_events(chunk.shards.values())
  assert sorted(users) == ["U1", "U2"]
  assert [e[1] for e in users["U1"]] == ["B1", "B2"]
  assert [e[1] for e in users["U2"]] == ["B1"]
  for shard, shard_users in chunk.shards.items():
    for user in shard_users:
      assert sequences.shard_of(user, 4) == shard
  assert sorted((r.source, r.offset, r.reason) for r in chunk.rejects) == [
      ("reviews.json", lines[2][0], "unknown_asin"),
      ("reviews.json", lines[3][0], "missing_reviewerID"),
      ("reviews.json", lines[5][0], "malformed_line")]
  assert chunk.counts == {"review_lines": 6,
                          "reviews_rejected_unknown_asin": 1,
                          "reviews_rejected_missing_reviewerID": 1,
                          "reviews_rejected_malformed_line": 1}


BAD_LINES = {
    # A lone surrogate in an id or the text the digest encodes.
    '{"reviewerID": "U\\ud800", "asin": "B1", "unixReviewTime": 1}':
        "invalid_encoding",
    '{"reviewerID": "U1", "asin": "B1", "unixReviewTime": 1, '
    '"reviewText": "\\ud800"}': "invalid_encoding",
    '{"reviewerID": "U1", "asin": "B1\\ud800", "unixReviewTime": 1}':
        "invalid_encoding",
    "[" * 100000 + "]" * 100000: "malformed_line",
    "{[1]: 2}": "malformed_line",
    '{"reviewerID": "U1", "asin": "B1", "unixReviewTime": "\u00b2"}':
        "invalid_unixReviewTime",
    '{"reviewerID": "U1", "asin": "B1", "unixReviewTime": 1' + "0" * 20 +
    ', "overall": 5.0}': "invalid_unixReviewTime",
    '{"reviewerID": "U1", "asin": "B1", "unixReviewTime": ' +
    str(2**64 + 1) + ', "overall": 5.0}': "invalid_unixReviewTime",
    '{"reviewerID": "U1", "asin": "' + "B" * 33 + '", "unixReviewTime": 1}':
        "asin_too_long",
    # A trailing NUL byte is part of the id: no meta row has this one.
    '{"reviewerID": "U1", "asin": "B1\\u0000", "unixReviewTime": 1}':
        "unknown_asin",
}


def test_parse_review_lines_counts_and_writes_every_bad_line():
  lines = _lines([_review("U1", "B1", 10), *BAD_LINES])
  chunk = processing.parse_review_lines(
      lines, "reviews.json", _category(), 0, processing.AsinIndex(["B1"]))
  assert processing.merge_user_events(chunk.shards.values()) == {
      "U1": [(10, "B1", 5.0, parse.text_digest("ok"))]}
  assert [(r.offset, r.reason, r.record) for r in chunk.rejects] == [
      (offset, reason, line) for (offset, _), (line, reason) in zip(
          lines[1:], BAD_LINES.items())]
  reasons = collections.Counter(BAD_LINES.values())
  assert chunk.counts == {
      "review_lines": 1 + len(BAD_LINES),
      **{f"reviews_rejected_{r}": n for r, n in reasons.items()}}


def test_parse_meta_lines_counts_and_writes_every_bad_line():
  bad = {"{[1]: 2}": "malformed_line",
         "{'asin': 'B2', 'tags': {[1]}}": "malformed_line",
         '{"asin": ' + "[" * 100000 + "]" * 100000 + "}": "malformed_line",
         '{"asin": "B\\ud800"}': "invalid_encoding",
         '{"asin": "B3", "title": "\\udc00"}': "invalid_encoding",
         # Would widen every entry of the index each worker holds.
         '{"asin": "' + "B" * 33 + '"}': "asin_too_long"}
  longest = "A" * parse.MAX_ASIN_LENGTH
  lines = _lines([{"asin": "B1"}, *bad, {"asin": longest}])
  chunk = processing.parse_meta_lines(lines, "meta.json")
  assert chunk.items == {"B1": (None, None, None, None),
                         longest: (None, None, None, None)}
  assert [(r.offset, r.reason, r.record) for r in chunk.rejects] == [
      (offset, reason, line) for (offset, _), (line, reason) in zip(
          lines[1:], bad.items())]
  assert chunk.counts == {"meta_lines": 8, "meta_rows": 2,
                          "meta_rejected_malformed_line": 3,
                          "meta_rejected_invalid_encoding": 2,
                          "meta_rejected_asin_too_long": 1}


def test_unsampled_users_are_kept_as_ids_without_events():
  users = [f"U{i}" for i in range(200)]
  lines = _lines([_review(u, "B1", 1) for u in users])
  chunk = processing.parse_review_lines(
      lines, "r", _category(fraction=0.3, shards=2), 3,
      processing.AsinIndex(["B1"]))
  merged = processing.merge_user_events(chunk.shards.values())
  assert sorted(merged) == sorted(users)
  sampled = {u for u in users if sequences.sampled(u, "Games", 0.3, 3)}
  assert {u for u, events in merged.items() if events} == sampled
  assert chunk.counts["reviews_of_unsampled_users"] == 200 - len(sampled)


META = {f"B{i}": (f"Item {i}", "Games", "Acme", f"${i}.00") for i in range(9)}


def _user_events(rows):
  users = {}
  for user, asin, t, text in rows:
    users.setdefault(user, []).append(
        (t, asin, 5.0, parse.text_digest(text)))
  return users


def _decode(serialized):
  features = tf.train.Example.FromString(serialized).features.feature
  return ([v.decode() for v in features["item_ids"].bytes_list.value],
          [v.decode() for v in features["item_texts"].bytes_list.value],
          list(features["timestamps"].int64_list.value))


def test_build_shard_orders_dedups_splits_and_templates():
  users = _user_events([
      ("U1", "B3", 30, "c"), ("U1", "B1", 10, "a"), ("U1", "B2", 20, "b"),
      ("U1", "B2", 20, "b"), ("U1", "B4", 40, "d"),
      ("U0", "B5", 5, "x"), ("U0", "B5", 5, "x"), ("U0", "B6", 6, "y"),
      ("U0", "B7", 7, "z"),
  ])
  users["U9"] = []  # Unsampled.
  result = processing.build_shard(users, _category("eval"), META)
  assert set(result.records) == {"train", "validation", "test"}
  assert len(result.records["test"]) == 1
  ids, texts, times = _decode(result.records["test"][0])
  assert ids == ["B1", "B2", "B3", "B4"]
  assert times == [10, 20, 30, 40]
  assert texts[0] == templates.item_text("Item 1", "Games", "Acme", "$1.00")
  # Each split is a prefix of the whole sequence in every field: no later
  # item text or time leaks into an earlier split.
  for split, length in (("validation", 3), ("train", 2)):
    assert _decode(result.records[split][0]) == (
        ids[:length], texts[:length], times[:length])
  # U0 has 3 events after dedup: below the 4 an eval user needs.
  assert [json.loads(r.record)["reviewerID"] for r in result.rejects] == ["U0"]
  assert result.rejects[0].reason == "too_few_events"
  assert result.item_ids == {"B1", "B2", "B3", "B4"}
  assert result.counts == {
      "users_unsampled": 1, "users_before_dedup": 2,
      "purchases_before_dedup": 9, "duplicate_purchases": 2,
      "users_rejected_too_few_events": 1, "purchases_of_rejected_users": 3,
      "users": 1, "purchases": 4}


def test_build_shard_writes_records_in_user_order_and_splits_even_if_empty():
  rows = [(f"U{i:03d}", f"B{j}", j, "t") for i in reversed(range(30))
          for j in range(3)]
  result = processing.build_shard(_user_events(rows),
                                  _category("validation"), META)
  users = [tf.train.Example.FromString(r).features.feature["user_id"]
           .bytes_list.value[0].decode() for r in result.records["train"]]
  assert users == sorted(f"U{i:03d}" for i in range(30))
  empty = processing.build_shard({}, _category("eval"), META)
  assert empty.records == {"train": [], "validation": [], "test": []}


def test_corpus_is_sorted_by_item_id():
  columns = processing.corpus_columns({"B2", "B1"}, META)
  assert columns["item_id"] == ["B1", "B2"]
  assert columns["text"][1] == templates.item_text("Item 2", "Games", "Acme",
                                                   "$2.00")
  assert columns["price"] == ["$1.00", "$2.00"]


def test_rejects_sort_by_source_offset_reason_record_into_json_lines():
  rejects = [("b.json", 5, "malformed_line", "x"), ("a.json", 90, "r", "y"),
             ("a.json", 7, "r", "z"), ("a.json", 7, "q", "z"),
             ("a.json", 7, "r", "w"), ("a.json", 7, "r", "z")]
  ordered = processing.sort_rejects(rejects)
  # Offsets as numbers: 7 before 90.
  assert ordered == [
      ("a.json", 7, "q", "z"), ("a.json", 7, "r", "w"),
      ("a.json", 7, "r", "z"), ("a.json", 7, "r", "z"),
      ("a.json", 90, "r", "y"), ("b.json", 5, "malformed_line", "x")]
  lines = processing.rejects_jsonl("Games", ordered).decode().splitlines()
  assert [json.loads(line)["offset"] for line in lines] == [7, 7, 7, 7, 90, 5]
  assert json.loads(lines[0]) == {"category": "Games", "source": "a.json",
                                  "offset": 7, "reason": "q", "record": "z"}
  # Rejects that tie are equal and write equal lines.
  assert lines[2] == lines[3]


def test_rejects_spread_over_buckets_by_all_their_fields():
  # Dropped users share source, offset and reason: the record spreads them.
  users = [processing.Reject("user_sequence", 0, "too_few_events",
                             json.dumps({"reviewerID": f"U{i}"}))
           for i in range(60)]
  buckets = processing.bucket_rejects(users + users[:5], 3)
  assert sorted(buckets) == [0, 1, 2]
  assert sorted(r for part in buckets.values() for r in part) == sorted(
      map(tuple, users + users[:5]))
  for bucket, part in buckets.items():
    # Plain tuples, and a reject always lands in the same bucket.
    assert all(type(r) is tuple for r in part)
    assert all(processing.reject_bucket(r, 3) == bucket for r in part)
  assert processing.bucket_rejects(users, 1).keys() == {0}


def test_write_rejects_streams_one_sorted_file_of_the_bucket(tmp_path):
  """More rejects than one write holds: the slices join into the file one
  sorted write of all of them gives."""
  rejects = [("s.json", (i * 7919) % 10007, "unknown_asin", f"line {i}")
             for i in range(10007)]
  category = _category(shards=3)
  written = outputs.write_rejects(str(tmp_path), category, 2, rejects)
  assert written == ("Games", "Games-00002-of-00003.jsonl", 10007)
  assert (tmp_path / "rejects" / written[1]).read_bytes() == (
      processing.rejects_jsonl("Games", sorted(rejects)))
  assert outputs.write_rejects(str(tmp_path), category, 0, []) == (
      "Games", "Games-00000-of-00003.jsonl", 0)
  assert not (tmp_path / "rejects" / "Games-00000-of-00003.jsonl").read_bytes()


def test_category_stats_match_hand_computation():
  counts = {"users": 4, "purchases": 10, "users_before_dedup": 5,
            "purchases_before_dedup": 16, "duplicate_purchases": 2,
            "reviews_rejected_malformed_line": 3,
            "meta_rejected_missing_asin": 0}
  result = stats.category_stats(counts, num_items=5, total_words=60,
                                vocabulary_size=20, user_fraction=0.5)
  assert result["num_users"] == 4
  assert result["pct_duplicate_purchases"] == pytest.approx(12.5)
  assert result["items_per_user"] == pytest.approx(2.5)
  assert result["purchases_per_item"] == pytest.approx(2.0)
  assert result["density"] == pytest.approx(0.5)
  assert result["words_per_item"] == pytest.approx(12.0)
  assert result["avg_word_freq"] == pytest.approx(3.0)
  assert result["dropped"]["reviews_rejected_malformed_line"] == 3
  assert "meta_rejected_missing_asin" not in result["dropped"]
  assert result["dropped"]["duplicate_purchases"] == 2


def test_corpus_words_are_the_lowercased_whitespace_tokens_of_the_texts():
  texts = [templates.item_text("Blue Widget blue", "Tools", None, "$3.00"),
           templates.item_text("Widget", "Tools", None, None)]
  total, vocabulary = stats.corpus_words(texts)
  # Title: Blue Widget blue. Category: Tools. Brand: Unknown. Price: $3.00.
  # Title: Widget. Category: Tools. Brand: Unknown. Price: Unknown.
  assert total == 10 + 8
  # Labels and punctuation stay: "widget" and "widget." are two types.
  assert vocabulary == {"title:", "blue", "widget", "blue.", "category:",
                        "tools.", "brand:", "unknown.", "price:", "$3.00.",
                        "widget."}


def test_item_texts_truncate_to_25_15_15_15_words_and_fill_unknown():
  long_title = " ".join(f"t{i}" for i in range(30))
  long_brand = " ".join(f"b{i}" for i in range(20))
  meta = {"B1": (long_title, None, long_brand, "$1.00")}
  columns = processing.corpus_columns(["B1"], meta)
  assert columns["title"] == [" ".join(f"t{i}" for i in range(25))]
  assert columns["brand"] == [" ".join(f"b{i}" for i in range(15))]
  assert columns["category"] == ["Unknown"]
  assert columns["text"] == [
      f"Title: {columns['title'][0]}. Category: Unknown. "
      f"Brand: {columns['brand'][0]}. Price: $1.00."]
  assert processing.item_text(meta["B1"]) == columns["text"][0]


def test_format_table_has_one_row_per_category():
  row = stats.category_stats({"users": 2, "purchases": 6}, 3, 36, 9, 1.0)
  table = stats.format_table({"Games": row, "Pet": row}).splitlines()
  assert table[0].split()[:3] == ["Category", "Users", "%Dup"]
  assert table[1].split()[:5] == ["Games", "2", "0.0%", "3", "6"]
  assert table[2].split()[0] == "Pet"
