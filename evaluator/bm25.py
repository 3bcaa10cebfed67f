"""Exact full-corpus BM25, vectorized, equal to Lucene's (paper section 3.5).

Lucene 9's `BM25Similarity` scores a query term t in document d as

  w_t - w_t / (1 + f_td * n(d)),   w_t = boost_t * idf_t,
  idf_t = ln(1 + (N - df_t + 0.5) / (df_t + 0.5)),
  n(d)  = 1 / (k1 * ((1 - b) + b * L(d) / avgdl)),

in float32, summed over the query's terms in a double and rounded to float32,
where N counts documents with at least one token, avgdl = total tokens / N, a
term repeated in the query is one clause with boost = its count, and L(d) is
the document length after Lucene's lossy one-byte encoding
(`SmallFloat.intToByte4`, then `byte4ToInt`): lengths from 24 on keep only
four significant bits.

Tokens come from the same analyzer as the index (`evaluator.lucene`), and the
arithmetic follows Lucene's, so the scores are Lucene's: on the Gift_Cards
corpus every score of every corpus text as a query is bit-equal.
"""

from __future__ import annotations

import collections
import functools
from typing import Callable, Iterator, Sequence

import numpy as np
import scipy.sparse

from evaluator import lucene

Tokenizer = Callable[[Sequence[str]], list[list[str]]]


def _long_to_int4(value: int) -> int:
  """Lucene `SmallFloat.longToInt4`: 3 mantissa bits, the rest exponent."""
  num_bits = value.bit_length()
  if num_bits < 4:
    return value
  shift = num_bits - 4
  return ((value >> shift) & 0x07) | ((shift + 1) << 3)


def _int4_to_long(encoded: int) -> int:
  """Lucene `SmallFloat.int4ToLong`, the inverse of `_long_to_int4`."""
  bits = encoded & 0x07
  shift = (encoded >> 3) - 1
  return bits if shift == -1 else (bits | 0x08) << shift


_NUM_FREE_VALUES = 255 - _long_to_int4(2**31 - 1)


def int_to_byte4(length: int) -> int:
  """Lucene `SmallFloat.intToByte4` as an unsigned byte (exact below 24)."""
  if length < 0:
    raise ValueError(f"Document length must be non-negative, got {length}.")
  if length < _NUM_FREE_VALUES:
    return length
  return _NUM_FREE_VALUES + _long_to_int4(length - _NUM_FREE_VALUES)


def byte4_to_int(encoded: int) -> int:
  """Lucene `SmallFloat.byte4ToInt`: the length a norm byte stands for."""
  if encoded < _NUM_FREE_VALUES:
    return encoded
  return _NUM_FREE_VALUES + _int4_to_long(encoded - _NUM_FREE_VALUES)


def norm_inverse_table(avgdl: np.float32, k1: float, b: float) -> np.ndarray:
  """Lucene's per-norm-byte cache 1 / (k1 * ((1 - b) + b * L / avgdl))."""
  lengths = np.array([byte4_to_int(i) for i in range(256)], dtype=np.float32)
  k1, b = np.float32(k1), np.float32(b)
  one = np.float32(1)
  return one / (k1 * ((one - b) + b * lengths / avgdl))


class FastBM25:
  """BM25 of token lists against every document of a tokenized corpus.

  Each (query term, document) contribution is Lucene's float32 value; a
  document's contributions are summed in float64 (exactly, for a few dozen
  float32 terms) and rounded to float32, as Lucene sums clause scores in a
  double. The scores are then Lucene's, ties included, even where different
  terms happen to sum to the same float.

  Terms fall in three tiers by document frequency (as a share of the
  corpus). Common terms (at least `common_df`, e.g. the template's labels and
  the category name) are summed once per distinct (term, count) signature and
  cached. Frequent terms (at least `dense_df`) keep a dense row of their
  contributions. Rare terms, and terms repeated in a query, add their
  postings.
  """

  def __init__(self, doc_tokens: Sequence[Sequence[str]],
               k1: float = lucene.BM25_K1, b: float = lucene.BM25_B,
               common_df: float = 0.5, dense_df: float = 0.1,
               signature_cache_bytes: int = 128 << 20):
    self.num_docs = len(doc_tokens)
    self.vocabulary: dict[str, int] = {}
    rows, cols, freqs = [], [], []
    for doc, tokens in enumerate(doc_tokens):
      for token, freq in collections.Counter(tokens).items():
        rows.append(self.vocabulary.setdefault(token, len(self.vocabulary)))
        cols.append(doc)
        freqs.append(freq)
    rows, cols = np.array(rows, np.int64), np.array(cols, np.int64)
    freqs = np.array(freqs, np.float32)

    lengths = np.array([len(tokens) for tokens in doc_tokens], np.int64)
    doc_count = int(np.count_nonzero(lengths))
    avgdl = (np.float32(lengths.sum() / doc_count) if doc_count else
             np.float32(1))
    norm_bytes = np.array([int_to_byte4(int(n)) for n in lengths], np.int64)
    norm_inverse = norm_inverse_table(avgdl, k1, b)[norm_bytes[cols]]
    # Per posting: 1 + f * n(d), the denominator of w - w / (1 + f * n(d)).
    denominators = np.float32(1) + freqs * norm_inverse
    postings = scipy.sparse.csr_matrix(
        (denominators, (rows, cols)),
        shape=(len(self.vocabulary), self.num_docs), dtype=np.float32)
    postings.sort_indices()
    doc_freq = np.diff(postings.indptr)
    self.idf = np.log(1 + (doc_count - doc_freq + 0.5) /
                      (doc_freq + 0.5)).astype(np.float32)

    self._indptr = postings.indptr.tolist()
    self._denominators = postings.data
    indices = postings.indices.astype(np.intp)
    # Contributions of every posting for a term occurring once in the query.
    single = self._contributions(np.repeat(self.idf, doc_freq)).astype(
        np.float64)
    bounds = list(zip(self._indptr[:-1], self._indptr[1:]))
    self._term_docs = [indices[start:end] for start, end in bounds]
    self._term_values = [single[start:end] for start, end in bounds]
    # Tier per term: 0 common, 1 dense, 2 rare.
    tiers = np.where(doc_freq >= common_df * self.num_docs, 0,
                     np.where(doc_freq >= dense_df * self.num_docs, 1, 2))
    self._tier = tiers.tolist()  # Per-term lookups from Python are faster.
    self._dense_rows = {}
    for term in np.flatnonzero(tiers == 1).tolist():
      row = np.zeros(self.num_docs, np.float64)
      row[self._term_docs[term]] = self._term_values[term]
      self._dense_rows[term] = row
    cache_size = max(16, signature_cache_bytes // (8 * max(self.num_docs, 1)))
    self._common_sum = functools.lru_cache(maxsize=cache_size)(
        self._common_sum_uncached)

  def _contributions(self, weights: np.ndarray,
                     start: int = 0, end: int | None = None) -> np.ndarray:
    """Lucene's float32 w - w / (1 + f * n) for postings start:end."""
    return weights - weights / self._denominators[start:end]

  def _postings_of(self, term: int, count: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Documents of `term` and its float64 contributions at query `count`."""
    if count == 1:
      return self._term_docs[term], self._term_values[term]
    weight = np.float32(count) * self.idf[term]  # Lucene's boost * idf.
    return self._term_docs[term], self._contributions(
        weight, self._indptr[term], self._indptr[term + 1]).astype(np.float64)

  def _common_sum_uncached(self, signature: tuple[tuple[int, int], ...]
                           ) -> np.ndarray:
    """Summed contributions of common terms: ((term id, count), ...)."""
    total = np.zeros(self.num_docs, np.float64)
    for term, count in signature:
      docs, values = self._postings_of(term, count)
      total[docs] += values
    total.flags.writeable = False
    return total

  def score(self, queries: Sequence[Sequence[str]]) -> np.ndarray:
    """Scores [len(queries), num_docs] float32 of tokenized queries."""
    scores = np.empty((len(queries), self.num_docs), np.float32)
    total = np.empty(self.num_docs, np.float64)
    for row, tokens in enumerate(queries):
      common, other = [], []
      for token, count in collections.Counter(tokens).items():
        term = self.vocabulary.get(token)
        if term is not None:
          (common if self._tier[term] == 0 else other).append((term, count))
      # Sums in float64 are exact, so only the cache key needs an order.
      self._sum_terms(total, self._common_sum(tuple(sorted(common))), other)
      scores[row] = total  # Rounds to float32 like Lucene's final cast.
    return scores

  def _sum_terms(self, total: np.ndarray, base: np.ndarray,
                 terms: list[tuple[int, int]]) -> None:
    """`total` = `base` plus dense rows plus the other terms' postings."""
    docs, values = [], []
    started = False
    for term, count in terms:
      if self._tier[term] == 1 and count == 1:
        if started:
          total += self._dense_rows[term]
        else:
          np.add(base, self._dense_rows[term], out=total)
          started = True
      else:
        term_docs, term_values = self._postings_of(term, count)
        docs.append(term_docs)
        values.append(term_values)
    if not started:
      total[:] = base
    if docs:
      np.add.at(total, np.concatenate(docs), np.concatenate(values))


class FastBM25Scorer:
  """The default `Scorer`: analyzer tokens, then `FastBM25`."""

  def __init__(self, corpus_texts: Sequence[str], tokenize: Tokenizer,
               k1: float = lucene.BM25_K1, b: float = lucene.BM25_B):
    self._tokenize = tokenize
    self.bm25 = FastBM25(tokenize(corpus_texts), k1=k1, b=b)
    self.num_docs = self.bm25.num_docs

  def score(self, texts: Sequence[str]) -> np.ndarray:
    return self.bm25.score(self._tokenize(texts))

  def score_groups(self, groups: Sequence[Sequence[str]]
                   ) -> Iterator[np.ndarray]:
    """One score matrix per group of texts; one analyzer call for all."""
    tokens = self._tokenize([text for texts in groups for text in texts])
    start = 0
    for texts in groups:
      yield self.bm25.score(tokens[start:start + len(texts)])
      start += len(texts)
