"""orbax checkpoints of a training run, and loading a trained model.

A model directory holds
  checkpoints/{step}/params, checkpoints/{step}/optimizer   (orbax)
  model.json        model config, loss settings, feature lengths
  vocabulary.model  the SentencePiece model the run trained with
  config.gin        the full gin configuration of the run
  train/, validation/  TensorBoard summaries

The last `keep` checkpoints are kept, plus the best one by a validation
metric when one is configured.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Mapping, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers
import seqio

from trainer import models
from trainer import network
from trainer import train_lib

PyTree = Any
CHECKPOINTS_DIR = "checkpoints"
MODEL_JSON = "model.json"
VOCABULARY_FILE = "vocabulary.model"


class CheckpointManager:
  """Saves and restores `TrainState`s under MODEL_DIR/checkpoints."""

  def __init__(self, model_dir: str | os.PathLike[str], keep: int = 3,
               best_metric: Optional[str] = None, best_mode: str = "min"):
    if keep < 1:
      raise ValueError(f"keep must be >= 1, got {keep}.")
    if best_mode not in ("min", "max"):
      raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}.")
    self.best_metric = best_metric
    policies = [checkpoint_managers.LatestN(n=keep)]
    best_fn = None
    if best_metric:
      best_fn = lambda metrics: float(metrics[best_metric])
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn, best_mode=best_mode,
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(
            policies),
        enable_async_checkpointing=False, create=True)
    directory = pathlib.Path(model_dir).absolute() / CHECKPOINTS_DIR
    self._manager = ocp.CheckpointManager(
        directory, options=options, item_names=("params", "optimizer"))

  def save(self, state: train_lib.TrainState,
           metrics: Optional[Mapping[str, float]] = None) -> int:
    """Writes `state` at its step (with validation metrics, if any)."""
    step = int(state.step)
    if self.best_metric and metrics is not None and (
        self.best_metric not in metrics):
      raise KeyError(f"best_metric {self.best_metric!r} is not among the "
                     f"validation metrics {sorted(metrics)}.")
    self._manager.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            optimizer=ocp.args.StandardSave({"step": state.step,
                                             "opt_state": state.opt_state})),
        metrics=dict(metrics) if metrics else None, force=True)
    self._manager.wait_until_finished()
    return step

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def best_step(self) -> Optional[int]:
    return self._manager.best_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def restore(self, abstract_state: train_lib.TrainState,
              step: Optional[int] = None) -> train_lib.TrainState:
    """Restores a full state (default: latest) onto the target shardings."""
    step = self.latest_step() if step is None else step
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_state.params),
            optimizer=ocp.args.StandardRestore({
                "step": abstract_state.step,
                "opt_state": abstract_state.opt_state})))
    return train_lib.TrainState(step=restored.optimizer["step"],
                                params=restored.params,
                                opt_state=restored.optimizer["opt_state"])

  def close(self) -> None:
    self._manager.close()


def resolve_checkpoint(path: str | os.PathLike[str]) -> pathlib.Path:
  """The step directory a checkpoint path names.

  Accepts a step directory (MODEL_DIR/checkpoints/1000) or a model directory,
  in which case its best checkpoint by the run's validation metric is used
  (the latest when none was tracked).
  """
  path = pathlib.Path(path).absolute()
  if (path / "params").is_dir():
    return path
  if (path / CHECKPOINTS_DIR).is_dir():
    manager = CheckpointManager(path, **_best_metric_of(path))
    step = manager.best_step()
    manager.close()
    if step is not None:
      return path / CHECKPOINTS_DIR / str(step)
  raise FileNotFoundError(
      f"No checkpoint at {path}: give a step directory "
      f"(MODEL_DIR/{CHECKPOINTS_DIR}/STEP) or a model directory holding "
      f"{CHECKPOINTS_DIR}/.")


def restore_params(path: str | os.PathLike[str],
                   abstract_params: PyTree) -> PyTree:
  """Parameters of a checkpoint (see `resolve_checkpoint`), resharded."""
  step_dir = resolve_checkpoint(path)
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(step_dir / "params", abstract_params)


def write_model_metadata(model_dir: str | os.PathLike[str],
                         model: models.CALRecModel,
                         vocabulary: seqio.Vocabulary,
                         task_feature_lengths: Mapping[str, int],
                         best_metric: Optional[str],
                         best_mode: str) -> None:
  """Writes model.json and the vocabulary so the directory loads alone."""
  model_dir = pathlib.Path(model_dir)
  model_dir.mkdir(parents=True, exist_ok=True)
  if not isinstance(vocabulary, seqio.SentencePieceVocabulary):
    raise TypeError("Only SentencePiece vocabularies can be stored with the "
                    f"model, got {type(vocabulary).__name__}.")
  (model_dir / VOCABULARY_FILE).write_bytes(vocabulary.sp_model)
  metadata = {
      "network": dataclasses.asdict(model.config),
      "loss": {"alpha": model.alpha, "beta": model.beta,
               "temperature": model.temperature},
      "eos_id": model.eos_id,
      "extra_ids": vocabulary.extra_ids,
      "task_feature_lengths": dict(task_feature_lengths),
      "best_metric": best_metric,
      "best_mode": best_mode,
  }
  (model_dir / MODEL_JSON).write_text(json.dumps(metadata, indent=2) + "\n")


def _read_metadata(model_dir: pathlib.Path) -> dict[str, Any]:
  path = model_dir / MODEL_JSON
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: {model_dir} is not a model "
                            "directory written by trainer.train.")
  return json.loads(path.read_text())


def _best_metric_of(model_dir: pathlib.Path) -> dict[str, Any]:
  metadata = _read_metadata(model_dir)
  return {"best_metric": metadata.get("best_metric"),
          "best_mode": metadata.get("best_mode", "min")}


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A trained model ready for `predict_batch_with_aux`."""

  model: models.CALRecModel
  params: PyTree
  vocabulary: seqio.Vocabulary
  task_feature_lengths: Mapping[str, int]
  step: int

  @property
  def prompt_length(self) -> int:
    """P of `models.prompt_batch`: the training input budget + start token."""
    return int(self.task_feature_lengths["inputs"]) + 1


def load_for_inference(model_dir: str | os.PathLike[str],
                       step: Optional[int] = None) -> LoadedModel:
  """Loads model, parameters (on the default device) and vocabulary.

  Args:
    model_dir: a MODEL_DIR written by `trainer.train`.
    step: checkpoint step; None picks the best checkpoint by the run's
      validation metric, or the latest when none was tracked.
  """
  model_dir = pathlib.Path(model_dir).absolute()
  metadata = _read_metadata(model_dir)
  config = network.TransformerConfig(**metadata["network"])
  model = models.CALRecModel(config, eos_id=metadata["eos_id"],
                             **metadata["loss"])
  step_dir = (model_dir / CHECKPOINTS_DIR / str(step) if step is not None
              else resolve_checkpoint(model_dir))
  if not (step_dir / "params").is_dir():
    raise FileNotFoundError(f"No checkpoint at {step_dir}.")
  abstract = jax.eval_shape(
      lambda: models.unboxed_params(model.get_initial_variables(
          jax.random.PRNGKey(0), {"decoder_input_tokens": (1, 1)})))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      abstract)
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(step_dir / "params", abstract)
  vocabulary = seqio.SentencePieceVocabulary(
      str(model_dir / VOCABULARY_FILE), extra_ids=metadata["extra_ids"])
  return LoadedModel(model=model, params=params, vocabulary=vocabulary,
                     task_feature_lengths=metadata["task_feature_lengths"],
                     step=int(step_dir.name))
