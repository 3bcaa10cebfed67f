"""A model directory's own files, checkpoint selection and loading a model.

A model directory (MODEL_DIR of `trainer.train`, or `trainer.convert`'s
output) holds
  checkpoints/      the steps (`trainer.checkpoints`)
  model.json        model config, loss settings, feature lengths
  vocabulary.model  the vocabulary the run trained with: a SentencePiece
  (or .json)        model, or a byte-level BPE vocabulary.json
                    (`tasks.bpe_vocab`); `vocabulary_file` finds it
  config.gin        the full gin configuration of the run
  run.json          what the run was made from (`pipelines.run_dir`), which
                    a resume must match
  train/, validation/  TensorBoard summaries
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping, Optional

from etils import epath
import jax
import seqio

from pipelines import run_dir
from tasks import bpe_vocab
from tasks import vocab
from trainer import checkpoints
from trainer import models
from trainer import network
from trainer import sampling_memory

PyTree = Any
MODEL_JSON = "model.json"
VOCABULARY_FILE = "vocabulary.model"
BPE_VOCABULARY_FILE = "vocabulary.json"
VOCABULARY_FILES = (VOCABULARY_FILE, BPE_VOCABULARY_FILE)
CONFIG_GIN = "config.gin"
TRAIN_STAGE = "train"

# TransformerConfig fields that change how the network runs, not what it
# computes: a resumed run may change them (another accelerator's attention
# kernel, remat for memory).
_EXECUTION_FIELDS = frozenset({"attention_implementation", "remat"})
# TransformerConfig fields a run may change from the checkpoint it starts from:
# they leave the parameters as they are.
_FREE_NETWORK_FIELDS = _EXECUTION_FIELDS | {"dropout_rate", "dtype"}
# LoRA's fields: free when the checkpoint has no LoRA parameters (a run adds
# fresh ones, see `checkpoints.restore_params`), else they must match.
_LORA_NETWORK_FIELDS = frozenset({"lora_rank", "lora_alpha", "lora_targets"})


def write_model_metadata(model_dir: str | os.PathLike[str],
                         model: models.CALRecModel,
                         vocabulary: seqio.Vocabulary,
                         task_feature_lengths: Mapping[str, int],
                         best_metric: Optional[str],
                         best_mode: str) -> None:
  """Writes model.json and the vocabulary so the directory loads alone."""
  model_dir = checkpoints.model_path(model_dir)
  model_dir.mkdir(parents=True, exist_ok=True)
  (model_dir / vocabulary_file_name(vocabulary)).write_bytes(
      vocabulary_bytes(vocabulary))
  write_model_json(model_dir, model, vocabulary.extra_ids,
                   task_feature_lengths, best_metric, best_mode)


def write_model_json(model_dir: str | os.PathLike[str],
                     model: models.CALRecModel, extra_ids: int,
                     task_feature_lengths: Mapping[str, int],
                     best_metric: Optional[str] = None,
                     best_mode: str = "min") -> None:
  """Writes model.json: the network, loss and inference settings
  `load_for_inference` reads."""
  metadata = _model_metadata(model, extra_ids, task_feature_lengths)
  metadata.update(best_metric=best_metric, best_mode=best_mode)
  model_dir = checkpoints.model_path(model_dir)
  model_dir.mkdir(parents=True, exist_ok=True)
  (model_dir / MODEL_JSON).write_text(json.dumps(metadata, indent=2) + "\n")


def vocabulary_file_name(vocabulary: seqio.Vocabulary) -> str:
  """The name a model directory stores this vocabulary under."""
  if isinstance(vocabulary, bpe_vocab.ByteLevelBPEVocabulary):
    return BPE_VOCABULARY_FILE
  return VOCABULARY_FILE


def vocabulary_bytes(vocabulary: seqio.Vocabulary) -> bytes:
  """The file a model directory stores for this vocabulary."""
  if isinstance(vocabulary, bpe_vocab.ByteLevelBPEVocabulary):
    return vocabulary.text
  if not isinstance(vocabulary, seqio.SentencePieceVocabulary):
    raise TypeError("Only SentencePiece and byte-level BPE vocabularies can "
                    "be stored with the model, got "
                    f"{type(vocabulary).__name__}.")
  return vocabulary.sp_model


def vocabulary_file(model_dir: str | os.PathLike[str]) -> epath.Path:
  """The vocabulary file of a model directory: the one of
  `VOCABULARY_FILES` it has (vocabulary.model, which does not exist then,
  when it has neither).

  Raises:
    ValueError: it has both.
  """
  model_dir = checkpoints.model_path(model_dir)
  found = [model_dir / name for name in VOCABULARY_FILES
           if (model_dir / name).exists()]
  if len(found) > 1:
    raise ValueError(f"{model_dir} has both {' and '.join(VOCABULARY_FILES)}"
                     "; keep the one the run trained with.")
  return found[0] if found else model_dir / VOCABULARY_FILE


def _model_metadata(model: models.CALRecModel, extra_ids: int,
                    task_feature_lengths: Mapping[str, int]
                   ) -> dict[str, Any]:
  """model.json but for the best-checkpoint settings."""
  return {
      "network": dataclasses.asdict(model.config),
      "loss": {"alpha": model.alpha, "beta": model.beta,
               "contrastive_temperature": model.contrastive_temperature},
      "eos_id": model.eos_id,
      "extra_ids": extra_ids,
      "task_feature_lengths": dict(task_feature_lengths),
  }


def _made_from_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
  """The `made_from` entries of a run that its model.json holds: one per
  network field (but for `_EXECUTION_FIELDS`) and loss weight, so that a
  difference is named by its field."""
  made_from = {f"network.{name}": value
               for name, value in metadata["network"].items()
               if name not in _EXECUTION_FIELDS}
  made_from.update({f"loss.{name}": value
                    for name, value in metadata["loss"].items()})
  for name in ("eos_id", "extra_ids", "task_feature_lengths"):
    if name in metadata:
      made_from[name] = metadata[name]
  return made_from


def training_made_from(model: models.CALRecModel,
                       vocabulary: seqio.Vocabulary,
                       task_feature_lengths: Mapping[str, int],
                       **settings: Any) -> dict[str, Any]:
  """What a training run is made from, as run.json records it: the
  vocabulary's digest (`run_dir.file_digest` of the vocabulary file it
  writes), what model.json records of the model and `settings`, as JSON
  values."""
  digest = hashlib.sha256(vocabulary_bytes(vocabulary)).hexdigest()
  made_from = {"vocabulary": f"sha256:{digest}", **settings,
               **_made_from_metadata(_model_metadata(
                   model, vocabulary.extra_ids, task_feature_lengths))}
  return json.loads(json.dumps(made_from))


def check_resume(model_dir: str | os.PathLike[str],
                 made_from: Mapping[str, Any]) -> None:
  """Raises run_dir.RunDirError where model_dir holds a run made from other
  things (`training_made_from`).

  A model directory from before run.json that holds checkpoints is compared
  on what its model.json and vocabulary file tell.
  """
  model_dir = checkpoints.model_path(model_dir)
  path = os.fspath(model_dir)
  start_over = (f"train into a new MODEL_DIR, or delete {model_dir} to start "
                "over")
  if (run_dir.read_record(path) is not None or
      not checkpoints.available_steps(model_dir)):
    run_dir.check_made_from(path, TRAIN_STAGE, made_from, start_over)
    return
  recorded = {}
  if (model_dir / MODEL_JSON).exists():
    recorded.update(_made_from_metadata(_read_metadata(model_dir)))
  vocabulary = vocabulary_file(model_dir)
  if vocabulary.exists():
    recorded["vocabulary"] = run_dir.file_digest(os.fspath(vocabulary))
  run_dir.check_same(path, recorded,
                     {name: made_from.get(name) for name in recorded},
                     start_over)


def write_run_files(model_dir: str | os.PathLike[str],
                    made_from: Mapping[str, Any], gin_config: str) -> None:
  """Writes run.json (`training_made_from`) and config.gin."""
  model_dir = checkpoints.model_path(model_dir)
  model_dir.mkdir(parents=True, exist_ok=True)
  run_dir.write_record(os.fspath(model_dir), TRAIN_STAGE, made_from)
  (model_dir / CONFIG_GIN).write_text(gin_config)


def _read_metadata(model_dir: epath.Path) -> dict[str, Any]:
  path = model_dir / MODEL_JSON
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: {model_dir} is not a model "
                            "directory written by trainer.train.")
  metadata = json.loads(path.read_text())
  # Written before tau_c got its own name: model.json's "loss" said
  # "temperature".
  loss = metadata.get("loss", {})
  if "temperature" in loss:
    loss["contrastive_temperature"] = loss.pop("temperature")
  return metadata


def _best_metric_of(model_dir: epath.Path) -> dict[str, Any]:
  metadata = _read_metadata(model_dir)
  return {"best_metric": metadata.get("best_metric"),
          "best_mode": metadata.get("best_mode", "min")}


def _no_checkpoints_yet(model_dir: epath.Path) -> FileNotFoundError:
  return FileNotFoundError(
      f"MODEL_DIR {model_dir} has no checkpoints yet: its run stopped before "
      "its first checkpoint or has not reached it (train.checkpoint_period).")


def resolve_checkpoint(path: str | os.PathLike[str]) -> epath.Path:
  """The step directory a checkpoint path names.

  Accepts a step directory (MODEL_DIR/checkpoints/1000) or a model directory,
  in which case its best checkpoint by the run's validation metric is used
  (the latest when none was tracked).
  """
  path = checkpoints.model_path(path)
  if (path / "params").is_dir():
    return path
  if (path / checkpoints.CHECKPOINTS_DIR).is_dir():
    manager = checkpoints.CheckpointManager(path, **_best_metric_of(path))
    step = manager.best_step()
    manager.close()
    if step is not None:
      return checkpoints.step_path(path, step)
  if (path / MODEL_JSON).exists():
    raise _no_checkpoints_yet(path)
  raise FileNotFoundError(
      f"No checkpoint at {path}: give a step directory "
      f"(MODEL_DIR/{checkpoints.CHECKPOINTS_DIR}/STEP) or a model directory "
      f"holding {checkpoints.CHECKPOINTS_DIR}/.")


def check_same_network(step_dir: epath.Path,
                       config: network.TransformerConfig) -> None:
  """Raises ValueError if the run of `step_dir` trained another network.

  Compares the network of the run's model.json, when `step_dir` is a step of a
  MODEL_DIR of `trainer.train`, with `config`, but for the fields that leave
  the parameters as they are (dropout, dtype, attention kernel, remat), and
  the LoRA fields when the checkpoint has no LoRA (lora_rank 0): LoRA
  fine-tuning starts from a pretrained checkpoint.
  """
  model_dir = step_dir.parent.parent
  if (step_dir.parent.name != checkpoints.CHECKPOINTS_DIR or
      not (model_dir / MODEL_JSON).exists()):
    return
  trained = _read_metadata(model_dir)["network"]
  free = _FREE_NETWORK_FIELDS
  if not trained.get("lora_rank"):
    free = free | _LORA_NETWORK_FIELDS
  # JSON holds tuples as lists.
  differing = [f"{name} {trained[name]!r} there, {value!r} here"
               for name, value in dataclasses.asdict(config).items()
               if name not in free and name in trained and
               _json_value(trained[name]) != _json_value(value)]
  if differing:
    raise ValueError(
        f"The checkpoint {step_dir} is of another network: "
        f"{'; '.join(differing)} (network.TransformerConfig). Train with the "
        f"model gin file of that run (see its {MODEL_JSON}).")


def _json_value(value: Any) -> Any:
  return list(value) if isinstance(value, tuple) else value


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
    return _prompt_length(self.task_feature_lengths)


def _prompt_length(task_feature_lengths: Mapping[str, int]) -> int:
  return int(task_feature_lengths["inputs"]) + 1


def _network_config(metadata: Mapping[str, Any],
                    dtype: Optional[str]) -> network.TransformerConfig:
  """model.json's network, in `dtype` activations unless None."""
  config = network.TransformerConfig(**metadata["network"])
  if dtype is not None:
    config = dataclasses.replace(config, dtype=dtype)
  return config


def inference_checkpoint(model_dir: str | os.PathLike[str],
                         step: Optional[int] = None) -> epath.Path:
  """The step directory `load_for_inference` reads (see there).

  Raises:
    FileNotFoundError: model_dir is not a MODEL_DIR of `trainer.train`, has
      no checkpoints yet, or has no such checkpoint (the message lists the
      steps it has).
    checkpoints.UnusableCheckpointError: the step's parameter files differ
      from those it saved.
  """
  model_dir = checkpoints.model_path(model_dir)
  _read_metadata(model_dir)
  path = (resolve_checkpoint(model_dir) if step is None else
          checkpoints.step_path(model_dir, step))
  if not (path / "params").is_dir():
    steps = checkpoints.available_steps(model_dir)
    if not steps:
      raise _no_checkpoints_yet(model_dir)
    raise FileNotFoundError(f"No checkpoint at {path}; {model_dir} has steps "
                            f"{steps}.")
  checkpoints.verify_fingerprint(path)
  return path


def users_per_batch(model_dir: str | os.PathLike[str], memory_bytes: int,
                    num_decodes: int, max_decode_length: int,
                    dtype: Optional[str] = None) -> tuple[int, int]:
  """Prompts per sampling batch that fit `memory_bytes`, and one's bytes.

  One prompt's bytes are `sampling_memory.sampling_bytes` of the run's
  network (in `dtype`, else its own) at its full prompt length, the longest
  batch `load_for_inference`'s model is given, with the shared prefix.

  Raises:
    FileNotFoundError: model_dir is not a MODEL_DIR of `trainer.train`.
    ValueError: not even one prompt fits.
  """
  metadata = _read_metadata(checkpoints.model_path(model_dir))
  config = _network_config(metadata, dtype)
  prompt_length = _prompt_length(metadata["task_feature_lengths"])
  prompt_bytes = sampling_memory.sampling_bytes(
      config, prompt_length, num_decodes, max_decode_length)
  if prompt_bytes > memory_bytes:
    raise ValueError(
        f"{memory_bytes / 2**30:g} GiB holds no prompt of {model_dir}: one "
        f"takes about {prompt_bytes / 2**20:.1f} MiB to sample (prompt "
        f"length {prompt_length}, {num_decodes} samples of up to "
        f"{max_decode_length} tokens).")
  return memory_bytes // prompt_bytes, prompt_bytes


def load_for_inference(model_dir: str | os.PathLike[str],
                       step: Optional[int] = None,
                       sampler: str = "gumbel",
                       dtype: Optional[str] = None) -> LoadedModel:
  """Loads model, parameters (on the default device) and vocabulary.

  The model's samples end at the vocabulary's item stop ids
  (`tasks.vocab.item_stop_ids`: EOS, and the newline pieces of a pretrained
  LM's vocabulary; paper section 3.5).

  Args:
    model_dir: a MODEL_DIR written by `trainer.train`.
    step: checkpoint step; None picks the best checkpoint by the run's
      validation metric, or the latest when none was tracked.
    sampler: the model's seeded sampling stream (`decoding.SAMPLERS`).
    dtype: activation dtype of the network ("float32", "bfloat16"); None
      keeps the run's. The parameters are float32 either way, so it changes
      the arithmetic only (e.g. a run trained in bfloat16 sampled in
      float32).
  """
  step_dir = inference_checkpoint(model_dir, step)
  model_dir = checkpoints.model_path(model_dir)
  metadata = _read_metadata(model_dir)
  config = _network_config(metadata, dtype)
  vocabulary = vocab.get_vocabulary(os.fspath(vocabulary_file(model_dir)),
                                    extra_ids=metadata["extra_ids"])
  model = models.CALRecModel(config, eos_id=metadata["eos_id"],
                             stop_ids=vocab.item_stop_ids(vocabulary),
                             sampler=sampler, **metadata["loss"])
  abstract = jax.eval_shape(
      lambda: models.unboxed_params(model.get_initial_variables(
          jax.random.PRNGKey(0), {"decoder_input_tokens": (1, 1)})))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      abstract)
  params = checkpoints.restore_params(step_dir, abstract)
  return LoadedModel(model=model, params=params, vocabulary=vocabulary,
                     task_feature_lengths=metadata["task_feature_lengths"],
                     step=int(step_dir.name))
