"""Wiring of the Beam job on FnApiRunner, on a small hand-made fixture."""

import collections
import filecmp
import glob
import gzip
import itertools
import json

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
import pyarrow.parquet as pq
import pytest

import beam_testfs
from pipelines import config as config_lib
from pipelines import beam_options
from pipelines import outputs
from pipelines import preprocess
from pipelines import transforms
import pipelines_testdata
from pipelines import templates


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
  folder = tmp_path_factory.mktemp("fixture")
  config = pipelines_testdata.write_fixture(folder / "data")
  output = folder / "out"
  stats = preprocess.run([f"--config={config}", f"--output_dir={output}",
                          "--read_range_mb=1"])
  return output, stats


@pytest.mark.slow
def test_sequences_are_ordered_deduplicated_and_split(run_output):
  output, _ = run_output
  test = pipelines_testdata.read_split(output / "Games", "test")
  # U2 is left with 3 events, below the 4 an eval user needs.
  assert sorted(test) == ["U1", "U3"]
  assert test["U1"][:2] == (["B1", "B2", "B3", "B4"], [10, 20, 30, 40])
  # Same timestamp: ordered by asin.
  assert test["U3"][:2] == (["B2", "B3", "B4", "B1"], [50, 50, 100, 200])
  assert test["U3"][3] == "Games"
  validation = pipelines_testdata.read_split(output / "Games", "validation")
  train = pipelines_testdata.read_split(output / "Games", "train")
  # Whole records: every field of a split is the prefix of the test record.
  ids, times, texts, category = test["U3"]
  assert validation["U3"] == (ids[:3], times[:3], texts[:3], category)
  assert train["U3"] == (ids[:2], times[:2], texts[:2], category)
  stage1 = pipelines_testdata.read_split(output / "Stage1", "train")
  assert sorted(stage1) == ["U1", "U2", "U3"]
  assert stage1["U2"][0] == ["B5", "B6", "B5"]  # Genuine repeat kept.
  assert stage1["U2"][3] == "Stage1"


@pytest.mark.slow
def test_item_texts_use_cleaned_meta_and_the_shared_template(run_output):
  output, _ = run_output
  ids, _, item_texts, _ = pipelines_testdata.read_split(output / "Games",
                                                        "test")["U1"]
  texts = dict(zip(ids, item_texts))
  assert texts == {
      # The complete one of the two B1 rows wins.
      "B1": templates.item_text("Star Saga I", "Video Games", "Nova",
                                "$19.99"),
      "B2": templates.item_text("Star Saga II & More", "Video Games", "Nova",
                                None),
      "B3": templates.item_text("Star Saga III", "Video Games", "Nova",
                                "$29.99"),
      "B4": templates.item_text("Star Saga IV", "Video Games", "Nova",
                                "$39.50"),
  }
  corpus = pq.read_table(output / "Games" / "corpus.parquet").to_pylist()
  assert [row["item_id"] for row in corpus] == ["B1", "B2", "B3", "B4"]
  assert corpus[1] == {"item_id": "B2", "text": texts["B2"],
                       "title": "Star Saga II & More",
                       "category": "Video Games", "brand": "Nova",
                       "price": "Unknown"}


@pytest.mark.slow
def test_stats_and_rejects_account_for_every_line(run_output):
  output, stats = run_output
  games = stats["Games"]
  assert games == json.loads((output / "Games" / "stats.json").read_text())
  assert games["num_users"] == 2
  assert games["users_before_dedup"] == 3
  assert games["pct_duplicate_purchases"] == pytest.approx(100 * 1 / 12)
  assert games["total_purchases"] == 8
  assert games["num_items"] == 4
  assert games["density"] == pytest.approx(8 / (2 * 4))
  assert games["dropped"] == {
      "duplicate_purchases": 1, "meta_duplicate_rows": 1,
      "meta_rejected_malformed_line": 1, "purchases_of_rejected_users": 3,
      "reviews_of_unsampled_users": 0,
      "reviews_rejected_malformed_line": 1,
      "reviews_rejected_missing_reviewerID": 1,
      "reviews_rejected_unknown_asin": 1,
      "users_rejected_too_few_events": 1}
  rejects = pipelines_testdata.reject_files(output, "Games")[
      "Games-00000-of-00001.jsonl"]
  assert sorted(reason for _, _, reason, _ in rejects) == sorted([
      "malformed_line", "malformed_line", "missing_reviewerID",
      "unknown_asin", "too_few_events"])
  lines = (output.parent / "data" / "Games_5.json").read_bytes()
  for source, offset, _, record in rejects:
    if source.endswith("Games_5.json"):
      assert lines[offset:].startswith(record.encode())
  assert stats["Stage1"]["num_users"] == 3


@pytest.mark.slow
def test_manifest_lists_every_file_and_is_last(run_output):
  output, _ = run_output
  manifest = json.loads((output / "manifest.json").read_text())
  stage1 = manifest["categories"]["Stage1"]["splits"]
  assert stage1 == {"train": {
      "files": ["Stage1/train-00000-of-00002.tfrecord",
                "Stage1/train-00001-of-00002.tfrecord"], "records": 3}}
  assert manifest["categories"]["Stage1"]["rejects"] == {
      "files": ["rejects/Stage1-00000-of-00002.jsonl",
                "rejects/Stage1-00001-of-00002.jsonl"], "records": 4}
  for category in manifest["categories"].values():
    for entry in [*category["splits"].values(), category["rejects"]]:
      for name in entry["files"]:
        assert (output / name).exists()
  # The job's last file; the launcher's run.json follows it.
  manifest_time = (output / "manifest.json").stat().st_mtime_ns
  assert all(p.stat().st_mtime_ns <= manifest_time
             for p in output.rglob("*") if p.is_file() and p.name != "run.json")
  assert (output / "run.json").stat().st_mtime_ns >= manifest_time


@pytest.mark.slow
def test_counters_equal_the_counts_of_the_files_written(tmp_path):
  """The Beam counters a runner shows, read from the PipelineResult: the
  counts of stats.json, the records read back from the shards, and the lines
  of the rejects files."""
  config = config_lib.load_config(
      str(pipelines_testdata.write_fixture(tmp_path / "data")))
  output = tmp_path / "out"
  pipeline = beam.Pipeline(options=beam_options.beam_options([]))
  preprocess.build_pipeline(pipeline, config, str(output),
                            *preprocess.plan_tasks(config))
  result = pipeline.run()
  result.wait_until_finish()
  query = MetricsFilter().with_namespace(transforms.METRICS_NAMESPACE)
  counters = {counter.key.metric.name: counter.committed
              for counter in result.metrics().query(query)["counters"]}
  expected = {}
  for category in config.categories:
    name = category.name
    counts = json.loads((output / name / "stats.json").read_text())["counts"]
    del counts["meta_duplicate_rows"]  # Derived from two counts at the end.
    counts["shards_written"] = category.num_shards
    rejects = pipelines_testdata.reject_files(output, name).values()
    counts["rejects_written"] = sum(map(len, rejects))
    for split in category.splits:
      counts[f"{split}_examples_written"] = len(
          pipelines_testdata.read_split(output / name, split))
    expected.update((f"{name}/{key}", value)
                    for key, value in counts.items() if value)
  assert expected["Games/review_lines"] == len(pipelines_testdata.REVIEWS)
  assert counters == expected


def test_bad_inputs_fail_early_with_a_message_naming_them(tmp_path, capsys):
  config = pipelines_testdata.write_fixture(tmp_path / "data")
  raw = json.loads(config.read_text())
  raw["categories"][0]["meta"] = "meta_Missing.json.gz"
  raw["categories"][1]["reviews"] = "Missing_5.json"
  config.write_text(json.dumps(raw))
  with pytest.raises(SystemExit):
    preprocess.run([f"--config={config}", f"--output_dir={tmp_path}/o"])
  error = capsys.readouterr().err
  # Every missing file at once, and where relative names were looked up.
  assert "2 bad inputs: no file matches" in error
  assert "meta_Missing.json.gz" in error and "Missing_5.json" in error
  assert "pass --data_dir=FOLDER of the downloaded files" in error
  raw["categories"][0]["role"] = "test"
  config.write_text(json.dumps(raw))
  with pytest.raises(SystemExit):
    preprocess.run([f"--config={config}", f"--output_dir={tmp_path}/o"])
  assert "'role' must be one of" in capsys.readouterr().err


def test_unreadable_inputs_fail_early_naming_them(tmp_path, capsys):
  config = pipelines_testdata.write_fixture(tmp_path / "data")
  (tmp_path / "data" / "meta_Games.json.gz").write_text('{"asin": "B1"}\n')
  with pytest.raises(SystemExit):
    preprocess.run([f"--config={config}", f"--output_dir={tmp_path}/o"])
  assert ("cannot read input file " + str(tmp_path / "data" /
                                          "meta_Games.json.gz") +
          " (meta of Games): Not a gzipped file") in capsys.readouterr().err
  raw = json.loads(config.read_text())
  raw["categories"][0]["reviews"] = "."
  config.write_text(json.dumps(raw))
  with pytest.raises(SystemExit):
    preprocess.run([f"--config={config}", f"--output_dir={tmp_path}/o"])
  assert "(reviews of Games): [Errno 21] Is a directory" in (
      capsys.readouterr().err)
  # Gzip data under a plain name: each line would be a malformed_line reject.
  (tmp_path / "data" / "Games_5.json").write_bytes(gzip.compress(
      (tmp_path / "data" / "Games_5.json").read_bytes()))
  with pytest.raises(SystemExit):
    preprocess.run([f"--config={config}", f"--output_dir={tmp_path}/o"])
  assert ("input file " + str(tmp_path / "data" / "Games_5.json") +
          " holds gzip data but its name does not end in .gz (reviews of "
          "Stage1); rename it") in capsys.readouterr().err
  assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_bad_lines_become_counted_rejects_without_changing_the_rest(
    tmp_path, run_output):
  bad_reviews = [
      '{"reviewerID": "U1\\ud800", "asin": "B1", "unixReviewTime": 1}',
      '{"reviewerID": "U5", "asin": "B2", "unixReviewTime": 2, '
      '"reviewText": "\\ud800"}',
      # Known to an index that drops trailing NULs: then missing in the join.
      '{"reviewerID": "U1", "asin": "B1\\u0000", "unixReviewTime": 5}',
      "[" * 100000 + "]" * 100000,
      "{[1]: 2}",
      '{"reviewerID": "U1", "asin": "B1", "unixReviewTime": "\u00b2"}',
      '{"reviewerID": "U1", "asin": "B1", "unixReviewTime": 1' + "0" * 20 +
      ', "overall": 5.0}',
      '{"reviewerID": "U1", "asin": "' + "B" * 2000 + '", "unixReviewTime": 1}',
      '{"reviewerID": "U1", "asin": "B1", "unixReviewTime": 1, '
      '"overall": 1e999}',
  ]
  bad_meta = ['{"asin": "B\\ud800"}', "{[1]: 2}",
              '{"asin": "' + "B" * 2000 + '", "title": "Wide"}']
  config = pipelines_testdata.write_fixture(tmp_path / "data")
  data = tmp_path / "data"
  with open(data / "Games_5.json", "a") as f:
    f.write("\n".join(bad_reviews) + "\n")
  meta = gzip.decompress((data / "meta_Games.json.gz").read_bytes())
  (data / "meta_Games.json.gz").write_bytes(gzip.compress(
      meta + ("\n".join(bad_meta) + "\n").encode()))
  output = tmp_path / "out"
  stats = preprocess.run([f"--config={config}", f"--output_dir={output}",
                          "--read_range_mb=1"])
  clean_output, clean_stats = run_output
  for category in ("Games", "Stage1"):
    for split in ("train", "validation", "test"):
      assert pipelines_testdata.read_split(output / category, split) == (
          pipelines_testdata.read_split(clean_output / category, split))
  dropped = dict(clean_stats["Games"]["dropped"])
  for key, added in (("reviews_rejected_invalid_encoding", 2),
                     ("reviews_rejected_unknown_asin", 1),
                     ("reviews_rejected_malformed_line", 2),
                     ("reviews_rejected_invalid_unixReviewTime", 2),
                     ("reviews_rejected_asin_too_long", 1),
                     ("reviews_rejected_invalid_overall", 1),
                     ("meta_rejected_invalid_encoding", 1),
                     ("meta_rejected_malformed_line", 1),
                     ("meta_rejected_asin_too_long", 1)):
    dropped[key] = dropped.get(key, 0) + added
  assert stats["Games"]["dropped"] == dict(sorted(dropped.items()))
  records = {record for rejects in pipelines_testdata.reject_files(
      output, "Games").values() for _, _, _, record in rejects}
  assert records >= set(bad_reviews + bad_meta)


@pytest.mark.slow
def test_a_truncated_gzip_fails_the_job_naming_the_file(tmp_path, capsys):
  config = pipelines_testdata.write_fixture(tmp_path / "data")
  reviews = "\n".join(
      pipelines_testdata.review(f"U{i}", "B1", i,
                                text=f"{i * 2654435761 % 2**32:08x}" * 4)
      for i in range(60000)).encode()
  compressed = gzip.compress(reviews)
  path = tmp_path / "data" / "Games_5.json.gz"
  path.write_bytes(compressed[:len(compressed) // 2])
  raw = json.loads(config.read_text())
  raw["categories"] = raw["categories"][:1]
  raw["categories"][0]["reviews"] = "Games_5.json.gz"
  config.write_text(json.dumps(raw))
  with pytest.raises(SystemExit):
    preprocess.run([f"--config={config}", f"--output_dir={tmp_path}/o"])
  errors = [line for line in capsys.readouterr().err.splitlines()
            if "error:" in line]
  assert len(errors) == 1
  assert errors[0].startswith("python -m pipelines.preprocess: error: cannot "
                              f"read input file {path} past byte ")
  assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("object_store", [False, True])
def test_non_empty_output_dir_needs_overwrite(tmp_path, capsys, object_store):
  config = pipelines_testdata.write_fixture(tmp_path / "data")
  # Only in a subfolder: a match of "out/*" would not see it.
  (tmp_path / "out" / "sub").mkdir(parents=True)
  (tmp_path / "out" / "sub" / "keep.txt").write_text("x")
  beam_testfs.set_root(tmp_path)
  output = (beam_testfs.object_url("out") if object_store
            else tmp_path / "out")
  with pytest.raises(SystemExit):
    preprocess.run([f"--config={config}", f"--output_dir={output}"])
  assert "pass --overwrite" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    preprocess.run([f"--config={config}", f"--output_dir={output}",
                    "--overwrite"])
  assert "refusing to delete" in capsys.readouterr().err
  assert (tmp_path / "out" / "sub" / "keep.txt").exists()


@pytest.mark.parametrize("url_only", [False, True])
def test_an_output_dir_that_is_a_file_is_refused_up_front(
    tmp_path, capsys, url_only):
  config = pipelines_testdata.write_fixture(tmp_path / "data")
  (tmp_path / "out").write_text("x")
  beam_testfs.set_root(tmp_path)
  output = beam_testfs.url("out") if url_only else tmp_path / "out"
  for spelling, overwrite in itertools.product(
      (f"{output}", f"{output}/"), ([], ["--overwrite"])):
    with pytest.raises(SystemExit):
      preprocess.run([f"--config={config}", f"--output_dir={spelling}",
                      *overwrite])
    errors = [line for line in capsys.readouterr().err.splitlines()
              if "error:" in line]
    assert errors == [f"python -m pipelines.preprocess: error: --output_dir "
                      f"{spelling} is a file, not a folder"]
  assert (tmp_path / "out").read_text() == "x"


@pytest.mark.parametrize("object_store", [False, True])
@pytest.mark.slow
def test_overwrite_leaves_no_file_of_the_earlier_run(tmp_path, capsys,
                                                     monkeypatch,
                                                     object_store):
  """Also where a folder is only a prefix of object names (GCS): the checks
  and the replacement of --overwrite find every file of the earlier run, and
  the next run every file a failed one left in the staging folder."""
  config = pipelines_testdata.write_fixture(tmp_path / "data")
  raw = json.loads(config.read_text())
  raw["categories"][1]["num_shards"] = 3
  config.write_text(json.dumps(raw))
  beam_testfs.set_root(tmp_path)
  # On the store, inputs too: the config's folder is the data folder (".").
  flags = ([f"--config={beam_testfs.object_url('data/config.json')}",
            f"--output_dir={beam_testfs.object_url('out')}"] if object_store
           else [f"--config={config}", f"--output_dir={tmp_path}/out"])
  preprocess.run(flags)
  assert [name for name in pipelines_testdata.files(tmp_path / "out")
          if name.startswith(("Stage1/train", "rejects/Stage1"))] == [
              f"Stage1/train-0000{i}-of-00003.tfrecord" for i in range(3)] + [
                  f"rejects/Stage1-0000{i}-of-00003.jsonl" for i in range(3)]
  with pytest.raises(SystemExit):
    preprocess.run(flags)
  assert "pass --overwrite" in capsys.readouterr().err

  # Fewer shards, and no Games.
  raw["categories"] = [dict(raw["categories"][1], num_shards=1)]
  config.write_text(json.dumps(raw))
  # A run that stopped before its manifest is known by rejects/ alone.
  (tmp_path / "out" / "manifest.json").unlink()
  before = pipelines_testdata.files(tmp_path / "out")
  # A worker fails after the shards are written, before any rejects file: the
  # marker the launcher wrote first is what shows the next run that the
  # staging folder holds a run of this job.
  def fail(*args):
    raise OSError("disk full")

  monkeypatch.setattr(outputs, "write_rejects", fail)
  with pytest.raises(Exception, match="disk full"):
    preprocess.run(flags + ["--overwrite"])
  assert pipelines_testdata.files(tmp_path / "out") == before
  assert pipelines_testdata.files(tmp_path / "out.staging") == [
      "Stage1/train-00000-of-00001.tfrecord", "_RUN_STARTED"]
  monkeypatch.undo()
  with pytest.raises(SystemExit):
    preprocess.run(flags)
  assert "pass --overwrite" in capsys.readouterr().err
  stats = preprocess.run(flags + ["--overwrite"])
  assert pipelines_testdata.files(tmp_path / "out") == [
      "Stage1/corpus.parquet", "Stage1/stats.json",
      "Stage1/train-00000-of-00001.tfrecord", "manifest.json",
      "rejects/Stage1-00000-of-00001.jsonl", "run.json"]
  assert not pipelines_testdata.files(tmp_path / "out.staging")
  assert stats["Stage1"]["num_users"] == 3
  if not object_store:
    assert not (tmp_path / "out" / "Games").exists()


def test_an_invalid_runner_is_a_usage_error_before_any_delete(tmp_path,
                                                              capsys):
  config = pipelines_testdata.write_fixture(tmp_path / "data")
  (tmp_path / "out" / "rejects").mkdir(parents=True)
  (tmp_path / "out" / "manifest.json").write_text("{}")
  with pytest.raises(SystemExit):
    preprocess.run([f"--config={config}", f"--output_dir={tmp_path}/out",
                    "--overwrite", "--runner=Nope"])
  errors = [line for line in capsys.readouterr().err.splitlines()
            if "error:" in line]
  assert len(errors) == 1
  assert errors[0].startswith("python -m pipelines.preprocess: error: "
                              "Unexpected pipeline runner: Nope.")
  assert errors[0].endswith("PipelineRunner subclass.")
  assert (tmp_path / "out" / "manifest.json").exists()
  # A dotted name of a class its module lacks.
  with pytest.raises(SystemExit):
    preprocess.run([f"--config={config}", f"--output_dir={tmp_path}/out",
                    "--overwrite", "--runner=apache_beam.runners.Nope"])
  assert "has no attribute 'Nope'" in capsys.readouterr().err
  assert (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("flags,message", [
    (["--runner=DataflowRunner"],
     "DataflowRunner workers cannot reach local paths: --output_dir {out}, "
     "Games reviews #0 {data}/Games_5.json, Games meta #0 {data}/"),
    (["--output_dir=gss://bucket/out"],
     "--output_dir gss://bucket/out: no file system for this path here"),
])
def test_paths_workers_cannot_use_are_refused_before_any_delete(
    tmp_path, capsys, flags, message):
  config = pipelines_testdata.write_fixture(tmp_path / "data")
  (tmp_path / "out" / "rejects").mkdir(parents=True)
  (tmp_path / "out" / "manifest.json").write_text("{}")
  with pytest.raises(SystemExit):
    preprocess.run([f"--config={config}", f"--output_dir={tmp_path}/out",
                    "--overwrite", *flags])
  errors = [line for line in capsys.readouterr().err.splitlines()
            if "error:" in line]
  assert len(errors) == 1
  assert errors[0].startswith(
      "python -m pipelines.preprocess: error: " +
      message.format(out=tmp_path / "out", data=tmp_path / "data")), errors
  assert (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.slow
def test_no_worker_is_given_the_whole_meta(tmp_path):
  """Meta reaches the shards by key; the only side input of the review and
  shard steps is the asin index, and the corpus step has none."""
  config_path = pipelines_testdata.write_fixture(tmp_path / "data")
  config = config_lib.load_config(str(config_path))
  review_tasks, meta_tasks = preprocess.plan_tasks(config)
  pipeline = beam.Pipeline()
  preprocess.build_pipeline(pipeline, config, str(tmp_path / "out"),
                            review_tasks, meta_tasks)
  side_inputs = {}

  class Visitor(beam.pipeline.PipelineVisitor):

    def visit_transform(self, applied):
      for side_input in getattr(applied.transform, "side_inputs", ()):
        side_inputs.setdefault(applied.full_label, []).append(
            side_input.pvalue.producer.full_label)

  pipeline.visit(Visitor())
  meta_steps = [(label, producer.split("/")[:2])
                for label, producers in side_inputs.items()
                for producer in producers
                if not label.startswith("WriteManifest/")]
  assert meta_steps == [("BuildShards/Parse/ParDo(_ParseReviewsFn)",
                         ["ReadMeta", "Index"])]


@pytest.mark.slow
def test_rejects_are_sorted_bucket_files_identical_across_workers(tmp_path):
  """With num_shards=3, Games' rejects (300 reviews of items without meta
  among them) spread over 3 files, each sorted, together every reject; each
  of Stage1's 8 buckets has its file, empty or not. 2 workers, small ranges
  and parts write the same bytes."""
  config_path = pipelines_testdata.write_fixture(tmp_path / "data")
  data = tmp_path / "data"
  (data / "Stage1_5.json").write_bytes((data / "Games_5.json").read_bytes())
  offset = (data / "Games_5.json").stat().st_size
  unknown = []
  for i in range(300):
    line = pipelines_testdata.review(f"V{i:03d}", f"Z{i % 7}", i)
    unknown.append(("Games_5.json", offset, "unknown_asin", line))
    offset += len(line) + 1
  with open(data / "Games_5.json", "a") as f:
    f.writelines(line + "\n" for *_, line in unknown)
  raw = json.loads(config_path.read_text())
  raw["categories"][0]["num_shards"] = 3
  raw["categories"][1].update(reviews="Stage1_5.json", num_shards=8)
  config_path.write_text(json.dumps(raw))
  output = tmp_path / "out1"
  stats = preprocess.run([f"--config={config_path}", f"--output_dir={output}"])

  files = pipelines_testdata.reject_files(output, "Games")
  assert list(files) == [f"Games-0000{i}-of-00003.jsonl" for i in range(3)]
  for part in files.values():
    assert len(part) > 50
    assert part == sorted(part)
  rejects = [(source.split("/")[-1], offset, reason, record)
             for part in files.values()
             for source, offset, reason, record in part]
  assert set(unknown) <= set(rejects)
  dropped = stats["Games"]["dropped"]
  assert len(rejects) == 305 == sum(
      count for reason, count in dropped.items() if reason.startswith(
          ("reviews_rejected_", "meta_rejected_", "users_rejected_")))
  stage1 = pipelines_testdata.reject_files(output, "Stage1")
  assert list(stage1) == [f"Stage1-0000{i}-of-00008.jsonl" for i in range(8)]
  assert sum(map(len, stage1.values())) == 4
  manifest = json.loads((output / "manifest.json").read_text())
  assert manifest["categories"]["Games"]["rejects"] == {
      "files": [f"rejects/{name}" for name in files], "records": 305}

  config = config_lib.load_config(str(config_path))
  review_tasks, meta_tasks = preprocess.plan_tasks(config, range_bytes=4096)
  assert len(review_tasks) > len(config.categories)
  with beam.Pipeline(options=beam_options.beam_options(
      ["--direct_num_workers=2",
       "--direct_running_mode=multi_processing"])) as pipeline:
    preprocess.build_pipeline(pipeline, config, str(tmp_path / "out2"),
                              review_tasks, meta_tasks, lines_per_call=40)
  names = pipelines_testdata.files(tmp_path / "out2")
  # run.json is the launcher's, not the pipeline's.
  assert pipelines_testdata.files(output) == sorted(names + ["run.json"])
  for name in names:
    assert filecmp.cmp(output / name, tmp_path / "out2" / name,
                       shallow=False), name


@pytest.mark.slow
def test_a_category_left_without_users_points_at_its_rejects(tmp_path,
                                                            caplog):
  """Meta that covers no review: every review is an unknown_asin reject, and
  the warning's pattern matches every rejects file of the category."""
  config_path = pipelines_testdata.write_fixture(tmp_path / "data")
  (tmp_path / "data" / "meta_None.json").write_text('{"asin": "N1"}\n')
  raw = json.loads(config_path.read_text())
  raw["categories"] = [dict(raw["categories"][0], meta="meta_None.json",
                            num_shards=2)]
  config_path.write_text(json.dumps(raw))
  output = tmp_path / "out"
  stats = preprocess.run([f"--config={config_path}", f"--output_dir={output}"])
  assert stats["Games"]["num_users"] == 0
  pattern = str(output / "rejects" / "Games-*.jsonl")
  assert (f"category Games has no users left; its rejects are in {pattern}"
          in caplog.messages)
  assert len(glob.glob(pattern)) == 2
  # Every review line: 13 of unknown items, 2 that do not parse.
  assert stats["Games"]["dropped"]["reviews_rejected_unknown_asin"] == 13
  assert sum(map(len, pipelines_testdata.reject_files(
      output, "Games").values())) == len(pipelines_testdata.REVIEWS)


@pytest.mark.slow
def test_rejects_are_grouped_by_bucket_and_never_by_category(tmp_path):
  """The one grouping the rejects reach is WriteRejects', keyed by (category,
  bucket): no worker is given every reject of a category, and the
  per-category finalize step gets none."""
  config_path = pipelines_testdata.write_fixture(tmp_path / "data")
  config = config_lib.load_config(str(config_path))
  pipeline = beam.Pipeline()
  preprocess.build_pipeline(pipeline, config, str(tmp_path / "out"),
                            *preprocess.plan_tasks(config))
  consumers = collections.defaultdict(list)
  rejects = []

  class Visitor(beam.pipeline.PipelineVisitor):

    def visit_transform(self, applied):
      for pcollection in applied.inputs + tuple(
          side_input.pvalue for side_input in applied.side_inputs):
        consumers[pcollection].append(applied)
      if "rejects" in applied.outputs:
        rejects.append(applied.outputs["rejects"])

  pipeline.visit(Visitor())
  assert len(rejects) == 3  # Of meta lines, review lines and users.
  reached = {}
  while rejects:
    for applied in consumers[rejects.pop()]:
      if applied.full_label not in reached:
        reached[applied.full_label] = applied
        rejects.extend(applied.outputs.values())
  assert [label for label, applied in reached.items()
          if isinstance(applied.transform, beam.GroupByKey)] == [
              "WriteRejects/Group"]
  assert not [label for label in reached
              if label.startswith("FinalizeCategories/")]


def test_a_flag_neither_the_job_nor_beam_knows_is_refused(tmp_path, capsys):
  config = pipelines_testdata.write_fixture(tmp_path / "data")
  with pytest.raises(SystemExit):
    preprocess.run([f"--config={config}", f"--output_dir={tmp_path}/o",
                    "--direct_num_worker=2"])
  assert "--direct_num_worker=2 (did you mean --direct_num_workers?)" in (
      capsys.readouterr().err)
  assert not (tmp_path / "o").exists()
