r"""Preprocessing job: raw Amazon reviews to per-category TFRecords.

  python -m pipelines.preprocess --config=CONFIG --output_dir=DIR \
      [--data_dir=DIR] [--overwrite] [Beam flags]

Implements paper section 4: join reviews with meta, order each user's events,
drop consecutive exact duplicates, sample users, split by category role,
template item texts, and write Table 1 statistics. See docs/contracts.md for
the output folder.

Before the job starts, the launcher writes `_RUN_STARTED` into the output
folder (`outputs.RUN_STARTED`), and the job deletes it once it has written
`manifest.json`: a folder holding the marker without a manifest is a run that
failed or was cancelled, which `--overwrite` replaces like a finished one.
Only `manifest.json` says a run completed.

The job's Beam counters (namespace "preprocess", named `{category}/{count}`)
show its progress while it runs: the counts of `stats.json` (lines read,
records parsed, rejects by reason, users kept ...), plus `shards_written`,
`{split}_examples_written` and `rejects_written`. Counts of 0 are not sent,
and `meta_duplicate_rows`, derived from two others at the end, is no counter.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines import cli
from pipelines import config as config_lib
from pipelines import options
from pipelines import outputs
from pipelines import stats as stats_lib
from pipelines import textio
from pipelines import transforms


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


def _files_under(output_dir: str) -> tuple[str, list[str]]:
  """(the prefix of every path, every file under `output_dir` at any depth).

  A match is the one check that sees inside the folder on every file system:
  on an object store such as GCS a folder is only a prefix of object names,
  which `exists` does not find. "**" crosses "/", "*" would not.
  """
  pattern = FileSystems.join(output_dir, "**")
  files = FileSystems.match([pattern])[0].metadata_list
  return pattern[:-len("**")], [metadata.path for metadata in files]


def _is_file(path: str) -> bool:
  """Whether `path` is a file rather than a folder. Only a file system with
  folders can tell: in an object store, a name can be both."""
  # "file/" does not exist where "file" does; "folder/" does.
  path = path.rstrip("/") or path
  return (FileSystems.get_filesystem(path).has_dirs() and
          FileSystems.exists(path) and
          not FileSystems.exists(FileSystems.join(path, "")))


def _holds_earlier_run(names: Sequence[str]) -> bool:
  """Whether file names relative to the output folder show a run of this job:
  finished (manifest.json), or stopped after it began (`_RUN_STARTED`) or
  while it wrote rejects/."""
  return any(name in (outputs.MANIFEST, outputs.RUN_STARTED) or
             name.startswith(outputs.REJECTS_DIR + "/") for name in names)


def _empty_output_dir(output_dir: str, overwrite: bool) -> None:
  """Refuses a non-empty folder unless it holds an earlier run to replace,
  which it then deletes."""
  prefix, files = _files_under(output_dir)
  if not files:
    return
  if not overwrite:
    raise OutputDirError(f"--output_dir {output_dir} is not empty; pass "
                         "--overwrite to replace an earlier run or choose "
                         "another folder")
  if not _holds_earlier_run([path[len(prefix):] for path in files]):
    raise OutputDirError(f"--output_dir {output_dir} is not empty and holds "
                         f"no earlier run (no {outputs.MANIFEST}, "
                         f"{outputs.RUN_STARTED} or {outputs.REJECTS_DIR}/); "
                         "refusing to delete it")
  FileSystems.delete(files)
  if FileSystems.get_filesystem(output_dir).has_dirs():
    FileSystems.delete([output_dir])  # The folders left empty.


def prepare_output_dir(output_dir: str, overwrite: bool) -> None:
  """Empties the folder for the job (`_empty_output_dir`) and marks it as
  this job's output (`outputs.write_run_started`)."""
  if _is_file(output_dir):
    raise OutputDirError(f"--output_dir {output_dir} is a file, not a folder")
  _empty_output_dir(output_dir, overwrite)
  outputs.write_run_started(output_dir)


def _worker_paths(config: config_lib.Config,
                  output_dir: str) -> dict[str, str]:
  """The input patterns and output folder the workers use, by label."""
  paths = {"--output_dir": output_dir}
  for category in config.categories:
    for kind in ("reviews", "meta"):
      for number, pattern in enumerate(getattr(category, kind)):
        paths[f"{category.name} {kind} #{number}"] = pattern
  return paths


def run(argv: Sequence[str] | None = None) -> dict[str, dict]:
  """Runs the job; returns the statistics of every category."""
  parser = options.build_parser()
  args, beam_args = options.parse_job_args(parser, argv)
  try:
    config = config_lib.load_config(args.config, args.data_dir)
    # Before any input is read or file deleted: Beam checks the runner and
    # options, and the paths the workers use.
    beam_options = options.checked_beam_options(
        beam_args, _worker_paths(config, args.output_dir))
    review_tasks, meta_tasks = plan_tasks(config, args.read_range_mb << 20)
    prepare_output_dir(args.output_dir, args.overwrite)
  except textio.InputError as e:
    missing = "no file matches" in str(e)
    hint = ("" if args.data_dir or not missing else " (relative file names "
            "are looked up beside the config, or in its data_dir; pass "
            "--data_dir=FOLDER of the downloaded files)")
    parser.error(f"{e}{hint}")
  except (options.BeamOptionsError, config_lib.ConfigError,
          OutputDirError) as e:
    parser.error(str(e))
  logging.info("%d categories: %d review ranges, %d meta ranges -> %s",
               len(config.categories), len(review_tasks), len(meta_tasks),
               args.output_dir)
  with beam.Pipeline(options=beam_options) as pipeline:
    build_pipeline(pipeline, config, args.output_dir, review_tasks,
                   meta_tasks, args.lines_per_call)
  stats = outputs.read_stats(args.output_dir, config)
  for name, category_stats in stats.items():
    if not category_stats["num_users"]:
      logging.warning("category %s has no users left; its rejects are in %s",
                      name, outputs.rejects_pattern(args.output_dir, name))
  logging.info("done: %s", FileSystems.join(args.output_dir,
                                            outputs.MANIFEST))
  return stats


def main(argv: Sequence[str] | None = None) -> None:
  cli.configure_logging()
  stats = run(sys.argv[1:] if argv is None else argv)
  print(stats_lib.format_table(stats))


if __name__ == "__main__":
  main()
