r"""Trains CALRec (paper sections 3.3 and 3.4) from gin configuration.

Stage I on the multi-category mixture, then Stage II on one category starting
from a Stage I checkpoint:

  python -m trainer.train \
    --gin_file=trainer/configs/runs/stage1.gin \
    --gin_file=trainer/configs/models/base.gin \
    --gin.MODEL_DIR="'models/stage1'" --gin.DATA_DIR="'preprocessed'" \
    --gin.VOCABULARY="'vocab/calrec.model'"

  python -m trainer.train \
    --gin_file=trainer/configs/runs/stage2.gin \
    --gin_file=trainer/configs/models/base.gin \
    --gin.MODEL_DIR="'models/stage2_scientific'" ... \
    --gin.MIXTURE_OR_TASK_NAME="'calrec_scientific'" \
    --gin.INITIAL_CHECKPOINT_PATH="'models/stage1'"

`--gin.NAME=VALUE` is short for `--gin_bindings='NAME = VALUE'` (values are
gin literals: quote strings). Gin files are found from the working directory,
on the Python path (trainer/configs/... works from anywhere) and in
`--gin_search_paths`. The tiny CPU runs: trainer/configs/runs/tiny_stage1.gin
and tiny_stage2.gin. A run in a MODEL_DIR that already holds checkpoints
resumes from the latest one (see `trainer.train_loop`). A non-finite loss
stops the run with exit status 1, keeping the last good checkpoint.

On several hosts, run the same command on every host with `--distributed`
(Cloud TPU, SLURM and Open MPI are detected; elsewhere also pass
--coordinator_address=HOST0:PORT --num_processes=N --process_id=I).
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import gin
import jax

from trainer import checkpoints
from trainer import train_loop


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """Turns t5x's `--gin.NAME=VALUE` into `--gin_bindings=NAME = VALUE`.

  Raises:
    ValueError: a `--gin.NAME` without `=VALUE`.
  """
  rewritten = []
  for arg in argv:
    if arg.startswith("--gin."):
      if "=" not in arg:
        raise ValueError(f"{arg} has no value: write --gin.NAME=VALUE.")
      name, value = arg[len("--gin."):].split("=", 1)
      rewritten.append(f"--gin_bindings={name} = {value}")
    else:
      rewritten.append(arg)
  return rewritten


_GIN_FILES = flags.DEFINE_multi_string(
    "gin_file", [], "Gin config files, e.g. trainer/configs/runs/stage1.gin.")
_GIN_BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [],
    "Gin bindings, e.g. \"TRAIN_STEPS = 1000\"; --gin.NAME=VALUE also works.")
_GIN_SEARCH_PATHS = flags.DEFINE_list(
    "gin_search_paths", ["."],
    "Comma-separated folders to look up gin files in (as in t5x).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Join a multi-process (multi-host) run: jax.distributed.initialize().")
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None,
    "With --distributed: HOST:PORT of process 0, where it is not detected.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --distributed: the number of processes.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --distributed: this process's index.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not _GIN_FILES.value:
    raise app.UsageError(
        "Give at least one --gin_file, e.g. "
        "--gin_file=trainer/configs/runs/tiny_stage1.gin.")
  checkpoints.hide_orbax_info_logs()
  if _DISTRIBUTED.value:
    jax.distributed.initialize(_COORDINATOR_ADDRESS.value,
                               _NUM_PROCESSES.value, _PROCESS_ID.value)
  for path in _GIN_SEARCH_PATHS.value:
    gin.add_config_file_search_path(path)
  try:
    gin.parse_config_files_and_bindings(_GIN_FILES.value, _GIN_BINDINGS.value)
  except (IOError, ValueError) as error:
    raise app.UsageError(f"Bad gin configuration: {error}") from error
  try:
    train_loop.train()
  except (train_loop.NonFiniteLossError, ValueError,
          FileNotFoundError) as error:
    # Configuration and data mistakes: the message says what to change; the
    # traceback stays available with --verbosity=1.
    logging.error("%s: %s", type(error).__name__, error)
    logging.debug("Traceback:", exc_info=True)
    sys.exit(1)


if __name__ == "__main__":
  try:
    gin_argv = rewrite_gin_args(sys.argv)
  except ValueError as error:
    sys.exit(f"Usage error: {error}")
  app.run(main, argv=gin_argv)
