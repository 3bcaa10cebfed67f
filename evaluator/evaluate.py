r"""Batch evaluation of a category's split: generation, retrieval, metrics.

  python -m evaluator.evaluate --data_dir=DATA --category=Scientific \
      --split=test --model_dir=MODEL --output_dir=OUT [--model=calrec|lir] \
      [--retrieval=bm25|hierarchical] [--bm25_backend=fast|lucene] \
      [--max_users=N --user_sample_seed=S] \
      [Beam flags, e.g. --runner=FnApiRunner --direct_num_workers=2 \
       --direct_running_mode=multi_processing]

Reads the category's split files that `{data_dir}/manifest.json` lists, each
checked to exist and their records counted against it, and `corpus.parquet`
(docs/contracts.md); keeps a seeded subset of --max_users users if asked
(`transforms.SampleUsers`); generates N_gen samples per user with the model
(or uses the last history item for `--model=lir`), ranks every corpus item by
paper Algorithm 1 (or hierarchical exact match, paper section 6) and writes to
`output_dir`:

  users-SSSSS-of-NNNNN.parquet  per user: user_id, target_id, kept_texts,
                                kept_logprobs, top_item_ids (10),
                                rank_optimistic, rank_pessimistic
  metrics.json                  mean metrics (opt/pes) over every test user,
                                unranked ones as misses; counts; Table 7 shares
  results.md                    the metrics in the layout of paper Table 2
  rejects-*.jsonl               every record or user not evaluated, with why
  recommendations-*.jsonl       with --recommendations_k=K: top-K per user
  run.json                      what the results are made from (`made_from`)

The job writes into OUT.staging and replaces OUT by it once it has succeeded
(`run_parsed`): a failed or killed run leaves earlier results untouched.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import apache_beam as beam
from apache_beam.ml.inference import base as inference

from evaluator import baselines
from evaluator import data
from evaluator import files
from evaluator import generation
from evaluator import metrics
from evaluator import report
from evaluator import retrieval
from evaluator import transforms
from pipelines import cli
from pipelines import options as beam_cli
from pipelines import run_dir
from pipelines import sequences

if TYPE_CHECKING:
  from evaluator import model_handler

MODELS = ("calrec", "lir")
# The held-out splits of the preprocessing job (paper section 4).
SPLITS = (sequences.TEST, sequences.VALIDATION)


def _parser(prog: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      allow_abbrev=False, prog=prog, description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=("Other flags go to Beam's PipelineOptions (a flag that is "
              "neither is an error); the runner is FnApiRunner unless "
              "--runner says otherwise."))
  parser.add_argument("--data_dir", required=True,
                      help="Output folder of the preprocessing pipeline.")
  parser.add_argument("--category", required=True,
                      help="Category folder under --data_dir, e.g. Scientific.")
  parser.add_argument("--split", choices=SPLITS, default="test",
                      help="Split to evaluate (default: %(default)s).")
  parser.add_argument("--output_dir", required=True,
                      help="Where results go; created if missing.")
  parser.add_argument("--model", choices=MODELS, default="calrec",
                      help="calrec: generate with the model in --model_dir; "
                      "lir: the Last Item Repeater baseline, no model "
                      "(default: %(default)s).")
  parser.add_argument("--model_dir", default=None,
                      help="Training output folder (needed for "
                      "--model=calrec).")
  parser.add_argument("--checkpoint_step", type=int, default=None,
                      help="Checkpoint step to load (default: the run's best "
                      "by its validation metric, else the latest).")
  parser.add_argument("--retrieval", choices=transforms.RETRIEVALS,
                      default="bm25",
                      help="bm25: paper Algorithm 1; hierarchical: exact "
                      "attribute match, paper section 6 (default: "
                      "%(default)s).")
  parser.add_argument("--bm25_backend", choices=transforms.BM25_BACKENDS,
                      default="fast",
                      help="fast: vectorized scorer equal to Lucene; lucene: "
                      "Lucene's searcher, one query at a time (default: "
                      "%(default)s).")
  parser.add_argument("--num_generations", type=cli.positive_int,
                      default=generation.NUM_GENERATIONS,
                      help="N_gen samples per user (default: %(default)s).")
  parser.add_argument("--temperature", type=float,
                      default=generation.TEMPERATURE,
                      help="Sampling temperature (default: %(default)s).")
  parser.add_argument("--max_decode_length", type=cli.positive_int,
                      default=generation.MAX_DECODE_LENGTH,
                      help="New tokens per sample at most (default: "
                      "%(default)s).")
  parser.add_argument("--num_preds", type=cli.positive_int,
                      default=retrieval.NUM_PREDS,
                      help="N_preds unique samples kept (default: "
                      "%(default)s).")
  parser.add_argument("--epsilon", type=float, default=retrieval.EPSILON,
                      help="Log-prob modulation epsilon (default: "
                      "%(default)s).")
  parser.add_argument("--seed", type=int, default=0,
                      help="Run seed; each user's sampling seed derives from "
                      "it and the user id (default: %(default)s).")
  parser.add_argument("--max_users", type=cli.positive_int, default=None,
                      help="Evaluate only this many users, those of the "
                      "smallest SHA-256 of (--user_sample_seed, user id): the "
                      "same subset on any runner, workers and file order "
                      "(default: every user).")
  parser.add_argument("--user_sample_seed", type=int, default=0,
                      help="Seed of the --max_users subset, apart from "
                      "--seed (default: %(default)s).")
  parser.add_argument("--batch_size", type=cli.positive_int, default=32,
                      help="Users per generation batch (default: %(default)s).")
  parser.add_argument("--recommendations_k", type=int, default=0,
                      help="Also write the top K items per user (default: "
                      "%(default)s, none).")
  parser.add_argument("--overwrite", action="store_true",
                      help="Replace the results of an earlier run in "
                      "--output_dir, once this run has succeeded.")
  return parser


# The stage that run.json names (pipelines.run_dir).
STAGE = "evaluate"
OUTPUT_PATTERNS = (report.METRICS_FILE, "results.md",
                   f"{report.USERS_PREFIX}-*.parquet", "rejects-*.jsonl",
                   "recommendations-*.jsonl", run_dir.RUN_RECORD)
# The temporary folders of Beam's file sinks, left behind by a killed run.
BEAM_TEMP_PATTERN = "beam-temp-*"


def earlier_outputs(output_dir: str) -> list[str]:
  """Files of an earlier evaluation in `output_dir`."""
  return sorted(path for pattern in OUTPUT_PATTERNS
                for path in files.glob(os.path.join(output_dir, pattern)))


def foreign_files(output_dir: str) -> list[str]:
  """Files under `output_dir` that no evaluation writes."""
  ours = set(earlier_outputs(output_dir) + files.glob(
      os.path.join(output_dir, BEAM_TEMP_PATTERN, "**")))
  return [path for path in files.glob(os.path.join(output_dir, "**"))
          if path not in ours]


def check_output_dir(args: argparse.Namespace) -> None:
  """Passes where the run may replace `args.output_dir` (`run_parsed`).

  A folder holding files no evaluation writes is refused: the run replaces
  the whole folder. Without --overwrite, so is one holding results; the
  message names the first setting of its run.json that differs from this
  run's (`made_from`), or says that it holds this very run.

  Raises:
    run_dir.RunDirError: one line saying why and what to do instead.
  """
  output_dir = args.output_dir
  foreign = foreign_files(output_dir)
  if foreign:
    raise run_dir.RunDirError(
        f"{output_dir} holds files that no evaluation writes, e.g. "
        f"{foreign[0]}; a run replaces the whole folder: pick another "
        "--output_dir.")
  if args.overwrite or not earlier_outputs(output_dir):
    return
  start_over = ("pass --overwrite to replace its results or pick another "
                "--output_dir")
  if run_dir.read_record(output_dir) is None:
    raise run_dir.RunDirError(
        f"{output_dir} holds results of an earlier run; {start_over}.")
  run_dir.check_made_from(output_dir, STAGE, made_from(args), start_over)
  raise run_dir.RunDirError(
      f"{output_dir} already holds the results of this very run; pass "
      "--overwrite to redo it or pick another --output_dir.")


def parse_args(argv: Sequence[str], check_model: bool = True,
               prog: str = "python -m evaluator.evaluate"
              ) -> tuple[argparse.Namespace, list[str]]:
  """Evaluation flags and the remaining (Beam) flags; validates both.

  `check_model`: for --model=calrec, that --model_dir holds the checkpoint,
  whose step then replaces a missing --checkpoint_step (False when the
  caller supplies the generator itself). `prog` names the command in errors.
  """
  parser = _parser(prog)
  args, beam_argv = beam_cli.parse_job_args(parser, argv)
  worker_paths = {"--data_dir": args.data_dir, "--output_dir": args.output_dir}
  if args.model == "calrec" and args.model_dir:
    worker_paths["--model_dir"] = args.model_dir
  try:
    beam_cli.checked_beam_options(beam_argv, worker_paths)
  except beam_cli.BeamOptionsError as error:
    parser.error(str(error))
  try:
    args.split_files = data.split_files(args.data_dir, args.category,
                                        args.split)
  except data.DataError as error:
    parser.error(str(error))
  if not files.exists(corpus_path(args)):
    parser.error(f"{args.data_dir} lacks the corpus of {args.category}, "
                 f"{corpus_path(args)}.")
  if args.model == "calrec" and not args.model_dir:
    parser.error("--model=calrec needs --model_dir (or use --model=lir).")
  args.params_fingerprint = None
  if args.model == "calrec":
    # Checked here, not first on the workers; JAX loads only for CALRec runs.
    # The step is fixed now: every worker loads it, and metrics.json names
    # it, even when the default (the run's best) changes meanwhile.
    from trainer import checkpoints  # pylint: disable=g-import-not-at-top
    from trainer import model_dir  # pylint: disable=g-import-not-at-top
    checkpoints.hide_orbax_info_logs()
    if check_model:
      try:
        args.checkpoint_step = int(model_dir.inference_checkpoint(
            args.model_dir, args.checkpoint_step).name)
      except FileNotFoundError as error:
        parser.error(str(error))
    if args.checkpoint_step is not None:
      # Tells a later run whether this step's parameters were retrained.
      args.params_fingerprint = checkpoints.params_fingerprint(
          checkpoints.step_path(args.model_dir, args.checkpoint_step))
  if args.temperature < 0 or args.epsilon < 0:
    parser.error("--temperature and --epsilon must be >= 0.")
  if args.recommendations_k < 0:
    parser.error("--recommendations_k must be >= 0.")
  try:
    check_output_dir(args)
  except run_dir.RunDirError as error:
    parser.error(str(error))
  return args, beam_argv


def corpus_path(args: argparse.Namespace) -> str:
  return os.path.join(args.data_dir, args.category, "corpus.parquet")


def retrieval_options(args: argparse.Namespace,
                      vocabulary_path: Optional[str] = None
                      ) -> transforms.RetrievalOptions:
  return transforms.RetrievalOptions(
      retrieval=args.retrieval, bm25_backend=args.bm25_backend,
      num_preds=args.num_preds, epsilon=args.epsilon,
      recommendations_k=args.recommendations_k,
      vocabulary_path=vocabulary_path)


def _user_schema() -> "pyarrow.Schema":
  """Columns of users-*.parquet (docs/contracts.md)."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  return pa.schema([
      ("user_id", pa.string()), ("target_id", pa.string()),
      ("kept_texts", pa.list_(pa.string())),
      ("kept_logprobs", pa.list_(pa.float64())),
      ("top_item_ids", pa.list_(pa.string())),
      ("rank_optimistic", pa.int64()), ("rank_pessimistic", pa.int64())])


def write_summary(summary: dict[str, Any], num_read: int, num_rejected: int,
                  num_unranked: int, run: dict[str, Any],
                  output_dir: str) -> None:
  """Writes metrics.json and results.md (Table 2 and Table 7 layouts).

  The metrics average over every test user (of the --max_users subset): the
  `num_users` ranked ones and the `num_unranked` ones, which count as misses
  (`metrics.with_misses`). `num_read`: the split records read, all of them.

  Raises:
    data.DataError: the split files held another number of records than
      the manifest counts (`run["num_records"]`): files changed since.
  """
  if run["num_records"] not in (None, num_read):
    raise data.DataError(
        f"{run['data_dir']}: read {num_read} {run['split']} records of "
        f"{run['category']}, but its {data.MANIFEST} counts "
        f"{run['num_records']}.")
  summary = {**run, **summary, "num_unranked": num_unranked,
             "num_rejected": num_rejected}
  if summary["num_users"] + num_unranked:
    summary["metrics"] = metrics.with_misses(
        summary["metrics"], summary["num_users"], num_unranked)
  files.write_text(os.path.join(output_dir, report.METRICS_FILE),
                   json.dumps(summary, indent=2))
  files.write_text(os.path.join(output_dir, "results.md"),
                   results_markdown(summary))


def _column_name(summary: dict[str, Any]) -> str:
  return f"{summary['model']} ({summary['retrieval']})"


def results_markdown(summary: dict[str, Any]) -> str:
  """results.md, which the command also prints: Tables 2 and 7 layouts."""
  column = [(_column_name(summary), summary)]
  return (report.table_2(column) + "\nOutputs that match an item (paper "
          "Table 7):\n\n" + report.table_7_matches(column))


def build_pipeline(root: beam.Pipeline, args: argparse.Namespace,
                   output_dir: str,
                   load_generator: Optional[Callable[
                       [], generation.TextGenerator]] = None,
                   vocabulary_path: Optional[str] = None) -> None:
  """Adds the evaluation, written to `output_dir`, to `root`;
  `load_generator` serves --model=calrec.

  `vocabulary_path`: the SentencePiece model the generated texts are decoded
  with; the corpus is matched in its normal form (`transforms.RetrievalOptions`).
  """
  records = (root
             | "SplitFiles" >> beam.Create(args.split_files.paths)
             | "ReadSplit" >> beam.io.ReadAllFromTFRecord())
  parsed = records | "ParseUsers" >> beam.ParDo(
      transforms.ParseUsers()).with_outputs(transforms.REJECTS, main="users")
  users = parsed.users
  if args.max_users:
    users = users | "SampleUsers" >> transforms.SampleUsers(
        args.max_users, args.user_sample_seed)
  evaluated = (
      _with_samples(users, args, load_generator)
      | "BatchUsers" >> beam.BatchElements(min_batch_size=1, max_batch_size=64)
      | "RetrieveAndRank" >> beam.ParDo(transforms.RetrieveAndRank(
          corpus_path(args), retrieval_options(
              args, vocabulary_path))).with_outputs(
              transforms.REJECTS, main="results"))
  _write_users(evaluated.results, args, output_dir)
  rejects = ((parsed[transforms.REJECTS], evaluated[transforms.REJECTS])
             | "AllRejects" >> beam.Flatten())
  _ = (rejects
       | "RejectLines" >> beam.Map(json.dumps)
       | "WriteRejects" >> beam.io.WriteToText(
           os.path.join(output_dir, "rejects"),
           file_name_suffix=".jsonl"))
  num_read = records | "CountRecords" >> beam.combiners.Count.Globally()
  num_rejected = rejects | "CountRejects" >> beam.combiners.Count.Globally()
  num_unranked = (evaluated[transforms.REJECTS]
                  | "CountUnranked" >> beam.combiners.Count.Globally())
  _ = (evaluated.results
       | "MeanMetrics" >> beam.CombineGlobally(transforms.MeanMetrics())
       | "WriteSummary" >> beam.Map(
           write_summary, num_read=beam.pvalue.AsSingleton(num_read),
           num_rejected=beam.pvalue.AsSingleton(num_rejected),
           num_unranked=beam.pvalue.AsSingleton(num_unranked),
           run=run_settings(args), output_dir=output_dir))


def _with_samples(users: beam.PCollection, args: argparse.Namespace,
                  load_generator: Optional[Callable[
                      [], generation.TextGenerator]]) -> beam.PCollection:
  """(user, samples): LIR's last item, or the model's samples through
  RunInference, each user with its own seed."""
  # A split file is read by one worker; spread the users over all.
  users = users | "Spread" >> beam.Reshuffle()
  if args.model == "lir":
    return users | "LastItem" >> beam.Map(
        lambda user: (user, baselines.last_item_samples(user)))
  if load_generator is None:
    raise ValueError("--model=calrec needs a generator loader.")
  seed = args.seed
  handler = inference.KeyedModelHandler(generation.GeneratorModelHandler(
      load_generator, max_batch_size=args.batch_size))
  return (
      users
      | "Requests" >> beam.Map(lambda user: (
          user, generation.GenerationRequest(
              user.history_texts, generation.user_seed(seed, user.user_id))))
      | "Generate" >> inference.RunInference(handler)
      | "Samples" >> beam.MapTuple(lambda user, result: (user,
                                                         result.inference)))


def _write_users(results: beam.PCollection, args: argparse.Namespace,
                 output_dir: str) -> None:
  """users-*.parquet and, with --recommendations_k, recommendations-*."""
  user_schema = _user_schema()
  user_columns = user_schema.names
  _ = (results
       | "UserColumns" >> beam.Map(
           lambda r: {column: r[column] for column in user_columns})
       | "WriteUsers" >> beam.io.WriteToParquet(
           os.path.join(output_dir, report.USERS_PREFIX), user_schema,
           file_name_suffix=".parquet"))
  if args.recommendations_k:
    _ = (results
         | "Recommendations" >> beam.Map(lambda r: json.dumps(
             {"user_id": r["user_id"], "items": r["recommendations"]}))
         | "WriteRecommendations" >> beam.io.WriteToText(
             os.path.join(output_dir, "recommendations"),
             file_name_suffix=".jsonl"))


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
  """What metrics.json records beside the metrics: all the results depend on.

  The data is `data_dir` as given and a digest of its manifest, which lists
  every file of the preprocessing run and its record count.
  """
  split_files = args.split_files
  run = {"data_dir": args.data_dir,
         "manifest_sha256": split_files.manifest_sha256,
         "num_records": split_files.num_records, "category": args.category,
         "split": args.split, "model": args.model,
         "retrieval": args.retrieval, "bm25_backend": args.bm25_backend,
         "num_preds": args.num_preds, "epsilon": args.epsilon,
         "recommendations_k": args.recommendations_k,
         "max_users": args.max_users}
  if args.max_users:
    run["user_sample_seed"] = args.user_sample_seed
  if args.model == "calrec":
    # The batch shapes round the kept log-probs (by about 1e-6).
    run.update(model_dir=args.model_dir, checkpoint_step=args.checkpoint_step,
               params_fingerprint=args.params_fingerprint,
               num_generations=args.num_generations,
               temperature=args.temperature,
               max_decode_length=args.max_decode_length, seed=args.seed,
               batch_size=args.batch_size)
  return run


def made_from(args: argparse.Namespace) -> dict[str, Any]:
  """What the results are made from, as run.json records it: `run_settings`
  less the data's path and record count (its manifest's digest names it)."""
  return {name: value for name, value in run_settings(args).items()
          if name not in ("data_dir", "num_records")}


def calrec_generator_loader(args: argparse.Namespace
                            ) -> "model_handler.GeneratorLoader":
  """The JAX model's generator for --model=calrec (loaded on the workers)."""
  from evaluator import model_handler  # pylint: disable=g-import-not-at-top
  return model_handler.GeneratorLoader(
      model_dir=args.model_dir, num_generations=args.num_generations,
      temperature=args.temperature, max_decode_length=args.max_decode_length,
      batch_size=args.batch_size, step=args.checkpoint_step)


def run(argv: Sequence[str],
        load_generator: Optional[Callable[[], generation.TextGenerator]] = None
        ) -> dict[str, Any]:
  """Runs the evaluation; returns the contents of metrics.json."""
  args, beam_argv = parse_args(argv, check_model=load_generator is None)
  return run_parsed(args, beam_argv, load_generator)


def run_parsed(args: argparse.Namespace, beam_argv: Sequence[str],
               load_generator: Optional[Callable[
                   [], generation.TextGenerator]] = None) -> dict[str, Any]:
  """`run` for flags `parse_args` has already checked.

  The job writes into `run_dir.staging_dir(output_dir)` (Beam's temporary
  folders too), after deleting one a killed run left; run.json is written
  and the folder swapped in for `output_dir` only once the job has
  succeeded, so a failed run leaves earlier results as they were.
  """
  vocabulary_path = None
  if args.model == "calrec" and load_generator is None:
    load_generator = calrec_generator_loader(args)
    vocabulary_path = load_generator.vocabulary_path
  options = beam_cli.beam_options(beam_argv)
  staging = run_dir.staging_dir(args.output_dir)
  run_dir.delete_folder(staging)
  files.make_dirs(staging)
  logging.info("Evaluating %s/%s (%s, %s retrieval) into %s", args.category,
               args.split, args.model, args.retrieval, staging)
  try:
    with beam.Pipeline(options=options) as root:
      build_pipeline(root, args, staging, load_generator, vocabulary_path)
    run_dir.write_record(staging, STAGE, made_from(args))
  except BaseException:
    run_dir.delete_folder(staging)
    raise
  run_dir.swap_in(staging, args.output_dir,
                  last=(report.METRICS_FILE, run_dir.RUN_RECORD))
  summary = report.load_summary(args.output_dir)
  log_outcome(summary)
  return summary


def log_outcome(summary: dict[str, Any]) -> None:
  """Logs a finished run's counts and its `report.tie_warning`, if any."""
  logging.info("Done: %d users ranked, %d unranked (counted as misses), %d "
               "rejects.", summary["num_users"], summary["num_unranked"],
               summary["num_rejected"])
  warning = report.tie_warning(_column_name(summary), summary)
  if warning:
    logging.warning(warning)


def main(argv: Sequence[str] | None = None) -> None:
  cli.configure_logging()
  summary = run(sys.argv[1:] if argv is None else argv)
  sys.stdout.write(results_markdown(summary))


if __name__ == "__main__":
  main()
