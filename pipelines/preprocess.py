r"""Preprocessing job: raw Amazon reviews to per-category TFRecords.

  python -m pipelines.preprocess --config=CONFIG --output_dir=DIR \
      [--data_dir=DIR] [--overwrite] [Beam flags]

Implements paper section 4: join reviews with meta, order each user's events,
drop consecutive exact duplicates, sample users, split by category role,
template item texts, and write Table 1 statistics. See docs/contracts.md for
the output folder.

The job never writes into `--output_dir` itself but into the staging folder
`{output_dir}.staging` (`run_dir.staging_dir`). Before it starts, the launcher
deletes a staging folder that an earlier killed or failed run left and writes
`_RUN_STARTED` into a new one (`outputs.RUN_STARTED`); the job deletes the
marker once it has written `manifest.json`. Once the job has succeeded, the
launcher writes `run.json` (`run_dir`: the config and a fingerprint of the
input files) and puts the staging folder in place of `--output_dir`
(`run_dir.swap_in`), so `--overwrite` keeps the earlier run until its
replacement is complete. No input may lie inside either folder.

A worker that cannot read an input file to its end (gzip data corrupt past the
start that `plan_tasks` checks) fails the job with `textio.InputError`, which
the launcher reports as one line.

The job's Beam counters (namespace "preprocess", named `{category}/{count}`)
show its progress while it runs: the counts of `stats.json` (lines read,
records parsed, rejects by reason, users kept ...), plus `shards_written`,
`{split}_examples_written` and `rejects_written`. Counts of 0 are not sent,
and `meta_duplicate_rows`, derived from two others at the end, is no counter.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Any, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import beam_options
from pipelines import cli
from pipelines import config as config_lib
from pipelines import files
from pipelines import options
from pipelines import outputs
from pipelines import run_dir
from pipelines import stats as stats_lib
from pipelines import textio
from pipelines import transforms

STAGE = "preprocess"
# How a runner that reports a worker's error as text (not FnApiRunner in this
# process) shows an InputError, and the note Beam adds to its message.
_INPUT_ERROR = re.compile(
    rf"^{re.escape(textio.InputError.__module__)}\.InputError: (.*)$", re.M)
_STEP_NOTE = re.compile(r" \[while running '[^']*'\]")


def plan_tasks(config: config_lib.Config, range_bytes: int = (
    textio.DEFAULT_RANGE_BYTES)) -> tuple[list[transforms.RangeTask],
                                          list[transforms.RangeTask]]:
  """(review tasks, meta tasks).

  Raises:
    InputError: naming every bad input (missing, empty, unreadable), so that
      one run shows all the downloads still to fetch.
  """
  review_tasks, meta_tasks = [], []
  errors = []
  for category in config.categories:
    for patterns, what, tasks in (
        (category.reviews, "reviews", review_tasks),
        (category.meta, "meta", meta_tasks)):
      try:
        tasks.extend((category.name, *file_range)
                     for file_range in textio.plan_ranges(
                         patterns, f"{what} of {category.name}", range_bytes))
      except textio.InputError as e:
        errors.append(str(e))
  if errors:
    raise textio.InputError(f"{len(errors)} bad inputs: {'; '.join(errors)}"
                            if len(errors) > 1 else errors[0])
  return review_tasks, meta_tasks


def build_pipeline(pipeline: beam.Pipeline, config: config_lib.Config,
                   output_dir: str,
                   review_tasks: Sequence[transforms.RangeTask],
                   meta_tasks: Sequence[transforms.RangeTask],
                   lines_per_call: int = options.DEFAULT_LINES_PER_CALL
                   ) -> None:
  """Adds the whole job to `pipeline`."""
  meta_rows, meta_index, meta_rejects, meta_counts = (
      pipeline | "ReadMeta" >> transforms.ReadMeta(meta_tasks, config,
                                                   lines_per_call))
  shard_files, item_ids, bought_rows, review_rejects, review_counts = (
      pipeline | "BuildShards" >> transforms.BuildShards(
          review_tasks, config, lines_per_call, output_dir, meta_rows,
          meta_index))
  reject_files = ((meta_rejects, review_rejects)
                  | "Rejects" >> beam.Flatten()
                  | "WriteRejects" >> transforms.WriteRejects(config,
                                                              output_dir))
  stats = ({
      "counts": (meta_counts, review_counts) | "Counts" >> beam.Flatten(),
      "items": item_ids,
      "bought": bought_rows,
  } | "FinalizeCategories" >> transforms.FinalizeCategories(
      config, output_dir))
  _ = ((shard_files, reject_files, stats)
       | "WriteManifest" >> transforms.WriteManifest(config, output_dir))


class OutputDirError(ValueError):
  """An --output_dir the job must not write into."""


def _names_under(folder: str) -> list[str]:
  """Every file under `folder` at any depth, relative to it.

  A match is the one check that sees inside the folder on every file system:
  on an object store such as GCS a folder is only a prefix of object names,
  which `exists` does not find. "**" crosses "/", "*" would not.
  """
  prefix = files.join(folder, "")
  return [path[len(prefix):] for path in files.files_under(folder)]


def _holds_earlier_run(names: Sequence[str]) -> bool:
  """Whether file names relative to a folder show a run of this job:
  finished (manifest.json), or stopped after it began (`_RUN_STARTED`) or
  while it wrote rejects/."""
  return any(name in (outputs.MANIFEST, outputs.RUN_STARTED) or
             name.startswith(outputs.REJECTS_DIR + "/") for name in names)


def _input_patterns(config: config_lib.Config) -> dict[str, str]:
  """Every input pattern of the config, by label."""
  return {f"{category.name} {kind} #{number}": pattern
          for category in config.categories
          for kind in ("reviews", "meta")
          for number, pattern in enumerate(getattr(category, kind))}


def refuse_inputs_inside(config: config_lib.Config, output_dir: str) -> None:
  """Refuses an input inside the folders the job replaces: input is never
  deleted."""
  staging = run_dir.staging_dir(output_dir)
  folders = {output_dir: f"--output_dir {output_dir}, which the job replaces",
             staging: (f"{staging}, where the job writes before it replaces "
                       "--output_dir")}
  for label, pattern in _input_patterns(config).items():
    for folder, what in folders.items():
      if files.is_inside(pattern, folder):
        raise OutputDirError(f"{label} {pattern} lies inside {what}; choose "
                             "an --output_dir that holds no input")


def made_from(config: config_lib.Config) -> dict[str, Any]:
  """What a run's output is made from, as `run.json` records it: the config
  as the manifest records it and a fingerprint of every input file."""
  patterns = dict.fromkeys(_input_patterns(config).values())
  return {"config": config.to_json(),
          "inputs": run_dir.files_fingerprint(list(patterns))}


def _refusal(output_dir: str, current: dict[str, Any]) -> str:
  """Why a non-empty `output_dir` is refused without --overwrite: the first
  difference from the run it holds, when its `run.json` tells."""
  record = run_dir.read_record(output_dir)
  if record is None or record.get("stage") != STAGE:
    return (f"--output_dir {output_dir} is not empty; pass --overwrite to "
            "replace an earlier run or choose another folder")
  found = run_dir.differences(record.get("made_from", {}), current)
  if not found:
    return (f"--output_dir {output_dir} already holds this very run (the "
            "same config and input files); pass --overwrite to run it again "
            "or choose another folder")
  more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
  return (f"--output_dir {output_dir} was made from other inputs: "
          f"{found[0]}{more}; pass --overwrite to replace it or choose "
          "another folder")


def _check_output_dir(output_dir: str, overwrite: bool,
                      current: dict[str, Any]) -> None:
  """Refuses a non-empty folder unless --overwrite may replace the earlier
  run it holds."""
  names = _names_under(output_dir)
  if not names:
    return
  if not overwrite:
    raise OutputDirError(_refusal(output_dir, current))
  if not _holds_earlier_run(names):
    raise OutputDirError(f"--output_dir {output_dir} is not empty and holds "
                         f"no earlier run (no {outputs.MANIFEST}, "
                         f"{outputs.RUN_STARTED} or {outputs.REJECTS_DIR}/); "
                         "refusing to delete it")


def _new_staging(output_dir: str) -> str:
  """Deletes the staging folder an earlier run left, if it holds one;
  returns the folder."""
  staging = run_dir.staging_dir(output_dir)
  if files.is_file(staging):
    raise OutputDirError(f"{staging}, where the job writes before it "
                         "replaces --output_dir, is a file")
  names = _names_under(staging)
  if names and not _holds_earlier_run(names):
    raise OutputDirError(f"{staging}, where the job writes before it "
                         "replaces --output_dir, holds no earlier run; "
                         "refusing to delete it")
  files.delete_folder(staging)
  return staging


def prepare_output_dir(output_dir: str, overwrite: bool,
                       current: dict[str, Any]) -> str:
  """Checks the folder for the job (`_check_output_dir`; `current`: what this
  run is made from) and returns the staging folder the job writes, new and
  marked as this job's output (`outputs.write_run_started`)."""
  if files.is_file(output_dir):
    raise OutputDirError(f"--output_dir {output_dir} is a file, not a folder")
  _check_output_dir(output_dir, overwrite, current)
  staging = _new_staging(output_dir)
  outputs.write_run_started(staging)
  return staging


def finish_output_dir(staging: str, output_dir: str,
                      current: dict[str, Any]) -> None:
  """Records the run in its finished staging folder, which then replaces
  `output_dir`, `manifest.json` and `run.json` last."""
  run_dir.write_record(staging, STAGE, current)
  run_dir.swap_in(staging, output_dir,
                  last=(outputs.MANIFEST, run_dir.RUN_RECORD))


def _worker_paths(config: config_lib.Config,
                  output_dir: str) -> dict[str, str]:
  """The input patterns and output folder the workers use, by label."""
  return {"--output_dir": output_dir, **_input_patterns(config)}


def worker_input_error(error: Exception) -> str | None:
  """The message of the `textio.InputError` that failed the job, if one did:
  FnApiRunner in this process raises it again, other runners report the
  worker's traceback as text."""
  if isinstance(error, textio.InputError):
    message = str(error)
  else:
    found = _INPUT_ERROR.findall(str(error))
    if not found:
      return None
    message = found[-1]
  return _STEP_NOTE.sub("", message)


def _is_not_input_error(record: logging.LogRecord) -> bool:
  """A logging filter: False for Beam's log of a worker's InputError, with
  its traceback, which the launcher reports in one line."""
  return not (record.exc_info and
              isinstance(record.exc_info[1], textio.InputError))


def _run_job(parser: argparse.ArgumentParser, job: options.JobSettings,
             pipeline_options: PipelineOptions,
             config: config_lib.Config, staging: str,
             tasks: tuple[list[transforms.RangeTask],
                          list[transforms.RangeTask]]) -> None:
  """Runs the job into `staging`; an input a worker could not read ends the
  process with one line (exit status 1)."""
  try:
    with beam.Pipeline(options=pipeline_options) as pipeline:
      build_pipeline(pipeline, config, staging, *tasks, job.lines_per_call)
  except Exception as e:  # pylint: disable=broad-except
    # The type a runner reports a worker's error with varies.
    message = worker_input_error(e)
    if message is None:
      raise
    parser.exit(1, f"{parser.prog}: error: {message}; --output_dir "
                f"{job.output_dir} is unchanged\n")


def run(argv: Sequence[str] | None = None) -> dict[str, dict]:
  """Runs the job; returns the statistics of every category."""
  parser = options.build_parser()
  job, beam_args = options.parse_flags(parser, argv)
  try:
    config = config_lib.load_config(job.config, job.data_dir)
    refuse_inputs_inside(config, job.output_dir)
    # Before any input is read or file deleted: Beam checks the runner and
    # options, and the paths the workers use.
    pipeline_options = beam_options.checked_beam_options(
        beam_args, _worker_paths(config, job.output_dir))
    tasks = plan_tasks(config, job.read_range_bytes)
    current = made_from(config)
    staging = prepare_output_dir(job.output_dir, job.overwrite, current)
  except textio.InputError as e:
    missing = "no file matches" in str(e)
    hint = ("" if job.data_dir or not missing else " (relative file names "
            "are looked up beside the config, or in its data_dir; pass "
            "--data_dir=FOLDER of the downloaded files)")
    parser.error(f"{e}{hint}")
  except (beam_options.BeamOptionsError, config_lib.ConfigError,
          OutputDirError) as e:
    parser.error(str(e))
  logging.info("%d categories: %d review ranges, %d meta ranges -> %s",
               len(config.categories), len(tasks[0]), len(tasks[1]), staging)
  _run_job(parser, job, pipeline_options, config, staging, tasks)
  finish_output_dir(staging, job.output_dir, current)
  stats = outputs.read_stats(job.output_dir, config)
  for name, category_stats in stats.items():
    if not category_stats["num_users"]:
      logging.warning("category %s has no users left; its rejects are in %s",
                      name, outputs.rejects_pattern(job.output_dir, name))
  logging.info("done: %s", files.join(job.output_dir, outputs.MANIFEST))
  return stats


def main(argv: Sequence[str] | None = None) -> None:
  cli.configure_logging()
  logging.getLogger("apache_beam.runners.common").addFilter(
      _is_not_input_error)
  stats = run(sys.argv[1:] if argv is None else argv)
  print(stats_lib.format_table(stats))


if __name__ == "__main__":
  main()
