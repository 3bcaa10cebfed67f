"""LIR against hand-computed ranks, and the Beam job end to end."""

import gc
import glob
import hashlib
import inspect
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

import apache_beam as beam
from apache_beam.internal import pickler
from apache_beam.metrics.metric import MetricsFilter
import beam_testfs
import conftest
import evaluator_testdata
import numpy as np
import pyarrow.parquet as pq
import pytest
import tasks_testdata

from evaluator import baselines
from evaluator import bm25
from evaluator import config as config_lib
from evaluator import data
from evaluator import evaluate
from evaluator import generation
from evaluator import lucene
from evaluator import report
from evaluator import retrieval
from evaluator import transforms
from pipelines import beam_options as beam_cli
from pipelines import sequences
from pipelines import templates

CATEGORY = "Toys"
# Plain texts so that ranks follow from which words items share.
ITEMS = {"A": "alpha beta", "B": "alpha gamma", "C": "delta epsilon",
         "D": "alpha beta", "E": "zeta"}
# user -> history then target, and (optimistic, pessimistic) target ranks.
USERS = {
    # Query "alpha beta": A and D tie on top.
    "u1": (["C", "A", "D"], (1, 2)),
    # Query "delta epsilon": only C scores; E ties with the other three at 0.
    "u2": (["A", "C", "E"], (2, 5)),
    # Query "alpha gamma": B first, then A and D tied.
    "u3": (["E", "B", "A"], (2, 3)),
    # Query "zeta": E alone, a genuine repeat of the last item.
    "u4": (["B", "E", "E"], (1, 1)),
}


def _item(item_id):
  return {"item_id": item_id, "text": ITEMS[item_id], "title": ITEMS[item_id],
          "category": CATEGORY, "brand": "Unknown", "price": "Unknown"}


def _user(user_id):
  items = USERS[user_id][0]
  return data.UserExample(user_id, tuple(items[:-1]),
                          tuple(ITEMS[i] for i in items[:-1]), items[-1],
                          ITEMS[items[-1]])


def _expected_means(num_missed):
  """Means over USERS plus `num_missed` unranked users, which score 0."""
  ranks = [expected for _, expected in USERS.values()]
  opt = [r[0] for r in ranks]
  pes = [r[1] for r in ranks]

  def ndcg(rank):
    return 1 / math.log2(rank + 1)

  means = {
      "Recall@1/opt": 0.5, "Recall@1/pes": 0.25,
      "Recall@10/opt": 1.0, "Recall@10/pes": 1.0,
      "MRR/opt": np.mean([1 / r for r in opt]),
      "MRR/pes": np.mean([1 / r for r in pes]),
      "NDCG@10/opt": np.mean([ndcg(r) for r in opt]),
      "NDCG@10/pes": np.mean([ndcg(r) for r in pes]),
  }
  share = len(USERS) / (len(USERS) + num_missed)
  return {key: value * share for key, value in means.items()}


def _write_data(root, items, users, num_shards=1):
  evaluator_testdata.write_output(root, CATEGORY, items, users,
                                  sequences.ROLE_SPLITS[sequences.Role.EVAL],
                                  num_shards)


def _copied_users(copies):
  """`copies` users "{user}_{copy}" per user of USERS, with its items."""
  return [(f"{user}_{copy}", [_item(i) for i in items])
          for user, (items, _) in USERS.items() for copy in range(copies)]


def _split_words(texts):
  return [text.split() for text in texts]


def test_lir_ranks_by_hand():
  corpus = data.Corpus(tuple(ITEMS), tuple(ITEMS.values()))
  scorer = bm25.FastBM25Scorer(corpus.texts, _split_words)
  batch = [(_user(u), baselines.last_item_samples(_user(u))) for u in USERS]
  batch.append((data.UserExample("lost", ("A",), ("alpha beta",), "Z", "?"),
                [("alpha beta", 0.0)]))
  batch.append((data.UserExample("mute", ("A",), ("alpha beta",), "B", "?"),
                []))
  outputs = list(transforms.evaluate_users(
      batch, corpus, scorer, retrieval.HierarchicalMatcher(corpus.texts),
      transforms.RetrievalOptions()))
  results = {r["user_id"]: r for tag, r in outputs if tag == "result"}
  assert {u: (r["rank_optimistic"], r["rank_pessimistic"])
          for u, r in results.items()} == {u: e for u, (_, e) in USERS.items()}
  assert results["u3"]["top_item_ids"][:3] == ["B", "A", "D"]
  rejects = [r for tag, r in outputs if tag == transforms.REJECTS]
  assert [r["user_id"] for r in rejects] == ["lost", "mute"]
  assert rejects[0]["reason"] == "target item Z is not in the corpus"
  assert rejects[1]["reason"].startswith("no generated samples")


class EchoGenerator:
  """Fixed outputs: two unmatchable texts above the last history item."""

  def generate(self, requests):
    return [[("qqqq zzzz", -0.5), (request.history_texts[-1], -1.0),
             ("", -0.1), ("qqqq zzzz", -2.0)] for request in requests]


_CALL_SIZES: list[int] = []


class SizeRecordingEchoGenerator(EchoGenerator):
  """EchoGenerator that records how many requests each call got."""

  def generate(self, requests):
    _CALL_SIZES.append(len(requests))
    return super().generate(requests)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  _write_data(root, [_item(i) for i in ITEMS], _data_users())
  return root


def _data_users():
  """USERS, a record too short to evaluate, and a target outside the corpus."""
  users = [(u, [_item(i) for i in items]) for u, (items, _) in USERS.items()]
  return users + [("short", [_item("A")]), ("lost", [_item("A"), {
      "item_id": "Z", "text": "not in corpus"}])]


def _resolved(flags, check_model=True):
  """`flags` as the command takes them: the resolved run and the Beam flags;
  a refusal, of the flags or of what they name, exits."""
  config, beam_argv = evaluate.parse_flags(flags)
  return evaluate.resolve_or_exit(config, check_model), beam_argv


def _run(data_dir, output_dir, *flags, load_generator=None):
  """Without --runner: the job must pick FnApiRunner itself."""
  return evaluate.run([f"--data_dir={data_dir}", f"--category={CATEGORY}",
                       "--split=test", f"--output_dir={output_dir}",
                       *flags], load_generator)


@pytest.mark.slow
def test_the_command_prints_results_md(data_dir, tmp_path, capsys):
  evaluate.main([f"--data_dir={data_dir}", f"--category={CATEGORY}",
                 "--split=test", f"--output_dir={tmp_path}", "--model=lir"])
  printed = capsys.readouterr().out
  assert printed == (tmp_path / "results.md").read_text()
  assert "| lir (bm25) |" in printed and "paper Table 7" in printed


def _attribute_item(item_id, title, brand, price):
  return {"item_id": item_id, "title": title, "category": "Camera",
          "brand": brand, "price": price,
          "text": templates.item_text(title, "Camera", brand, price)}


def test_corpus_is_matched_in_the_normal_form_of_the_model_vocabulary(
    tmp_path):
  corpus_path = str(evaluator_testdata.write_corpus(tmp_path / "Camera", [
      _attribute_item("T", "Tripod\u2122 Mount", "\uff2bodiak", "$9.99"),
      _attribute_item("M", "Tripod Mount", "Kodiak", "$19.99")]))
  vocabulary_path = tasks_testdata.train_test_vocabulary(tmp_path / "spm.model")
  # What the model writes for item T: nmt_nfkc maps the trade mark sign to
  # "TM" and the full-width K to "K".
  generated = ("Title: TripodTM Mount. Category: Camera. Brand: Kodiak. "
               "Price: $9.99.")
  raw = transforms.WorkerRetrieval(corpus_path, transforms.RetrievalOptions())
  assert raw.matcher.match(generated)[0] < 4
  normal = transforms.WorkerRetrieval(corpus_path, transforms.RetrievalOptions(
      vocabulary_path=vocabulary_path))
  level, rows = normal.matcher.match(generated)
  assert (level, rows.tolist()) == (4, [0])
  (scores,) = normal.scorer.score_groups([[generated]])
  assert scores[0, 0] > scores[0, 1]


@pytest.mark.slow
def test_the_dofns_of_a_worker_share_one_retrieval(data_dir, tmp_path,
                                                  monkeypatch):
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  corpus_path = str(data_dir / CATEGORY / "corpus.parquet")
  lucene_options = transforms.RetrievalOptions(bm25_backend="lucene")
  # Beam unpickles one DoFn instance per concurrent bundle.
  pickled = pickler.dumps(transforms.RetrieveAndRank(corpus_path,
                                                     lucene_options))
  first, second = pickler.loads(pickled), pickler.loads(pickled)
  first.setup()
  second.setup()
  assert first.retrieval is second.retrieval
  assert isinstance(first.retrieval.scorer, lucene.LuceneBM25)
  assert len(list(tmp_path.glob("calrec_lucene_*"))) == 1
  # Other options are another object; the fast scorer needs no index folder.
  other = transforms.RetrieveAndRank(corpus_path, transforms.RetrievalOptions())
  other.setup()
  assert isinstance(other.retrieval.scorer, bm25.FastBM25Scorer)
  assert len(list(tmp_path.glob("calrec_lucene_*"))) == 1
  # The index folder goes with its object.
  for dofn in (first, second, other):
    dofn.teardown()
  gc.collect()
  assert not list(tmp_path.glob("calrec_lucene_*"))


@pytest.mark.slow
def test_lir_pipeline_writes_metrics_users_and_rejects(data_dir, tmp_path,
                                                       caplog):
  caplog.set_level(logging.INFO)
  summary = _run(data_dir, tmp_path, "--model=lir")
  # Beam's default DirectRunner would first try to download Prism.
  assert not [r for r in caplog.records if "prism" in r.getMessage().lower()]
  assert summary["num_users"] == 4 and summary["num_rejected"] == 2
  # The data it ran on; LIR has no generation batches.
  assert summary["data_dir"] == str(data_dir)
  assert summary["num_records"] == len(_data_users())
  assert "batch_size" not in summary and summary["recommendations_k"] == 0
  # "lost" (target outside the corpus) is a test user: a miss, not dropped;
  # "short" is a bad record, not a user.
  assert summary["num_unranked"] == 1
  assert summary["metrics"] == pytest.approx(_expected_means(num_missed=1))
  # Table 7 counts over the 4 ranked users' one sample each (not "lost"'s):
  # plain texts follow no item template, so all are format errors.
  assert summary["output_matches"] == {
      "counts": {"outputs": 4, "format_errors": 4, "all_four": 0,
                 "title_only": 0},
      "shares": {"Format Error": 1.0, "All Four Attributes": 0.0,
                 "Title Only": 0.0}}
  assert json.loads((tmp_path / "metrics.json").read_text()) == summary
  results_md = (tmp_path / "results.md").read_text()
  assert "| Toys | NDCG@10 |" in results_md
  assert "| Toys | lir (bm25) | 100.0% | 0.0% | 0.0% |" in results_md

  users = pq.read_table(
      glob.glob(str(tmp_path / "users-*.parquet"))).to_pylist()
  by_user = {u["user_id"]: u for u in users}
  assert {u: (r["rank_optimistic"], r["rank_pessimistic"])
          for u, r in by_user.items()} == {u: e for u, (_, e) in USERS.items()}
  assert by_user["u1"]["kept_texts"] == ["alpha beta"]
  rejects = [json.loads(line) for path in glob.glob(str(tmp_path / "rejects-*"))
             for line in open(path)]
  assert sorted(r["reason"].split(":")[0] for r in rejects) == [
      "bad record", "target item Z is not in the corpus"]


@pytest.mark.slow
def test_counters_equal_the_counts_of_metrics_json(data_dir, tmp_path):
  resolved, beam_argv = _resolved([
      f"--data_dir={data_dir}", f"--category={CATEGORY}",
      f"--output_dir={tmp_path}", "--model=lir"])
  root = beam.Pipeline(options=beam_cli.beam_options(beam_argv))
  _ = root | evaluate.Evaluate(resolved, str(tmp_path))
  result = root.run()
  result.wait_until_finish()
  query = MetricsFilter().with_namespace(transforms.METRICS_NAMESPACE)
  counters = {metric.key.metric.name: metric.committed
              for metric in result.metrics().query(query)["counters"]}
  summary = report.load_summary(tmp_path)
  assert counters == {
      "ranked_users": summary["num_users"],
      "unranked_users": summary["num_unranked"],
      "bad_records": summary["num_rejected"] - summary["num_unranked"]}
  # "lost" is unranked, "short" a bad record (see _data_users).
  assert counters == {"ranked_users": len(USERS), "unranked_users": 1,
                      "bad_records": 1}


@pytest.mark.slow
def test_generator_pipeline_through_run_inference_and_lucene(data_dir,
                                                             tmp_path):
  lir_dir, model_dir = tmp_path / "lir", tmp_path / "model"
  _run(data_dir, lir_dir, "--model=lir")
  # A stale shard of an earlier run is removed with --overwrite.
  model_dir.mkdir()
  (model_dir / "users-00001-of-00002.parquet").write_text("stale")
  _CALL_SIZES.clear()
  summary = _run(data_dir, model_dir, "--overwrite", "--model=calrec",
                 "--model_dir=unused", "--bm25_backend=lucene",
                 "--recommendations_k=3", "--batch_size=1",
                 load_generator=SizeRecordingEchoGenerator)
  assert (summary["batch_size"], summary["recommendations_k"]) == (1, 3)
  # The generator gets several batches' worth of requests at a time, which
  # it may split by prompt length (`generation.BATCHES_PER_CALL`).
  assert sum(_CALL_SIZES) == 5 and max(_CALL_SIZES) > 1
  assert max(_CALL_SIZES) <= generation.BATCHES_PER_CALL
  # Unmatchable and empty texts add all-zero columns: LIR's ranks again.
  assert summary["metrics"] == pytest.approx(_expected_means(num_missed=1))
  # Table 7 counts all 4 samples of each ranked user, the repeated one too
  # (3 are kept for retrieval); none follows the item template.
  assert summary["output_matches"]["counts"] == {
      "outputs": 16, "format_errors": 16, "all_four": 0, "title_only": 0}
  users = pq.read_table(glob.glob(str(model_dir / "users-*.parquet")))
  u1 = [u for u in users.to_pylist() if u["user_id"] == "u1"][0]
  assert u1["kept_texts"] == ["", "qqqq zzzz", "alpha beta"]
  assert u1["kept_logprobs"] == [-0.1, -0.5, -1.0]
  recommendations = [json.loads(line) for path in glob.glob(
      str(model_dir / "recommendations-*")) for line in open(path)]
  assert [item["item_id"] for r in recommendations if r["user_id"] == "u3"
          for item in r["items"]] == ["B", "A", "D"]

  test = report.paired_t_test(report.load_user_ranks(str(model_dir)),
                              report.load_user_ranks(str(lir_dir)))
  assert test["num_users"] == 4
  assert all(row["p_value"] == 1.0 for row in test["metrics"].values())


# Items in the item template, for exact attribute matches (paper section 6).
TEMPLATED = {"A": ("Red Card", "Toys", "Acme", "$10.00"),
             "B": ("Red Card", "Toys", "Acme", "$25.00"),
             "C": ("Red Card", "Toys", "Zenith", "$10.00"),
             "D": ("Blue Ball", "Toys", "Acme", "$5.00"),
             "E": ("Red Card", "Books", "Acme", "$10.00")}


def _templated_item(item_id):
  title, category, brand, price = TEMPLATED[item_id]
  return {"item_id": item_id,
          "text": templates.item_text(title, category, brand, price),
          "title": title, "category": category, "brand": brand,
          "price": price}


# Per user: history then target, the generator's samples for the last history
# item, and the target's (optimistic, pessimistic) ranks, derived in
# test_hierarchical_retrieval_ranks_and_table_7_by_hand.
HIERARCHICAL_USERS = {
    "h1": (["D", "A", "B"], [
        (templates.item_text("Red Card", "Toys", "Acme", "$99.00"), -1.0),
        ("Red Card by Acme", -0.5),  # Format error.
        (templates.item_text("Red Card", "Garden", "Nobody", "$1.00"), -2.0),
        (templates.item_text("Red Card", "Toys", "Acme", "$99.00"), -4.0),
    ], (1, 2)),
    "h2": (["A", "C", "D"], [
        (_templated_item("C")["text"], -1.0),
        (templates.item_text("Blue Ball", "Toys", "Zenith", "$7.00"), -3.0),
    ], (2, 2)),
    "h3": (["B", "E", "A"], [
        (templates.item_text("Green Hat", "Toys", "Acme", "$10.00"), -0.1),
        ("", -0.2),  # Format error.
    ], (1, 5)),
}


class TableGenerator:
  """The samples HIERARCHICAL_USERS lists for the request's last item."""

  def generate(self, requests):
    by_last_text = {_templated_item(items[-2])["text"]: samples
                    for items, samples, _ in HIERARCHICAL_USERS.values()}
    return [by_last_text[request.history_texts[-1]] for request in requests]


@pytest.mark.slow
def test_hierarchical_retrieval_ranks_and_table_7_by_hand(tmp_path):
  """Paper section 6: exact matches at 4, 3, 2, then 1 attributes.

  Each matched item scores exp(eps * log-prob) of its best matching sample.
  h1: "Red Card, Toys, Acme, $99" matches A and B on 3 attributes (log-prob
  -1); "Red Card, Garden, Nobody" matches A, B, C, E on the title (-2), so C
  and E score exp(-2 eps) < exp(-eps); the format error and D score 0.
  Target B ties A on top: ranks (1, 2).
  h2: C's own text matches C on all four (-1); "Blue Ball, Toys, Zenith"
  matches D on title and category (-3). Target D is second: (2, 2).
  h3: an unknown title and an empty text match nothing: all five tie, (1, 5).
  """
  data_dir, output_dir = tmp_path / "data", tmp_path / "eval"
  _write_data(data_dir, [_templated_item(i) for i in TEMPLATED],
              [(user, [_templated_item(i) for i in items])
               for user, (items, _, _) in HIERARCHICAL_USERS.items()])
  summary = _run(data_dir, output_dir, "--model=calrec", "--model_dir=unused",
                 "--retrieval=hierarchical", load_generator=TableGenerator)

  users = pq.read_table(glob.glob(str(output_dir / "users-*.parquet")))
  by_user = {u["user_id"]: u for u in users.to_pylist()}
  assert {u: (r["rank_optimistic"], r["rank_pessimistic"])
          for u, r in by_user.items()} == {
              u: ranks for u, (_, _, ranks) in HIERARCHICAL_USERS.items()}
  assert by_user["h1"]["top_item_ids"] == ["A", "B", "C", "E", "D"]
  assert by_user["h2"]["top_item_ids"] == ["C", "D", "A", "B", "E"]
  assert by_user["h3"]["top_item_ids"] == ["A", "B", "C", "D", "E"]

  assert summary["retrieval"] == "hierarchical"
  assert summary["num_users"] == 3 and summary["num_unranked"] == 0

  def ndcg(rank):
    return 1 / math.log2(rank + 1)

  assert summary["metrics"] == pytest.approx({
      "NDCG@10/opt": (1 + ndcg(2) + 1) / 3,
      "NDCG@10/pes": (ndcg(2) + ndcg(2) + ndcg(5)) / 3,
      "Recall@1/opt": 2 / 3, "Recall@1/pes": 0.0,
      "Recall@10/opt": 1.0, "Recall@10/pes": 1.0,
      "MRR/opt": (1 + 1 / 2 + 1) / 3, "MRR/pes": (1 / 2 + 1 / 2 + 1 / 5) / 3})
  # Table 7 over all 8 samples, h1's repeat included. Format errors: h1's
  # "Red Card by Acme" and h3's "". All four: h2's C. Title matched (any
  # level >= 1): h1's three templated samples and both of h2's.
  assert summary["output_matches"] == {
      "counts": {"outputs": 8, "format_errors": 2, "all_four": 1,
                 "title_only": 5},
      "shares": {"Format Error": 0.25, "All Four Attributes": 0.125,
                 "Title Only": 0.625}}
  assert "| Toys | calrec (hierarchical) | 25.0% | 12.5% | 62.5% |" in (
      output_dir / "results.md").read_text()


@pytest.mark.parametrize("remote_url", [beam_testfs.url,
                                        beam_testfs.object_url])
@pytest.mark.slow
def test_remote_paths_through_beam_filesystems(data_dir, tmp_path,
                                               remote_url):
  """gs:// on Dataflow: data, outputs and reports only through FileSystems,
  with folders and on an object store without them."""
  shutil.copytree(data_dir, tmp_path / "remote" / "data")
  beam_testfs.set_root(tmp_path / "remote")
  remote_data, remote_out = remote_url("data"), remote_url("eval")
  assert not os.path.exists(remote_data)  # Local file access would fail.
  local = _run(data_dir, tmp_path / "local", "--model=calrec",
               "--model_dir=unused", load_generator=EchoGenerator)
  remote = _run(remote_data, remote_out, "--model=calrec", "--model_dir=unused",
                load_generator=EchoGenerator)
  assert remote["metrics"] == local["metrics"]
  assert report.load_summary(remote_out) == remote
  assert report.load_user_ranks(remote_out) == report.load_user_ranks(
      str(tmp_path / "local"))
  # A rerun replaces the earlier outputs in place.
  assert config_lib.earlier_outputs(remote_out)
  _run(remote_data, remote_out, "--overwrite", "--model=lir")
  assert report.load_summary(remote_out)["model"] == "lir"


class ProcessIdGenerator:
  """Answers each request with the last history item and its process id."""

  def generate(self, requests):
    return [[(request.history_texts[-1], -1.0), (f"pid{os.getpid()}", -2.0)]
            for request in requests]


@pytest.mark.slow
def test_generation_is_spread_over_the_workers(tmp_path, monkeypatch):
  """The split is one file, read by one worker; generation uses both.

  Not a matter of timing: for the stage after Reshuffle's GroupByKey,
  FnApiRunner's ParallelBundleManager (apache-beam 2.77, pinned) deals the
  grouped keys (one random key per user) round-robin into one part per
  worker and sends the parts, as consecutive bundles, to the worker handlers
  round-robin. Each worker gets the users of every other key, whatever the
  load on the machine.
  """
  # Worker processes unpickle ProcessIdGenerator from this module.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
  data_dir, output_dir = tmp_path / "data", tmp_path / "eval"
  users = _copied_users(10)
  _write_data(data_dir, [_item(i) for i in ITEMS], users)
  summary = _run(data_dir, output_dir, "--model=calrec", "--model_dir=unused",
                 "--direct_num_workers=2",
                 "--direct_running_mode=multi_processing",
                 load_generator=ProcessIdGenerator)
  assert summary["num_users"] == len(users)
  rows = pq.read_table(glob.glob(str(output_dir / "users-*.parquet")),
                       columns=["user_id", "kept_texts", "rank_optimistic",
                                "rank_pessimistic"]).to_pylist()
  process_ids = {text for row in rows for text in row["kept_texts"]
                 if text.startswith("pid")}
  assert len(process_ids) == 2 and f"pid{os.getpid()}" not in process_ids
  # "pidN" matches no item: every copy keeps its LIR ranks...
  assert {row["user_id"]: (row["rank_optimistic"], row["rank_pessimistic"])
          for row in rows} == {f"{user}_{copy}": ranks for user, (_, ranks)
                               in USERS.items() for copy in range(10)}
  # ... so the means merged from both workers' partial sums are those of one
  # worker over USERS, and the Table 7 counts add up over both workers.
  assert summary["metrics"] == pytest.approx(_expected_means(num_missed=0))
  assert summary["output_matches"]["counts"] == {
      "outputs": 80, "format_errors": 80, "all_four": 0, "title_only": 0}


_SEED_KEYS = [(seed, user) for seed in (0, 1, 12345)
              for user in ("u1", "u2", "A1B2C3", "Ünïcødé", "")]


def _seeds_in_subprocess(hash_seed):
  """`user_seed` of _SEED_KEYS in a fresh interpreter with PYTHONHASHSEED."""
  code = ("import json, sys; from evaluator import generation; "
          "print(json.dumps([generation.user_seed(s, u) "
          "for s, u in json.load(sys.stdin)]))")
  completed = subprocess.run(
      [sys.executable, "-c", code], input=json.dumps(_SEED_KEYS),
      capture_output=True, text=True, check=True,
      env=dict(os.environ, PYTHONHASHSEED=str(hash_seed)),
      cwd=conftest.REPO_ROOT)
  return json.loads(completed.stdout)


@pytest.mark.slow
def test_user_seeds_depend_on_user_and_run_seed_only():
  # Independent implementation of generation.user_seed: the first 4 bytes of
  # SHA-256("{seed}:{user_id}") read little-endian, top bit cleared (31 bits).
  def expected(seed, user_id):
    digest = hashlib.sha256(f"{seed}:{user_id}".encode("utf-8")).hexdigest()
    little_endian = "".join(reversed([digest[i:i + 2] for i in range(0, 8, 2)]))
    return int(little_endian, 16) % 2**31

  seeds = [generation.user_seed(seed, user) for seed, user in _SEED_KEYS]
  assert seeds == [expected(seed, user) for seed, user in _SEED_KEYS]
  assert len(set(seeds)) == len(_SEED_KEYS)
  # PRNGKey takes it as uint32; the full 31 bits are used.
  many = [generation.user_seed(0, f"u{i}") for i in range(2000)]
  assert 0 <= min(many) and max(many) < 2**31 and max(many) >= 2**30
  # Not Python's per-process salted hash(): other interpreters agree.
  assert _seeds_in_subprocess(1) == seeds
  assert _seeds_in_subprocess(2) == seeds


def test_each_local_worker_expects_its_share_of_the_users(data_dir,
                                                          tmp_path):
  """The generator's ETA total: the split's users (USERS, "short" and
  "lost"), or the --max_users subset's, over the worker processes."""
  flags = [f"--data_dir={data_dir}", f"--category={CATEGORY}", "--split=test",
           f"--output_dir={tmp_path}", "--model=calrec", "--model_dir=unused"]
  every, _ = _resolved(flags, check_model=False)
  subset, _ = _resolved([*flags, "--max_users=3"], check_model=False)
  users = len(USERS) + 2
  assert every.split_files.num_records == users
  assert [evaluate.users_per_worker(every, processes)
          for processes in (1, 2, 3, None)] == [
              users, math.ceil(users / 2), math.ceil(users / 3), None]
  assert evaluate.users_per_worker(subset, 2) == 2
  assert evaluate.calrec_generator_loader(every, 2).expected_users == (
      math.ceil(users / 2))
  assert evaluate.calrec_generator_loader(every).expected_users is None


def test_defaults_are_the_papers(data_dir, tmp_path):
  """Paper section 4, "Implementation Details"."""
  # N_gen = 32 samples at temperature 0.5, at most 80 decoded tokens.
  assert generation.NUM_GENERATIONS == 32
  assert generation.TEMPERATURE == 0.5
  assert generation.MAX_DECODE_LENGTH == 80
  # N_preds = 10 kept texts; log-prob modulation epsilon = 1/5000.
  assert retrieval.NUM_PREDS == 10
  assert retrieval.EPSILON == 1 / 5000
  # BM25 with k1 = 1.5 and b = 0.75, for both backends.
  assert (lucene.BM25_K1, lucene.BM25_B) == (1.5, 0.75)
  for scorer in (bm25.FastBM25, bm25.FastBM25Scorer, lucene.LuceneBM25):
    parameters = inspect.signature(scorer).parameters
    assert (parameters["k1"].default, parameters["b"].default) == (1.5, 0.75)
  options = transforms.RetrievalOptions()
  assert (options.num_preds, options.epsilon) == (10, 1 / 5000)
  # The command line's defaults.
  config, _ = evaluate.parse_flags([
      f"--data_dir={data_dir}", f"--category={CATEGORY}",
      f"--output_dir={tmp_path}", "--model_dir=unused"])
  assert (config.num_generations, config.temperature, config.max_decode_length,
          config.num_preds, config.epsilon) == (32, 0.5, 80, 10, 1 / 5000)
  assert (config.model, config.retrieval, config.bm25_backend) == (
      "calrec", "bm25", "fast")


def test_bad_flags_say_what_to_fix(data_dir, tmp_path, capsys):
  with pytest.raises(SystemExit):
    _resolved([f"--data_dir={data_dir}", f"--category={CATEGORY}",
               f"--output_dir={tmp_path}"])
  assert "--model=calrec needs --model_dir" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    _resolved([f"--data_dir={data_dir}", "--category=Nope",
               f"--output_dir={tmp_path}", "--model=lir"])
  assert f"{data_dir}/manifest.json lists no category 'Nope'; it has Toys." in (
      capsys.readouterr().err)
  (tmp_path / "metrics.json").write_text("{}")
  with pytest.raises(SystemExit):
    _resolved([f"--data_dir={data_dir}", f"--category={CATEGORY}",
               f"--output_dir={tmp_path}", "--model=lir"])
  assert "--overwrite" in capsys.readouterr().err
  # Beam's refusal comes before the earlier run is deleted.
  with pytest.raises(SystemExit):
    evaluate.run([f"--data_dir={data_dir}", f"--category={CATEGORY}",
                  f"--output_dir={tmp_path}", "--model=lir", "--overwrite",
                  "--runner=Nope"])
  assert "error: Unexpected pipeline runner: Nope." in capsys.readouterr().err
  assert (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("damage,message", [
    ("manifest.json", "has no manifest.json: preprocessing did not finish"),
    (f"{CATEGORY}/test-00000-of-00001.tfrecord",
     "lacks 1 of the 1 test files of Toys that manifest.json lists"),
])
def test_an_unfinished_or_incomplete_output_is_refused(data_dir, tmp_path,
                                                       capsys, damage,
                                                       message):
  copy = tmp_path / "data"
  shutil.copytree(data_dir, copy)
  (copy / damage).unlink()
  with pytest.raises(SystemExit):
    _resolved([f"--data_dir={copy}", f"--category={CATEGORY}",
               f"--output_dir={tmp_path / 'out'}", "--model=lir"])
  error = capsys.readouterr().err.splitlines()[-1]
  assert f"error: {copy} " in error and message in error


def test_a_category_left_without_users_is_refused(tmp_path, capsys):
  _write_data(tmp_path / "data", [_item(i) for i in ITEMS], [])
  with pytest.raises(SystemExit):
    _resolved([f"--data_dir={tmp_path / 'data'}", f"--category={CATEGORY}",
               f"--output_dir={tmp_path / 'out'}", "--model=lir"])
  assert capsys.readouterr().err.splitlines()[-1].endswith(
      f"error: {tmp_path / 'data'}: the test split of {CATEGORY} holds no "
      "users (preprocessing left none; see its rejects/).")


def test_dataflow_workers_are_not_given_local_folders(data_dir, tmp_path,
                                                      capsys):
  with pytest.raises(SystemExit):
    evaluate.parse_flags([f"--data_dir={data_dir}", f"--category={CATEGORY}",
                          "--output_dir=gs://bucket/eval", "--model=calrec",
                          "--model_dir=runs/stage2",
                          "--runner=DataflowRunner"])
  assert capsys.readouterr().err.splitlines()[-1].endswith(
      f"error: DataflowRunner workers cannot reach local paths: --data_dir "
      f"{data_dir}, --model_dir runs/stage2; give gs:// paths.")


@pytest.mark.slow
def test_only_the_split_files_of_the_manifest_are_read(data_dir, tmp_path):
  """A file beside them (e.g. of an earlier run) is not part of the split."""
  copy = tmp_path / "data"
  shutil.copytree(data_dir, copy)
  evaluator_testdata.write_split(tmp_path / "stray", "test", CATEGORY,
                                 _data_users())
  (tmp_path / "stray" / "test-00000-of-00001.tfrecord").rename(
      copy / CATEGORY / "test-00001-of-00002.tfrecord")
  summary = _run(copy, tmp_path / "eval", "--model=lir")
  assert (summary["num_users"], summary["num_rejected"]) == (4, 2)


@pytest.mark.slow
def test_split_files_changed_since_the_manifest_are_refused(data_dir,
                                                            tmp_path):
  copy, output_dir = tmp_path / "data", tmp_path / "eval"
  shutil.copytree(data_dir, copy)
  evaluator_testdata.write_split(copy / CATEGORY, "test", CATEGORY,
                                 _data_users()[:-1])
  with pytest.raises(Exception, match=re.escape(
      f"{copy}: read 5 test records of Toys, but its manifest.json counts "
      "6.")):
    _run(copy, output_dir, "--model=lir")
  assert not (output_dir / "metrics.json").exists()


@pytest.mark.parametrize("flags,message", [
    # Beam alone would drop it with a log line and run without recommendations.
    (["--model=lir", "--recomendations_k=5"],
     "--recomendations_k=5 (did you mean --recommendations_k?)"),
    # An abbreviation of --model_dir must not pass for --model.
    (["--mod=lir"], "unrecognized arguments"),
    (["--model_dir=MISSING"], "is not a model directory written by "
     "trainer.train"),
])
def test_unknown_flags_and_models_are_refused_up_front(data_dir, tmp_path,
                                                       capsys, flags, message):
  flags = [flag.replace("MISSING", str(tmp_path / "none")) for flag in flags]
  with pytest.raises(SystemExit):
    _resolved([f"--data_dir={data_dir}", f"--category={CATEGORY}",
               f"--output_dir={tmp_path}", *flags])
  assert message in capsys.readouterr().err


def test_a_missing_checkpoint_step_lists_the_steps(data_dir, tmp_path,
                                                   capsys):
  model_dir = tmp_path / "model"
  (model_dir / "checkpoints" / "100" / "params").mkdir(parents=True)
  (model_dir / "model.json").write_text("{}")
  with pytest.raises(SystemExit):
    _resolved([f"--data_dir={data_dir}", f"--category={CATEGORY}",
               f"--output_dir={tmp_path / 'out'}", f"--model_dir={model_dir}",
               "--checkpoint_step=999"])
  assert "has steps [100]" in capsys.readouterr().err
  resolved, beam_argv = _resolved([
      f"--data_dir={data_dir}", f"--category={CATEGORY}",
      f"--output_dir={tmp_path / 'out'}", f"--model_dir={model_dir}",
      "--checkpoint_step=100", "--runner=FnApiRunner",
      "--direct_num_workers=2"])
  assert resolved.config.checkpoint_step == 100
  assert beam_argv == ["--runner=FnApiRunner", "--direct_num_workers=2"]

