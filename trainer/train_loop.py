"""The training loop of CALRec (paper sections 3.3 and 3.4), gin-configurable.

`train()` is bound by the gin files of trainer/configs and run by
`python -m trainer.train`. A run in a MODEL_DIR that already holds checkpoints
resumes from the latest one and continues exactly as if never interrupted:
every checkpoint also stores the state of the training input's tf.data
iterator (shuffle buffers, mixture sampling, position in the files), which
is restored instead of replaying the data, so the same batches follow; the
dropout keys derive from the step, so the losses are the same too. A latest
checkpoint that does not restore or verify is skipped for the newest one
that does (`checkpoints.CheckpointManager.restore`) and trained again.

Before it writes anything, a run checks that MODEL_DIR holds no run made
from other things (`_made_from`, recorded in MODEL_DIR/run.json): another
vocabulary, network, batch size, task, feature lengths or seed would not
resume exactly (or not at all), and is refused in one line.

`train` builds the run's settings once (`train_config.TrainConfig`, which
checks their ranges) and passes them down (`_run`), in this order: the checks
of everything it reads (`train_inputs.register_and_check_tasks`,
`model_dir.check_resume`); this process's input (`train_inputs.Inputs`) and
the compiled steps (`train_lib.Trainer`); the run's files
(`_prepare_model_dir`); the state to start from (`_initial_state`); the steps
(`_train_steps`), which validate (`_validate`) and save (`_save_checkpoint`)
at every checkpoint, with the summaries and progress lines of
`train_metrics`.

On several processes (hosts; `jax.distributed.initialize` first), every
process reads its own shard of the data and feeds its rows of each global
batch (`partitioning.Partitioner.data_layout`); validation runs the same
number of batches on all of them, and only process 0 writes the config and
the summaries.

TensorBoard summaries follow t5x's names: MODEL_DIR/train holds the loss
terms, `gradient_norm` (of the trained parameters only, when some are
frozen), `learning_rate`, `timing/steps_per_second`,
`timing/tokens_per_second` and the gin config (a text summary);
MODEL_DIR/validation holds the validation loss terms under the same names as
the training ones (`loss`, `nig_loss`, ...), so TensorBoard draws both runs of
a tag in one chart.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Optional

from absl import logging
from clu import metric_writers
from etils import epath
import gin
import jax
import numpy as np
import optax
import seqio

from trainer import checkpoints
from trainer import model_dir as model_dir_lib
from trainer import models
from trainer import partitioning
from trainer import train_config
from trainer import train_inputs
from trainer import train_lib
from trainer import train_metrics

Batch = train_inputs.Batch


class NonFiniteLossError(FloatingPointError):
  """A train step produced a NaN or infinite loss or parameter."""



def _made_from(config: train_config.TrainConfig, model: models.CALRecModel,
               vocabulary: seqio.Vocabulary) -> dict[str, Any]:
  """What a run is made from: the settings that must match for an exact
  resume (`model_dir.training_made_from`).

  Not in it, free to change on resume: train_steps, the checkpoint and log
  periods, the checkpoints kept, validation, num_microbatches (the same
  gradient), the partitioner, the optimizer (one with another state
  structure fails to restore every checkpoint) and how the network runs
  (attention kernel, remat).
  """
  return model_dir_lib.training_made_from(
      model, vocabulary, config.task_feature_lengths,
      batch_size=config.batch_size,
      mixture_or_task_name=config.mixture_or_task_name,
      random_seed=config.random_seed,
      initial_checkpoint_path=config.initial_checkpoint_path)


@gin.configurable
def train(
    *,
    model: models.CALRecModel = gin.REQUIRED,
    model_dir: str = gin.REQUIRED,
    mixture_or_task_name: str = gin.REQUIRED,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    train_steps: int = gin.REQUIRED,
    batch_size: int = gin.REQUIRED,
    random_seed: int = 0,
    initial_checkpoint_path: Optional[str] = None,
    optimizer: Optional[optax.GradientTransformation] = None,
    partitioner: Optional[partitioning.Partitioner] = None,
    num_microbatches: int = 1,
    feature_converter_cls: Optional[type[seqio.FeatureConverter]] = None,
    register_tasks: Optional[Callable[[], Any]] = None,
    use_cached_tasks: bool = False,
    validation_mixture_or_task_name: Optional[str] = None,
    validation_split: str = "validation",
    validation_batches: Optional[int] = None,
    checkpoint_period: int = 1000,
    keep_checkpoints: int = 3,
    keep_period: Optional[int] = None,
    best_metric: Optional[str] = "validation/loss",
    best_mode: str = "min",
    log_period: int = 100,
) -> train_lib.TrainState:
  """Trains `model` for `train_steps` steps and returns the final state.

  The settings, every parameter but the five objects below, are the fields
  of `train_config.TrainConfig` of the same names (documented there), which
  this builds once, before it reads or writes anything.

  Args:
    model: the CALRec model object.
    optimizer: defaults to `train_lib.create_optimizer()`; its learning rate
      is logged when its state holds it (`create_optimizer`'s does).
    partitioner: defaults to all devices on the 'data' axis; its mesh must
      split the model's sharded sizes evenly (`check_shardable`).
    feature_converter_cls: defaults to tasks' CALRecFeatureConverter.
    register_tasks: called first, to register seqio tasks and mixtures.

  Raises:
    ValueError: bad arguments (a setting out of range, a partitioner that
      cannot shard the model, an initial checkpoint of another network, a
      task not cached with use_cached_tasks, a validation task without
      validation_split), or an input pipeline whose state cannot be
      checkpointed (a stateful op in a preprocessor).
    pipelines.run_dir.RunDirError: model_dir holds a run made from other
      things (`_made_from`); nothing is written.
    checkpoints.UnusableCheckpointError: model_dir holds checkpoints, none of
      which restores and verifies.
    NonFiniteLossError: a step's loss or updated parameters were NaN or
      infinite; nothing of that step is saved, the last good checkpoint stays
      in model_dir.
  """
  config = train_config.TrainConfig(
      model_dir=model_dir, mixture_or_task_name=mixture_or_task_name,
      task_feature_lengths=task_feature_lengths, batch_size=batch_size,
      random_seed=random_seed, initial_checkpoint_path=initial_checkpoint_path,
      train_steps=train_steps, num_microbatches=num_microbatches,
      use_cached_tasks=use_cached_tasks,
      validation_mixture_or_task_name=validation_mixture_or_task_name,
      validation_split=validation_split,
      validation_batches=validation_batches,
      checkpoint_period=checkpoint_period, keep_checkpoints=keep_checkpoints,
      keep_period=keep_period, best_metric=best_metric, best_mode=best_mode,
      log_period=log_period)
  return _run(config, model, optimizer=optimizer, partitioner=partitioner,
              feature_converter_cls=feature_converter_cls,
              register_tasks=register_tasks)


def _run(config: train_config.TrainConfig, model: models.CALRecModel, *,
         optimizer: Optional[optax.GradientTransformation],
         partitioner: Optional[partitioning.Partitioner],
         feature_converter_cls: Optional[type[seqio.FeatureConverter]],
         register_tasks: Optional[Callable[[], Any]]) -> train_lib.TrainState:
  """`train` from its config: the checks of what the run reads, its input
  and compiled steps, its files, the state to start from, the steps."""
  vocabulary = train_inputs.register_and_check_tasks(config, model,
                                                     register_tasks)
  model_dir = checkpoints.model_path(config.model_dir)
  made_from = _made_from(config, model, vocabulary)
  model_dir_lib.check_resume(model_dir, made_from)

  partitioner = partitioner or partitioning.Partitioner()
  partitioner.check_shardable(model.config)
  inputs = train_inputs.Inputs.of(
      config, train_inputs.converter(feature_converter_cls, vocabulary),
      partitioner.data_layout)
  trainer = train_lib.Trainer(model, optimizer or train_lib.create_optimizer(),
                              partitioner, inputs.global_shapes(),
                              config.random_seed, config.num_microbatches)
  manager = _prepare_model_dir(config, model_dir, made_from, model,
                               vocabulary)

  train_batches = inputs.train_iterator()
  state = _initial_state(config, trainer, manager, train_batches)
  start_step = int(state.step)
  if start_step >= config.train_steps:
    logging.info("Step %d already reached; nothing to train.", start_step)
    manager.close()
    return state
  checkpoints.check_iterator_checkpointable(train_batches)
  return _train_steps(config, trainer, inputs,
                      _Outputs.open(model_dir, manager), state, train_batches)


def _prepare_model_dir(config: train_config.TrainConfig,
                       model_dir: epath.Path, made_from: Mapping[str, Any],
                       model: models.CALRecModel,
                       vocabulary: seqio.Vocabulary
                      ) -> checkpoints.CheckpointManager:
  """Writes the run's files into `model_dir` (which `check_resume` allowed)
  and opens its checkpoints.

  Process 0 writes model.json, the vocabulary, config.gin and run.json
  (docs/contracts.md, "Model inference").
  """
  if jax.process_index() == 0:
    model_dir_lib.write_model_metadata(
        model_dir, model, vocabulary, config.task_feature_lengths,
        config.checkpoint_metric, config.best_mode)
    model_dir_lib.write_run_files(model_dir, made_from, gin.config_str())
  return checkpoints.CheckpointManager(
      model_dir, config.keep_checkpoints, config.checkpoint_metric,
      config.best_mode, config.keep_period)


@dataclasses.dataclass(frozen=True)
class _Outputs:
  """Where the steps write: checkpoints and the train and validation
  summaries (only logged on processes other than 0)."""

  model_dir: epath.Path
  manager: checkpoints.CheckpointManager
  train_writer: metric_writers.MetricWriter
  validation_writer: metric_writers.MetricWriter

  @classmethod
  def open(cls, model_dir: epath.Path,
           manager: checkpoints.CheckpointManager) -> _Outputs:
    writers = [metric_writers.create_default_writer(
        str(model_dir / name), just_logging=jax.process_index() > 0)
               for name in ("train", "validation")]
    return cls(model_dir, manager, *writers)

  def close(self) -> None:
    self.train_writer.flush()
    self.validation_writer.flush()
    self.manager.close()


def _validate(trainer: train_lib.Trainer, inputs: train_inputs.Inputs,
              params: Any) -> Optional[dict[str, float]]:
  """The loss terms of the validation split (`train_metrics.split_metrics`);
  None when `validation_batches` is 0."""
  if not inputs.config.validates:
    return None
  results = [trainer.eval_step(params, batch)
             for batch in inputs.validation_iterator()]
  if not results:
    raise ValueError(f"The {inputs.config.validation_split!r} split of "
                     f"{inputs.config.validation_name!r} is empty.")
  return train_metrics.split_metrics(trainer.model, results)


def _save_checkpoint(outputs: _Outputs, state: train_lib.TrainState,
                     train_batches: Iterator[Batch],
                     validation: Optional[Mapping[str, float]]) -> None:
  """Saves `state` and the input's position, with the validation metrics
  (summaries and a logged line too), which rank the best checkpoint."""
  if validation:
    step = int(state.step)
    outputs.validation_writer.write_scalars(step, validation)
    logging.info("step %d validation: %s", step, "  ".join(
        f"{k} {v:.4f}" for k, v in validation.items()))
    # The checkpoint's metrics keep the prefix: best_metric names them.
    validation = {f"validation/{k}": v for k, v in validation.items()}
  outputs.manager.save(state, validation, train_batches)


def _non_finite_error(step: int, metrics: Mapping[str, Any],
                      outputs: _Outputs) -> NonFiniteLossError:
  """The error of a non-finite step: its metrics, the last good step."""
  return NonFiniteLossError(
      f"Non-finite loss or parameters at step {step}: " + ", ".join(
          f"{k}={float(v):.4g}" for k, v in sorted(metrics.items())) +
      f". Stopped; the last good checkpoint is step "
      f"{outputs.manager.latest_step()} in "
      f"{outputs.model_dir / checkpoints.CHECKPOINTS_DIR}. Lower the "
      "learning rate or check the data.")


def _train_steps(config: train_config.TrainConfig,
                 trainer: train_lib.Trainer, inputs: train_inputs.Inputs,
                 outputs: _Outputs, state: train_lib.TrainState,
                 train_batches: Iterator[Batch]) -> train_lib.TrainState:
  """Trains from `state` to step `config.train_steps` (paper section 3.4).

  Every `log_period` steps it writes the train summaries and a progress
  line; every `checkpoint_period` steps, and at the end, it validates and
  saves a checkpoint.

  Raises:
    NonFiniteLossError: see `train`; `outputs` are closed first.
  """
  start_step, train_steps = int(state.step), config.train_steps
  if jax.process_index() == 0:
    train_metrics.write_gin_config(outputs.model_dir / "train", start_step)
  logging.info("Training %s (%s parameters) from step %d to %d in %s.",
               config.mixture_or_task_name,
               f"{trainer.model.config.num_params():,}", start_step,
               train_steps, outputs.model_dir)
  reporter = train_metrics.Progress(outputs.train_writer, start_step,
                                    train_steps)
  for step in range(start_step + 1, train_steps + 1):
    state, metrics = trainer.train_step(state, next(train_batches))
    metrics = jax.device_get(metrics)
    parameters_finite = bool(metrics.pop("parameters_finite"))
    if not (parameters_finite and np.isfinite(metrics["loss"])):
      outputs.close()
      raise _non_finite_error(step, metrics, outputs)
    reporter.add(metrics)
    if step % config.log_period == 0 or step == train_steps:
      reporter.report(step, train_metrics.learning_rate(state.opt_state))
    if step % config.checkpoint_period == 0 or step == train_steps:
      with reporter.paused():
        _save_checkpoint(outputs, state, train_batches,
                         _validate(trainer, inputs, state.params))
  outputs.close()
  return state


def _initial_state(config: train_config.TrainConfig,
                   trainer: train_lib.Trainer,
                   manager: checkpoints.CheckpointManager,
                   train_batches: Iterator[Batch]) -> train_lib.TrainState:
  """Resume > Stage-II initialisation (`config.initial_checkpoint_path`) >
  fresh initialisation.

  On resume (from the newest usable checkpoint; newer ones are deleted, as
  the run saves those steps again), the fresh `train_batches` iterator is set
  to where the checkpoint's left off.
  """
  if manager.latest_step() is not None:
    state = manager.restore(trainer.abstract_state,
                            dataset_iterator=train_batches)
    step = int(state.step)
    newer = manager.delete_after(step)
    if newer:
      logging.info("Resuming from checkpoint step %d; deleted the unusable "
                   "newer steps %s, which this run trains again.", step,
                   newer)
    else:
      logging.info("Resuming from checkpoint step %d.", step)
    return state
  if config.initial_checkpoint_path:
    step_dir = model_dir_lib.resolve_checkpoint(
        config.initial_checkpoint_path)
    model_dir_lib.check_same_network(step_dir, trainer.model.config)
    logging.info("Initialising parameters from %s.", step_dir)
    # A checkpoint without LoRA parameters gives a LoRA model all others;
    # the LoRA ones start fresh (B = 0: the checkpoint's function).
    params = checkpoints.restore_params(
        step_dir, trainer.abstract_params,
        fresh_params=lambda: trainer.initial_state().params)
    return trainer.state_from_params(params)
  return trainer.initial_state()
