"""Every text format of the system, in one place (paper section 3.2).

Preprocessing writes item texts with `item_text`; training and the model's
generation build prompts with `user_prompt`; the evaluator's hierarchical
matcher (paper section 6, Table 7) reads generated texts back with
`parse_item_text`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

UNKNOWN = "Unknown"

# Word limits of the four attributes (paper section 4, "Dataset").
TITLE_WORDS = 25
CATEGORY_WORDS = 15
BRAND_WORDS = 15
PRICE_WORDS = 15

USER_PREFIX = "This is the summary of a user's purchase history."
FIRST_ITEM_PREFIX = "The first item bought is as follows."
NEXT_ITEM_PREFIX = "\nThe next item bought is as follows."


@dataclasses.dataclass(frozen=True)
class ItemAttributes:
  """The four attributes of an item, in template order."""

  title: str = UNKNOWN
  category: str = UNKNOWN
  brand: str = UNKNOWN
  price: str = UNKNOWN

  def as_tuple(self) -> tuple[str, str, str, str]:
    return (self.title, self.category, self.brand, self.price)


def truncate_words(text: str | None, max_words: int) -> str:
  """Collapses whitespace and keeps the first `max_words` words, or Unknown."""
  words = (text or "").split()
  if not words:
    return UNKNOWN
  return " ".join(words[:max_words])


def item_attributes(title: str | None, category: str | None,
                    brand: str | None, price: str | None) -> ItemAttributes:
  """Truncates raw attribute values to 25/15/15/15 words (paper section 4)."""
  return ItemAttributes(
      title=truncate_words(title, TITLE_WORDS),
      category=truncate_words(category, CATEGORY_WORDS),
      brand=truncate_words(brand, BRAND_WORDS),
      price=truncate_words(price, PRICE_WORDS),
  )


def format_item(attributes: ItemAttributes) -> str:
  """`Title: {title}. Category: {category}. Brand: {brand}. Price: {price}.`"""
  return (f"Title: {attributes.title}. Category: {attributes.category}. "
          f"Brand: {attributes.brand}. Price: {attributes.price}.")


def item_text(title: str | None, category: str | None, brand: str | None,
              price: str | None) -> str:
  """The flattened, truncated text of one item (paper section 3.2)."""
  return format_item(item_attributes(title, category, brand, price))


def item_prefix(position: int) -> str:
  """The per-item prefix; "\\n" is not applied on the first item."""
  return FIRST_ITEM_PREFIX if position == 0 else NEXT_ITEM_PREFIX


def user_prompt(history_item_texts: Sequence[str]) -> str:
  """The user prompt of section 3.2, ending with the trailing next-item prefix.

  The target item's text is what the model must continue with, after one space.
  """
  if not history_item_texts:
    raise ValueError("A user prompt needs at least one history item.")
  items = "".join(f"{item_prefix(position)} {text}"
                  for position, text in enumerate(history_item_texts))
  return f"{USER_PREFIX} {items}{NEXT_ITEM_PREFIX}"


_ITEM_PATTERN = re.compile(
    r"^\s*Title: (?P<title>.*?)\. Category: (?P<category>.*?)\. "
    r"Brand: (?P<brand>.*?)\. Price: (?P<price>.*?)\.\s*$", re.DOTALL)


def parse_item_text(text: str) -> ItemAttributes | None:
  """Reads a (generated) item text back into its four attributes.

  Returns None when the text does not follow the template, which the
  hierarchical matcher counts as a non-match (paper section 6, Table 7).
  """
  match = _ITEM_PATTERN.match(text)
  if match is None:
    return None
  return ItemAttributes(**{k: v.strip() for k, v in match.groupdict().items()})
