"""The settings of one training run (`TrainConfig`), checked once.

`train_loop.train`, the gin-configurable entry point (bound by the gin files
of trainer/configs), builds a `TrainConfig` from its parameters of the same
names once, before it reads or writes anything, and passes it down. A value
out of range is refused there in one line that names the parameter; the
checks of what the settings name (the seqio tasks, MODEL_DIR's earlier run)
follow in `train_inputs.register_and_check_tasks` and
`model_dir.check_resume`.

The model, optimizer, partitioner, feature converter and task registration
are objects the run uses, not settings: `train` takes them beside it.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
from typing import Any, Mapping, Optional

BEST_MODES = ("min", "max")
# The prefix of the validation metrics that checkpoints store.
VALIDATION_PREFIX = "validation/"
# Integers >= 1; those of _OPTIONAL may also be None.
_POSITIVE = ("batch_size", "num_microbatches", "checkpoint_period",
             "keep_checkpoints", "keep_period", "log_period")
# Integers >= 0; those of _OPTIONAL may also be None.
_NON_NEGATIVE = ("train_steps", "validation_batches")
_OPTIONAL = ("keep_period", "validation_batches")


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(name: str, value: Any, least: int) -> None:
  """Raises ValueError unless `value` is an integer >= `least` (or None
  where `name` is optional)."""
  if value is None and name in _OPTIONAL:
    return
  if not _is_int(value):
    raise ValueError(f"{name} must be an integer, got {value!r}.")
  if value < least:
    bound = "be positive" if least == 1 else f"be >= {least}"
    raise ValueError(f"{name} must {bound}, got {value}.")


def _check_feature_lengths(lengths: Any) -> None:
  if not (isinstance(lengths, Mapping) and all(
      _is_int(lengths.get(key)) and lengths[key] > 0
      for key in ("inputs", "targets"))):
    shown = dict(lengths) if isinstance(lengths, Mapping) else lengths
    raise ValueError(
        "TASK_FEATURE_LENGTHS must give positive token budgets for 'inputs' "
        f"and 'targets', got {shown!r}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
  """Every setting of a training run; each field is the `train` parameter
  (gin binding `train.NAME`) of its name. Keyword-only.

  Raises:
    ValueError: from the constructor, for a value out of range, naming the
      field (TASK_FEATURE_LENGTHS for `task_feature_lengths`).
  """

  # What the run is made from (`train_loop._made_from`; a resume must match):
  # model_dir: where checkpoints, summaries and the config are written.
  # mixture_or_task_name: the seqio training mixture or task.
  # task_feature_lengths: {'inputs': ..., 'targets': ...} token budgets;
  #   held read-only.
  # batch_size: global batch size (examples per step, all devices and
  #   processes); each process reads batch_size / data shards of them.
  # random_seed: seeds initialisation, data order and dropout.
  # initial_checkpoint_path: Stage II: parameters to start from (a step
  #   directory or a model directory, `model_dir.resolve_checkpoint`) of a
  #   run of the same network (`model_dir.check_same_network`), or of the
  #   same network without LoRA, whose LoRA parameters then start fresh; the
  #   optimizer and the data start fresh at step 0. Ignored when model_dir
  #   already holds checkpoints (the run resumes instead).
  model_dir: str
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  batch_size: int
  random_seed: int = 0
  initial_checkpoint_path: Optional[str] = None

  # How long and how each step runs (free to change on resume):
  # train_steps: total steps (a resumed run counts the restored ones).
  # num_microbatches: gradient over this many microbatches of the batch, one
  #   at a time (less memory, one extra forward pass), with the loss of the
  #   whole batch: the contrastive negatives stay all `batch_size` examples.
  # use_cached_tasks: read the tasks' seqio cache (written by seqio's
  #   `cache_tasks_main`, found in seqio's global cache directories:
  #   `trainer.train --seqio_additional_cache_dirs`) instead of tokenizing
  #   the records on the fly.
  train_steps: int
  num_microbatches: int = 1
  use_cached_tasks: bool = False

  # Validation, at every checkpoint:
  # validation_mixture_or_task_name: defaults to mixture_or_task_name.
  # validation_split: split of the validation task.
  # validation_batches: batches per validation (None: the whole split, 0: no
  #   validation and no best checkpoint).
  validation_mixture_or_task_name: Optional[str] = None
  validation_split: str = "validation"
  validation_batches: Optional[int] = None

  # Checkpoints:
  # checkpoint_period: steps between checkpoints; validation runs at each
  #   checkpoint and its metrics are stored with it.
  # keep_checkpoints: the last K checkpoints are kept (plus the best one).
  # keep_period: also keep every checkpoint whose step is a multiple of this
  #   (candidates for model selection by validation NDCG@10, paper section
  #   4, with `evaluator.select_checkpoint`); None keeps no extra ones.
  # best_metric: validation metric that selects the best checkpoint:
  #   'validation/' + the name of a validation summary (None: no best one).
  # best_mode: 'min' or 'max' for best_metric.
  checkpoint_period: int = 1000
  keep_checkpoints: int = 3
  keep_period: Optional[int] = None
  best_metric: Optional[str] = VALIDATION_PREFIX + "loss"
  best_mode: str = "min"

  # Logging:
  # log_period: steps between progress lines and train summaries.
  log_period: int = 100

  def __post_init__(self):
    if not isinstance(self.model_dir, str) or not self.model_dir:
      raise ValueError(
          f"model_dir must be a non-empty path, got {self.model_dir!r}.")
    for name in _POSITIVE:
      _check_int(name, getattr(self, name), 1)
    for name in _NON_NEGATIVE:
      _check_int(name, getattr(self, name), 0)
    if not _is_int(self.random_seed):
      raise ValueError(
          f"random_seed must be an integer, got {self.random_seed!r}.")
    _check_feature_lengths(self.task_feature_lengths)
    if self.best_mode not in BEST_MODES:
      raise ValueError(f"best_mode must be 'min' or 'max', got "
                       f"{self.best_mode!r}.")
    if self.best_metric is not None and not (
        isinstance(self.best_metric, str) and
        self.best_metric.startswith(VALIDATION_PREFIX)):
      raise ValueError(
          f"best_metric must be {VALIDATION_PREFIX!r} + a validation "
          f"summary's name (e.g. {VALIDATION_PREFIX}loss) or None, got "
          f"{self.best_metric!r}.")
    # A copy no caller can change.
    object.__setattr__(self, "task_feature_lengths",
                       types.MappingProxyType(dict(self.task_feature_lengths)))

  @property
  def validates(self) -> bool:
    """Whether the run validates at its checkpoints."""
    return self.validation_batches != 0

  @property
  def validation_name(self) -> str:
    """The validation mixture or task."""
    return self.validation_mixture_or_task_name or self.mixture_or_task_name

  @property
  def checkpoint_metric(self) -> Optional[str]:
    """The metric that ranks the checkpoints: best_metric, None without
    validation."""
    return self.best_metric if self.validates else None
