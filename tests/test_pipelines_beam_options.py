"""pipelines.beam_options and pipelines.cli: flag parsing and logging shared by
the Beam jobs."""

import argparse
import logging
import os

import pytest

from pipelines import beam_options
from pipelines import cli
from pipelines import options
from pipelines import textio


def _job_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="job", allow_abbrev=False)
  parser.add_argument("--output_dir", required=True)
  return parser


@pytest.mark.parametrize("flag,message", [
    ("--direct_num_workers=two",
     "argument --direct_num_workers: invalid int value: 'two'"),
    ("--direct_running_mode=multi_procesing",
     "argument --direct_running_mode: invalid choice: 'multi_procesing'"),
])
def test_a_bad_beam_flag_value_is_one_line_of_the_jobs_usage(
    capsys, flag, message):
  with pytest.raises(SystemExit) as exit_info:
    beam_options.parse_job_args(_job_parser(), ["--output_dir=o", flag])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  error_lines = [line for line in err.splitlines() if "error:" in line]
  assert len(error_lines) == 1 and message in error_lines[0], err
  assert error_lines[0].startswith("job: error: Beam pipeline option")
  assert "--dataflow_service_options" not in err  # Not Beam's own usage.


def test_beam_flags_pass_through_unchanged():
  args, beam_args = beam_options.parse_job_args(
      _job_parser(), ["--output_dir=o", "--direct_num_workers=2",
                      "--runner=FnApiRunner"])
  assert args.output_dir == "o"
  assert beam_args == ["--direct_num_workers=2", "--runner=FnApiRunner"]


def test_logging_keeps_the_dataflow_runners_info_lines_only():
  cli.configure_logging()
  assert logging.getLogger(
      "apache_beam.runners.dataflow.internal.apiclient").isEnabledFor(
          logging.INFO)
  for library_module in ("apache_beam.runners.portability.fn_api_runner",
                         "jax._src.xla_bridge"):
    assert not logging.getLogger(library_module).isEnabledFor(logging.INFO)
  assert logging.getLogger("pipelines.preprocess").isEnabledFor(logging.INFO)


@pytest.mark.parametrize("runner", ["DataflowRunner", "dataflow", "Dataflow"])
def test_dataflow_refuses_local_paths_before_checking_anything_else(runner):
  with pytest.raises(beam_options.BeamOptionsError) as error:
    beam_options.checked_beam_options(
        [f"--runner={runner}"],
        {"--output_dir": "/tmp/out", "--data_dir": "gs://bucket/data",
         "Games reviews": "relative/reviews.json.gz"})
  assert str(error.value) == (
      f"{runner} workers cannot reach local paths: --output_dir "
      "/tmp/out, Games reviews relative/reviews.json.gz; give gs:// paths.")


def test_local_runners_take_local_paths():
  checked = beam_options.checked_beam_options(
      ["--direct_num_workers=2"], {"--output_dir": "/tmp/out"})
  assert checked.get_all_options()["direct_num_workers"] == 2


@pytest.mark.parametrize("flags,processes", [
    ([], 1),  # FnApiRunner in memory.
    (["--direct_num_workers=3", "--direct_running_mode=multi_threading"], 1),
    (["--direct_num_workers=3", "--direct_running_mode=multi_processing"], 3),
    (["--direct_num_workers=0", "--direct_running_mode=multi_processing"],
     os.cpu_count()),
    (["--runner=DirectRunner", "--direct_num_workers=2",
      "--direct_running_mode=multi_processing"], 2),
    (["--runner=DataflowRunner", "--num_workers=4"], None),
])
def test_local_worker_processes_are_those_holding_a_model_each(flags,
                                                              processes):
  assert beam_options.local_worker_processes(
      beam_options.beam_options(flags)) == processes


def test_a_path_without_a_file_system_is_refused_naming_its_flag():
  with pytest.raises(beam_options.BeamOptionsError) as error:
    beam_options.checked_beam_options([], {"--output_dir": "/tmp/out",
                                      "--data_dir": "gss://bucket/data"})
  assert str(error.value).startswith(
      "--data_dir gss://bucket/data: no file system for this path here")


def test_preprocess_flags_give_the_jobs_settings_once():
  parser = options.build_parser()
  job, beam_args = options.parse_flags(parser, [
      "--config=c.json", "--output_dir=out", "--read_range_mb=2",
      "--runner=FnApiRunner"])
  assert job == options.JobSettings(config="c.json", output_dir="out",
                                    read_range_bytes=2 << 20)
  assert beam_args == ["--runner=FnApiRunner"]
  assert options.JobSettings("c", "o").read_range_bytes == (
      textio.DEFAULT_RANGE_BYTES)
