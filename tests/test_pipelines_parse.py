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
    # Too deep for json (RecursionError), Python literal keys that are lists.
    pytest.param(b"[" * 100000 + b"]" * 100000, "malformed_line",
                 id="deep-list"),
    pytest.param(b'{"asin": ' + b"[" * 100000 + b"]" * 100000 + b"}",
                 "malformed_line", id="deep-value"),
    (b"{[1]: 2}", "malformed_line"),
    (b"{'asin': 'B1', 'tags': {[1]}}", "malformed_line"),
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


@pytest.mark.parametrize("field,value,reason", [
    ("reviewerID", "U\ud800", "invalid_encoding"),
    ("asin", "B\udfff1", "invalid_encoding"),
    ("reviewText", "fine \ud800", "invalid_encoding"),
    # Digits int() refuses, and values int64 cannot hold.
    ("unixReviewTime", "\u00b2", "invalid_unixReviewTime"),
    pytest.param("unixReviewTime", "1" * 5000, "invalid_unixReviewTime",
                 id="unixReviewTime-5000-digits"),
    ("unixReviewTime", 10**20, "invalid_unixReviewTime"),
    ("unixReviewTime", 2**64 + 1, "invalid_unixReviewTime"),
    ("unixReviewTime", 1e20, "invalid_unixReviewTime"),
    pytest.param("overall", 10**400, "invalid_overall", id="overall-10**400"),
    # JSON's 1e999, Infinity and NaN: no finite rating.
    ("overall", float("inf"), "invalid_overall"),
    ("overall", float("-inf"), "invalid_overall"),
    ("overall", float("nan"), "invalid_overall"),
    ("overall", "1e999", "invalid_overall"),
])
@pytest.mark.parametrize("complete", [True, False])
def test_review_event_rejects_values_it_cannot_store(field, value, reason,
                                                     complete):
  # A complete record takes the fast path, one without `overall` the checked.
  record = {"reviewerID": "U", "asin": "B1", "unixReviewTime": 1,
            "reviewText": "ok", "overall": 5.0}
  if not complete:
    del record["overall"]
  record[field] = value
  with pytest.raises(parse.RejectError) as e:
    parse.review_event(parse.load_record(json.dumps(record)))
  assert e.value.reason == reason


def test_review_event_keeps_exactly_the_timestamps_int64_holds():
  kept = {0: 0, 2**63 - 1: 2**63 - 1, " 0001500000000 ": 1500000000,
          str(2**63 - 1): 2**63 - 1, 1.5e9: 1500000000}
  for value in (*kept, -1, 2**63, str(2**63), float(2**63)):
    # With `overall` the fast path reads the record, without it the checked.
    for rating in ({}, {"overall": 5.0}):
      record = {"reviewerID": "U", "asin": "B1", "unixReviewTime": value,
                **rating}
      if value in kept:
        assert parse.review_event(record)[1][0] == kept[value]
      else:
        with pytest.raises(parse.RejectError, match="invalid_unixReviewTime"):
          parse.review_event(record)


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
    pytest.param(10**400, None, id="10**400"),
    (float("inf"), None),
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


@pytest.mark.parametrize("line", [
    '{"asin": "B\\ud800"}',
    '{"asin": "B1", "title": "Kit \\udc00"}',
    '{"asin": "B1", "brand": "\\ud800"}',
    '{"asin": "B1", "category": ["\\ud800", "Tools"]}',
    "{'asin': 'B1', 'categories': [['\\ud800']]}",
])
def test_item_meta_rejects_lone_surrogates(line):
  with pytest.raises(parse.RejectError) as e:
    parse.item_meta(parse.load_record(line.encode()))
  assert e.value.reason == "invalid_encoding"


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


def test_plan_ranges_names_unreadable_inputs(tmp_path):
  data = gzip.compress(b'{"a": 1}\n' * 1000)
  crc = bytearray(data)
  crc[-6] ^= 0xFF  # The CRC-32 of the gzip trailer.
  files = {"plain.json.gz": b'{"a": 1}\n', "cut.json.gz": data[:len(data) // 2],
           "crc.json.gz": bytes(crc)}
  for name, content in files.items():
    (tmp_path / name).write_bytes(content)
  (tmp_path / "folder.json").mkdir()
  for name in [*files, "folder.json"]:
    with pytest.raises(textio.InputError,
                       match=f"cannot read input file .*{name} "
                             r"\(reviews of X\): \S"):
      textio.plan_ranges([str(tmp_path / name)], "reviews of X")


def test_plan_ranges_refuses_gzip_data_in_a_file_not_named_gz(tmp_path):
  path = tmp_path / "reviews.json"
  _write(path, ['{"a": 1}'] * 10, compress=True)
  with pytest.raises(textio.InputError) as e:
    textio.plan_ranges([str(tmp_path / "*.json")], "reviews of X")
  assert str(e.value) == (f"input file {path} holds gzip data but its name "
                          "does not end in .gz (reviews of X); rename it to "
                          "end in .gz")
  path.rename(tmp_path / "reviews.json.gz")
  [file_range] = textio.plan_ranges([str(tmp_path / "*.json.gz")], "x")
  assert len(list(textio.read_lines(file_range))) == 10


def _truncated_gzip(path, num_lines):
  """A gzip file cut in half whose first MiB still reads: only reading it
  further fails."""
  lines = [json.dumps({"i": i, "x": f"{i * 2654435761 % 2**32:08x}" * 4})
           for i in range(num_lines)]
  _write(path, lines, compress=True)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  return lines


def test_read_lines_names_the_file_and_offset_of_a_truncated_gzip(tmp_path):
  path = tmp_path / "reviews.json.gz"
  _truncated_gzip(path, 100000)
  [file_range] = textio.plan_ranges([str(path)], "reviews of X")
  read = []
  with pytest.raises(textio.InputError) as e:
    read.extend(textio.read_lines(file_range))
  offset = sum(len(line) for _, line in read)
  assert read and str(e.value).startswith(
      f"cannot read input file {path} past byte {offset} of the decompressed "
      "data: Compressed file ended")


@pytest.mark.parametrize("compress", [False, True])
def test_plan_ranges_reads_past_leading_blank_bytes(tmp_path, compress):
  path = tmp_path / ("r.json.gz" if compress else "r.json")
  _write(path, [" " * 5000, "\t" * 5000, "", '{"a": 1}'], compress)
  ranges = textio.plan_ranges([str(path)], "reviews of X")
  lines = [line for r in ranges for _, line in textio.read_lines(r)]
  assert lines[-1] == b'{"a": 1}\n'
  blank = tmp_path / ("b.json.gz" if compress else "b.json")
  _write(blank, [" " * 5000] * 3, compress)
  with pytest.raises(textio.InputError, match="is empty"):
    textio.plan_ranges([str(blank)], "reviews of X")


def test_plan_ranges_reads_a_file_several_patterns_match_once(tmp_path):
  for name in ("a.json", "b.json"):
    _write(tmp_path / name, ['{"a": 1}'] * 50, compress=False)
  (tmp_path / "link.json").symlink_to(tmp_path / "a.json")
  patterns = [str(tmp_path / "a.json"), str(tmp_path / "*.json"),
              str(tmp_path / "." / "b.json")]
  ranges = textio.plan_ranges(patterns, "reviews of X", range_bytes=100)
  assert sorted({r.path for r in ranges}) == [str(tmp_path / "a.json"),
                                              str(tmp_path / "b.json")]
  assert len(ranges) == len(set(ranges)) == 2 * len(
      textio.plan_ranges([str(tmp_path / "a.json")], "x", range_bytes=100))
