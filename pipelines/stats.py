"""Per-category statistics: the columns of the paper's Table 1 and drop counts.

Table 1 (paper section 4) reports, after deduplication: users, items, total
purchases, items/user, purchases/item, density = purchases / (users x items),
words/item, word vocabulary size and average word frequency; and, before
deduplication, the share of purchases that are consecutive exact duplicates.
Table 1 puts its user count under "Before Dedup"; the table printed here shows
|U| after deduplication and the role's minimum-events rule, the count behind
Items/User and the Stage I mixture rate, and `stats.json` also holds
`users_before_dedup`.

Words are the whitespace tokens of the templated item text, the four labels
(`Title:` ...) included; this matched the paper's Words/Item on real data.
The word vocabulary counts the same words: "the lowercase natural word types
over the item corpus spanning the four attributes used" (section 4.1) are the
distinct lowercased whitespace tokens of the item texts, punctuation left
attached ("Title: Neiko 6-Inch Caliper." gives "title:", "neiko", "6-inch",
"caliper."). Average word frequency is total words / vocabulary size, the
arithmetic behind Table 1's column.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping


def corpus_words(texts: Iterable[str]) -> tuple[int, set[str]]:
  """(whitespace words of the item texts, their lowercased types)."""
  total = 0
  vocabulary: set[str] = set()
  for text in texts:
    words = text.lower().split()
    total += len(words)
    vocabulary.update(words)
  return total, vocabulary


def _ratio(numerator: float, denominator: float) -> float:
  return numerator / denominator if denominator else 0.0


def _dropped(counts: Mapping[str, int]) -> dict[str, int]:
  """Everything not carried into the output, by reason."""
  dropped = {key: value for key, value in counts.items()
             if "_rejected_" in key and value}
  dropped["reviews_of_unsampled_users"] = counts.get(
      "reviews_of_unsampled_users", 0)
  dropped["duplicate_purchases"] = counts.get("duplicate_purchases", 0)
  dropped["purchases_of_rejected_users"] = counts.get(
      "purchases_of_rejected_users", 0)
  dropped["meta_duplicate_rows"] = counts.get("meta_duplicate_rows", 0)
  return dict(sorted(dropped.items()))


def category_stats(counts: Mapping[str, int], num_items: int,
                   total_words: int, vocabulary_size: int,
                   user_fraction: float) -> dict[str, Any]:
  """The statistics file of one category (`num_users` is |U|)."""
  users = counts.get("users", 0)
  purchases = counts.get("purchases", 0)
  return {
      "num_users": users,
      "user_fraction": user_fraction,
      "users_before_dedup": counts.get("users_before_dedup", 0),
      "pct_duplicate_purchases": 100.0 * _ratio(
          counts.get("duplicate_purchases", 0),
          counts.get("purchases_before_dedup", 0)),
      "num_items": num_items,
      "total_purchases": purchases,
      "items_per_user": _ratio(purchases, users),
      "purchases_per_item": _ratio(purchases, num_items),
      "density": _ratio(purchases, users * num_items),
      "words_per_item": _ratio(total_words, num_items),
      "word_vocab_size": vocabulary_size,
      "avg_word_freq": _ratio(total_words, vocabulary_size),
      "dropped": _dropped(counts),
      "counts": dict(sorted(counts.items())),
  }


TABLE_COLUMNS = (
    ("num_users", "Users", "{:d}"),
    ("pct_duplicate_purchases", "%Dup", "{:.1f}%"),
    ("num_items", "Items", "{:d}"),
    ("total_purchases", "Purchases", "{:d}"),
    ("items_per_user", "Items/User", "{:.2f}"),
    ("purchases_per_item", "Purch/Item", "{:.2f}"),
    ("density", "Density", "{:.5f}"),
    ("words_per_item", "Words/Item", "{:.2f}"),
    ("word_vocab_size", "Vocab", "{:d}"),
    ("avg_word_freq", "AvgWordFreq", "{:.1f}"),
)


def format_table(stats_by_category: Mapping[str, Mapping[str, Any]]) -> str:
  """A plain-text Table 1 of the run, one row per category."""
  header = ["Category"] + [title for _, title, _ in TABLE_COLUMNS]
  rows = [header]
  for name, stats in stats_by_category.items():
    rows.append([name] + [fmt.format(stats[key])
                          for key, _, fmt in TABLE_COLUMNS])
  widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
  lines = []
  for row in rows:
    cells = [cell.rjust(width) if i else cell.ljust(width)
             for i, (cell, width) in enumerate(zip(row, widths))]
    lines.append("  ".join(cells))
  return "\n".join(lines)
