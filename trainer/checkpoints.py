"""orbax checkpoints of a training run: MODEL_DIR/checkpoints.

  checkpoints/{step}/params, checkpoints/{step}/optimizer   (orbax)
  checkpoints/{step}/dataset  the training input's tf.data iterator state,
                    one `process_{i}-of-{n}` checkpoint per process

The last `keep` checkpoints are kept, plus the best one by a validation
metric when one is configured and every `keep_period`-th step when set; a
step's input state goes with its step. Each step records the fingerprint of
its parameter files (`params_fingerprint`), which a restore verifies; a
resume falls back to the newest step that restores and verifies. The rest of
a model directory, and picking and loading a checkpoint of it:
`trainer.model_dir`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import tempfile
from typing import Any, Callable, Iterator, Mapping, Optional

from etils import epath
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers
import tensorflow as tf

from trainer import layers
from trainer import train_lib

PyTree = Any
CHECKPOINTS_DIR = "checkpoints"
DATASET_ITEM = "dataset"
FINGERPRINT_FILE = "params_fingerprint"
_SHOWN_ERROR_CHARS = 300


class UnusableCheckpointError(ValueError):
  """A checkpoint step that does not restore or verify."""


def model_path(path: str | os.PathLike[str]) -> epath.Path:
  """A local path made absolute, or a URL such as gs://... as it is.

  Model directories may live on any file system orbax and tf.io.gfile reach
  (GCS for TPU training and Dataflow evaluation).
  """
  path = os.fspath(path)
  return epath.Path(path if "://" in path else os.path.abspath(path))


def _drop_orbax_info(record: logging.LogRecord) -> bool:
  return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def hide_orbax_info_logs() -> None:
  """Keeps orbax's many INFO lines per save and restore out of progress
  output (its warnings stay); a process-wide setting of the absl logger."""
  logging.getLogger("absl").addFilter(_drop_orbax_info)


def step_path(model_dir: str | os.PathLike[str], step: int) -> epath.Path:
  """MODEL_DIR/checkpoints/STEP."""
  return model_path(model_dir) / CHECKPOINTS_DIR / str(step)


def params_fingerprint(step_dir: str | os.PathLike[str]) -> str:
  """A digest of the names and sizes of a checkpoint's parameter files.

  Another save at the same step (a retrained MODEL_DIR) writes other files,
  so an evaluation that records it can tell whether it saw these
  parameters. Lists files only: cheap on GCS too.
  """
  params_dir = os.path.join(os.fspath(step_dir), "params")
  files = []
  for folder, _, names in tf.io.gfile.walk(params_dir):
    for name in names:
      path = os.path.join(folder, name)
      files.append((os.path.relpath(path, params_dir),
                    tf.io.gfile.stat(path).length))
  digest = hashlib.blake2b(digest_size=12)
  for relative_path, size in sorted(files):
    digest.update(f"{relative_path} {size}\n".encode())
  return digest.hexdigest()


def _unusable(step_dir: epath.Path, reason: str) -> UnusableCheckpointError:
  return UnusableCheckpointError(
      f"The checkpoint {step_dir} is unusable: {reason}.")


def _record_fingerprint(step_dir: epath.Path) -> None:
  """Writes the step's `params_fingerprint` into it (process 0)."""
  if jax.process_index() == 0:
    (step_dir / FINGERPRINT_FILE).write_text(params_fingerprint(step_dir))


def verify_fingerprint(step_dir: str | os.PathLike[str]) -> None:
  """Raises UnusableCheckpointError where the step's parameter files differ
  from those it recorded when saved; passes a step without a record."""
  step_dir = model_path(step_dir)
  recorded = step_dir / FINGERPRINT_FILE
  if recorded.exists() and (
      recorded.read_text().strip() != params_fingerprint(step_dir)):
    raise _unusable(step_dir, "its parameter files differ from those it "
                    "saved (truncated, removed or rewritten)")


@contextlib.contextmanager
def _reading(step_dir: epath.Path) -> Iterator[None]:
  """Turns a failure of orbax to read `step_dir` into one line."""
  try:
    yield
  except Exception as error:  # orbax and TensorStore raise many kinds.
    lines = str(error).strip().splitlines() or [type(error).__name__]
    shown = lines[0]
    if len(shown) > _SHOWN_ERROR_CHARS:
      shown = shown[:_SHOWN_ERROR_CHARS - 3] + "..."
    raise _unusable(step_dir, f"it does not restore ({shown})") from error


def available_steps(model_dir: str | os.PathLike[str]) -> list[int]:
  """The steps with a checkpoint in model_dir, ascending ([] if none)."""
  directory = model_path(model_dir) / CHECKPOINTS_DIR
  return (sorted(ocp.utils.checkpoint_steps(directory))
          if directory.is_dir() else [])


def _process_prefix() -> str:
  return f"process_{jax.process_index()}-of-{jax.process_count()}"


def _iterator_checkpoint(iterator: Any) -> tf.train.Checkpoint:
  return tf.train.Checkpoint(iterator=iterator)


def check_iterator_checkpointable(iterator: Any) -> None:
  """Raises ValueError if a tf.data iterator's state cannot be saved.

  tf.data refuses to save pipelines with stateful ops (e.g. tf.random.uniform
  or tf.py_function in a map); checking before training fails fast instead
  of at the first checkpoint.
  """
  with tempfile.TemporaryDirectory() as directory:
    _write_iterator(iterator, os.path.join(directory, "probe"))


def _write_iterator(iterator: Any, prefix: str) -> None:
  try:
    _iterator_checkpoint(iterator).write(prefix)
  except tf.errors.FailedPreconditionError as e:
    raise ValueError(
        f"The training input pipeline cannot be checkpointed: {e.message}. "
        "Use stateless ops in its preprocessors (e.g. tf.random.stateless_*"
        " instead of tf.random.*; no tf.py_function).") from e


def _check_input_state(directory: epath.Path) -> None:
  """Raises ValueError if an input-state item lacks this process's state."""
  prefix = _process_prefix()
  if not (directory / f"{prefix}.index").exists():
    saved = sorted(path.name.removesuffix(".index")
                   for path in directory.glob("*.index"))
    raise ValueError(
        f"{directory} holds no input state for {prefix}, only for "
        f"{saved}: resume with the number of processes that saved it.")


class DatasetIteratorHandler(ocp.CheckpointHandler):
  """Saves this process's tf.data iterator state; restores it in place.

  Every process writes its own `process_{i}-of-{n}` checkpoint into the item
  directory; restoring needs the same number of processes.
  """

  def save(self, directory: epath.Path, args: "DatasetIteratorSave") -> None:
    _write_iterator(args.iterator, os.fspath(directory / _process_prefix()))

  def restore(self, directory: epath.Path,
              args: "DatasetIteratorRestore") -> Any:
    _check_input_state(directory)
    _iterator_checkpoint(args.iterator).read(
        os.fspath(directory / _process_prefix())).assert_consumed()
    return args.iterator


@ocp.args.register_with_handler(DatasetIteratorHandler, for_save=True)
@dataclasses.dataclass
class DatasetIteratorSave(ocp.args.CheckpointArgs):
  iterator: Any


@ocp.args.register_with_handler(DatasetIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DatasetIteratorRestore(ocp.args.CheckpointArgs):
  iterator: Any


class CheckpointManager:
  """Saves and restores `TrainState`s under MODEL_DIR/checkpoints."""

  def __init__(self, model_dir: str | os.PathLike[str], keep: int = 3,
               best_metric: Optional[str] = None, best_mode: str = "min",
               keep_period: Optional[int] = None):
    """Keeps the last `keep` checkpoints, the best by `best_metric` (a
    non-finite value ranks last) and every `keep_period`-th step."""
    if keep < 1:
      raise ValueError(f"keep must be >= 1, got {keep}.")
    if keep_period is not None and keep_period < 1:
      raise ValueError(f"keep_period must be >= 1, got {keep_period}.")
    if best_mode not in ("min", "max"):
      raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}.")
    self.best_metric = best_metric
    policies = [checkpoint_managers.LatestN(n=keep)]
    best_fn = None
    if best_metric:
      worst = math.inf if best_mode == "min" else -math.inf

      def best_fn(metrics: Mapping[str, float]) -> float:
        value = float(metrics[best_metric])
        return value if math.isfinite(value) else worst

      policies.append(checkpoint_managers.BestN(
          get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
          keep_checkpoints_without_metrics=False))
    if keep_period:
      policies.append(checkpoint_managers.EveryNSteps(keep_period))
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn, best_mode=best_mode,
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(
            policies),
        enable_async_checkpointing=False, create=True)
    directory = model_path(model_dir) / CHECKPOINTS_DIR
    self._manager = ocp.CheckpointManager(
        directory, options=options,
        item_names=("params", "optimizer", DATASET_ITEM))

  def save(self, state: train_lib.TrainState,
           metrics: Optional[Mapping[str, float]] = None,
           dataset_iterator: Optional[Any] = None) -> int:
    """Writes `state` at its step.

    Args:
      state: the train state.
      metrics: validation metrics, if any.
      dataset_iterator: the training input's tf.data iterator, positioned
        after the step's batch, to resume the data where it stopped.

    Returns:
      The step written.
    """
    step = int(state.step)
    if self.best_metric and metrics is not None and (
        self.best_metric not in metrics):
      raise KeyError(f"best_metric {self.best_metric!r} is not among the "
                     f"validation metrics {sorted(metrics)}.")
    items = dict(
        params=ocp.args.StandardSave(state.params),
        optimizer=ocp.args.StandardSave({"step": state.step,
                                         "opt_state": state.opt_state}))
    if dataset_iterator is not None:
      items[DATASET_ITEM] = DatasetIteratorSave(dataset_iterator)
    self._manager.save(step, args=ocp.args.Composite(**items),
                       metrics=dict(metrics) if metrics else None, force=True)
    self._manager.wait_until_finished()
    _record_fingerprint(self._manager.directory / str(step))
    return step

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def best_step(self) -> Optional[int]:
    return self._manager.best_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def restore(self, abstract_state: train_lib.TrainState,
              step: Optional[int] = None,
              dataset_iterator: Optional[Any] = None) -> train_lib.TrainState:
    """Restores a full state onto the target shardings, verified: its
    parameter files are those it saved (`verify_fingerprint`) and finite.

    Args:
      abstract_state: shapes, dtypes and shardings of the state.
      step: the checkpoint; None: the newest that restores and verifies,
        logging why each newer one was skipped.
      dataset_iterator: a fresh iterator of the training input, set in place
        to where the saved one stood.

    Raises:
      UnusableCheckpointError: the step, or with step None every step, does
        not restore or verify.
      FileNotFoundError, ValueError: the step lacks the input state of this
        run's processes.
    """
    if step is not None:
      return self._restore_step(abstract_state, step, dataset_iterator)
    steps = self.all_steps()
    for candidate in reversed(steps):
      try:
        return self._restore_step(abstract_state, candidate, dataset_iterator)
      except UnusableCheckpointError as error:
        logging.warning("Skipping checkpoint step %d: %s", candidate, error)
    directory = self._manager.directory
    raise UnusableCheckpointError(
        f"No checkpoint in {directory} is usable (steps {steps}, each skipped "
        f"above); delete {directory.parent} or train into a new MODEL_DIR to "
        "start over.")

  def _restore_step(self, abstract_state: train_lib.TrainState, step: int,
                    dataset_iterator: Optional[Any]) -> train_lib.TrainState:
    step_dir = self._manager.directory / str(step)
    items = dict(
        params=ocp.args.StandardRestore(abstract_state.params),
        optimizer=ocp.args.StandardRestore({
            "step": abstract_state.step,
            "opt_state": abstract_state.opt_state}))
    if dataset_iterator is not None:
      if not (step_dir / DATASET_ITEM).is_dir():
        raise FileNotFoundError(
            f"{step_dir} holds no input state ({DATASET_ITEM}/), so the run "
            "cannot resume its data where it stopped; start a new MODEL_DIR "
            "with initial_checkpoint_path to reuse the parameters.")
      _check_input_state(step_dir / DATASET_ITEM)
      items[DATASET_ITEM] = DatasetIteratorRestore(dataset_iterator)
    verify_fingerprint(step_dir)
    with _reading(step_dir):
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    if not bool(jax.jit(train_lib.all_finite)(restored.params)):
      raise _unusable(step_dir, "some of its parameters are NaN or infinite")
    return train_lib.TrainState(step=restored.optimizer["step"],
                                params=restored.params,
                                opt_state=restored.optimizer["opt_state"])

  def delete_after(self, step: int) -> list[int]:
    """Deletes the steps after `step`; returns them."""
    newer = [later for later in self.all_steps() if later > step]
    for later in newer:
      self._manager.delete(later)
    return newer

  def close(self) -> None:
    self._manager.close()


def _flat_params(tree: PyTree) -> dict[str, Any]:
  """'/'-joined parameter paths (as `train_lib.create_optimizer`'s
  frozen_params see them) to leaves."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(str(getattr(key, "key", key)) for key in path): leaf
          for path, leaf in leaves}


def _nested_params(flat: Mapping[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, leaf in flat.items():
    *parents, name = path.split("/")
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[name] = leaf
  return tree


def _is_lora_param(path: str) -> bool:
  return path.rsplit("/", 1)[-1] in layers.LORA_PARAMS


def _listed(paths: list[str], limit: int = 4) -> str:
  more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
  return ", ".join(paths[:limit]) + more


def _lacking_lora(step_dir: epath.Path, stored: Mapping[str, Any],
                  wanted: Mapping[str, Any], fresh_lora: bool) -> list[str]:
  """The LoRA parameters that the checkpoint lacks; raises ValueError where
  it does not fit the model otherwise (see `restore_params`)."""
  missing = [name for name in wanted if name not in stored]
  extra = [name for name in stored if name not in wanted]
  reshaped = [f"{name} {tuple(stored[name].shape)} there, "
              f"{tuple(wanted[name].shape)} here" for name in wanted
              if name in stored and
              tuple(stored[name].shape) != tuple(wanted[name].shape)]
  problems = []
  if [name for name in missing if not _is_lora_param(name)]:
    problems.append(f"lacks {_listed(missing)}")
  if extra:
    problems.append(f"holds {_listed(extra)}, which the model has not")
  if reshaped:
    problems.append(f"has other shapes: {_listed(reshaped)}")
  if problems:
    raise ValueError(
        f"The checkpoint {step_dir} does not fit the model: "
        f"{'; '.join(problems)} (network.TransformerConfig).")
  if missing and not fresh_lora:
    raise ValueError(f"The checkpoint {step_dir} has no LoRA parameters "
                     f"({_listed(missing)}) and no fresh ones were given.")
  return missing


def restore_params(step_dir: str | os.PathLike[str], abstract_params: PyTree,
                   fresh_params: Optional[Callable[[], PyTree]] = None
                  ) -> PyTree:
  """Parameters of a step directory, resharded.

  A checkpoint without LoRA parameters restores into a model with them (LoRA
  fine-tuning of a pretrained or Stage I checkpoint): the checkpoint gives
  every other parameter and `fresh_params()`, a fresh initialisation of the
  model, gives the LoRA ones.

  Args:
    step_dir: MODEL_DIR/checkpoints/STEP (`model_dir.resolve_checkpoint`
      finds one from a model directory).
    abstract_params: shapes, dtypes and shardings of the model's parameters.
    fresh_params: called only when the checkpoint lacks the LoRA parameters.

  Raises:
    UnusableCheckpointError: the checkpoint does not restore or verify.
    ValueError: the checkpoint lacks parameters other than LoRA's, holds ones
      the model has not (LoRA's into a model without LoRA, say), has another
      shape for one, or lacks LoRA's and `fresh_params` is None.
  """
  step_dir = model_path(step_dir)
  verify_fingerprint(step_dir)
  params_dir = step_dir / "params"
  wanted = _flat_params(abstract_params)
  with ocp.StandardCheckpointer() as checkpointer:
    with _reading(step_dir):
      stored = _flat_params(
          checkpointer.metadata(params_dir).item_metadata.tree)
    missing = _lacking_lora(step_dir, stored, wanted, fresh_params is not None)
    with _reading(step_dir):
      if not missing:
        return checkpointer.restore(params_dir, abstract_params)
      restored = _flat_params(checkpointer.restore(params_dir, _nested_params(
          {name: leaf for name, leaf in wanted.items() if name in stored})))
  fresh = _flat_params(fresh_params())
  return jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(abstract_params),
      [restored[name] if name in restored else fresh[name]
       for name in wanted])


def save_params(model_dir: str | os.PathLike[str], step: int,
                params: PyTree) -> epath.Path:
  """Writes `params` alone as MODEL_DIR/checkpoints/STEP (a converted
  pretrained model: a run's `initial_checkpoint_path` and the evaluator read
  it like a trained step) and returns the step directory."""
  directory = model_path(model_dir) / CHECKPOINTS_DIR
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False,
                                         create=True)
  with ocp.CheckpointManager(directory, options=options,
                             item_names=("params",)) as manager:
    manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params)), force=True)
    manager.wait_until_finished()
  _record_fingerprint(directory / str(step))
  return directory / str(step)
