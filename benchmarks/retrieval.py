r"""Users per second of retrieval plus metrics, against pyserini's search.

  .venv/bin/python -m benchmarks.retrieval [--num_items=20000] \
      [--num_users=2000]

A seeded synthetic corpus of templated items (Zipf-like title words,
a few brands and prices) and users with 10 kept texts each (perturbed corpus
items, as a fine-tuned model writes them). Measured on one core (the process
and its JVM pinned to one CPU):

  - the default path: `transforms.evaluate_users` with the fast BM25 scorer
    (analyzer tokens from the JVM, Algorithm 1, ranks, top items, Table 7
    counts), in batches of 64 users;
  - the baseline: pyserini's `SimpleSearcher` with BM25(1.5, 0.75) retrieving
    the whole corpus for each query, on a subsample of queries, converted to
    users/s at 10 queries per user.

Prints one JSON line per figure: {"name", "value", "unit", "baseline", "ratio"},
users/s by wall-clock and by process CPU time (the latter is steadier on a
shared machine), and pyserini's seconds per query.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from benchmarks import figures
from evaluator import bm25
from evaluator import data
from evaluator import lucene
from evaluator import retrieval
from evaluator import transforms
from pipelines import cli
from pipelines import templates

TEXTS_PER_USER = 10
BATCH_SIZE = 64


def synthetic_corpus(num_items: int, rng: np.random.Generator) -> data.Corpus:
  """Templated items; title words from a Zipf-like law over 8,000 words.

  The most common title word is in about 14 % of the items.
  """
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
  words = ["".join(rng.choice(letters, size=rng.integers(3, 10)))
           for _ in range(8000)]
  brands = [w.capitalize() for w in words[:300]] + [None]
  word_weights = (np.arange(len(words)) + 21.0)**-1.1
  word_weights /= word_weights.sum()
  texts = []
  for _ in range(num_items):
    ranks = rng.choice(len(words), size=rng.integers(3, 25), p=word_weights)
    price = None if rng.random() < 0.3 else f"${rng.integers(1, 300)}.99"
    texts.append(templates.item_text(
        " ".join(words[r] for r in ranks), "Industrial & Scientific",
        brands[rng.integers(len(brands))], price))
  return data.Corpus(tuple(f"I{i:06d}" for i in range(num_items)), tuple(texts))


def synthetic_users(corpus: data.Corpus, num_users: int,
                    rng: np.random.Generator):
  """(user, samples): 10 texts near corpus items, decreasing log-probs."""
  batch = []
  for user in range(num_users):
    rows = rng.integers(len(corpus), size=TEXTS_PER_USER + 1)
    samples = []
    for rank, row in enumerate(rows[1:]):
      words = corpus.texts[row].split()
      keep = rng.random(len(words)) > 0.15
      samples.append((" ".join(w for w, k in zip(words, keep) if k) +
                      f" v{user}", -5.0 * (rank + 1)))
    target = corpus.item_ids[rows[0]]
    batch.append((data.UserExample(f"U{user}", (), (), target, ""), samples))
  return batch


def measure_fast(corpus, users) -> tuple[float, float]:
  """Users/s of `evaluate_users` with the fast scorer: wall and CPU time."""
  scorer = bm25.FastBM25Scorer(corpus.texts, lucene.LuceneAnalyzer().tokenize)
  matcher = retrieval.HierarchicalMatcher(corpus.texts)
  options = transforms.RetrievalOptions()
  warmup = users[:BATCH_SIZE]
  list(transforms.evaluate_users(warmup, corpus, scorer, matcher, options))
  start, cpu_start = time.perf_counter(), time.process_time()
  evaluated = 0
  for begin in range(0, len(users), BATCH_SIZE):
    for tag, _ in transforms.evaluate_users(users[begin:begin + BATCH_SIZE],
                                            corpus, scorer, matcher, options):
      evaluated += tag == "result"
  elapsed = time.perf_counter() - start
  cpu = time.process_time() - cpu_start
  if evaluated != len(users):
    raise RuntimeError(f"Only {evaluated} of {len(users)} users evaluated.")
  return len(users) / elapsed, len(users) / cpu


def measure_pyserini(corpus, queries, index_dir) -> tuple[float, float]:
  """Seconds per full-corpus query of pyserini's SimpleSearcher: wall, CPU."""
  lucene.LuceneBM25(corpus.texts, index_dir)  # Builds the index.
  searcher = lucene.start_jvm().autoclass(
      "io.anserini.search.SimpleSearcher")(index_dir)
  searcher.set_bm25(lucene.BM25_K1, lucene.BM25_B)
  searcher.search(queries[0], len(corpus))
  start, cpu_start = time.perf_counter(), time.process_time()
  for query in queries:
    hits = searcher.search(query, len(corpus))
    _ = [(hit.lucene_docid, hit.score) for hit in hits]
  return ((time.perf_counter() - start) / len(queries),
          (time.process_time() - cpu_start) / len(queries))


def main() -> None:
  parser = argparse.ArgumentParser(
      allow_abbrev=False, prog="python -m benchmarks.retrieval",
      description=__doc__,
      formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--num_items", type=cli.positive_int, default=20000)
  parser.add_argument("--num_users", type=cli.positive_int, default=2000)
  parser.add_argument("--num_baseline_queries", type=cli.positive_int,
                      default=20)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  if hasattr(os, "sched_setaffinity"):  # One core, the JVM's threads included.
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
  rng = np.random.default_rng(args.seed)
  corpus = synthetic_corpus(args.num_items, rng)
  users = synthetic_users(corpus, args.num_users, rng)
  fast = measure_fast(corpus, users)
  queries = [text for _, samples in users[:args.num_baseline_queries]
             for text, _ in samples][:args.num_baseline_queries]
  with tempfile.TemporaryDirectory() as index_dir:
    seconds_per_query = measure_pyserini(corpus, queries, index_dir)
  for clock, users_per_s, query_seconds in zip(("wall", "cpu"), fast,
                                               seconds_per_query):
    baseline = 1.0 / (query_seconds * TEXTS_PER_USER)
    figures.emit(
        f"retrieval_and_metrics_{args.num_items}_items_1_core_{clock}",
        users_per_s, "users/s", baseline)
  figures.emit("pyserini_full_corpus_query_1_core_wall",
               seconds_per_query[0], "s/query",
               1.0 / (fast[0] * TEXTS_PER_USER))


if __name__ == "__main__":
  main()
