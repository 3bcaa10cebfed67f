"""The training input of `train_loop.train`: datasets and task checks.

Before a run reads anything, `register_and_check_tasks` registers the seqio
tasks and checks the ones it reads (registered, cached when it reads the
cache, with a validation split when it validates, a vocabulary that fits the
model). `converter` is the run's feature converter, and `Inputs` this
process's shard of the training input (an endless tf.data iterator, whose
state the checkpoints keep) and of the validation split (padded batches, as
many on every process).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Iterator, Mapping, Optional

from jax.experimental import multihost_utils
import numpy as np
import seqio
import tensorflow as tf

from trainer import models
from trainer import partitioning
from trainer import train_config

Batch = dict[str, np.ndarray]


def default_feature_converter_cls() -> type[seqio.FeatureConverter]:
  from tasks import feature_converters  # pylint: disable=g-import-not-at-top
  return feature_converters.CALRecFeatureConverter


def _decoder_start_id(vocabulary: seqio.Vocabulary) -> int:
  from tasks import vocab  # pylint: disable=g-import-not-at-top
  return vocab.decoder_start_id(vocabulary)


def input_options() -> tf.data.Options:
  """tf.data options of the training and validation input.

  Autotuning off: every parallel stage runs at tf.data's initial
  parallelism, the smaller of 16 and the schedulable cores, without the
  autotuner's per-element bookkeeping (20 to 28 % of the input's CPU over a
  four-task mixture on 2 cores: benchmarks/README.md; not measured on a
  host with many cores). Each op inside the pipeline's functions runs on one
  thread: the stages run in parallel instead. The examples and their order
  do not depend on these options.
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  options.threading.max_intra_op_parallelism = 1
  return options


def _dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str,
                                                                      int],
             converter: seqio.FeatureConverter, split: str, *, shuffle: bool,
             seed: int, num_epochs: Optional[int],
             batch_size: Optional[int], shard_info: seqio.ShardInfo,
             use_cached: bool = False):
  ds = seqio.get_dataset(
      mixture_or_task_name, task_feature_lengths=dict(task_feature_lengths),
      feature_converter=converter, dataset_split=split, shuffle=shuffle,
      num_epochs=num_epochs, seed=seed, batch_size=batch_size,
      shard_info=shard_info, use_cached=use_cached, verbose=False
  ).with_options(input_options())
  missing = set(models.TRAIN_FEATURES) - set(ds.element_spec)
  if missing:
    raise ValueError(f"The feature converter's output lacks {sorted(missing)};"
                     " see the model features table of docs/contracts.md.")
  return ds.map(lambda ex: {k: ex[k] for k in models.TRAIN_FEATURES})


def _any_process(flag: bool) -> bool:
  """Whether `flag` is true on some process (a collective on several)."""
  return bool(np.any(multihost_utils.process_allgather(np.bool_(flag))))


def _padded_batches(examples: Iterator[Batch], padding: Batch,
                    batch_size: int,
                    max_batches: Optional[int]) -> Iterator[Batch]:
  """Fixed-size batches, padded with the all-zero example `padding`.

  All-zero examples have no target or item tokens and count in no loss term.
  Every process yields the same number of batches: batches continue while
  any process has examples left (at most max_batches), so that all of them
  run the same sharded steps.
  """
  for _ in itertools.count() if max_batches is None else range(max_batches):
    rows = list(itertools.islice(examples, batch_size))
    if not _any_process(bool(rows)):
      return
    rows += [padding] * (batch_size - len(rows))
    yield {k: np.stack([row[k] for row in rows]) for k in padding}


def _check_vocabulary(vocabulary: seqio.Vocabulary,
                      model: models.CALRecModel) -> None:
  if vocabulary.vocab_size > model.config.vocab_size:
    raise ValueError(
        f"The vocabulary has {vocabulary.vocab_size} ids but the model only "
        f"{model.config.vocab_size}: raise TransformerConfig.vocab_size.")
  if vocabulary.eos_id != model.eos_id:
    raise ValueError(f"Vocabulary EOS id {vocabulary.eos_id} differs from the "
                     f"model's eos_id {model.eos_id}.")


def _check_registered(name: str, role: str) -> None:
  """`role`: the gin macro that sets the name, for the error message."""
  registered = sorted(set(seqio.TaskRegistry.names()) |
                      set(seqio.MixtureRegistry.names()))
  if name not in registered:
    raise ValueError(f"No seqio task or mixture {name!r} ({role}); "
                     f"registered: {', '.join(registered) or 'none'}.")


def _check_cached(name: str) -> None:
  """Raises ValueError if a task of the mixture or task `name` is not cached."""
  missing = [task.name for task in seqio.get_subtasks(
      seqio.get_mixture_or_task(name)) if not task.cache_dir]
  if missing:
    searched = seqio.utils.get_global_cache_dirs()
    raise ValueError(
        f"USE_CACHED_TASKS is True but {', '.join(missing)} has no seqio "
        f"cache in {', '.join(searched) or 'any cache directory'}: write it "
        "with python -m seqio.scripts.cache_tasks_main "
        "--module_import=tasks.mixtures --output_cache_dir=DIR and pass "
        "--seqio_additional_cache_dirs=DIR, or set USE_CACHED_TASKS = False.")


def _check_validation_split(name: str, split: str) -> None:
  """Raises ValueError if a task of the mixture or task `name` lacks `split`.

  seqio would only fail at the first checkpoint, where validation first runs.
  """
  for task in seqio.get_subtasks(seqio.get_mixture_or_task(name)):
    if split not in task.splits:
      of_mixture = "" if task.name == name else f" (of {name!r})"
      raise ValueError(
          f"The validation task {task.name!r}{of_mixture} has no "
          f"{split!r} split, only {', '.join(task.splits)}: set "
          "VALIDATION_TASK_NAME to a task that has one, or "
          "train.validation_batches = 0 to train without validation.")


def register_and_check_tasks(
    config: train_config.TrainConfig, model: models.CALRecModel,
    register_tasks: Optional[Callable[[], Any]]) -> seqio.Vocabulary:
  """Registers the seqio tasks and checks the ones the run reads.

  Returns:
    The training task's vocabulary, checked against the model.
  """
  if register_tasks is not None:
    register_tasks()
  _check_registered(config.mixture_or_task_name, "MIXTURE_OR_TASK_NAME")
  if config.validation_mixture_or_task_name is not None:
    _check_registered(config.validation_mixture_or_task_name,
                      "VALIDATION_TASK_NAME")
  if config.validates:
    _check_validation_split(config.validation_name, config.validation_split)
  if config.use_cached_tasks:
    _check_cached(config.mixture_or_task_name)
    if config.validates:
      _check_cached(config.validation_name)
  provider = seqio.get_mixture_or_task(config.mixture_or_task_name)
  vocabulary = provider.output_features["targets"].vocabulary
  _check_vocabulary(vocabulary, model)
  return vocabulary


def converter(feature_converter_cls: Optional[type[seqio.FeatureConverter]],
              vocabulary: seqio.Vocabulary) -> seqio.FeatureConverter:
  """The run's feature converter, without packing (section 3.4)."""
  # Decoder inputs start with the vocabulary's BOS if it has one, else 0
  # (seqio's bos_id); inference starts prompts alike (docs/contracts.md).
  return (feature_converter_cls or default_feature_converter_cls())(
      pack=False, bos_id=_decoder_start_id(vocabulary))


@dataclasses.dataclass(frozen=True)
class Inputs:
  """This process's shard of the training and validation input."""

  config: train_config.TrainConfig
  converter: seqio.FeatureConverter
  local_batch_size: int
  shard_info: seqio.ShardInfo

  @classmethod
  def of(cls, config: train_config.TrainConfig,
         converter: seqio.FeatureConverter,
         layout: partitioning.DataLayout) -> Inputs:
    """The shard of this process in the partitioner's `layout`."""
    return cls(config, converter, layout.local_batch_size(config.batch_size),
               seqio.ShardInfo(layout.shard_id, layout.num_shards))

  def global_shapes(self) -> dict[str, tuple[int, int]]:
    """Shapes of the training features in a global batch."""
    lengths = self.converter.get_model_feature_lengths(
        self.config.task_feature_lengths)
    return {k: (self.config.batch_size, lengths[k])
            for k in models.TRAIN_FEATURES}

  def _dataset(self, name: str, split: str, **options):
    return _dataset(name, self.config.task_feature_lengths, self.converter,
                    split, seed=self.config.random_seed,
                    shard_info=self.shard_info,
                    use_cached=self.config.use_cached_tasks, **options)

  def train_iterator(self) -> Iterator[Batch]:
    """The shuffled, endless training batches: a tf.data iterator, whose
    state the checkpoints keep."""
    return self._dataset(
        self.config.mixture_or_task_name, "train", shuffle=True,
        num_epochs=None, batch_size=self.local_batch_size
    ).as_numpy_iterator()

  def validation_iterator(self) -> Iterator[Batch]:
    """The validation split in padded batches, as many on every process
    (at most `validation_batches`)."""
    dataset = self._dataset(self.config.validation_name,
                            self.config.validation_split, shuffle=False,
                            num_epochs=1, batch_size=None)
    padding = {k: np.zeros(spec.shape, spec.dtype.as_numpy_dtype)
               for k, spec in dataset.element_spec.items()}
    return _padded_batches(dataset.as_numpy_iterator(), padding,
                           self.local_batch_size,
                           self.config.validation_batches)
