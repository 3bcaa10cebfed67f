"""Optimistic/pessimistic ranks and metrics on hand-computed cases."""

import collections
import dataclasses
import fractions
import math

import numpy as np
import pytest

from evaluator import metrics
from evaluator import retrieval
from evaluator import transforms


def test_ranks_with_ties_count_target_first_and_last():
  scores = np.array([0.5, 0.9, 0.5, 0.1, 0.5])
  ranks = metrics.target_ranks(scores, target_index=2)
  # One item above; three share the target's score (itself included).
  assert ranks == metrics.TargetRanks(optimistic=2, pessimistic=4)


def test_untied_target_has_equal_ranks():
  ranks = metrics.target_ranks(np.array([0.3, 0.2, 0.7, 0.1]), target_index=0)
  assert ranks == metrics.TargetRanks(2, 2)


@pytest.mark.parametrize("rank, expected", [
    (1, {"NDCG@10": 1.0, "Recall@1": 1.0, "Recall@10": 1.0, "MRR": 1.0}),
    (3, {"NDCG@10": 0.5, "Recall@1": 0.0, "Recall@10": 1.0, "MRR": 1 / 3}),
    (10, {"NDCG@10": 1 / math.log2(11), "Recall@1": 0.0, "Recall@10": 1.0,
          "MRR": 0.1}),
    (11, {"NDCG@10": 0.0, "Recall@1": 0.0, "Recall@10": 0.0, "MRR": 1 / 11}),
])
def test_metrics_at_rank(rank, expected):
  assert metrics.metrics_at_rank(rank) == pytest.approx(expected)


def test_footnote_9_all_zero_scores():
  # Empty model output: every candidate scores 0 (paper footnote 9).
  ranks = metrics.target_ranks(np.zeros(100), target_index=37)
  values = metrics.user_metrics(ranks)
  assert values["Recall@1/opt"] == values["Recall@10/opt"] == 1.0
  assert values["Recall@1/pes"] == values["Recall@10/pes"] == 0.0
  assert values["NDCG@10/opt"] == 1.0 and values["NDCG@10/pes"] == 0.0
  assert values["MRR/pes"] == pytest.approx(0.01)


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="finite"):
    metrics.target_ranks(np.array([0.1, np.nan]), 0)
  with pytest.raises(ValueError, match="1-based"):
    metrics.metrics_at_rank(0)


def test_with_misses_scores_unranked_users_zero():
  # Two ranked users, at ranks (1, 3) and (2, 2), then one miss.
  first = metrics.user_metrics(metrics.TargetRanks(1, 3))
  second = metrics.user_metrics(metrics.TargetRanks(2, 2))
  means = {key: (first[key] + second[key]) / 2 for key in first}
  with_miss = metrics.with_misses(means, 2, 1)
  assert with_miss["Recall@1/opt"] == pytest.approx(1 / 3)
  assert with_miss["MRR/opt"] == pytest.approx((1 + 1 / 2) / 3)
  assert with_miss["NDCG@10/pes"] == pytest.approx(
      (1 / math.log2(4) + 1 / math.log2(3)) / 3)
  # Nobody ranked: every metric is 0, not missing.
  assert metrics.with_misses({}, 0, 3) == dict.fromkeys(
      metrics.metric_keys(), 0.0)
  with pytest.raises(ValueError, match="No users"):
    metrics.with_misses({}, 0, 0)


def test_mean_metrics_from_rank_counts():
  # Users at optimistic ranks 1, 1, 4 and pessimistic ranks 2, 3, 12.
  rank_counts = {"opt": collections.Counter({1: 2, 4: 1}),
                 "pes": collections.Counter({2: 1, 3: 1, 12: 1})}
  means = metrics.mean_metrics(rank_counts)
  assert means["NDCG@10/opt"] == pytest.approx((2 + 1 / math.log2(5)) / 3)
  assert means["Recall@1/opt"] == pytest.approx(2 / 3)
  assert means["Recall@10/pes"] == pytest.approx(2 / 3)
  assert means["MRR/pes"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 12) / 3)
  with pytest.raises(ValueError, match="No ranked users"):
    metrics.mean_metrics({"opt": collections.Counter(),
                          "pes": collections.Counter()})


def _combine(combine_fn, partitions):
  """What a runner does: one accumulator per bundle, then a merge."""
  accumulators = []
  for partition in partitions:
    accumulator = combine_fn.create_accumulator()
    for element in partition:
      accumulator = combine_fn.add_input(accumulator, element)
    accumulators.append(accumulator)
  return combine_fn.extract_output(
      combine_fn.merge_accumulators(accumulators))


def test_mean_metrics_combine_is_bitwise_independent_of_bundling():
  rng = np.random.RandomState(0)
  no_matches = {field.name: 0
                for field in dataclasses.fields(retrieval.MatchCounts)}
  results = []
  for _ in range(2000):
    optimistic = int(rng.geometric(0.05))
    results.append({"rank_optimistic": optimistic,
                    "rank_pessimistic": optimistic + int(rng.poisson(2)),
                    "match_counts": no_matches})
  combine_fn = transforms.MeanMetrics()
  one_bundle = _combine(combine_fn, [results])
  outputs = []
  for seed in range(5):
    order = np.random.RandomState(seed).permutation(len(results))
    cuts = sorted(np.random.RandomState(seed).choice(len(results), 7, False))
    shuffled = [results[i] for i in order]
    outputs.append(_combine(combine_fn, np.split(shuffled, cuts)))
  assert all(output == one_bundle for output in outputs)
  assert one_bundle["num_users"] == 2000
  # The mean by an independent route (fractions, no rounding at all).
  mrr = sum(fractions.Fraction(1, r["rank_pessimistic"]) for r in results)
  assert one_bundle["metrics"]["MRR/pes"] == pytest.approx(float(mrr / 2000),
                                                           rel=1e-14)
