"""Quasi-round-robin retrieval (paper Algorithm 1) and hierarchical match.

Algorithm 1: sort the generated samples by log-prob (descending), remove
duplicates, keep the top N_preds, score each kept text against every corpus
item, min-max scale each text's scores to [0, 1], multiply them by
exp(eps * logprob), max-pool over the texts and rank the items. Matrices here
hold one row per kept text (the paper's (N_c, N_preds) matrix, transposed).

Hierarchical match (paper section 6, Table 7) replaces BM25 with exact matches
of the parsed attributes: all four, else title, category and brand, else title
and category, else the title alone. Its 0/1 rows go through the same scaling,
modulation and max-pooling.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Iterator, Protocol, Sequence

import numpy as np

from pipelines import templates

# Paper section 4, "Implementation Details".
NUM_PREDS = 10
EPSILON = 1.0 / 5000


class Scorer(Protocol):
  """Scores groups of texts against every corpus item."""

  num_docs: int

  def score_groups(self, groups: Sequence[Sequence[str]]
                   ) -> Iterator[np.ndarray]:
    """For each group, a float matrix [len(group), num_docs]."""


@dataclasses.dataclass(frozen=True)
class Predictions:
  """The kept generated texts, best log-prob first (Algorithm 1, lines 5-11)."""

  texts: tuple[str, ...]
  logprobs: tuple[float, ...]


def select_predictions(samples: Sequence[tuple[str, float]],
                       num_preds: int = NUM_PREDS) -> Predictions:
  """Sorts by log-prob (ties: generation order), dedupes, keeps `num_preds`."""
  for text, logprob in samples:
    if math.isnan(logprob):
      raise ValueError(f"Sample {text!r} has a NaN log-prob.")
  order = sorted(range(len(samples)), key=lambda i: (-samples[i][1], i))
  texts, logprobs, seen = [], [], set()
  for i in order:
    text, logprob = samples[i]
    if text in seen:
      continue
    seen.add(text)
    texts.append(text)
    logprobs.append(float(logprob))
    if len(texts) == num_preds:
      break
  return Predictions(tuple(texts), tuple(logprobs))


def min_max_scale(scores: np.ndarray,
                  multipliers: np.ndarray | None = None) -> np.ndarray:
  """Scales each row to [0, 1], then times its multiplier (float64).

  A constant row (an empty text, or one whose terms no corpus item holds)
  ranks nothing above anything else, so it becomes all 0 and contributes
  nothing to the pool. Equal inputs give equal outputs, so ties survive.
  The arithmetic is float64: in float32, log-probs a few 1e-4 apart get the
  same exp(epsilon * logprob) and nearby distinct scores can round together,
  which would add ties that neither the texts nor BM25 made.
  """
  scaled = np.array(scores, np.float64)
  low = scaled.min(axis=1)
  spread = scaled.max(axis=1) - low
  scaled -= low[:, None]
  # The best item of a row scales to exactly 1; constant rows stay 0.
  scaled /= np.where(spread > 0, spread, 1.0)[:, None]
  if multipliers is not None:
    scaled *= np.asarray(multipliers, np.float64)[:, None]
  return scaled


def fuse(match_scores: np.ndarray, logprobs: Sequence[float],
         epsilon: float = EPSILON) -> np.ndarray:
  """Candidate scores [num_docs] from [num_texts, num_docs] match scores.

  Algorithm 1, lines 12-19: scale each row, modulate it by
  exp(epsilon * logprob), max-pool over rows. No rows gives all zeros.
  """
  match_scores = np.asarray(match_scores)
  if match_scores.ndim != 2 or match_scores.shape[0] != len(logprobs):
    raise ValueError(f"Expected [{len(logprobs)}, num_docs] match scores, got "
                     f"{match_scores.shape}.")
  if match_scores.shape[0] == 0:
    return np.zeros(match_scores.shape[1], np.float64)
  modulation = np.exp(epsilon * np.asarray(logprobs, np.float64))
  return min_max_scale(match_scores, modulation).max(axis=0)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
  """Indices of the `k` best scores; ties broken by lower index first."""
  k = min(k, scores.shape[0])
  if k <= 0:
    return np.zeros(0, np.int64)
  threshold = scores[np.argpartition(scores, scores.shape[0] - k)[-k:]].min()
  above = np.flatnonzero(scores > threshold)
  # The lowest indices of the items tied at the threshold fill the rest
  # (all of the corpus may tie there, e.g. at 0 under exact matching).
  tied = np.flatnonzero(scores == threshold)[:k - above.shape[0]]
  candidates = np.concatenate([above, tied])
  order = np.lexsort((candidates, -scores[candidates]))
  return candidates[order]


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
  """[rows, min(k, columns)] indices of each row's `k` best, as `top_k`.

  Sorts only the candidates of `_top_candidates`: a few per row, not the
  whole row (all of it when the row ties).
  """
  num_rows, num_columns = scores.shape
  k = max(min(k, num_columns), 0)
  if k == 0 or num_rows == 0:
    return np.zeros((num_rows, k), np.int64)
  rows, columns, values = _top_candidates(scores, k)
  order = np.lexsort((columns, -values, rows))
  counts = np.bincount(rows, minlength=num_rows)
  rank = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
  return columns[order][rank < k].reshape(num_rows, k)


def _top_candidates(scores: np.ndarray, k: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(row, column, score) of every score at or above its row's floor.

  The columns fall in at least k strided groups (column mod the number of
  groups); the floor, the k-th best group maximum, is at most the row's k-th
  best score, and only the groups that reach it are read again.
  """
  num_rows, num_columns = scores.shape
  num_groups = max(k, num_columns // _GROUP_SIZE)
  full = num_columns // num_groups * num_groups
  # [rows, steps, groups]: column step * num_groups + group; then the tail.
  grouped = scores[:, :full].reshape(num_rows, -1, num_groups)
  tail = scores[:, full:]
  maxima = grouped.max(axis=1)
  np.maximum(maxima[:, :tail.shape[1]], tail, out=maxima[:, :tail.shape[1]])
  floor = np.partition(maxima, num_groups - k, axis=1)[:, num_groups - k]
  rows, groups = np.nonzero(maxima >= floor[:, None])
  values = grouped[rows, :, groups]  # [candidate groups, steps]
  kept = values >= floor[rows, None]
  hits, steps = np.nonzero(kept)
  tail_rows, tail_columns = np.nonzero(tail >= floor[:, None])
  return (np.concatenate([rows[hits], tail_rows]),
          np.concatenate([groups[hits] + num_groups * steps,
                          tail_columns + full]),
          np.concatenate([values[kept], tail[tail_rows, tail_columns]]))


# Columns per group of `top_k_rows`: its first pass reads every score, the
# sort sees about k groups' worth.
_GROUP_SIZE = 16


# Attribute prefixes tried in turn (paper section 6): 4, 3, 2, then 1.
MATCH_LEVELS = (4, 3, 2, 1)


@dataclasses.dataclass
class MatchCounts:
  """Counts of generated outputs for Table 7's first columns."""

  outputs: int = 0
  format_errors: int = 0
  all_four: int = 0
  title_only: int = 0

  def shares(self) -> dict[str, float]:
    denominator = max(self.outputs, 1)
    return {"Format Error": self.format_errors / denominator,
            "All Four Attributes": self.all_four / denominator,
            "Title Only": self.title_only / denominator}


class HierarchicalMatcher:
  """Exact attribute matching of generated texts against the corpus."""

  def __init__(self, corpus_texts: Sequence[str]):
    self.num_docs = len(corpus_texts)
    self._items: dict[int, dict[tuple[str, ...], np.ndarray]] = {}
    grouped = {level: collections.defaultdict(list) for level in MATCH_LEVELS}
    for row, text in enumerate(corpus_texts):
      attributes = templates.parse_item_text(text)
      if attributes is None:
        continue
      for level in MATCH_LEVELS:
        grouped[level][attributes.as_tuple()[:level]].append(row)
    for level, groups in grouped.items():
      self._items[level] = {key: np.array(rows, np.int64)
                            for key, rows in groups.items()}

  def match(self, text: str) -> tuple[int, np.ndarray]:
    """(attributes matched, corpus rows); level 0 and no rows when none.

    Returns level -1 when the text does not follow the item template.
    """
    attributes = templates.parse_item_text(text)
    if attributes is None:
      return -1, np.zeros(0, np.int64)
    for level in MATCH_LEVELS:
      rows = self._items[level].get(attributes.as_tuple()[:level])
      if rows is not None:
        return level, rows
    return 0, np.zeros(0, np.int64)

  def count(self, texts: Sequence[str]) -> MatchCounts:
    """Table 7's counts over `texts`: format errors, 4-attribute, title hits."""
    counts = MatchCounts(outputs=len(texts))
    for text in texts:
      level, _ = self.match(text)
      counts.format_errors += level == -1
      counts.all_four += level == 4
      counts.title_only += level >= 1
    return counts

  def score(self, texts: Sequence[str]) -> np.ndarray:
    """[len(texts), num_docs]: 1 on each text's matched items, else 0."""
    scores = np.zeros((len(texts), self.num_docs), np.float32)
    for row, text in enumerate(texts):
      scores[row, self.match(text)[1]] = 1.0
    return scores

  def score_groups(self, groups: Sequence[Sequence[str]]
                   ) -> Iterator[np.ndarray]:
    for texts in groups:
      yield self.score(texts)
