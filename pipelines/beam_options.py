"""The Beam pipeline options every Beam job of the project shares.

A job's own flags are parsed by its parser; every other flag must be a Beam
pipeline option (`parse_job_args`) and goes to `PipelineOptions` unchanged.
Without `--runner` a job runs on FnApiRunner: Beam's DirectRunner would first
try to download Prism. `checked_beam_options` makes Beam's own checks before
the job reads or deletes any file.
"""

from __future__ import annotations

import argparse
import difflib
import multiprocessing
from typing import Mapping, Sequence

from apache_beam import runners
from apache_beam.options import pipeline_options
from apache_beam.options import pipeline_options_validator
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import files

DEFAULT_RUNNER = "FnApiRunner"
# Runners whose workers are other machines, without the launcher's disk, in
# the form `_runner_key` gives them.
REMOTE_WORKER_RUNNERS = ("dataflow", "testdataflow")
# Runners that run a batch job on FnApiRunner, with `DirectOptions`' workers.
LOCAL_RUNNERS = ("fnapi", "direct", "switchingdirect")


class BeamOptionsError(ValueError):
  """Pipeline options Beam refuses: an unknown runner, a failed check."""


def _beam_flag_parser() -> argparse.ArgumentParser:
  """A parser of every Beam pipeline option, built as PipelineOptions does
  (it discards, with only a log line, any flag this parser does not know)."""
  # pylint: disable-next=protected-access
  parser = pipeline_options._BeamArgumentParser(allow_abbrev=False,
                                                exit_on_error=False)
  classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
  for cls in classes.values():
    cls._add_argparse_args(parser)  # pylint: disable=protected-access
  return parser


def parse_job_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
  """The job's flags and Beam's; a flag that is neither, or a Beam flag with
  a bad value, is a one-line usage error of the job's parser.

  Beam would otherwise drop a misspelt flag (say --recomendations_k) with a
  warning in the log, and the job would run with the default.
  """
  args, beam_args = parser.parse_known_args(argv)
  beam_parser = _beam_flag_parser()
  try:
    _, unknown = beam_parser.parse_known_args(beam_args)
  except argparse.ArgumentError as error:  # A bad value, say a typo'd choice.
    parser.error(f"Beam pipeline option {error}")
  if unknown:
    # pylint: disable-next=protected-access
    actions = parser._actions + beam_parser._actions
    known = [option for action in actions for option in action.option_strings]
    parser.error(f"unrecognized arguments, neither {parser.prog}'s nor Beam "
                 "pipeline options: " +
                 ", ".join(_with_hint(flag, known) for flag in unknown))
  return args, beam_args


def _with_hint(flag: str, known: Sequence[str]) -> str:
  """`flag`, followed by the known option closest to its name, if any."""
  match = difflib.get_close_matches(flag.split("=")[0], known, n=1)
  return f"{flag} (did you mean {match[0]}?)" if match else flag


def _runner_key(runner_name: str) -> str:
  """A runner name as Beam matches it: its class name, lower case, without
  "runner" (so Dataflow, dataflow and DataflowRunner are one)."""
  key = runner_name.rsplit(".", maxsplit=1)[-1].lower()
  return key.removesuffix("runner")


def _check_worker_paths(options: PipelineOptions,
                        worker_paths: Mapping[str, str]) -> None:
  """Each path is remote where workers are, and has a file system here."""
  runner_name = str(options.view_as(pipeline_options.StandardOptions).runner)
  local = [f"{label} {path}" for label, path in worker_paths.items()
           if files.scheme(path) is None]
  if local and _runner_key(runner_name) in REMOTE_WORKER_RUNNERS:
    raise BeamOptionsError(
        f"{runner_name} workers cannot reach local paths: "
        f"{', '.join(local)}; give gs:// paths.")
  for label, path in worker_paths.items():
    # gs:// without apache-beam[gcp], a mistyped scheme.
    if not files.has_filesystem(path):
      raise BeamOptionsError(
          f"{label} {path}: no file system for this path here (gs:// "
          "needs pip install -e '.[gcp]', README: Beam jobs on Dataflow).")


def local_worker_processes(options: PipelineOptions) -> int | None:
  """The processes a local runner spreads the work over, None on others.

  FnApiRunner starts `--direct_num_workers` processes (0: one per core) with
  `--direct_running_mode=multi_processing`; its other modes run every worker
  in this process, where they share one copy of a model (RunInference).
  """
  runner_name = str(options.view_as(pipeline_options.StandardOptions).runner)
  if _runner_key(runner_name) not in LOCAL_RUNNERS:
    return None
  direct = options.view_as(pipeline_options.DirectOptions)
  if direct.direct_running_mode != "multi_processing":
    return 1
  return direct.direct_num_workers or multiprocessing.cpu_count()


def beam_options(beam_args: Sequence[str]) -> PipelineOptions:
  """Pipeline options from the remaining flags, FnApiRunner by default."""
  flags = list(beam_args)
  if not any(f == "--runner" or f.startswith("--runner=") for f in flags):
    flags.append(f"--runner={DEFAULT_RUNNER}")
  return PipelineOptions(flags=flags)


def checked_beam_options(
    beam_args: Sequence[str],
    worker_paths: Mapping[str, str] | None = None) -> PipelineOptions:
  """`beam_options(beam_args)` after the checks `beam.Pipeline` makes (the
  runner exists and can be created, the options suit it), so that a job
  can refuse them before it reads or deletes any file.

  worker_paths: what the workers read or write, by a label for messages
  (the flag that names it, say "--output_dir").
  A path with no file system here (gs:// without the gcp extra) is refused;
  so is a local path on a runner whose workers are other machines (Dataflow),
  where it would be each worker's own disk.

  Raises BeamOptionsError with Beam's message on one line.
  """
  options = beam_options(beam_args)
  _check_worker_paths(options, worker_paths or {})
  try:
    runner = runners.create_runner(
        options.view_as(pipeline_options.StandardOptions).runner)
    errors = pipeline_options_validator.PipelineOptionsValidator(
        options, runner).validate()
  except (ValueError, ImportError, AttributeError) as e:
    # AttributeError: --runner=module.Name where the module lacks Name.
    raise BeamOptionsError(" ".join(str(e).split())) from None
  if errors:
    raise BeamOptionsError("; ".join(" ".join(e.split()) for e in errors))
  return options
