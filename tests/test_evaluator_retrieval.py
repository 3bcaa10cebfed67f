"""Algorithm 1 (quasi-round-robin retrieval) and hierarchical match."""

import math

import numpy as np
import pytest

from evaluator import metrics
from evaluator import retrieval
from pipelines import templates


def test_select_predictions_sorts_dedupes_and_keeps_top():
  samples = [("a", -3.0), ("b", -1.0), ("a", -0.5), ("c", -1.0), ("", -2.0)]
  kept = retrieval.select_predictions(samples, num_preds=10)
  # Sorted by log-prob, ties in generation order, the second "a" dropped.
  assert kept.texts == ("a", "b", "c", "")
  assert kept.logprobs == (-0.5, -1.0, -1.0, -2.0)
  assert retrieval.select_predictions(samples, num_preds=2).texts == ("a", "b")


def test_select_predictions_rejects_nan_logprobs():
  with pytest.raises(ValueError, match="NaN"):
    retrieval.select_predictions([("a", float("nan"))])


def test_min_max_scale_rows_and_constant_rows():
  scaled = retrieval.min_max_scale(
      np.array([[2.0, 4.0, 6.0], [3.0, 3.0, 3.0], [0.0, 0.0, 0.0]]))
  np.testing.assert_array_equal(
      scaled, [[0.0, 0.5, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


def test_fuse_hand_computed_matrix():
  match_scores = np.array([[0.0, 10.0, 5.0, 10.0],
                           [4.0, 0.0, 2.0, 2.0]])
  fused = retrieval.fuse(match_scores, [-1000.0, -2000.0], epsilon=1 / 5000)
  high, low = math.exp(-0.2), math.exp(-0.4)
  np.testing.assert_allclose(fused, [low, high, 0.5 * high, high], rtol=1e-6)
  # Items 1 and 3 tie at the top: the "quasi" in quasi-round-robin.
  assert metrics.target_ranks(fused, 3) == metrics.TargetRanks(1, 2)
  assert list(retrieval.top_k(fused, 3)) == [1, 3, 0]


def test_round_robin_top_item_of_each_prediction_first_in_logprob_order():
  rng = np.random.default_rng(0)
  num_texts, num_docs = 6, 40
  best_items = rng.permutation(num_docs)[:num_texts]
  rows = rng.uniform(0.0, 5.0, size=(num_texts, num_docs))
  rows[np.arange(num_texts), best_items] = 9.0
  vectors = {f"text {i}": rows[i] for i in range(num_texts)}
  # Samples arrive shuffled, with duplicates; log-prob order is text 0..5.
  samples = [(f"text {i}", -float(i)) for i in rng.permutation(num_texts)]
  samples += [("text 3", -10.0), ("text 1", -20.0)]
  kept = retrieval.select_predictions(samples)
  assert kept.texts == tuple(f"text {i}" for i in range(num_texts))
  match_scores = np.stack([vectors[text] for text in kept.texts])

  # Epsilon near 0 still separates exp(-1e-5 * i) for i = 0..5.
  fused = retrieval.fuse(match_scores, kept.logprobs, epsilon=1e-5)
  assert list(retrieval.top_k(fused, num_texts)) == list(best_items)
  # Without modulation every prediction's best item ties at 1.
  unmodulated = retrieval.fuse(match_scores, kept.logprobs, epsilon=0.0)
  assert np.count_nonzero(unmodulated == unmodulated.max()) == num_texts


def test_fuse_separates_close_logprobs_and_close_scores():
  # exp(-1.0 / 5000) and exp(-1.0001 / 5000) differ by 2e-8 (relative): they
  # round to the same float32, which would tie the two texts' best items.
  match_scores = np.array([[0.0, 7.0, 1.0], [0.0, 1.0, 7.0]])
  fused = retrieval.fuse(match_scores, [-1.0, -1.0001], epsilon=1 / 5000)
  assert metrics.target_ranks(fused, 1) == metrics.TargetRanks(1, 1)
  assert metrics.target_ranks(fused, 2) == metrics.TargetRanks(2, 2)
  # Distinct BM25 scores 1e-9 apart relative to the spread stay distinct.
  scaled = retrieval.min_max_scale(np.array([[0.0, 1e6, 1e6 - 1e-3]]))
  assert scaled[0, 1] > scaled[0, 2]


def test_fuse_without_texts_or_with_empty_texts_gives_zeros_not_nans():
  assert not np.any(retrieval.fuse(np.zeros((0, 5)), []))
  fused = retrieval.fuse(np.zeros((3, 5)), [-1.0, -2.0, -3.0])
  np.testing.assert_array_equal(fused, np.zeros(5))
  assert metrics.target_ranks(fused, 2) == metrics.TargetRanks(1, 5)


def test_fuse_checks_shapes():
  with pytest.raises(ValueError, match="match scores"):
    retrieval.fuse(np.zeros((2, 5)), [-1.0])


def test_top_k_breaks_ties_by_lower_index():
  scores = np.array([0.2, 0.7, 0.7, 0.1, 0.7, 0.2])
  assert list(retrieval.top_k(scores, 4)) == [1, 2, 4, 0]
  assert list(retrieval.top_k(scores, 20)) == [1, 2, 4, 0, 5, 3]


def _stable_top_k(scores, k):
  """The reference: each row fully sorted, best first, ties in index order."""
  return np.argsort(-scores, axis=1, kind="stable")[:, :max(k, 0)]


def test_top_k_rows_breaks_ties_by_lower_index():
  scores = np.array([[0.2, 0.7, 0.7, 0.1, 0.7, 0.2],
                     [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])
  np.testing.assert_array_equal(retrieval.top_k_rows(scores, 4),
                                [[1, 2, 4, 0], [0, 1, 2, 3]])
  np.testing.assert_array_equal(retrieval.top_k_rows(scores, 20),
                                [[1, 2, 4, 0, 5, 3], [0, 1, 2, 3, 4, 5]])
  assert retrieval.top_k_rows(scores, 0).shape == (2, 0)
  assert retrieval.top_k_rows(np.zeros((0, 6)), 3).shape == (0, 3)


@pytest.mark.parametrize("num_columns", [1, 9, 10, 11, 17, 160, 1547, 4385])
@pytest.mark.parametrize("k", [1, 3, 10, 100])
def test_top_k_rows_with_ties_at_the_kth_place_equals_a_full_sort(num_columns,
                                                                  k):
  rng = np.random.default_rng(num_columns * 1000 + k)
  # A few distinct values: ties straddle the k-th place in most rows.
  scores = rng.integers(0, 4, size=(16, num_columns)).astype(np.float32)
  scores[0] = 0.0  # The whole row tied.
  scores[1, ::3] = 9.0  # A third of the row tied at the top.
  scores[2, -1] = 9.0  # The best score in the last column (past full groups).
  scores[3] = rng.random(num_columns)  # No ties.
  scores[4] = np.where(rng.integers(0, 2, num_columns) == 1,  # Adjacent floats.
                       np.nextafter(np.float32(2.5), np.float32(3)), 2.5)
  np.testing.assert_array_equal(retrieval.top_k_rows(scores, k),
                                _stable_top_k(scores, k))


def test_top_k_rows_equals_top_k_of_each_row():
  rng = np.random.default_rng(3)
  scores = np.round(rng.gamma(2.0, size=(50, 700)), 2)  # float64, ties.
  rows = retrieval.top_k_rows(scores, 10)
  for row, expected in zip(rows, scores):
    np.testing.assert_array_equal(row, retrieval.top_k(expected, 10))


def _item(title, category, brand, price):
  return templates.item_text(title, category, brand, price)


CORPUS = [
    _item("Red Card", "Gift Cards", "Acme", "$10.00"),
    _item("Red Card", "Gift Cards", "Acme", "$25.00"),
    _item("Red Card", "Gift Cards", "Other", "$10.00"),
    _item("Blue Card", "Gift Cards", "Acme", None),
    _item("Red Card", "Toys", "Acme", "$10.00"),
]


@pytest.mark.parametrize("text, level, rows", [
    (_item("Red Card", "Gift Cards", "Acme", "$25.00"), 4, [1]),
    (_item("Red Card", "Gift Cards", "Acme", "$99.00"), 3, [0, 1]),
    (_item("Red Card", "Gift Cards", "Nobody", "$10.00"), 2, [0, 1, 2]),
    (_item("Red Card", "Books", "Acme", "$10.00"), 1, [0, 1, 2, 4]),
    (_item("Green Card", "Gift Cards", "Acme", "$10.00"), 0, []),
    ("Red Card, Acme, ten dollars", -1, []),
])
def test_hierarchical_match_levels(text, level, rows):
  matcher = retrieval.HierarchicalMatcher(CORPUS)
  matched_level, matched_rows = matcher.match(text)
  assert matched_level == level
  assert list(matched_rows) == rows


def test_hierarchical_scores_and_table_7_counts():
  matcher = retrieval.HierarchicalMatcher(CORPUS)
  texts = [_item("Blue Card", "Gift Cards", "Acme", None),
           _item("Red Card", "Gift Cards", "Acme", "$99.00"),
           _item("Green Card", "Toys", "Acme", "$1.00"),
           "not an item"]
  scores = matcher.score(texts)
  np.testing.assert_array_equal(scores[0], [0, 0, 0, 1, 0])
  np.testing.assert_array_equal(scores[1], [1, 1, 0, 0, 0])
  assert not scores[2:].any()
  counts = matcher.count(texts)
  assert counts.shares() == {"Format Error": 0.25, "All Four Attributes": 0.25,
                             "Title Only": 0.5}
  fused = retrieval.fuse(scores, [-1.0, -2.0, -3.0, -4.0])
  assert list(retrieval.top_k(fused, 3)) == [3, 0, 1]
  assert metrics.target_ranks(fused, 1) == metrics.TargetRanks(2, 3)
