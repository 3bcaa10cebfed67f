r"""Retrieval on one core: users/s against pyserini, BM25 against bm25s.

  .venv/bin/python -m benchmarks.retrieval [--num_items=20000] \
      [--num_users=2000]
  .venv/bin/python -m benchmarks.retrieval --baseline=bm25s \
      [--data_dir=../shared/data/amazon2018] [--category=Gift_Cards] \
      [--num_items=4385] [--num_users=600]

The process and its JVM are pinned to one CPU.

--baseline=pyserini (the default): a seeded synthetic corpus of templated
items (Zipf-like title words, a few brands and prices) and users with 10 kept
texts each (perturbed corpus items, as a fine-tuned model writes them):

  - the default path: `transforms.evaluate_users` with the fast BM25 scorer
    (analyzer tokens from the JVM, Algorithm 1, ranks, top items, Table 7
    counts), in batches of 64 users;
  - the baseline: pyserini's `SimpleSearcher` with BM25(1.5, 0.75) retrieving
    the whole corpus for each query, on a subsample of queries, converted to
    users/s at 10 queries per user.

--baseline=bm25s (needs the `benchmark` extra: pip install -e '.[benchmark]'):
the category's items (meta_<category>.json.gz under --data_dir, cleaned and
templated as the pipeline does) with the item text of each of its reviews
(<category>_5.json.gz: the history texts) as queries; without those files,
the synthetic corpus of --num_items items and the 10 texts of each of
--num_users users. Every text is analyzed once by Lucene's analyzer and both
sides score the same token lists with the same k1 and b. Rounds alternate
between the sides; each figure is the median round.

  - queries/s of BM25 plus the top 10, `FastBM25.top_k`, against bm25s
    (method="lucene") with its numba backend (one thread) and its numpy
    backend, and against evaluator/bm25.py at --before_rev (read with git)
    with `retrieval.top_k` row by row;
  - the share of queries whose top-10 set is bm25s's, and the share whose
    top-10 scores are (by the project's scores: bm25s neither quantizes
    document lengths as Lucene does nor breaks ties by index);
  - users/s of the per-user path, `transforms.evaluate_users` in batches of 64
    users with N_gen=32 generated texts each (10 kept), with
    `FastBM25Scorer` against the one at --before_rev.

Prints one JSON line per figure: {"name", "value", "unit", "baseline", "ratio"}:
users/s by wall-clock and by process CPU time (the latter is steadier on a
shared machine), pyserini's seconds per query, queries/s, shares in %.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import logging
import os
import pathlib
import statistics
import subprocess
import tempfile
import time
import types
from typing import Any, Callable, Sequence

import numpy as np

from benchmarks import figures
from evaluator import bm25
from evaluator import data
from evaluator import lucene
from evaluator import retrieval
from evaluator import transforms
from pipelines import cli
from pipelines import processing
from pipelines import templates

TEXTS_PER_USER = 10
BATCH_SIZE = 64
# N_gen of the per-user path against bm25s (paper section 4).
GENERATED_PER_USER = 32
TOP_K = 10
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# The last evaluator/bm25.py that scored query by query.
BEFORE_REV = "31fa940dc9e6f17b11b552ce99383573118f9dd1"


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
                    rng: np.random.Generator,
                    texts_per_user: int = TEXTS_PER_USER):
  """(user, samples): texts near corpus items, decreasing log-probs."""
  batch = []
  for user in range(num_users):
    rows = rng.integers(len(corpus), size=texts_per_user + 1)
    samples = []
    for rank, row in enumerate(rows[1:]):
      words = corpus.texts[row].split()
      keep = rng.random(len(words)) > 0.15
      samples.append((" ".join(w for w, k in zip(words, keep) if k) +
                      f" v{user}", -5.0 * (rank + 1)))
    target = corpus.item_ids[rows[0]]
    batch.append((data.UserExample(f"U{user}", (), (), target, ""), samples))
  return batch


def evaluate(corpus, scorer, matcher, users) -> list[dict[str, Any]]:
  """Per-user records of `evaluate_users`, in batches of BATCH_SIZE."""
  options = transforms.RetrievalOptions()
  records = []
  for begin in range(0, len(users), BATCH_SIZE):
    for tag, record in transforms.evaluate_users(
        users[begin:begin + BATCH_SIZE], corpus, scorer, matcher, options):
      if tag != "result":
        raise RuntimeError(f"User rejected: {record}")
      records.append(record)
  return records


def measure_users(corpus, scorer, matcher, users) -> tuple[float, float]:
  """Users/s of `evaluate_users`: wall and CPU time."""
  start, cpu_start = time.perf_counter(), time.process_time()
  evaluate(corpus, scorer, matcher, users)
  elapsed = time.perf_counter() - start
  cpu = time.process_time() - cpu_start
  return len(users) / elapsed, len(users) / cpu


def measure_fast(corpus, users) -> tuple[float, float]:
  """Users/s of `evaluate_users` with the fast scorer: wall and CPU time."""
  scorer = bm25.FastBM25Scorer(corpus.texts, lucene.LuceneAnalyzer().tokenize)
  matcher = retrieval.HierarchicalMatcher(corpus.texts)
  evaluate(corpus, scorer, matcher, users[:BATCH_SIZE])  # Warm-up.
  return measure_users(corpus, scorer, matcher, users)


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


def category_data(data_dir: pathlib.Path, category: str
                  ) -> tuple[data.Corpus, list[str]] | None:
  """A category's templated items and its reviews' item texts, or None."""
  meta_path = data_dir / f"meta_{category}.json.gz"
  reviews_path = data_dir / f"{category}_5.json.gz"
  if not (meta_path.is_file() and reviews_path.is_file()):
    return None
  with gzip.open(meta_path, "rb") as lines:
    items = processing.parse_meta_lines(enumerate(lines), str(meta_path)).items
  columns = processing.corpus_columns(items, items)
  corpus = data.Corpus(tuple(columns["item_id"]), tuple(columns["text"]))
  with gzip.open(reviews_path, "rt") as lines:
    asins = [json.loads(line)["asin"] for line in lines if line.strip()]
  texts = dict(zip(corpus.item_ids, corpus.texts))
  return corpus, [texts[asin] for asin in asins if asin in texts]


def import_bm25s() -> Any:
  """The bm25s module, or exit with one line when the extra is missing."""
  try:
    import bm25s  # pylint: disable=g-import-not-at-top
    import numba  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as error:
    raise SystemExit(
        "benchmarks.retrieval --baseline=bm25s needs the benchmark extra: "
        f"pip install -e '.[benchmark]' ({error}).") from None
  logging.getLogger("bm25s").setLevel(logging.WARNING)
  return bm25s


def bm25_at(rev: str) -> types.ModuleType:
  """evaluator/bm25.py as it was at git revision `rev`."""
  source = subprocess.run(
      ["git", "show", f"{rev}:evaluator/bm25.py"], cwd=REPO_ROOT, check=True,
      capture_output=True, text=True).stdout
  module = types.ModuleType("bm25_before")
  code = compile(source, f"{rev}:evaluator/bm25.py", "exec")
  exec(code, module.__dict__)  # pylint: disable=exec-used
  return module


def top_k_by_row(index: Any, tokens: Sequence[Sequence[str]]) -> np.ndarray:
  """[len(tokens), TOP_K] by `score` on 256 queries, then `top_k` by row."""
  return np.array([retrieval.top_k(row, TOP_K)
                   for start in range(0, len(tokens), 256)
                   for row in index.score(tokens[start:start + 256])])


def bm25s_retrievers(bm25s: Any, corpus_tokens: Sequence[Sequence[str]],
                     k1: float, b: float
                     ) -> dict[str, Callable[[Sequence[Sequence[str]]],
                                             np.ndarray]]:
  """Top-TOP_K rows of bm25s's numba (one thread) and numpy backends."""
  retrievers = {}
  for backend, options in (("numba", {"n_threads": 1}),
                           ("numpy", {"n_threads": 0,
                                      "backend_selection": "numpy"})):
    index = bm25s.BM25(k1=k1, b=b, method="lucene", backend=backend)
    index.index(corpus_tokens, show_progress=False)
    retrievers[f"bm25s_{backend}"] = (
        lambda tokens, index=index, options=options: index.retrieve(
            tokens, k=TOP_K, show_progress=False, **options).documents)
  return retrievers


def median_rates(runs: dict[str, Callable[[], Any]], count: int,
                 rounds: int) -> dict[str, float]:
  """Median count/s of each run over `rounds` rounds that alternate them."""
  seconds = {name: [] for name in runs}
  for _ in range(rounds):
    for name, run in runs.items():
      start = time.perf_counter()
      run()
      seconds[name].append(time.perf_counter() - start)
  return {name: count / statistics.median(times)
          for name, times in seconds.items()}


def top_k_agreement(index: bm25.FastBM25, tokens: Sequence[Sequence[str]],
                    ours: np.ndarray, theirs: np.ndarray
                    ) -> tuple[float, float]:
  """% of queries with the same top-k set; with the same top-k scores."""
  same_rows = same_scores = 0
  for start in range(0, len(tokens), index.batch_rows):
    scores = index.score(tokens[start:start + index.batch_rows])
    for row, mine, other in zip(scores, ours[start:], theirs[start:]):
      same_rows += set(mine.tolist()) == set(other.tolist())
      same_scores += np.array_equal(row[mine], np.sort(row[other])[::-1])
  return 100 * same_rows / len(tokens), 100 * same_scores / len(tokens)


def bm25s_data(args: argparse.Namespace, rng: np.random.Generator
               ) -> tuple[data.Corpus, list[str], str]:
  """Corpus, query texts and a label: the category's, else synthetic ones."""
  category = (category_data(pathlib.Path(args.data_dir), args.category)
              if args.data_dir else None)
  if category is not None:
    corpus, queries = category
    return corpus, queries, f"{args.category}_{len(corpus)}_items"
  corpus = synthetic_corpus(args.num_items, rng)
  queries = [text for _, samples in synthetic_users(corpus, args.num_users, rng)
             for text, _ in samples]
  return corpus, queries, f"synthetic_{len(corpus)}_items"


def compare_queries(bm25s: Any, corpus_tokens: Sequence[Sequence[str]],
                    tokens: Sequence[Sequence[str]], label: str,
                    args: argparse.Namespace) -> None:
  """Queries/s of BM25 and the top 10 against bm25s and --before_rev's
  scorer (with `retrieval.top_k` by row); top-10 agreement."""
  index = bm25.FastBM25(corpus_tokens, k1=args.k1, b=args.b)
  before = bm25_at(args.before_rev).FastBM25(corpus_tokens, k1=args.k1,
                                             b=args.b)
  runs = {"project": functools.partial(index.top_k, tokens, TOP_K),
          "before": functools.partial(top_k_by_row, before, tokens)}
  runs.update({name: functools.partial(retrieve, tokens) for name, retrieve
               in bm25s_retrievers(bm25s, corpus_tokens, args.k1,
                                   args.b).items()})
  tops = {name: run() for name, run in runs.items()}  # Warm-up, numba's JIT.
  if not np.array_equal(tops["project"], tops["before"]):
    raise RuntimeError("The top 10 differ from --before_rev's.")
  rates = median_rates(runs, len(tokens), args.rounds)
  for name in ("before", "bm25s_numba", "bm25s_numpy"):
    figures.emit(f"bm25_top{TOP_K}_{label}_{len(tokens)}_queries_vs_{name}",
                 rates["project"], "queries/s", rates[name])
  for name in ("bm25s_numba", "bm25s_numpy"):
    same_rows, same_scores = top_k_agreement(index, tokens, tops["project"],
                                             tops[name])
    figures.emit(f"top{TOP_K}_same_rows_as_{name}", same_rows, "%", None)
    figures.emit(f"top{TOP_K}_same_scores_as_{name}", same_scores, "%", None)


def compare_users(corpus: data.Corpus, tokenize: bm25.Tokenizer, label: str,
                  rng: np.random.Generator, args: argparse.Namespace) -> None:
  """Users/s of the per-user path, this scorer against --before_rev's."""
  users = synthetic_users(corpus, args.num_users, rng, GENERATED_PER_USER)
  matcher = retrieval.HierarchicalMatcher(corpus.texts)
  scorers = {"after": bm25.FastBM25Scorer(corpus.texts, tokenize),
             "before": bm25_at(args.before_rev).FastBM25Scorer(corpus.texts,
                                                               tokenize)}
  warmup = {name: evaluate(corpus, scorer, matcher, users[:BATCH_SIZE])
            for name, scorer in scorers.items()}
  if warmup["after"] != warmup["before"]:
    raise RuntimeError("The per-user records differ before and after.")
  rates = {name: [] for name in scorers}
  for _ in range(args.rounds):
    for name, scorer in scorers.items():
      rates[name].append(measure_users(corpus, scorer, matcher, users))
  for column, clock in enumerate(("wall", "cpu")):
    after, before = (statistics.median(rate[column] for rate in rates[name])
                     for name in ("after", "before"))
    figures.emit(f"per_user_path_{label}_n_gen_{GENERATED_PER_USER}_1_core_"
                 f"{clock}", after, "users/s", before)


def compare_bm25s(args: argparse.Namespace) -> None:
  """Queries/s against bm25s, top-10 agreement, users/s before and after."""
  bm25s = import_bm25s()
  rng = np.random.default_rng(args.seed)
  corpus, queries, label = bm25s_data(args, rng)
  analyzer = lucene.LuceneAnalyzer()
  compare_queries(bm25s, analyzer.tokenize(corpus.texts),
                  analyzer.tokenize(queries), label, args)
  compare_users(corpus, analyzer.tokenize, label, rng, args)


def compare_pyserini(args: argparse.Namespace) -> None:
  """Users/s of the default path against pyserini's full-corpus search."""
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


def main() -> None:
  parser = argparse.ArgumentParser(
      allow_abbrev=False, prog="python -m benchmarks.retrieval",
      description=__doc__,
      formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--baseline", choices=("pyserini", "bm25s"),
                      default="pyserini")
  parser.add_argument("--num_items", type=cli.positive_int, default=20000)
  parser.add_argument("--num_users", type=cli.positive_int, default=2000)
  parser.add_argument("--num_baseline_queries", type=cli.positive_int,
                      default=20)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
      "--data_dir", default=str(REPO_ROOT.parent / "shared" / "data" /
                                "amazon2018"),
      help="bm25s: the Amazon 2018 files; '' for the synthetic corpus.")
  parser.add_argument("--category", default="Gift_Cards")
  parser.add_argument("--k1", type=float, default=lucene.BM25_K1)
  parser.add_argument("--b", type=float, default=lucene.BM25_B)
  parser.add_argument("--rounds", type=cli.positive_int, default=5)
  parser.add_argument("--before_rev", default=BEFORE_REV)
  args = parser.parse_args()

  if hasattr(os, "sched_setaffinity"):  # One core, the JVM's threads included.
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
  if args.baseline == "bm25s":
    compare_bm25s(args)
  else:
    compare_pyserini(args)


if __name__ == "__main__":
  main()
