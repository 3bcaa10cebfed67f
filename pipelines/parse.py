"""Pure functions that turn raw Amazon review and meta lines into records.

Amazon Review 2018 (Ni et al.) writes strict JSON lines; the 2014 release writes
meta as Python dict literals. Both are read here (paper section 4, "Dataset").
Every function raises `RejectError` with a short reason for input it cannot use;
callers count and write those records, they never drop them silently.
"""

from __future__ import annotations

import ast
import hashlib
import html
import json
import math
import re
from typing import Any

# One review event: (unixReviewTime, asin, rating, review text digest). The
# natural tuple order is chronological with a full deterministic tie-break, and
# tuple equality is the paper's strict duplicate definition (section 4, "User
# Sequence Deduplication"): same item, review text, rating and timestamp.
Event = tuple[int, str, float, bytes]

# Rating stored for a review without `overall`, below every real rating (1-5).
MISSING_RATING = -1.0

# Timestamps are written as int64: the ones outside [0, 2**63) are rejected.
_TIMESTAMP_END = 1 << 63
# Longest asin kept, in characters (real ones have 10): the asin index every
# worker holds (`processing.AsinIndex`) stores each asin's UTF-8 bytes as wide
# as the longest one's.
MAX_ASIN_LENGTH = 32

# Cleaned meta attributes (title, category, brand, price); None when missing.
ItemMeta = tuple[str | None, str | None, str | None, str | None]

_TAG = re.compile(r"<[^<>]*>|<[^<>]*$")
_SPACE = re.compile(r"\s+")
# A brace block with a `property:` inside, or script keywords: CSS or JS code
# that real meta holds in place of titles and prices.
_CODE = re.compile(r"\{[^{}]*:[^{}]*\}|\bfunction\s*\(|\bvar\s+\w+\s*=")
_PRICE_NUMBER = r"\$?\s*\d[\d,]*(?:\.\d+)?"
_PRICE = re.compile(rf"^({_PRICE_NUMBER})(?:\s*-\s*({_PRICE_NUMBER}))?$")


class RejectError(ValueError):
  """Raised for a record that cannot be used; `reason` names why."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


def load_record(line: bytes | str) -> dict[str, Any]:
  """Parses one line: strict JSON first, then a Python dict literal (2014)."""
  try:
    # Decoding first spares json its encoding detection on bytes.
    record = json.loads(line.decode("utf-8") if isinstance(line, bytes)
                        else line)
  except RecursionError:  # Nested too deeply for either parser.
    raise RejectError("malformed_line") from None
  except ValueError:
    try:
      text = line.decode("utf-8") if isinstance(line, bytes) else line
      record = ast.literal_eval(text.strip())
    # TypeError: a list or dict as a dict key or set member, `{[1]: 2}`.
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
      raise RejectError("malformed_line") from None
  if not isinstance(record, dict):
    raise RejectError("not_an_object")
  return record


def _encodable(text: str) -> bool:
  """Whether `text` has a UTF-8 encoding: no lone surrogate (JSON "\\ud800")."""
  if text.isascii():
    return True
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def _required_string(record: dict[str, Any], field: str) -> str:
  value = record.get(field)
  if not isinstance(value, str) or not value.strip():
    raise RejectError(f"missing_{field}")
  if not _encodable(value):
    raise RejectError("invalid_encoding")
  return value


def _asin(record: dict[str, Any]) -> str:
  asin = _required_string(record, "asin")
  if len(asin) > MAX_ASIN_LENGTH:
    raise RejectError("asin_too_long")
  return asin


def _timestamp(record: dict[str, Any]) -> int:
  value = record.get("unixReviewTime")
  if value is None or value == "":
    raise RejectError("missing_unixReviewTime")
  if isinstance(value, float) and value.is_integer():
    value = int(value)
  elif isinstance(value, str):
    digits = value.strip()
    # isdigit() alone admits digits int() refuses, such as "²"; a timestamp
    # in range has at most 19 of them (leading zeros aside).
    if (digits.isascii() and digits.isdigit() and
        len(digits.lstrip("0")) <= 19):
      value = int(digits)
  if (isinstance(value, int) and not isinstance(value, bool) and
      0 <= value < _TIMESTAMP_END):
    return value
  raise RejectError("invalid_unixReviewTime")


def _rating(record: dict[str, Any]) -> float:
  value = record.get("overall")
  if value is None or value == "":
    return MISSING_RATING
  if isinstance(value, bool):
    raise RejectError("invalid_overall")
  try:
    rating = float(value)
  except (TypeError, ValueError, OverflowError):
    raise RejectError("invalid_overall") from None
  # NaN breaks ordering and equality; no rating is infinite ("1e999").
  if not math.isfinite(rating):
    raise RejectError("invalid_overall")
  return rating


def text_digest(text: str) -> bytes:
  """A 128-bit digest of a review text, compared instead of the text."""
  return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def review_event(record: dict[str, Any]) -> tuple[str, Event]:
  """Reads (reviewerID, event) from one review record.

  Strings that UTF-8 cannot encode (a lone surrogate) are `invalid_encoding`,
  timestamps outside int64's [0, 2**63) `invalid_unixReviewTime`, a rating
  that is not a finite number `invalid_overall`.
  """
  user_id = record.get("reviewerID")
  asin = record.get("asin")
  timestamp = record.get("unixReviewTime")
  rating = record.get("overall")
  text = record.get("reviewText")
  if not (type(user_id) is str and user_id.isascii() and user_id and
          not user_id.isspace() and
          type(asin) is str and asin.isascii() and asin and
          not asin.isspace() and len(asin) <= MAX_ASIN_LENGTH and
          type(timestamp) is int and 0 <= timestamp < _TIMESTAMP_END and
          type(rating) is float and math.isfinite(rating)):
    # Anything but the common well-formed case takes the checked path.
    user_id = _required_string(record, "reviewerID")
    asin = _asin(record)
    timestamp = _timestamp(record)
    rating = _rating(record)
  if not isinstance(text, str):
    text = ""
  try:
    digest = text_digest(text)
  except UnicodeEncodeError:
    raise RejectError("invalid_encoding") from None
  return user_id, (timestamp, asin, rating, digest)


def clean_text(value: Any) -> str | None:
  """Strips HTML tags and entities and collapses whitespace.

  Returns None for a missing value or one that is markup or code (CSS, script)
  rather than text; real meta holds both in titles and prices.
  """
  if not isinstance(value, str):
    return None
  if _CODE.search(value):
    return None
  text = html.unescape(_TAG.sub(" ", value))
  text = _SPACE.sub(" ", text).strip()
  return text or None


def normalize_price(value: Any) -> str | None:
  """`$11.22` for a single price, `$10.00 - $15.00` kept as text for a range.

  `$11.22` is the price format of the paper's example item (section 3.2).

  Numbers (2014 meta) become dollar amounts with two decimals; anything that is
  not a price (CSS, markup, words) is missing.
  """
  if isinstance(value, bool):
    return None
  if isinstance(value, (int, float)):
    try:
      amount = float(value)  # What the format below does with an int too.
    except OverflowError:
      return None
    return f"${amount:,.2f}" if 0 <= amount < math.inf else None
  text = clean_text(value)
  if text is None:
    return None
  match = _PRICE.match(text)
  if match is None:
    return None
  amounts = ["$" + part.lstrip("$").strip() for part in match.groups() if part]
  return " - ".join(amounts)


def top_level_category(record: dict[str, Any]) -> str | None:
  """The first breadcrumb of `category` (2018) or `categories` (2014).

  The paper's example item (section 3.2) shows the top-level category.

  Falls back to `main_cat` only when the record has no breadcrumb at all.
  """
  breadcrumbs = record.get("category")
  if breadcrumbs is None:
    paths = record.get("categories")
    if isinstance(paths, list) and paths and isinstance(paths[0], list):
      breadcrumbs = paths[0]
  if isinstance(breadcrumbs, list):
    for crumb in breadcrumbs[:1]:
      cleaned = clean_text(crumb)
      if cleaned:
        return cleaned
  elif isinstance(breadcrumbs, str):
    return clean_text(breadcrumbs)
  return clean_text(record.get("main_cat"))


def item_meta(record: dict[str, Any]) -> tuple[str, ItemMeta]:
  """Reads (asin, cleaned title/category/brand/price) from one meta record.

  A kept string that UTF-8 cannot encode rejects the row (`invalid_encoding`).
  """
  asin = _asin(record)
  meta = (clean_text(record.get("title")), top_level_category(record),
          clean_text(record.get("brand")), normalize_price(record.get("price")))
  if not all(value is None or _encodable(value) for value in meta):
    raise RejectError("invalid_encoding")
  return asin, meta


def _meta_rank(meta: ItemMeta) -> tuple[int, tuple[str, ...]]:
  present = sum(value is not None for value in meta)
  return (-present, tuple(value or "" for value in meta))


def prefer_meta(first: ItemMeta, second: ItemMeta) -> ItemMeta:
  """Picks one of two rows of the same asin, whatever order they come in.

  The row with more attributes present wins, then the lexicographically
  smaller one; the choice is commutative and associative, so collapsing
  repeated rows gives the same result on any runner and any bundle split.
  """
  return min(first, second, key=_meta_rank)
