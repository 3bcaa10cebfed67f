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

The flags become a `config.EvaluationConfig` (`parse_flags`, reading no
file), `config.resolve` checks the files it names, and the `Evaluate`
PTransform is the job. It writes into OUT.staging, which replaces OUT once
the job has succeeded (`run_resolved`): a failed or killed run leaves earlier
results untouched.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import apache_beam as beam
from apache_beam.ml.inference import base as inference

from evaluator import baselines
from evaluator import config as config_lib
from evaluator import data
from evaluator import generation
from evaluator import metrics
from evaluator import report
from evaluator import transforms
from pipelines import cli
from pipelines import beam_options as beam_cli
from pipelines import files
from pipelines import run_dir

if TYPE_CHECKING:
  from evaluator import model_handler

PROG = "python -m evaluator.evaluate"
# Loads the generator of --model=calrec on each worker (tests pass their own).
LoadGenerator = Callable[[], generation.TextGenerator]


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
  parser.add_argument("--split", choices=config_lib.SPLITS,
                      help="Split to evaluate (default: %(default)s).")
  parser.add_argument("--output_dir", required=True,
                      help="Where results go; created if missing.")
  parser.add_argument("--model", choices=config_lib.MODELS,
                      help="calrec: generate with the model in --model_dir; "
                      "lir: the Last Item Repeater baseline, no model "
                      "(default: %(default)s).")
  parser.add_argument("--model_dir",
                      help="Training output folder (needed for "
                      "--model=calrec).")
  parser.add_argument("--checkpoint_step", type=int,
                      help="Checkpoint step to load (default: the run's best "
                      "by its validation metric, else the latest).")
  parser.add_argument("--retrieval", choices=transforms.RETRIEVALS,
                      help="bm25: paper Algorithm 1; hierarchical: exact "
                      "attribute match, paper section 6 (default: "
                      "%(default)s).")
  parser.add_argument("--bm25_backend", choices=transforms.BM25_BACKENDS,
                      help="fast: vectorized scorer equal to Lucene; lucene: "
                      "Lucene's searcher, one query at a time (default: "
                      "%(default)s).")
  parser.add_argument("--num_generations", type=cli.positive_int,
                      help="N_gen samples per user (default: %(default)s).")
  parser.add_argument("--temperature", type=float,
                      help="Sampling temperature (default: %(default)s).")
  parser.add_argument("--sampler", choices=generation.SAMPLERS,
                      help="The seeded stream that draws sampled tokens: "
                      "gumbel, one random number per vocabulary entry, or "
                      "inverse_cdf, one per token and faster over a "
                      "pretrained LM's large vocabulary; other samples for "
                      "the same --seed (default: %(default)s).")
  parser.add_argument("--dtype", choices=generation.DTYPES,
                      help="Activation dtype of sampling; the parameters "
                      "stay float32 (default: the run's, from its "
                      "model.json), e.g. float32 for a run trained in "
                      "bfloat16.")
  parser.add_argument("--max_decode_length", type=cli.positive_int,
                      help="New tokens per sample at most (default: "
                      "%(default)s).")
  parser.add_argument("--num_preds", type=cli.positive_int,
                      help="N_preds unique samples kept (default: "
                      "%(default)s).")
  parser.add_argument("--epsilon", type=float,
                      help="Log-prob modulation epsilon (default: "
                      "%(default)s).")
  parser.add_argument("--seed", type=int,
                      help="Run seed; each user's sampling seed derives from "
                      "it and the user id (default: %(default)s).")
  parser.add_argument("--max_users", type=cli.positive_int,
                      help="Evaluate only this many users, those of the "
                      "smallest SHA-256 of (--user_sample_seed, user id): the "
                      "same subset on any runner, workers and file order "
                      "(default: every user).")
  parser.add_argument("--user_sample_seed", type=int,
                      help="Seed of the --max_users subset, apart from "
                      "--seed (default: %(default)s).")
  batch = parser.add_mutually_exclusive_group()
  batch.add_argument("--batch_size", type=cli.positive_int,
                     help="Users per generation batch (default: "
                     "%(default)s).")
  batch.add_argument("--generation_memory_gib", type=float,
                     help="Size the generation batches from memory instead: "
                     "as many users as the sampling of a batch holds in "
                     "this many GiB beside the parameters (their caches, "
                     "each step's logits, the prompt's activations; an "
                     "upper estimate of XLA's, at the model's full prompt "
                     "length). E.g. Gemma 3 270M, 1,024-token prompts, "
                     "N_gen 32: about 470 MiB a user in float32.")
  parser.add_argument("--compilation_cache_dir",
                      help="Folder where JAX keeps the compiled sampler "
                      "(one per prompt length bucket) for later runs of the "
                      "same model shape; it changes no result (default: "
                      "none kept).")
  parser.add_argument("--recommendations_k", type=int,
                      help="Also write the top K items per user (default: "
                      "%(default)s, none).")
  parser.add_argument("--overwrite", action="store_true",
                      help="Replace the results of an earlier run in "
                      "--output_dir, once this run has succeeded.")
  # One source of the defaults: the config's.
  parser.set_defaults(**config_lib.defaults())
  return parser


def parse_flags(argv: Sequence[str], prog: str = PROG
               ) -> tuple[config_lib.EvaluationConfig, list[str]]:
  """The evaluation's config and the remaining (Beam) flags; reads no file.

  A flag that is neither the job's nor Beam's, a value out of range or
  options Beam refuses end the command with a usage error naming `prog`.
  """
  parser = _parser(prog)
  args, beam_argv = beam_cli.parse_job_args(parser, argv)
  try:
    config = config_lib.EvaluationConfig(**vars(args))
    beam_cli.checked_beam_options(beam_argv, _worker_paths(config))
  except ValueError as error:  # beam_cli.BeamOptionsError too.
    parser.error(str(error))
  return config, beam_argv


def _worker_paths(config: config_lib.EvaluationConfig) -> dict[str, str]:
  """What the workers read or write, by flag (`checked_beam_options`)."""
  paths = {"--data_dir": config.data_dir, "--output_dir": config.output_dir}
  if config.model == "calrec":
    paths["--model_dir"] = config.model_dir
  return paths


def resolve_or_exit(config: config_lib.EvaluationConfig,
                    check_model: bool = True,
                    prog: str = PROG) -> config_lib.ResolvedRun:
  """`config_lib.resolve`; a refusal ends the command with a usage error.

  Refusals: missing or changed data (`data.DataError`), a missing file, an
  output folder of another run (`run_dir.RunDirError`), and a checkpoint
  that does not restore or verify (`checkpoints.UnusableCheckpointError`),
  each a FileNotFoundError or ValueError with a one-line message.
  """
  try:
    return config_lib.resolve(config, check_model)
  except (FileNotFoundError, ValueError) as error:
    _parser(prog).error(str(error))


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
                  output_dir: str) -> dict[str, Any]:
  """Writes metrics.json and results.md (Table 2 and Table 7 layouts);
  returns what metrics.json holds.

  The metrics average over every test user (of the --max_users subset): the
  `num_users` ranked ones and the `num_unranked` ones, which count as misses
  (`metrics.with_misses`). `num_read`: the split records read, all of them.
  `run`: the run's settings (`config.ResolvedRun.settings`).

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
  return summary


def _column_name(summary: dict[str, Any]) -> str:
  return f"{summary['model']} ({summary['retrieval']})"


def results_markdown(summary: dict[str, Any]) -> str:
  """results.md, which the command also prints: Tables 2 and 7 layouts."""
  column = [(_column_name(summary), summary)]
  return (report.table_2(column) + "\nOutputs that match an item (paper "
          "Table 7):\n\n" + report.table_7_matches(column))


def users_per_worker(resolved: config_lib.ResolvedRun,
                     worker_processes: Optional[int]) -> Optional[int]:
  """The users each of `worker_processes` generates for, about: the split's
  (or the --max_users subset's) spread evenly; None when not known."""
  if not worker_processes:
    return None
  users = resolved.split_files.num_records
  if users is None:  # A manifest that does not count its records.
    return None
  if resolved.config.max_users:
    users = min(users, resolved.config.max_users)
  return math.ceil(users / worker_processes)


def calrec_generator_loader(resolved: config_lib.ResolvedRun,
                            worker_processes: Optional[int] = None
                            ) -> "model_handler.GeneratorLoader":
  """The JAX model's generator for --model=calrec (loaded on the workers).

  `worker_processes`: the processes of a local runner, for the ETA of each
  worker's progress line (`users_per_worker`); None leaves the ETA out.
  """
  from evaluator import model_handler  # pylint: disable=g-import-not-at-top
  config = resolved.config
  return model_handler.GeneratorLoader(
      model_dir=config.model_dir, num_generations=config.num_generations,
      temperature=config.temperature, sampler=config.sampler,
      dtype=config.dtype, max_decode_length=config.max_decode_length,
      compilation_cache_dir=config.compilation_cache_dir,
      batch_size=config.batch_size, step=config.checkpoint_step,
      expected_users=users_per_worker(resolved, worker_processes))


class Evaluate(beam.PTransform):
  """A resolved run's evaluation, from its split files to the files it writes
  to `output_dir` (module docstring); applied to a pipeline's root.

  `load_generator` serves --model=calrec; None loads the model of
  `model_dir`, and the corpus is then matched in the normal form of its
  vocabulary (`transforms.RetrievalOptions`), and `worker_processes` (a
  local runner's, `beam_options.local_worker_processes`) gives its workers'
  progress lines an ETA. Its output: one element, what metrics.json holds.
  """

  def __init__(self, resolved: config_lib.ResolvedRun, output_dir: str,
               load_generator: Optional[LoadGenerator] = None,
               worker_processes: Optional[int] = None):
    super().__init__()
    self._run = resolved
    self._output_dir = output_dir
    self._vocabulary_path = None
    if resolved.config.model == "calrec" and load_generator is None:
      load_generator = calrec_generator_loader(resolved, worker_processes)
      self._vocabulary_path = load_generator.vocabulary_path
    self._load_generator = load_generator

  def expand(self, root: beam.pvalue.PBegin) -> beam.PCollection:
    records = (root
               | "SplitFiles" >> beam.Create(self._run.split_files.paths)
               | "ReadSplit" >> beam.io.ReadAllFromTFRecord())
    parsed = records | "ParseUsers" >> beam.ParDo(
        transforms.ParseUsers()).with_outputs(transforms.REJECTS, main="users")
    evaluated = self._ranked(self._with_samples(self._sampled(parsed.users)))
    self._write_users(evaluated.results)
    rejects = ((parsed[transforms.REJECTS], evaluated[transforms.REJECTS])
               | "AllRejects" >> beam.Flatten())
    _ = (rejects
         | "RejectLines" >> beam.Map(json.dumps)
         | "WriteRejects" >> beam.io.WriteToText(
             os.path.join(self._output_dir, "rejects"),
             file_name_suffix=".jsonl"))
    return self._summary(records, rejects, evaluated)

  def _sampled(self, users: beam.PCollection) -> beam.PCollection:
    """The --max_users subset (`transforms.SampleUsers`), else every user."""
    config = self._run.config
    if not config.max_users:
      return users
    return users | "SampleUsers" >> transforms.SampleUsers(
        config.max_users, config.user_sample_seed)

  def _with_samples(self, users: beam.PCollection) -> beam.PCollection:
    """(user, samples): LIR's last item, or the model's samples through
    RunInference, each user with its own seed."""
    # A split file is read by one worker; spread the users over all.
    users = users | "Spread" >> beam.Reshuffle()
    config = self._run.config
    if config.model == "lir":
      return users | "LastItem" >> beam.Map(
          lambda user: (user, baselines.last_item_samples(user)))
    seed = config.seed
    handler = inference.KeyedModelHandler(generation.GeneratorModelHandler(
        self._load_generator,
        max_batch_size=config.batch_size * generation.BATCHES_PER_CALL))
    return (
        users
        | "Requests" >> beam.Map(lambda user: (
            user, generation.GenerationRequest(
                user.history_texts, generation.user_seed(seed, user.user_id))))
        | "Generate" >> inference.RunInference(handler)
        | "Samples" >> beam.MapTuple(lambda user, result: (user,
                                                           result.inference)))

  def _ranked(self, samples: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
    """Per-user results, and REJECTS: the users left unranked."""
    config = self._run.config
    return (samples
            | "BatchUsers" >> beam.BatchElements(min_batch_size=1,
                                                 max_batch_size=64)
            | "RetrieveAndRank" >> beam.ParDo(transforms.RetrieveAndRank(
                config.corpus_path, config.retrieval_options(
                    self._vocabulary_path))).with_outputs(
                        transforms.REJECTS, main="results"))

  def _write_users(self, results: beam.PCollection) -> None:
    """users-*.parquet and, with --recommendations_k, recommendations-*."""
    user_schema = _user_schema()
    user_columns = user_schema.names
    _ = (results
         | "UserColumns" >> beam.Map(
             lambda r: {column: r[column] for column in user_columns})
         | "WriteUsers" >> beam.io.WriteToParquet(
             os.path.join(self._output_dir, report.USERS_PREFIX), user_schema,
             file_name_suffix=".parquet"))
    if self._run.config.recommendations_k:
      _ = (results
           | "Recommendations" >> beam.Map(lambda r: json.dumps(
               {"user_id": r["user_id"], "items": r["recommendations"]}))
           | "WriteRecommendations" >> beam.io.WriteToText(
               os.path.join(self._output_dir, "recommendations"),
               file_name_suffix=".jsonl"))

  def _summary(self, records: beam.PCollection, rejects: beam.PCollection,
               evaluated: beam.pvalue.DoOutputsTuple) -> beam.PCollection:
    """metrics.json and results.md (`write_summary`), once all is counted."""
    num_read = records | "CountRecords" >> beam.combiners.Count.Globally()
    num_rejected = rejects | "CountRejects" >> beam.combiners.Count.Globally()
    num_unranked = (evaluated[transforms.REJECTS]
                    | "CountUnranked" >> beam.combiners.Count.Globally())
    return (evaluated.results
            | "MeanMetrics" >> beam.CombineGlobally(transforms.MeanMetrics())
            | "WriteSummary" >> beam.Map(
                write_summary, num_read=beam.pvalue.AsSingleton(num_read),
                num_rejected=beam.pvalue.AsSingleton(num_rejected),
                num_unranked=beam.pvalue.AsSingleton(num_unranked),
                run=self._run.settings(), output_dir=self._output_dir))


def run(argv: Sequence[str],
        load_generator: Optional[LoadGenerator] = None) -> dict[str, Any]:
  """Runs the evaluation the flags ask for; returns the contents of
  metrics.json. `load_generator` replaces the model of --model_dir."""
  config, beam_argv = parse_flags(argv)
  resolved = resolve_or_exit(config, check_model=load_generator is None)
  return run_resolved(resolved, beam_argv, load_generator)


def run_resolved(resolved: config_lib.ResolvedRun, beam_argv: Sequence[str],
                 load_generator: Optional[LoadGenerator] = None
                ) -> dict[str, Any]:
  """`run` for a config `config_lib.resolve` has checked.

  The job writes into `run_dir.staging_dir(output_dir)` (Beam's temporary
  folders too), after deleting one a killed run left; run.json is written
  and the folder swapped in for `output_dir` only once the job has
  succeeded, so a failed run leaves earlier results as they were.
  """
  config = resolved.config
  options = beam_cli.beam_options(beam_argv)
  staging = run_dir.staging_dir(config.output_dir)
  files.delete_folder(staging)
  files.make_dirs(staging)
  logging.info("Evaluating %s/%s (%s, %s retrieval) into %s", config.category,
               config.split, config.model, config.retrieval, staging)
  try:
    with beam.Pipeline(options=options) as root:
      _ = root | Evaluate(resolved, staging, load_generator,
                          beam_cli.local_worker_processes(options))
    run_dir.write_record(staging, config_lib.STAGE, resolved.made_from())
  except BaseException:
    files.delete_folder(staging)
    raise
  run_dir.swap_in(staging, config.output_dir,
                  last=(report.METRICS_FILE, run_dir.RUN_RECORD))
  summary = report.load_summary(config.output_dir)
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
