"""The evaluation steps as plain functions and the Beam DoFns that run them.

`evaluate_users` is one batch of users end to end: Algorithm 1 over each
user's samples, the target's optimistic and pessimistic ranks, top items and
Table 7's match counts. The DoFns load the corpus and start the JVM in
`setup`, once per worker.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import shutil
import tempfile
import weakref
from typing import Any, Iterable, Iterator, Optional, Sequence

import apache_beam as beam
from apache_beam.utils import shared
import numpy as np

from evaluator import bm25
from evaluator import data
from evaluator import generation
from evaluator import lucene
from evaluator import metrics
from evaluator import retrieval as retrieval_lib

REJECTS = "rejects"
RETRIEVALS = ("bm25", "hierarchical")
BM25_BACKENDS = ("fast", "lucene")
# Items listed per user in the per-user output (NDCG@10's cut-off, paper
# section 4).
TOP_ITEMS = 10


@dataclasses.dataclass(frozen=True)
class RetrievalOptions:
  """How generated texts become ranked items (paper 3.5 and section 6)."""

  retrieval: str = "bm25"
  bm25_backend: str = "fast"
  num_preds: int = retrieval_lib.NUM_PREDS
  epsilon: float = retrieval_lib.EPSILON
  recommendations_k: int = 0
  # The SentencePiece model the generated texts were decoded with; corpus
  # texts are matched and indexed as they read after a round trip through it
  # (`vocabulary_texts`). None (LIR): the corpus texts as they are.
  vocabulary_path: Optional[str] = None

  def __post_init__(self):
    if self.retrieval not in RETRIEVALS:
      raise ValueError(f"retrieval must be one of {RETRIEVALS}, "
                       f"got {self.retrieval!r}.")
    if self.bm25_backend not in BM25_BACKENDS:
      raise ValueError(f"bm25_backend must be one of {BM25_BACKENDS}, "
                       f"got {self.bm25_backend!r}.")
    if self.num_preds < 1:
      raise ValueError(f"num_preds must be positive, got {self.num_preds}.")
    if self.recommendations_k < 0:
      raise ValueError("recommendations_k must be >= 0 (0: none), got "
                       f"{self.recommendations_k}.")


def reject(user_id: str, reason: str) -> dict[str, str]:
  return {"user_id": user_id, "reason": reason}


def evaluate_users(batch: Sequence[tuple[data.UserExample, generation.Samples]],
                   corpus: data.Corpus, scorer: retrieval_lib.Scorer,
                   matcher: retrieval_lib.HierarchicalMatcher,
                   options: RetrievalOptions
                   ) -> Iterator[tuple[str, dict[str, Any]]]:
  """Yields ("result", per-user record) or (REJECTS, reason) per user."""
  kept = []
  for user, samples in batch:
    target_row = corpus.row(user.target_id)
    if target_row is None:
      yield REJECTS, reject(
          user.user_id, f"target item {user.target_id} is not in the corpus")
      continue
    if not samples:
      yield REJECTS, reject(user.user_id, "no generated samples (the newest "
                            "history item alone exceeds the input budget?)")
      continue
    try:
      predictions = retrieval_lib.select_predictions(samples, options.num_preds)
    except ValueError as error:
      yield REJECTS, reject(user.user_id, str(error))
      continue
    kept.append((user, samples, target_row, predictions))

  groups = [predictions.texts for _, _, _, predictions in kept]
  for (user, samples, target_row, predictions), match_scores in zip(
      kept, scorer.score_groups(groups)):
    fused = retrieval_lib.fuse(match_scores, predictions.logprobs,
                               options.epsilon)
    ranks = metrics.target_ranks(fused, target_row)
    top = retrieval_lib.top_k(fused, max(TOP_ITEMS, options.recommendations_k))
    counts = matcher.count([text for text, _ in samples])
    yield "result", {
        "user_id": user.user_id,
        "target_id": user.target_id,
        "kept_texts": list(predictions.texts),
        "kept_logprobs": list(predictions.logprobs),
        "top_item_ids": corpus.ids_at(top[:TOP_ITEMS]),
        "rank_optimistic": ranks.optimistic,
        "rank_pessimistic": ranks.pessimistic,
        "recommendations": [
            {"item_id": corpus.item_ids[row], "score": float(fused[row])}
            for row in top[:options.recommendations_k]],
        "match_counts": dataclasses.asdict(counts),
    }


# Beam counters of the job (Dataflow's job page shows them as it runs).
METRICS_NAMESPACE = "evaluator"


class ParseUsers(beam.DoFn):
  """Serialized split records -> `UserExample`s; bad records to REJECTS."""

  def __init__(self):
    self._bad_records = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                                     "bad_records")

  def process(self, serialized: bytes) -> Iterator[Any]:
    try:
      yield data.parse_example(serialized)
    except data.BadRecordError as error:
      self._bad_records.inc()
      yield beam.pvalue.TaggedOutput(REJECTS,
                                     reject("", f"bad record: {error}"))


def user_sample_key(seed: int, user_id: str) -> tuple[str, str]:
  """A user's place in a `SampleUsers` sample: the smallest keys are kept.

  The SHA-256 of "sample:{seed}:{user_id}", then the id: the same in every
  process (Python's hash() is salted per process) and apart from the users'
  sampling seeds (`generation.user_seed`).
  """
  text = f"sample:{seed}:{user_id}"
  return hashlib.sha256(text.encode("utf-8")).hexdigest(), user_id


class SampleUsers(beam.PTransform):
  """The `max_users` users of the smallest `user_sample_key`s (all if fewer).

  Which users are kept depends on the seed and the user ids alone, not on
  the runner, the number of workers or the order of the split files.
  """

  def __init__(self, max_users: int, seed: int):
    super().__init__()
    self._max_users = max_users
    self._seed = seed

  def expand(self, users: beam.PCollection) -> beam.PCollection:
    seed = self._seed
    last_kept = (users
                 | "Keys" >> beam.Map(
                     lambda user: user_sample_key(seed, user.user_id))
                 | "Smallest" >> beam.combiners.Top.Smallest(self._max_users)
                 | "Last" >> beam.Map(max, default=None))
    return users | "Keep" >> beam.Filter(
        lambda user, last: user_sample_key(seed, user.user_id) <= last,
        last=beam.pvalue.AsSingleton(last_kept))


def vocabulary_texts(texts: Sequence[str], vocabulary_path: str) -> list[str]:
  """`texts` as a model with this vocabulary writes them: decode(encode(t)).

  The vocabulary's normalisation (nmt_nfkc for `tasks.vocab`'s models) maps
  "\u2122" to "TM", full-width letters to ASCII and newlines to spaces, so a
  generated text can equal only the normalised form of an item's text.
  """
  from tasks import vocab  # pylint: disable=g-import-not-at-top
  vocabulary = vocab.get_vocabulary(vocabulary_path)
  return [vocabulary.decode(vocabulary.encode(text)) for text in texts]


class WorkerRetrieval:
  """A corpus with its scorer and matcher, built once per worker process.

  The DoFn instances of a process (one per concurrent bundle) share it
  through `apache_beam.utils.shared`: at 400,000 items one copy takes about
  2 GB. Scoring only reads it, so threads may use it at once. The Lucene
  index folder goes with the object: `shared` keeps the last one acquired
  alive until another replaces it or the process exits.
  """

  def __init__(self, corpus_path: str, options: RetrievalOptions):
    self.corpus = data.load_corpus(corpus_path)
    texts = self.corpus.texts
    if options.vocabulary_path:
      texts = vocabulary_texts(texts, options.vocabulary_path)
      logging.info("%d of %d corpus texts change in the vocabulary's "
                   "normal form.", sum(a != b for a, b in zip(
                       texts, self.corpus.texts)), len(texts))
    # Table 7's match counts need the matcher whatever the retrieval.
    self.matcher = retrieval_lib.HierarchicalMatcher(texts)
    self.scorer = (self.matcher if options.retrieval == "hierarchical" else
                   self._bm25_scorer(texts, options.bm25_backend))
    logging.info("Retrieval ready: %d corpus items, %s", len(self.corpus),
                 options)

  def _bm25_scorer(self, texts: Sequence[str],
                   backend: str) -> retrieval_lib.Scorer:
    if backend == "lucene":
      index_dir = tempfile.mkdtemp(prefix="calrec_lucene_")
      weakref.finalize(self, shutil.rmtree, index_dir, ignore_errors=True)
      return lucene.LuceneBM25(texts, index_dir)
    return bm25.FastBM25Scorer(texts, lucene.LuceneAnalyzer().tokenize)


class RetrieveAndRank(beam.DoFn):
  """Batches of (user, samples) -> per-user results (REJECTS on bad input)."""

  def __init__(self, corpus_path: str, options: RetrievalOptions):
    self._corpus_path = corpus_path
    self._options = options
    self._shared_retrieval = shared.Shared()
    self._ranked = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                                "ranked_users")
    self._unranked = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                                  "unranked_users")

  def setup(self) -> None:
    self.retrieval = self._shared_retrieval.acquire(
        lambda: WorkerRetrieval(self._corpus_path, self._options),
        tag=(self._corpus_path, self._options))
    self._done = 0

  def process(self, batch: Sequence[tuple[data.UserExample,
                                          generation.Samples]]
              ) -> Iterator[Any]:
    retrieval = self.retrieval
    for tag, record in evaluate_users(batch, retrieval.corpus,
                                      retrieval.scorer, retrieval.matcher,
                                      self._options):
      if tag == REJECTS:
        self._unranked.inc()
        yield beam.pvalue.TaggedOutput(REJECTS, record)
      else:
        self._ranked.inc()
        yield record
    previous, self._done = self._done, self._done + len(batch)
    if self._done // 1000 > previous // 1000:
      logging.info("Evaluated %d users on this worker.", self._done)

  def teardown(self) -> None:
    self.retrieval = None


_MATCH_FIELDS = tuple(f.name for f in dataclasses.fields(
    retrieval_lib.MatchCounts))
# (users at each rank per variant, per-field match counts, users whose
# target ties other items)
_Accumulator = tuple[dict[str, collections.Counter[int]], np.ndarray, int]


class MeanMetrics(beam.CombineFn):
  """Means of the per-user metrics, summed Table 7 match counts and the share
  of users whose target ties other items (`metrics.is_tied`).

  It counts users per rank and sums once at the end (`metrics.mean_metrics`,
  with `math.fsum`): the same bits however Beam splits the users.
  """

  def create_accumulator(self) -> _Accumulator:
    return ({variant: collections.Counter() for variant in metrics.VARIANTS},
            np.zeros(len(_MATCH_FIELDS), np.int64), 0)

  def add_input(self, accumulator: _Accumulator,
                result: dict[str, Any]) -> _Accumulator:
    rank_counts, matches, num_tied = accumulator
    ranks = metrics.TargetRanks(result["rank_optimistic"],
                                result["rank_pessimistic"])
    rank_counts["opt"][ranks.optimistic] += 1
    rank_counts["pes"][ranks.pessimistic] += 1
    counts = result["match_counts"]
    return rank_counts, matches + np.array(
        [counts[name] for name in _MATCH_FIELDS], np.int64), (
            num_tied + metrics.is_tied(ranks))

  def merge_accumulators(self, accumulators: Iterable[_Accumulator]
                        ) -> _Accumulator:
    rank_counts, matches, num_tied = self.create_accumulator()
    for other_counts, other_matches, other_tied in accumulators:
      for variant, counts in other_counts.items():
        rank_counts[variant].update(counts)
      matches = matches + other_matches
      num_tied += other_tied
    return rank_counts, matches, num_tied

  def extract_output(self, accumulator: _Accumulator) -> dict[str, Any]:
    rank_counts, matches, num_tied = accumulator
    count = sum(rank_counts["opt"].values())
    match_counts = retrieval_lib.MatchCounts(*(int(m) for m in matches))
    return {
        "num_users": count,
        "metrics": metrics.mean_metrics(rank_counts) if count else {},
        "tied_target_share": num_tied / count if count else 0.0,
        "output_matches": {"counts": dataclasses.asdict(match_counts),
                           "shares": match_counts.shares()},
    }
