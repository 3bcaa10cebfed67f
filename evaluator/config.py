"""An evaluation's settings, and what they name on disk.

`EvaluationConfig` holds every setting of `python -m evaluator.evaluate`,
with the paper's defaults (section 4, "Implementation Details") from their
one source (`generation`, `retrieval`), and refuses a value out of range
naming its flag. The command builds it from its flags once, reading no file
(`evaluate.parse_flags`); `select_checkpoint` derives one per step with
`dataclasses.replace`.

`resolve` is the one step that reads files: the split files that
`{data_dir}/manifest.json` lists, the corpus, the checkpoint to load, the
output folder. It returns what it found (`ResolvedRun`), whose `settings`
metrics.json and run.json record.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Optional

from evaluator import data
from evaluator import generation
from evaluator import report
from evaluator import retrieval as retrieval_lib
from evaluator import transforms
from pipelines import files
from pipelines import run_dir
from pipelines import sequences

MODELS = ("calrec", "lir")
# The held-out splits of the preprocessing job (paper section 4).
SPLITS = (sequences.TEST, sequences.VALIDATION)
_CHOICES = {"split": SPLITS, "model": MODELS,
            "retrieval": transforms.RETRIEVALS,
            "bm25_backend": transforms.BM25_BACKENDS,
            "sampler": generation.SAMPLERS, "dtype": generation.DTYPES}
# Settings of _CHOICES that may also be None (the run's own).
_NONE_ALLOWED = ("dtype",)
# Integers >= 1; max_users may also be None (every user).
_POSITIVE = ("num_generations", "max_decode_length", "num_preds", "max_users",
             "batch_size")
_NON_NEGATIVE = ("temperature", "epsilon", "recommendations_k")


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
  """Every setting of an evaluation; each field is the flag of its name."""

  data_dir: str
  category: str
  output_dir: str
  split: str = sequences.TEST
  model: str = "calrec"
  model_dir: Optional[str] = None
  # None: the run's best by its validation metric, else the latest.
  checkpoint_step: Optional[int] = None
  retrieval: str = "bm25"
  bm25_backend: str = "fast"
  num_generations: int = generation.NUM_GENERATIONS
  temperature: float = generation.TEMPERATURE
  sampler: str = generation.SAMPLER
  # None: the activation dtype the run trained with (its model.json).
  dtype: Optional[str] = None
  max_decode_length: int = generation.MAX_DECODE_LENGTH
  num_preds: int = retrieval_lib.NUM_PREDS
  epsilon: float = retrieval_lib.EPSILON
  seed: int = 0
  max_users: Optional[int] = None
  user_sample_seed: int = 0
  batch_size: int = 32
  # GiB the sampling of a generation batch may take beside the parameters;
  # set, it replaces batch_size by the users that fit
  # (`trainer.model_dir.users_per_batch`).
  generation_memory_gib: Optional[float] = None
  # A folder where JAX keeps compiled programs across runs; None: none kept.
  compilation_cache_dir: Optional[str] = None
  recommendations_k: int = 0
  overwrite: bool = False

  def __post_init__(self):
    for name, choices in _CHOICES.items():
      value = getattr(self, name)
      if value not in choices and not (value is None and
                                       name in _NONE_ALLOWED):
        raise ValueError(f"--{name} must be one of {', '.join(choices)}, "
                         f"got {value!r}.")
    for name in _POSITIVE:
      value = getattr(self, name)
      if value is not None and value < 1:
        raise ValueError(f"--{name} must be an integer >= 1, got {value}.")
    for name in _NON_NEGATIVE:
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}.")
    if self.model == "calrec" and not self.model_dir:
      raise ValueError("--model=calrec needs --model_dir (or use --model=lir).")
    if self.generation_memory_gib is not None:
      if not self.generation_memory_gib > 0:
        raise ValueError("--generation_memory_gib must be > 0, got "
                         f"{self.generation_memory_gib}.")
      if self.model != "calrec":
        raise ValueError("--generation_memory_gib sizes the batches of "
                         "--model=calrec's sampling; LIR samples nothing.")

  @property
  def corpus_path(self) -> str:
    return os.path.join(self.data_dir, self.category, "corpus.parquet")

  def retrieval_options(self, vocabulary_path: Optional[str] = None
                       ) -> transforms.RetrievalOptions:
    return transforms.RetrievalOptions(
        retrieval=self.retrieval, bm25_backend=self.bm25_backend,
        num_preds=self.num_preds, epsilon=self.epsilon,
        recommendations_k=self.recommendations_k,
        vocabulary_path=vocabulary_path)


def defaults() -> dict[str, Any]:
  """The default of every setting that has one, by name (the flags')."""
  return {field.name: field.default
          for field in dataclasses.fields(EvaluationConfig)
          if field.default is not dataclasses.MISSING}


@dataclasses.dataclass(frozen=True)
class ResolvedRun:
  """A config and what `resolve` found for it, fixed before the job starts.

  For CALRec, `config.checkpoint_step` is the step every worker loads and
  metrics.json names, even when the run's best changes meanwhile.
  """

  config: EvaluationConfig
  split_files: data.SplitFiles
  # Of the step's parameter files: tells a later run whether they were
  # retrained (None without a checkpoint step).
  params_fingerprint: Optional[str] = None

  def settings(self) -> dict[str, Any]:
    """What metrics.json records beside the metrics: all the results depend
    on.

    The data is `data_dir` as given and a digest of its manifest, which lists
    every file of the preprocessing run and its record count.
    """
    config, split_files = self.config, self.split_files
    run = {"data_dir": config.data_dir,
           "manifest_sha256": split_files.manifest_sha256,
           "num_records": split_files.num_records, "category": config.category,
           "split": config.split, "model": config.model,
           "retrieval": config.retrieval, "bm25_backend": config.bm25_backend,
           "num_preds": config.num_preds, "epsilon": config.epsilon,
           "recommendations_k": config.recommendations_k,
           "max_users": config.max_users}
    if config.max_users:
      run["user_sample_seed"] = config.user_sample_seed
    if config.model == "calrec":
      # The batch shapes round the kept log-probs (by about 1e-6).
      run.update(model_dir=config.model_dir,
                 checkpoint_step=config.checkpoint_step,
                 params_fingerprint=self.params_fingerprint,
                 num_generations=config.num_generations,
                 temperature=config.temperature, sampler=config.sampler,
                 max_decode_length=config.max_decode_length, seed=config.seed,
                 batch_size=config.batch_size)
      # Recorded only when set, so a run without them reads as before.
      if config.dtype:
        run["dtype"] = config.dtype
      if config.generation_memory_gib:
        run["generation_memory_gib"] = config.generation_memory_gib
    return run

  def made_from(self) -> dict[str, Any]:
    """What the results are made from, as run.json records it: `settings`
    less the data's path and record count (its manifest's digest names it)."""
    return {name: value for name, value in self.settings().items()
            if name not in ("data_dir", "num_records")}


def resolve(config: EvaluationConfig,
            check_model: bool = True) -> ResolvedRun:
  """Checks what `config` names, reading files, and returns what it found.

  The split's files (`data.split_files`) and the corpus; for CALRec, the
  checkpoint step every worker loads (`checkpoint_step`, else the run's best;
  `check_model`: False when the caller supplies the generator itself, which
  leaves the step as given) and its parameters' fingerprint, and the users
  per batch that `generation_memory_gib` holds; last, that the run may
  replace `output_dir` (`check_output_dir`).

  Raises:
    data.DataError, FileNotFoundError, run_dir.RunDirError: one line each,
      saying what to fix.
  """
  split_files = data.split_files(config.data_dir, config.category,
                                 config.split)
  if not files.exists(config.corpus_path):
    raise data.DataError(f"{config.data_dir} lacks the corpus of "
                         f"{config.category}, {config.corpus_path}.")
  run = ResolvedRun(config, split_files)
  if config.model == "calrec":
    run = _with_checkpoint(run, check_model)
  check_output_dir(run)
  return run


def _with_checkpoint(run: ResolvedRun, check_model: bool) -> ResolvedRun:
  """`run` with its checkpoint step fixed (`check_model`) and fingerprinted."""
  # JAX loads only for CALRec runs.
  from trainer import checkpoints  # pylint: disable=g-import-not-at-top
  from trainer import model_dir  # pylint: disable=g-import-not-at-top
  checkpoints.hide_orbax_info_logs()
  config = run.config
  if check_model:
    config = dataclasses.replace(config, checkpoint_step=int(
        model_dir.inference_checkpoint(config.model_dir,
                                       config.checkpoint_step).name))
    if config.generation_memory_gib:
      config = dataclasses.replace(config, batch_size=_users_per_batch(config))
  if config.checkpoint_step is None:
    return run
  return dataclasses.replace(
      run, config=config, params_fingerprint=checkpoints.params_fingerprint(
          checkpoints.step_path(config.model_dir, config.checkpoint_step)))


def _users_per_batch(config: EvaluationConfig) -> int:
  """The users per generation batch that `generation_memory_gib` holds."""
  from trainer import model_dir  # pylint: disable=g-import-not-at-top
  users, user_bytes = model_dir.users_per_batch(
      config.model_dir, int(config.generation_memory_gib * 2**30),
      config.num_generations, config.max_decode_length, dtype=config.dtype)
  logging.info("%d users per generation batch: %.1f MiB each of the %g GiB "
               "of --generation_memory_gib.", users, user_bytes / 2**20,
               config.generation_memory_gib)
  return users


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


def check_output_dir(run: ResolvedRun) -> None:
  """Passes where the run may replace its `output_dir`.

  A folder holding files no evaluation writes is refused: the run replaces
  the whole folder. Without --overwrite, so is one holding results; the
  message names the first setting of its run.json that differs from this
  run's (`ResolvedRun.made_from`), or says that it holds this very run.

  Raises:
    run_dir.RunDirError: one line saying why and what to do instead.
  """
  output_dir = run.config.output_dir
  if files.is_file(output_dir):
    raise run_dir.RunDirError(f"{output_dir} is a file, not a folder: pick "
                              "another --output_dir.")
  foreign = foreign_files(output_dir)
  if foreign:
    raise run_dir.RunDirError(
        f"{output_dir} holds files that no evaluation writes, e.g. "
        f"{foreign[0]}; a run replaces the whole folder: pick another "
        "--output_dir.")
  if run.config.overwrite or not earlier_outputs(output_dir):
    return
  start_over = ("pass --overwrite to replace its results or pick another "
                "--output_dir")
  if run_dir.read_record(output_dir) is None:
    raise run_dir.RunDirError(
        f"{output_dir} holds results of an earlier run; {start_over}.")
  run_dir.check_made_from(output_dir, STAGE, run.made_from(), start_over)
  raise run_dir.RunDirError(
      f"{output_dir} already holds the results of this very run; pass "
      "--overwrite to redo it or pick another --output_dir.")
