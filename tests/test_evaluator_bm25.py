"""The fast BM25 scorer: Lucene's norm encoding, formula, and parity with Lucene."""

import conftest
import evaluator_testdata
import numpy as np
import pytest

from evaluator import bm25
from evaluator import lucene
from evaluator import retrieval


def test_small_float_round_trip_matches_four_bit_rule():
  for length in range(0, 20000):
    assert bm25.byte4_to_int(bm25.int_to_byte4(length)) == (
        evaluator_testdata.quantized_length(length)), length
  assert [bm25.byte4_to_int(bm25.int_to_byte4(n)) for n in (39, 41, 61, 100)
         ] == [39, 40, 60, 96]
  assert bm25.int_to_byte4(2**31 - 1) == 255
  with pytest.raises(ValueError, match="non-negative"):
    bm25.int_to_byte4(-1)


def test_fast_bm25_equals_textbook_formula_with_quantized_lengths():
  docs = [["gift", "card", "red"],
          ["gift", "card", "blue", "blue", "box"],
          ["gift"] + ["word%d" % i for i in range(40)] + ["red"],  # Length 42.
          [],
          ["coffee", "card"]]
  scorer = bm25.FastBM25(docs, common_df=0.5, dense_df=0.3)  # All tiers.
  queries = [["red", "gift"], ["blue", "blue", "card"], ["missing"], [],
             ["red", "word3", "coffee", "gift", "card"]]
  scores = scorer.score(queries)
  assert scores.shape == (5, 5) and scores.dtype == np.float32
  for query, row in zip(queries, scores):
    np.testing.assert_allclose(row, evaluator_testdata.textbook_lucene_bm25(docs, query),
                               rtol=1e-6, atol=0)
  assert not scores[2].any() and not scores[3].any()
  # The 42-token document counts as 40 tokens: its exact length scores apart.
  exact = evaluator_testdata.textbook_lucene_bm25(docs, ["red"], quantize=False)
  assert abs(exact[2] - scores[0, 2]) > 1e-3 * scores[0, 2]


def test_term_tiers_and_cache_do_not_change_scores():
  items = evaluator_testdata.generated_items(300, seed=1)
  docs = [item["text"].lower().replace(".", "").split() for item in items]
  queries = docs[:25] + [docs[3] + docs[4], ["unknown", "unknown", "card"]]
  tiered = bm25.FastBM25(docs).score(queries * 2)
  sparse_only = bm25.FastBM25(docs, common_df=2, dense_df=2).score(queries)
  cached_only = bm25.FastBM25(docs, common_df=0, dense_df=0).score(queries)
  np.testing.assert_allclose(tiered[:len(queries)], sparse_only, rtol=1e-6)
  np.testing.assert_allclose(cached_only, sparse_only, rtol=1e-6)
  np.testing.assert_array_equal(tiered[:len(queries)], tiered[len(queries):])


def test_batches_score_as_queries_one_at_a_time():
  items = evaluator_testdata.generated_items(400, seed=2)
  docs = [item["text"].lower().replace(".", "").split() for item in items]
  queries = docs[:40] + [docs[5] * 3, [], ["unknown"], docs[1] + docs[2],
                         ["card", "card", "gift", "red", "red", "red"]]
  scorer = bm25.FastBM25(docs)
  one_at_a_time = bm25.FastBM25(docs, batch_bytes=1)
  assert scorer.batch_rows >= len(queries) and one_at_a_time.batch_rows == 1
  batched = scorer.score(queries)
  np.testing.assert_array_equal(batched, one_at_a_time.score(queries))
  np.testing.assert_array_equal(
      batched, np.concatenate([scorer.score([query]) for query in queries]))
  for query, row in zip(queries[-3:], batched[-3:]):
    np.testing.assert_allclose(
        row, evaluator_testdata.textbook_lucene_bm25(docs, query), rtol=1e-6)


def test_top_k_equals_a_full_sort_of_the_scores():
  items = evaluator_testdata.generated_items(300, seed=4)  # Duplicates tie.
  docs = [item["text"].lower().replace(".", "").split() for item in items]
  queries = docs[:30] + [[], ["unknown"], ["gift"], docs[7] * 2]
  scorer = bm25.FastBM25(docs, batch_bytes=7 * 8 * len(docs))  # 7 rows.
  scores = scorer.score(queries)
  for k in (1, 10, len(docs) + 5):
    np.testing.assert_array_equal(
        scorer.top_k(queries, k),
        np.argsort(-scores, axis=1, kind="stable")[:, :k])


def test_score_groups_equal_each_group_scored_alone():
  items = evaluator_testdata.generated_items(200, seed=3)
  texts = [item["text"] for item in items]
  scorer = bm25.FastBM25Scorer(texts, _split_words)
  scorer.bm25.batch_rows = 3  # Runs of groups, and a group over the limit.
  groups = [texts[:2], [], texts[2:7], texts[7:8], texts[8:9], texts[9:11]]
  scored = list(scorer.score_groups(groups))
  assert len(scored) == len(groups)
  for texts_of_group, scores in zip(groups, scored):
    assert scores.shape == (len(texts_of_group), len(texts))
    np.testing.assert_array_equal(scores, scorer.score(texts_of_group))


def _split_words(texts):
  return [text.lower().split() for text in texts]


def _corpus_texts():
  meta = conftest.SHARED_DATA / "meta_Gift_Cards.json.gz"
  if meta.exists():
    return [item["text"] for item in evaluator_testdata.gift_cards_items(meta)]
  return [item["text"] for item in evaluator_testdata.generated_items(1500)]


@pytest.fixture(scope="module")
def lucene_and_fast(tmp_path_factory):
  """One JVM, one index and one fast scorer for every parity test."""
  texts = _corpus_texts()
  analyzer = lucene.LuceneAnalyzer()
  searcher = lucene.LuceneBM25(texts, tmp_path_factory.mktemp("index"))
  fast = bm25.FastBM25Scorer(texts, analyzer.tokenize)
  return texts, analyzer, searcher, fast


def _queries(texts):
  rng = np.random.default_rng(7)
  picked = [texts[i] for i in rng.choice(len(texts), size=40, replace=False)]
  shortened = [" ".join(t.split()[: len(t.split()) // 2]) for t in picked[:10]]
  return picked + shortened + [
      "Title: Amazon.com Gift Card. Category: Gift Cards. Brand: Amazon. "
      "Price: $25.00.", "gift gift gift card", "", "zzqv wwxy", "the of and"]


@pytest.mark.slow
def test_batched_tokenization_equals_one_call_per_text(lucene_and_fast):
  texts, analyzer, _, _ = lucene_and_fast
  sample = texts[:200] + ["", "Mixed CASE Running shoes's", "a qx7separatorqx7"]
  assert analyzer.tokenize(sample) == [analyzer.tokenize([t])[0]
                                       for t in sample]


@pytest.mark.slow
def test_fast_scores_equal_lucene_on_every_returned_document(lucene_and_fast):
  texts, _, searcher, fast = lucene_and_fast
  queries = _queries(texts)
  lucene_scores = searcher.score(queries)
  fast_scores = fast.score(queries)
  returned = lucene_scores != 0
  np.testing.assert_array_equal(fast_scores != 0, returned)
  relative = (np.abs(fast_scores[returned] - lucene_scores[returned]) /
              lucene_scores[returned])
  assert relative.max() < 1e-4
  for query, row in zip(queries, fast_scores):
    hits = searcher.hits(query, len(texts))
    lucene_top = [doc for doc, _ in sorted(hits, key=lambda h: (-h[1], h[0]))]
    assert list(retrieval.top_k(row, 10)[:len(hits)]) == lucene_top[:10], query


@pytest.mark.slow
def test_tie_groups_equal_lucene_s(lucene_and_fast):
  texts, _, searcher, fast = lucene_and_fast
  queries = _queries(texts)
  lucene_scores = searcher.score(queries)
  fast_scores = fast.score(queries)
  # Items Lucene ties are tied here and no others, including items whose
  # different terms happen to sum to the same float.
  for lucene_row, fast_row in zip(lucene_scores, fast_scores):
    _, lucene_groups = np.unique(lucene_row, return_inverse=True)
    _, fast_groups = np.unique(fast_row, return_inverse=True)
    np.testing.assert_array_equal(lucene_groups, fast_groups)
