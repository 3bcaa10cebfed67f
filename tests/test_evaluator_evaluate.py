"""LIR against hand-computed ranks, and the Beam job end to end."""

import glob
import json
import logging
import math
import os
import shutil

import beam_testfs
import evaluator_testdata
import numpy as np
import pyarrow.parquet as pq
import pytest

from evaluator import baselines
from evaluator import bm25
from evaluator import data
from evaluator import evaluate
from evaluator import generation
from evaluator import report
from evaluator import retrieval
from evaluator import transforms

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


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  category_dir = root / CATEGORY
  evaluator_testdata.write_corpus(category_dir, [_item(i) for i in ITEMS])
  users = [(u, [_item(i) for i in items]) for u, (items, _) in USERS.items()]
  users += [("short", [_item("A")]), ("lost", [_item("A"), {
      "item_id": "Z", "text": "not in corpus"}])]
  evaluator_testdata.write_split(category_dir, "test", CATEGORY, users)
  return root


def _run(data_dir, output_dir, *flags, load_generator=None):
  """Without --runner: the job must pick FnApiRunner itself."""
  return evaluate.run([f"--data_dir={data_dir}", f"--category={CATEGORY}",
                       "--split=test", f"--output_dir={output_dir}",
                       *flags], load_generator)


def test_lir_pipeline_writes_metrics_users_and_rejects(data_dir, tmp_path,
                                                       caplog):
  caplog.set_level(logging.INFO)
  summary = _run(data_dir, tmp_path, "--model=lir")
  # Beam's default DirectRunner would first try to download Prism.
  assert not [r for r in caplog.records if "prism" in r.getMessage().lower()]
  assert summary["num_users"] == 4 and summary["num_rejected"] == 2
  # "lost" (target outside the corpus) is a test user: a miss, not dropped;
  # "short" is a bad record, not a user.
  assert summary["num_unranked"] == 1
  assert summary["metrics"] == pytest.approx(_expected_means(num_missed=1))
  assert json.loads((tmp_path / "metrics.json").read_text()) == summary
  assert "| Toys | NDCG@10 |" in (tmp_path / "results.md").read_text()

  users = pq.read_table(glob.glob(str(tmp_path / "users-*.parquet"))).to_pylist()
  by_user = {u["user_id"]: u for u in users}
  assert {u: (r["rank_optimistic"], r["rank_pessimistic"])
          for u, r in by_user.items()} == {u: e for u, (_, e) in USERS.items()}
  assert by_user["u1"]["kept_texts"] == ["alpha beta"]
  rejects = [json.loads(line) for path in glob.glob(str(tmp_path / "rejects-*"))
             for line in open(path)]
  assert sorted(r["reason"].split(":")[0] for r in rejects) == [
      "bad record", "target item Z is not in the corpus"]


def test_generator_pipeline_through_run_inference_and_lucene(data_dir,
                                                             tmp_path):
  lir_dir, model_dir = tmp_path / "lir", tmp_path / "model"
  _run(data_dir, lir_dir, "--model=lir")
  # A stale shard of an earlier run is removed with --overwrite.
  model_dir.mkdir()
  (model_dir / "users-00001-of-00002.parquet").write_text("stale")
  summary = _run(data_dir, model_dir, "--overwrite", "--model=calrec", "--model_dir=unused",
                 "--bm25_backend=lucene", "--recommendations_k=3",
                 load_generator=EchoGenerator)
  # Unmatchable and empty texts add all-zero columns: LIR's ranks again.
  assert summary["metrics"] == pytest.approx(_expected_means(num_missed=1))
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


def test_remote_paths_through_beam_filesystems(data_dir, tmp_path):
  """gs:// on Dataflow: data, outputs and reports only through FileSystems."""
  shutil.copytree(data_dir, tmp_path / "remote" / "data")
  beam_testfs.set_root(tmp_path / "remote")
  remote_data, remote_out = beam_testfs.url("data"), beam_testfs.url("eval")
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
  assert evaluate.earlier_outputs(remote_out)
  _run(remote_data, remote_out, "--overwrite", "--model=lir")
  assert report.load_summary(remote_out)["model"] == "lir"


class ProcessIdGenerator:
  """Answers each request with the last history item and its process id."""

  def generate(self, requests):
    return [[(request.history_texts[-1], -1.0), (f"pid{os.getpid()}", -2.0)]
            for request in requests]


def test_generation_is_spread_over_the_workers(tmp_path, monkeypatch):
  """The split is one file, read by one worker; generation uses both."""
  # Worker processes unpickle ProcessIdGenerator from this module.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
  data_dir, output_dir = tmp_path / "data", tmp_path / "eval"
  evaluator_testdata.write_corpus(data_dir / CATEGORY,
                                  [_item(i) for i in ITEMS])
  users = [(f"{user}_{copy}", [_item(i) for i in items])
           for user, (items, _) in USERS.items() for copy in range(10)]
  evaluator_testdata.write_split(data_dir / CATEGORY, "test", CATEGORY, users)
  summary = _run(data_dir, output_dir, "--model=calrec", "--model_dir=unused",
                 "--direct_num_workers=2",
                 "--direct_running_mode=multi_processing",
                 load_generator=ProcessIdGenerator)
  assert summary["num_users"] == len(users)
  rows = pq.read_table(glob.glob(str(output_dir / "users-*.parquet")),
                       columns=["kept_texts"]).to_pylist()
  process_ids = {text for row in rows for text in row["kept_texts"]
                 if text.startswith("pid")}
  assert len(process_ids) == 2


def test_user_seeds_depend_on_user_and_run_seed_only():
  assert generation.user_seed(0, "u1") == generation.user_seed(0, "u1")
  assert len({generation.user_seed(s, u) for s in (0, 1)
              for u in ("u1", "u2")}) == 4


def test_bad_flags_say_what_to_fix(data_dir, tmp_path, capsys):
  with pytest.raises(SystemExit):
    evaluate.parse_args([f"--data_dir={data_dir}", f"--category={CATEGORY}",
                         f"--output_dir={tmp_path}"])
  assert "--model=calrec needs --model_dir" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    evaluate.parse_args([f"--data_dir={data_dir}", "--category=Nope",
                         f"--output_dir={tmp_path}", "--model=lir"])
  assert "is Nope a category of the preprocessing output" in (
      capsys.readouterr().err)
  (tmp_path / "metrics.json").write_text("{}")
  with pytest.raises(SystemExit):
    evaluate.parse_args([f"--data_dir={data_dir}", f"--category={CATEGORY}",
                         f"--output_dir={tmp_path}", "--model=lir"])
  assert "--overwrite" in capsys.readouterr().err


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
    evaluate.parse_args([f"--data_dir={data_dir}", f"--category={CATEGORY}",
                         f"--output_dir={tmp_path}", *flags])
  assert message in capsys.readouterr().err


def test_a_missing_checkpoint_step_lists_the_steps(data_dir, tmp_path,
                                                   capsys):
  model_dir = tmp_path / "model"
  (model_dir / "checkpoints" / "100" / "params").mkdir(parents=True)
  (model_dir / "model.json").write_text("{}")
  with pytest.raises(SystemExit):
    evaluate.parse_args([f"--data_dir={data_dir}", f"--category={CATEGORY}",
                         f"--output_dir={tmp_path / 'out'}",
                         f"--model_dir={model_dir}", "--checkpoint_step=999"])
  assert "has steps [100]" in capsys.readouterr().err
  args, beam_argv = evaluate.parse_args([
      f"--data_dir={data_dir}", f"--category={CATEGORY}",
      f"--output_dir={tmp_path / 'out'}", f"--model_dir={model_dir}",
      "--checkpoint_step=100", "--runner=FnApiRunner",
      "--direct_num_workers=2"])
  assert args.checkpoint_step == 100
  assert beam_argv == ["--runner=FnApiRunner", "--direct_num_workers=2"]

