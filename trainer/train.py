r"""The training command line: gin files and flags -> `train_loop.train`.

It trains CALRec (paper sections 3.3 and 3.4): Stage I on the
multi-category mixture, then Stage II on one category starting from a Stage
I checkpoint:

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
gin literals: quote strings). A binding of a macro that no gin file defines
and nothing uses (`check_macro_bindings`) is refused when it is a t5x macro
with no counterpart here (the error names what to set instead) or resembles a
macro of trainer/configs (a misspelling), and only logged as a warning
otherwise; a macro the configuration uses but nothing defines, such as MODEL
without a trainer/configs/models/*.gin, is refused (`check_macros_defined`),
as is a configuration without a run config of trainer/configs/runs
(`check_run_config`).
Gin files are found from the working directory, on the Python path
(trainer/configs/... works from anywhere) and in `--gin_search_paths`. The
tiny CPU runs: trainer/configs/runs/tiny_stage1.gin and tiny_stage2.gin. A run
in a MODEL_DIR that already holds checkpoints resumes from the latest usable
one (see `trainer.train_loop`); one made from another vocabulary, network,
batch size, task or seed (its run.json) is refused before anything is
written. These refusals, an unusable MODEL_DIR and a non-finite loss (which
keeps the last good checkpoint) stop the run with one line and exit status 1.

With USE_CACHED_TASKS = True, `--seqio_additional_cache_dirs` names the
folders that seqio's cache script (`--output_cache_dir`) wrote.

On several hosts, run the same command on every host with `--distributed`
(Cloud TPU, SLURM and Open MPI are detected; elsewhere also pass
--coordinator_address=HOST0:PORT --num_processes=N --process_id=I). t5x's
names of these flags also work: --multiprocess_gpu, --process_count,
--process_index.
"""

from __future__ import annotations

import difflib
import pathlib
import re
import sys
import tokenize
from typing import NoReturn, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import gin
import jax
import seqio

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
_SEQIO_CACHE_DIRS = flags.DEFINE_list(
    "seqio_additional_cache_dirs", [],
    "Comma-separated folders holding cached seqio tasks (the "
    "--output_cache_dir of seqio.scripts.cache_tasks_main), searched besides "
    "seqio's defaults when USE_CACHED_TASKS is True (as in t5x).")
# t5x's names of the multi-host flags.
flags.DEFINE_alias("multiprocess_gpu", "distributed")
flags.DEFINE_alias("process_count", "num_processes")
flags.DEFINE_alias("process_index", "process_id")


# The macros of trainer/configs, for "did you mean" hints.
_KNOWN_MACROS = ("MODEL_DIR", "DATA_DIR", "VOCABULARY", "MIXTURE_OR_TASK_NAME",
                 "VALIDATION_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS",
                 "BATCH_SIZE", "RANDOM_SEED", "INITIAL_CHECKPOINT_PATH",
                 "LEARNING_RATE", "USE_CACHED_TASKS", "DROPOUT_RATE", "MODEL")
# The macros of t5x's configs/runs/*.gin that trainer/configs lacks: what to
# set instead.
_T5X_MACROS = {
    "EVAL_PERIOD": "set train.checkpoint_period (validation runs at every "
                   "checkpoint)",
    "EVAL_STEPS": "set train.validation_batches",
    "MIXTURE_OR_TASK_MODULE": "not needed: train.gin imports tasks.mixtures, "
                              "which registers the tasks of DATA_DIR",
    "TRAIN_STEPS_RELATIVE": "set TRAIN_STEPS (Stage II counts its own steps "
                            "from 0)",
    "SHUFFLE_TRAIN_EXAMPLES": "not needed: the training data is always "
                              "shuffled, by RANDOM_SEED",
    "USE_HARDWARE_RNG": "not needed: initialisation and dropout keys derive "
                        "from RANDOM_SEED",
    "ACTIVATION_DTYPE": "set network.TransformerConfig.dtype",
    "FEATURE_LENGTHS": "set TASK_FEATURE_LENGTHS",
    "CHECKPOINT_PATH": "set INITIAL_CHECKPOINT_PATH to train from it; "
                       "evaluate it with python -m evaluator.evaluate "
                       "--model_dir --checkpoint_step",
    "EVAL_OUTPUT_DIR": "use python -m evaluator.evaluate --output_dir",
    "INFER_OUTPUT_DIR": "use python -m evaluator.evaluate --output_dir",
    "EVALUATOR_NUM_EXAMPLES": "not needed: training runs no inference; "
                              "python -m evaluator.evaluate ranks every user",
    "EVALUATOR_USE_MEMORY_CACHE": "not needed: training runs no inference",
    "JSON_WRITE_N_RESULTS": "use python -m evaluator.evaluate "
                            "--recommendations_k",
    "BEAM_SIZE": "use python -m evaluator.evaluate --num_generations (CALRec "
                 "samples, it does not beam-search)",
    "MODEL_NAME": "not needed: there is no model export; "
                  "evaluator.evaluate loads a MODEL_DIR",
    "MODEL_OUTPUT_DIR": "not needed: there is no model export; "
                        "evaluator.evaluate loads a MODEL_DIR",
    "OUTPUT_FEATURES": "not needed: VOCABULARY sets the tasks' features",
    "TF_EXAMPLE_FILE_PATHS": "use python -m evaluator.evaluate --data_dir",
    "TF_EXAMPLE_FILE_TYPE": "use python -m evaluator.evaluate --data_dir",
}
# Parameters renamed since a release, by (configurable, old name): the new
# binding and why, for the error a binding of the old name gets.
_RENAMED_PARAMETERS = {
    ("CALRecModel", "temperature"): (
        "models.CALRecModel.contrastive_temperature",
        "tau_c of the contrastive losses; the sampling temperature is "
        "python -m evaluator.evaluate --temperature"),
}
# gin's error for a parameter a configurable lacks.
_UNKNOWN_PARAMETER = re.compile(
    r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'")
# The run configs: each binds `train` and defines the macros of train.gin.
_RUN_CONFIGS = pathlib.Path(__file__).parent / "configs" / "runs"
# `NAME = ...` at the start of a line: a macro definition. Parameters
# (`configurable.name`) and scoped names (`scope/...`) do not match.
_MACRO_STATEMENT = re.compile(r"^([A-Za-z_]\w*)\s*=", re.MULTILINE)


class ConfigError(ValueError):
  """A gin configuration the run cannot start from."""


def _is_defined_macro(name: str) -> bool:
  try:
    gin.query_parameter(f"%{name}")
  except ValueError:
    return False
  return True


def _used_macros() -> set[str]:
  """The macros that the parsed configuration refers to (`%NAME`)."""
  config = gin.config._CONFIG  # pylint: disable=protected-access
  return {"/".join(reference.scopes)
          for reference in gin.config.iterate_references(config)
          if reference.configurable.wrapped is gin.config.macro}


def check_run_config() -> None:
  """Catches a configuration without a run config (one that binds `train`).

  Without one, a binding of MODEL_DIR would only get a "did you mean" hint
  and no binding a RuntimeError at the start of training. Call after parsing
  the gin files.

  Raises:
    ConfigError: listing the run configs of trainer/configs/runs.
  """
  try:
    gin.query_parameter("train.model_dir")
  except ValueError:
    runs = ", ".join(f"trainer/configs/runs/{path.name}"
                     for path in sorted(_RUN_CONFIGS.glob("*.gin")))
    raise ConfigError(
        "no gin file configures the run (defines MODEL_DIR and the run's "
        f"other macros): add a run config, one of {runs}") from None


def check_macro_bindings(bindings: Sequence[str]) -> None:
  """Catches misspelt macros in bindings, which t5x accepts silently.

  A macro the bindings set that the parsed gin files neither define nor use
  and no binding refers to (`%NAME`) is a t5x macro that has no counterpart
  here (refused, naming what to set instead), misspelt (refused when one of
  trainer/configs' macros is close: `--gin.BATCH_SZE=64` would otherwise
  train with the default batch size), or meant for a file the bindings
  include, which only gets a warning. Call after parsing the gin files and
  before parsing `bindings`.

  Raises:
    ConfigError: naming the macro and what to set instead.
  """
  text = "\n".join(bindings)
  used = _used_macros()
  for name in _MACRO_STATEMENT.findall(text):
    if (_is_defined_macro(name) or name in used or
        re.search(rf"%{name}\b", text)):
      continue
    if name in _T5X_MACROS:
      raise ConfigError(f"{name} is a t5x macro that trainer/configs "
                        f"lacks; {_T5X_MACROS[name]}.")
    close = difflib.get_close_matches(
        name, [m for m in _KNOWN_MACROS if _is_defined_macro(m)], n=1)
    if close:
      raise ConfigError(f"no gin file defines the macro {name}; did you mean "
                        f"{close[0]}?")
    logging.warning("No gin file defines the macro %s, and no binding uses "
                    "it: it has an effect only if an included file does.",
                    name)


def check_macros_defined() -> None:
  """Catches macros that the configuration uses and nothing defines.

  gin would report the first one at finalisation, with a dump of the whole
  configuration. Call after parsing the files and the bindings.

  Raises:
    ConfigError: naming the macros, or the missing model gin file for MODEL.
  """
  undefined = sorted(name for name in _used_macros()
                     if not _is_defined_macro(name))
  if "MODEL" in undefined:
    raise ConfigError("no gin file defines MODEL: add a model, e.g. "
                      "--gin_file=trainer/configs/models/tiny.gin (or "
                      "base.gin, large.gin of trainer/configs/models)")
  if undefined:
    raise ConfigError(
        f"the configuration uses {', '.join(undefined)} but nothing defines "
        f"{'it' if len(undefined) == 1 else 'them'}: add "
        f"{' '.join(f'--gin.{name}=VALUE' for name in undefined)}")


def _syntax_message(error: SyntaxError) -> str:
  """Where gin failed to parse, with the quoting hint for bindings."""
  statement = (error.text or "").strip()
  if error.filename:
    return (f"{error.msg.rstrip('.')} at {error.filename}:{error.lineno}: "
            f"`{statement}`")
  return (f"{error.msg.rstrip('.')} in `{statement}` (strings need quotes: "
          "--gin.MODEL_DIR=\"'/path'\")")


def parse_gin(files: Sequence[str], bindings: Sequence[str]) -> None:
  """Parses the gin files, then the checked bindings.

  Raises:
    ConfigError: a missing file, a syntax error, a misspelt or undefined
      macro, an unknown configurable, or a required value left unset.
  """
  try:
    gin.parse_config_files_and_bindings(files, None, finalize_config=False)
    check_run_config()
    check_macro_bindings(bindings)
    gin.parse_config_files_and_bindings([], bindings, finalize_config=False)
    check_macros_defined()
    gin.finalize()
  except SyntaxError as error:
    raise ConfigError(_syntax_message(error)) from error
  except tokenize.TokenError as error:
    raise ConfigError(f"unbalanced brackets ({error.args[0]})") from error
  except (IOError, ValueError) as error:
    raise ConfigError(_renamed_message(str(error)) or str(error)) from error


def _renamed_message(error: str) -> Optional[str]:
  """The one line for gin's error about a parameter renamed here, if it is
  one (`_RENAMED_PARAMETERS`)."""
  match = _UNKNOWN_PARAMETER.search(error)
  if not match:
    return None
  configurable = match.group(1).rsplit(".", 1)[-1]
  renamed = _RENAMED_PARAMETERS.get((configurable, match.group(2)))
  if renamed is None:
    return None
  return (f"{configurable}.{match.group(2)} was renamed: bind "
          f"{renamed[0]} ({renamed[1]})")


def _without_gin_context(error: Exception) -> str:
  """The message without the '  In call to configurable ...' lines gin adds."""
  return "\n".join(line for line in str(error).splitlines()
                   if not line.lstrip().startswith("In call to configurable"))


def _usage_error(message: str) -> NoReturn:
  """The message on stderr and exit status 2, as argparse does."""
  sys.stderr.write(f"python -m trainer.train: error: {message}\n")
  sys.exit(2)


def _initialize_distributed() -> None:
  """jax.distributed.initialize from the flags; a usage error where jax
  finds neither a cluster nor the flags to set it up."""
  try:
    jax.distributed.initialize(_COORDINATOR_ADDRESS.value,
                               _NUM_PROCESSES.value, _PROCESS_ID.value)
  except ValueError as error:
    _usage_error(f"--distributed: {error} Where no Cloud TPU, SLURM or Open "
                 "MPI cluster is detected, pass --coordinator_address="
                 "HOST0:PORT --num_processes=N --process_id=I.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    _usage_error(f"unexpected arguments: {' '.join(argv[1:])} (--help lists "
                 "the flags)")
  if not _GIN_FILES.value:
    _usage_error("give at least one --gin_file, e.g. "
                 "--gin_file=trainer/configs/runs/tiny_stage1.gin")
  checkpoints.hide_orbax_info_logs()
  if _DISTRIBUTED.value:
    _initialize_distributed()
  seqio.add_global_cache_dirs(_SEQIO_CACHE_DIRS.value)
  for path in _GIN_SEARCH_PATHS.value:
    gin.add_config_file_search_path(path)
  try:
    parse_gin(_GIN_FILES.value, _GIN_BINDINGS.value)
  except ConfigError as error:
    _usage_error(f"bad gin configuration: {error}")
  try:
    train_loop.train()
  except (train_loop.NonFiniteLossError, ValueError,
          FileNotFoundError) as error:
    # Configuration and data mistakes: the message says what to change; the
    # traceback stays available with --verbosity=1.
    logging.error("%s: %s", type(error).__name__, _without_gin_context(error))
    logging.debug("Traceback:", exc_info=True)
    sys.exit(1)


if __name__ == "__main__":
  try:
    gin_argv = rewrite_gin_args(sys.argv)
  except ValueError as error:
    _usage_error(str(error))
  app.run(main, argv=gin_argv)
