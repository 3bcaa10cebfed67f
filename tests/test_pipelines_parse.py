"""Tests of raw-line parsing, meta cleaning and range reading."""

import gzip
import json

import pytest

from pipelines import parse
from pipelines import textio


def test_load_record_reads_strict_json_and_2014_python_literals():
  assert parse.load_record(b'{"asin": "B1", "price": 3.5}') == {
      "asin": "B1", "price": 3.5}
  literal = "{'asin': 'B2', 'categories': [['Beauty', 'Skin']], 'price': 4.0}"
  assert parse.load_record(literal) == {
      "asin": "B2", "categories": [["Beauty", "Skin"]], "price": 4.0}


@pytest.mark.parametrize("line,reason", [
    (b'{"asin": "B1", ', "malformed_line"),
    (b"not json at all", "malformed_line"),
    (b"[1, 2]", "not_an_object"),
    (b"__import__('os')", "malformed_line"),
])
def test_load_record_rejects_with_reason(line, reason):
  with pytest.raises(parse.RejectError) as e:
    parse.load_record(line)
  assert e.value.reason == reason


def test_review_event_reads_fields_and_digests_text():
  user, event = parse.review_event({
      "reviewerID": "U1", "asin": "B1", "overall": 4.0,
      "reviewText": "Fine.", "unixReviewTime": 1500000000})
  assert user == "U1"
  assert event == (1500000000, "B1", 4.0, parse.text_digest("Fine."))
  # Missing rating and text get fixed stand-ins instead of a reject.
  _, event = parse.review_event({"reviewerID": "U1", "asin": "B1",
                                 "unixReviewTime": "1500000000"})
  assert event == (1500000000, "B1", parse.MISSING_RATING,
                   parse.text_digest(""))


@pytest.mark.parametrize("record,reason", [
    ({"asin": "B1", "unixReviewTime": 1}, "missing_reviewerID"),
    ({"reviewerID": " ", "asin": "B1", "unixReviewTime": 1},
     "missing_reviewerID"),
    ({"reviewerID": "U", "unixReviewTime": 1}, "missing_asin"),
    ({"reviewerID": "U", "asin": "B1"}, "missing_unixReviewTime"),
    ({"reviewerID": "U", "asin": "B1", "unixReviewTime": "May 1"},
     "invalid_unixReviewTime"),
    ({"reviewerID": "U", "asin": "B1", "unixReviewTime": True},
     "invalid_unixReviewTime"),
    ({"reviewerID": "U", "asin": "B1", "unixReviewTime": 1,
      "overall": "great"}, "invalid_overall"),
])
def test_review_event_rejects_missing_or_invalid_fields(record, reason):
  with pytest.raises(parse.RejectError) as e:
    parse.review_event(record)
  assert e.value.reason == reason


def test_text_digest_tells_texts_apart():
  assert parse.text_digest("a") == parse.text_digest("a")
  assert parse.text_digest("a") != parse.text_digest("a ")


@pytest.mark.parametrize("raw,cleaned", [
    (" Maggiano&#39;s Gift Card", "Maggiano's Gift Card"),
    ("<b>Bold</b>  title\n with &amp; entity", "Bold title with & entity"),
    ("Vacuum &gt;&gt;&gt; THT", "Vacuum >>> THT"),
    ("&lt;not a tag&gt;", "<not a tag>"),
    ("\n\t   <div class=\"a-section a-spacing-none\"", None),
    (".a-box-inner{background-color:#fff}#x .y{color:gray}", None),
    ("var x = function() { return 1; }", None),
    ("   ", None),
    (None, None),
    (["a list"], None),
])
def test_clean_text(raw, cleaned):
  assert parse.clean_text(raw) == cleaned


@pytest.mark.parametrize("raw,price", [
    ("$11.22", "$11.22"),
    ("11.22", "$11.22"),
    ("$1,299.00", "$1,299.00"),
    ("$10.99 - $15.99", "$10.99 - $15.99"),
    (12.5, "$12.50"),
    (7, "$7.00"),
    (".a-box-inner{background-color:#fff}", None),
    ("<span class='a-color-price'>", None),
    ("Click here", None),
    ("", None),
    (True, None),
])
def test_normalize_price(raw, price):
  assert parse.normalize_price(raw) == price


def test_top_level_category_from_both_formats_and_fallback():
  assert parse.top_level_category(
      {"category": ["Clothing, Shoes &amp; Jewelry", "Women"]}) == (
          "Clothing, Shoes & Jewelry")
  assert parse.top_level_category(
      {"categories": [["Beauty", "Skin Care"], ["Health"]]}) == "Beauty"
  # Only a record without breadcrumbs falls back to main_cat.
  assert parse.top_level_category(
      {"category": [], "main_cat": "Gift Cards"}) == "Gift Cards"
  assert parse.top_level_category(
      {"category": ["Toys"], "main_cat": "Games"}) == "Toys"
  assert parse.top_level_category({}) is None


def test_item_meta_cleans_all_four_attributes():
  asin, meta = parse.item_meta({
      "asin": "B1", "title": "A &amp; B <i>Kit</i>", "brand": "Acme",
      "category": ["Tools", "Hand Tools"], "price": "$3.00",
      "main_cat": "<img src='x'>"})
  assert asin == "B1"
  assert meta == ("A & B Kit", "Tools", "Acme", "$3.00")
  with pytest.raises(parse.RejectError) as e:
    parse.item_meta({"title": "no asin"})
  assert e.value.reason == "missing_asin"


def test_prefer_meta_is_order_independent():
  rows = [("T", None, None, None), ("T", "C", None, "$1.00"),
          ("T", "C", "B", None), ("S", "C", "B", None)]
  # Most attributes present, then the lexicographically smallest row.
  winner = ("S", "C", "B", None)
  for first in rows:
    for second in rows:
      assert parse.prefer_meta(first, second) == parse.prefer_meta(
          second, first)
  result = rows[0]
  for row in rows[1:]:
    result = parse.prefer_meta(result, row)
  assert result == winner
  result = rows[-1]
  for row in reversed(rows[:-1]):
    result = parse.prefer_meta(row, result)
  assert result == winner


def _write(path, lines, compress):
  data = "".join(line + "\n" for line in lines).encode("utf-8")
  if compress:
    data = gzip.compress(data)
  path.write_bytes(data)


@pytest.mark.parametrize("compress", [False, True])
def test_ranges_cover_every_line_exactly_once(tmp_path, compress):
  lines = [json.dumps({"i": i, "pad": "x" * (i % 7)}) for i in range(200)]
  path = tmp_path / ("reviews.json.gz" if compress else "reviews.json")
  _write(path, lines, compress)
  ranges = textio.plan_ranges([str(path)], "test", range_bytes=97)
  assert (len(ranges) == 1) == compress
  read = [pair for r in ranges for pair in textio.read_lines(r)]
  assert [line.decode().rstrip("\n") for _, line in read] == lines
  # Offsets point at the line in the decompressed stream.
  text = "".join(line + "\n" for line in lines).encode()
  assert all(text[offset:offset + len(line)] == line for offset, line in read)


def test_range_starting_exactly_at_a_line_start_keeps_that_line(tmp_path):
  path = tmp_path / "r.json"
  path.write_bytes(b"aaaa\nbbbb\ncccc\n")
  parts = [list(textio.read_lines(textio.FileRange(str(path), s, e)))
           for s, e in ((0, 5), (5, 10), (10, 15))]
  assert parts == [[(0, b"aaaa\n")], [(5, b"bbbb\n")], [(10, b"cccc\n")]]


def test_plan_ranges_names_missing_and_empty_inputs(tmp_path):
  with pytest.raises(textio.InputError, match="no file matches .*nothing"):
    textio.plan_ranges([str(tmp_path / "nothing*.json")], "reviews of X")
  empty = tmp_path / "empty.json.gz"
  empty.write_bytes(gzip.compress(b"\n\n"))
  with pytest.raises(textio.InputError, match="empty.json.gz is empty"):
    textio.plan_ranges([str(empty)], "reviews of X")
