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
import threading
from typing import Callable, Iterator, Sequence

import numpy as np
import scipy.sparse

from evaluator import lucene
from evaluator import retrieval

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
  terms happen to sum to the same float; exact sums make the order of the
  additions, and so the batching below, irrelevant.

  Queries are scored a batch at a time (`batch_bytes` of float64 sums),
  with array operations over all the batch's terms. Terms fall in three
  tiers by document frequency (as a share of the corpus). Common terms (at
  least `common_df`, e.g. the template's labels and the category name) are
  summed once per distinct (term, count) signature and cached. Frequent
  terms (at least `dense_df`) keep a dense row of their contributions. Rare
  terms, and terms repeated in a query, add their postings: the whole
  batch's in one scatter.
  """

  def __init__(self, doc_tokens: Sequence[Sequence[str]],
               k1: float = lucene.BM25_K1, b: float = lucene.BM25_B,
               common_df: float = 0.5, dense_df: float = 0.1,
               signature_cache_bytes: int = 128 << 20,
               batch_bytes: int = 4 << 20):
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
    self._starts = postings.indptr[:-1].astype(np.intp)
    self._doc_freq = np.diff(postings.indptr).astype(np.intp)
    self._docs = postings.indices.astype(np.intp)
    self._denominators = postings.data
    self.idf = np.log(1 + (doc_count - self._doc_freq + 0.5) /
                      (self._doc_freq + 0.5)).astype(np.float32)
    # Per posting, its contribution for a term occurring once in the query.
    self._single = self._contributions(
        np.repeat(self.idf, self._doc_freq), self._denominators)

    # Tier per term: 0 common, 1 dense, 2 rare.
    self._tier = np.where(
        self._doc_freq >= common_df * self.num_docs, 0,
        np.where(self._doc_freq >= dense_df * self.num_docs, 1, 2))
    self._common_terms = np.flatnonzero(self._tier == 0)
    self._common_slot = _slots(self._common_terms, len(self.vocabulary))
    dense_terms = np.flatnonzero(self._tier == 1)
    self._dense_slot = _slots(dense_terms, len(self.vocabulary))
    self._dense_rows = np.zeros((len(dense_terms), self.num_docs), np.float64)
    targets, values = self._postings(np.arange(len(dense_terms)), dense_terms,
                                     np.ones(len(dense_terms), np.intp))
    self._dense_rows.reshape(-1)[targets] = values
    row_bytes = 8 * max(self.num_docs, 1)
    self.batch_rows = max(1, batch_bytes // row_bytes)
    # Per thread, one float64 batch buffer for every call: a fresh one per
    # call can cost as much in page faults as the scoring itself, when malloc
    # hands the freed memory back to the system.
    self._scratch = threading.local()
    cache_size = max(16, signature_cache_bytes // row_bytes)
    self._common_sum = functools.lru_cache(maxsize=cache_size)(
        self._common_sum_uncached)

  @staticmethod
  def _contributions(weights: np.ndarray, denominators: np.ndarray
                     ) -> np.ndarray:
    """Lucene's float32 w - w / (1 + f * n(d)), as float64."""
    return (weights - weights / denominators).astype(np.float64)

  def _postings(self, rows: np.ndarray, terms: np.ndarray, counts: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Postings of (row, term, count) entries: flat targets, contributions.

    A target is row * num_docs + document. A term repeated in a query is one
    clause boosted by its count: w = count * idf.
    """
    lengths = self._doc_freq[terms]
    positions = _ranges(self._starts[terms], lengths)
    targets = self._docs[positions]
    targets += np.repeat(rows * self.num_docs, lengths)
    values = self._single[positions]
    repeated = counts > 1
    if repeated.any():
      boosted = np.repeat(repeated, lengths)
      weights = counts[repeated].astype(np.float32) * self.idf[terms[repeated]]
      values[boosted] = self._contributions(
          np.repeat(weights, lengths[repeated]),
          self._denominators[positions[boosted]])
    return targets, values

  def _common_sum_uncached(self, key: bytes) -> np.ndarray:
    """Summed contributions of the common terms at counts `key` (intp)."""
    counts = np.frombuffer(key, np.intp)
    present = np.flatnonzero(counts)
    total = np.zeros(self.num_docs, np.float64)
    np.add.at(total, *self._postings(np.zeros_like(present),
                                     self._common_terms[present],
                                     counts[present]))
    total.flags.writeable = False
    return total

  def score(self, queries: Sequence[Sequence[str]]) -> np.ndarray:
    """Scores [len(queries), num_docs] float32 of tokenized queries."""
    scores = np.empty((len(queries), self.num_docs), np.float32)
    for start, total in self._batches(queries):
      scores[start:start + len(total)] = total  # Lucene's cast to float.
    return scores

  def top_k(self, queries: Sequence[Sequence[str]], k: int) -> np.ndarray:
    """[len(queries), min(k, num_docs)] best documents of each query.

    Best first, ties by lower index (`retrieval.top_k_rows` of `score`),
    without keeping more than a batch of scores.
    """
    top = np.empty((len(queries), max(min(k, self.num_docs), 0)), np.int64)
    scores = np.empty((min(len(queries), self.batch_rows), self.num_docs),
                      np.float32)
    for start, total in self._batches(queries):
      batch_scores = scores[:len(total)]
      np.copyto(batch_scores, total, casting="same_kind")
      top[start:start + len(total)] = retrieval.top_k_rows(batch_scores, k)
    return top

  def _batches(self, queries: Sequence[Sequence[str]]
               ) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float64 scores) of each batch, in this thread's buffer."""
    totals = getattr(self._scratch, "totals", None)
    if totals is None or len(totals) < self.batch_rows:
      totals = self._scratch.totals = np.empty((self.batch_rows, self.num_docs))
    for start in range(0, len(queries), self.batch_rows):
      batch = queries[start:start + self.batch_rows]
      total = totals[:len(batch)]
      self._score_batch(batch, total)
      yield start, total

  def _score_batch(self, queries: Sequence[Sequence[str]],
                   total: np.ndarray) -> None:
    """`total` = float64 scores: common, dense, then rare terms."""
    query, term, count = self._query_terms(queries)
    tier = self._tier[term]
    common = tier == 0
    self._common_sums(query[common], term[common], count[common], total)
    dense = (tier == 1) & (count == 1)
    for row, slot in zip(query[dense].tolist(),
                         self._dense_slot[term[dense]].tolist()):
      total[row] += self._dense_rows[slot]
    rare = ~(common | dense)
    np.add.at(total.reshape(-1),
              *self._postings(query[rare], term[rare], count[rare]))

  def _query_terms(self, queries: Sequence[Sequence[str]]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query row, term id, count) of each distinct known term of a query."""
    terms = np.array([self.vocabulary.get(token, -1) for tokens in queries
                      for token in tokens], np.intp)
    rows = np.repeat(np.arange(len(queries)),
                     [len(tokens) for tokens in queries])
    known = terms >= 0
    size = max(len(self.vocabulary), 1)
    keys, counts = np.unique(rows[known] * size + terms[known],
                             return_counts=True)
    return keys // size, keys % size, counts

  def _common_sums(self, query: np.ndarray, term: np.ndarray,
                   count: np.ndarray, out: np.ndarray) -> None:
    """`out` = each query's common-term sum, one row per query."""
    counts = np.zeros((len(out), len(self._common_terms)), np.intp)
    counts[query, self._common_slot[term]] = count
    np.stack([self._common_sum(row.tobytes()) for row in counts], out=out)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """The concatenated ranges start, ..., start + length - 1."""
  positions = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
  positions += np.arange(len(positions))
  return positions


def _slots(terms: np.ndarray, vocabulary_size: int) -> np.ndarray:
  """Per term id, its position in `terms` (-1 when absent)."""
  slots = np.full(vocabulary_size, -1, np.intp)
  slots[terms] = np.arange(len(terms))
  return slots


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
    """One score matrix per group of texts; one analyzer call for all.

    Consecutive groups are scored together, a batch's worth of rows at once.
    """
    tokens = self._tokenize([text for texts in groups for text in texts])
    end = 0
    for sizes in _runs([len(texts) for texts in groups], self.bm25.batch_rows):
      start, end = end, end + sum(sizes)
      yield from np.split(self.bm25.score(tokens[start:end]),
                          np.cumsum(sizes)[:-1])


def _runs(sizes: Sequence[int], limit: int) -> Iterator[list[int]]:
  """Consecutive runs of `sizes` summing to at most `limit` (or one size)."""
  run: list[int] = []
  for size in sizes:
    if run and sum(run) + size > limit:
      yield run
      run = []
    run.append(size)
  if run:
    yield run
