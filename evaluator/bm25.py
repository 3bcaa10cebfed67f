"""Exact full-corpus BM25, vectorized, equal to Lucene's (paper section 3.5).

Lucene 9's `BM25Similarity` scores a query term t in document d as

  w_t * (1 - 1 / (1 + f_td * n(d))),   w_t = boost_t * idf_t,
  idf_t = ln(1 + (N - df_t + 0.5) / (df_t + 0.5)),
  n(d)  = 1 / (k1 * ((1 - b) + b * L(d) / avgdl)),

summed over the query's terms, where N counts documents with at least one
token, avgdl = total tokens / N, a term repeated in the query adds its clause
again (boost = count), and L(d) is the document length after Lucene's lossy
one-byte encoding (`SmallFloat.intToByte4`, then `byte4ToInt`): lengths from 24
on keep only four significant bits. Arithmetic follows Lucene's float32 order.

Tokens come from the same analyzer as the index (`evaluator.lucene`), so the
scores equal Lucene's to float rounding, ties included. Frequent terms (the
template's labels, the category name, "unknown") touch every document: their
summed contributions are cached per query signature as dense rows; the other
terms add their postings.
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
  """BM25 of token lists against every document of a tokenized corpus."""

  def __init__(self, doc_tokens: Sequence[Sequence[str]],
               k1: float = lucene.BM25_K1, b: float = lucene.BM25_B,
               dense_min_df_fraction: float = 0.05,
               signature_cache_size: int = 1024):
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
    avgdl = np.float32(lengths.sum() / doc_count) if doc_count else np.float32(1)
    norm_bytes = np.array([int_to_byte4(int(n)) for n in lengths], np.int64)
    norm_inverse = norm_inverse_table(avgdl, k1, b)[norm_bytes[cols]]
    one = np.float32(1)
    # w - w / (1 + f * n) = w * (1 - 1 / (1 + f * n)); the factor is per posting.
    saturation = one - one / (one + freqs * norm_inverse)

    num_terms = len(self.vocabulary)
    postings = scipy.sparse.csr_matrix(
        (saturation, (rows, cols)), shape=(num_terms, self.num_docs),
        dtype=np.float32)
    postings.sort_indices()
    doc_freq = np.diff(postings.indptr)
    self.idf = np.log1p((doc_count - doc_freq + 0.5) /
                        (doc_freq + 0.5)).astype(np.float32)
    self._postings = postings
    dense_terms = np.flatnonzero(
        doc_freq >= max(1, dense_min_df_fraction * self.num_docs))
    self._dense_row = {int(term): row for row, term in enumerate(dense_terms)}
    self._dense = postings[dense_terms].toarray()
    self._dense_sum = functools.lru_cache(maxsize=signature_cache_size)(
        self._dense_sum_uncached)

  def _dense_sum_uncached(self, signature: tuple[tuple[int, int], ...]
                          ) -> np.ndarray:
    """Summed contributions of frequent terms: ((term id, count), ...)."""
    total = np.zeros(self.num_docs, np.float32)
    for term, count in signature:
      weight = np.float32(count) * self.idf[term]
      total += weight * self._dense[self._dense_row[term]]
    total.flags.writeable = False
    return total

  def term_counts(self, tokens: Sequence[str]) -> collections.Counter[int]:
    """Query term ids (terms absent from the corpus dropped) with counts."""
    return collections.Counter(
        self.vocabulary[t] for t in tokens if t in self.vocabulary)

  def score(self, queries: Sequence[Sequence[str]]) -> np.ndarray:
    """Scores [len(queries), num_docs] float32 of tokenized queries."""
    scores = np.empty((len(queries), self.num_docs), np.float32)
    indptr, indices, data = (self._postings.indptr, self._postings.indices,
                             self._postings.data)
    for row, tokens in enumerate(queries):
      counts = self.term_counts(tokens)
      signature = tuple(sorted((term, count) for term, count in counts.items()
                               if term in self._dense_row))
      scores[row] = self._dense_sum(signature)
      for term, count in counts.items():
        if term in self._dense_row:
          continue
        start, end = indptr[term], indptr[term + 1]
        weight = np.float32(count) * self.idf[term]
        scores[row, indices[start:end]] += weight * data[start:end]
    return scores


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
