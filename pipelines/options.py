"""Command-line flags of `python -m pipelines.preprocess`.

The job's own flags are parsed here; every other flag is a Beam pipeline
option and goes to `PipelineOptions` unchanged. Without `--runner` the job
runs on FnApiRunner: Beam's DirectRunner would first try to download Prism.
"""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import textio

DEFAULT_RUNNER = "FnApiRunner"
DEFAULT_LINES_PER_CALL = 250_000

_EPILOG = """\
Any other flag is a Beam pipeline option, e.g. --runner=FnApiRunner
--direct_num_workers=2 --direct_running_mode=multi_processing.

Example, on the generated sample:
  python -m pipelines.sample_data --output_dir=/tmp/sample
  python -m pipelines.preprocess --config=/tmp/sample/config.json \\
      --output_dir=/tmp/preprocessed

Output (docs/contracts.md): {category}/{split}-SSSSS-of-NNNNN.tfrecord,
{category}/corpus.parquet, {category}/stats.json, rejects/{category}.jsonl and
manifest.json, written last.
"""


def positive_int(text: str) -> int:
  """argparse type: an integer >= 1."""
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
  return value


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m pipelines.preprocess",
      description=("Turns raw Amazon review and meta JSON into deduplicated,\n"
                   "templated TFRecords per category and split, an item\n"
                   "corpus and statistics (CALRec paper, section 4)."),
      epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument(
      "--config", required=True,
      help=("JSON file listing the categories (see pipelines/config.py): "
            "pipelines/configs/amazon2018_paper.json is the paper's setup "
            "(pass --data_dir), or the config.json that "
            "pipelines.sample_data writes"))
  parser.add_argument("--output_dir", required=True,
                      help="folder to write; must be empty or absent")
  parser.add_argument(
      "--data_dir", default=None,
      help=("folder that relative file patterns of the config refer to "
            "(default: the config's data_dir, else the config's folder)"))
  parser.add_argument(
      "--overwrite", action="store_true",
      help="replace the output of an earlier run in --output_dir")
  parser.add_argument(
      "--read_range_mb", type=positive_int,
      default=textio.DEFAULT_RANGE_BYTES >> 20,
      help="plain input files are read in ranges of this size in MiB")
  parser.add_argument(
      "--lines_per_call", type=positive_int, default=DEFAULT_LINES_PER_CALL,
      help=("lines parsed before their results are handed on; bounds a "
            "worker's memory on a gzip file, which is read as one range "
            f"(default {DEFAULT_LINES_PER_CALL:,})"))
  return parser


def configure_logging() -> None:
  """INFO progress lines with times; Beam's own INFO lines (type hints,
  servers) hidden, since they bury them."""
  # force: an import-time warning may already have configured the root logger.
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                      force=True)
  logging.getLogger("apache_beam").setLevel(logging.WARNING)


def beam_options(beam_args: Sequence[str]) -> PipelineOptions:
  """Pipeline options from the remaining flags, FnApiRunner by default."""
  flags = list(beam_args)
  if not any(f == "--runner" or f.startswith("--runner=") for f in flags):
    flags.append(f"--runner={DEFAULT_RUNNER}")
  return PipelineOptions(flags=flags)
