"""Ranking metrics, optimistic and pessimistic (paper section 4, footnote 9).

One relevant item per user (the target). Its rank among all corpus items is
optimistic when it comes first among the items tied with its score and
pessimistic when it comes last. NDCG@10, Recall@1, Recall@10 and MRR (no
cut-off) follow from a rank; each is reported for both ranks.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Mapping

import numpy as np

# Display names in the paper's order (Tables 2 to 7).
METRICS = ("NDCG@10", "Recall@1", "Recall@10", "MRR")
VARIANTS = ("opt", "pes")
# Where ties lift the optimistic NDCG@10 over the pessimistic one by more
# than this share of it, the optimistic metrics are not to be trusted
# (`report.tie_warning`).
OPTIMISM_LIMIT = 0.05


@dataclasses.dataclass(frozen=True)
class TargetRanks:
  """1-based ranks of the target: first (optimistic) and last among ties."""

  optimistic: int
  pessimistic: int


def target_ranks(scores: np.ndarray, target_index: int) -> TargetRanks:
  """Ranks of `scores[target_index]` among all of `scores` (higher first)."""
  if not np.all(np.isfinite(scores)):
    raise ValueError("Candidate scores must be finite.")
  target_score = scores[target_index]
  higher = int(np.count_nonzero(scores > target_score))
  tied = int(np.count_nonzero(scores == target_score))  # The target included.
  return TargetRanks(optimistic=higher + 1, pessimistic=higher + tied)


def is_tied(ranks: TargetRanks) -> bool:
  """Whether other items share the target's score."""
  return ranks.optimistic != ranks.pessimistic


def metrics_at_rank(rank: int) -> dict[str, float]:
  """The four metrics of one user whose single target sits at `rank`."""
  if rank < 1:
    raise ValueError(f"Ranks are 1-based, got {rank}.")
  return {
      "NDCG@10": 1.0 / math.log2(rank + 1) if rank <= 10 else 0.0,
      "Recall@1": 1.0 if rank <= 1 else 0.0,
      "Recall@10": 1.0 if rank <= 10 else 0.0,
      "MRR": 1.0 / rank,
  }


def user_metrics(ranks: TargetRanks) -> dict[str, float]:
  """Flat metrics of one user, keyed `"{metric}/{variant}"`."""
  values = {}
  for variant, rank in (("opt", ranks.optimistic), ("pes", ranks.pessimistic)):
    for name, value in metrics_at_rank(rank).items():
      values[f"{name}/{variant}"] = value
  return values


def metric_keys() -> list[str]:
  return [f"{name}/{variant}" for name in METRICS for variant in VARIANTS]


# Per variant ("opt", "pes"): how many users have their target at each rank.
RankCounts = Mapping[str, collections.Counter[int]]


def mean_metrics(rank_counts: RankCounts) -> dict[str, float]:
  """Mean metrics over users, from the number of users at each rank.

  `math.fsum` rounds the sum of the per-rank terms once, whatever their
  order, so the means do not depend on the order users arrive in:
  metrics.json is the same on any runner and number of workers.
  """
  means = {}
  for variant in VARIANTS:
    counts = rank_counts[variant]
    num_users = sum(counts.values())
    if not num_users:
      raise ValueError("No ranked users to average metrics over.")
    terms = [(count, metrics_at_rank(rank)) for rank, count in counts.items()]
    for name in METRICS:
      total = math.fsum(count * values[name] for count, values in terms)
      means[f"{name}/{variant}"] = total / num_users
  return means


def with_misses(means: Mapping[str, float], num_ranked: int,
                num_missed: int) -> dict[str, float]:
  """Means over ranked and missed users; a miss scores 0 on every metric.

  A test user the evaluation could not rank (no generated samples, NaN
  log-probabilities, a target outside the corpus) is a miss, as its target
  is not recommended at any rank: leaving it out would raise the averages.
  """
  total = num_ranked + num_missed
  if total == 0:
    raise ValueError("No users to average metrics over.")
  return {key: means.get(key, 0.0) * num_ranked / total
          for key in metric_keys()}

