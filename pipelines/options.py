"""Command-line flags of `python -m pipelines.preprocess`, and the job's
settings they give (`JobSettings`, built once from them and passed down).

Every other flag must be a Beam pipeline option (`beam_options`).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Optional, Sequence

from pipelines import beam_options

from pipelines import textio
from pipelines.cli import positive_int

DEFAULT_LINES_PER_CALL = 250_000


_EPILOG = """\
Any other flag is a Beam pipeline option, e.g. --runner=FnApiRunner
--direct_num_workers=2 --direct_running_mode=multi_processing; a flag that
is neither is an error, not ignored.

Example, on the generated sample:
  python -m experiments.sample_data --output_dir=/tmp/sample
  python -m pipelines.preprocess --config=/tmp/sample/config.json \\
      --output_dir=/tmp/preprocessed

Output (docs/contracts.md): {category}/{split}-SSSSS-of-NNNNN.tfrecord,
{category}/corpus.parquet, {category}/stats.json,
rejects/{category}-SSSSS-of-NNNNN.jsonl and manifest.json, written last.
"""


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      allow_abbrev=False,
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
            "experiments.sample_data writes"))
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


@dataclasses.dataclass(frozen=True)
class JobSettings:
  """The job's own settings, one per flag of `build_parser`."""

  config: str
  output_dir: str
  data_dir: Optional[str] = None
  overwrite: bool = False
  read_range_bytes: int = textio.DEFAULT_RANGE_BYTES
  lines_per_call: int = DEFAULT_LINES_PER_CALL


def parse_flags(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]
                ) -> tuple[JobSettings, list[str]]:
  """(the job's settings, Beam's flags); a flag that is neither is a usage
  error of `parser` (`beam_options.parse_job_args`)."""
  args, beam_args = beam_options.parse_job_args(parser, argv)
  return JobSettings(
      config=args.config, output_dir=args.output_dir, data_dir=args.data_dir,
      overwrite=args.overwrite, read_range_bytes=args.read_range_mb << 20,
      lines_per_call=args.lines_per_call), beam_args
