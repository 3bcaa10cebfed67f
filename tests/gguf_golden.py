"""Golden files of what transformers reads from the real GGUF checkpoints.

scripts/make_transformers_goldens.py writes, per file, the sha256 of every
tensor of transformers' state dict (float32, little-endian, C order) with
its shape, the config fields transformers' model reads, and the file's own
sha256; tests/test_trainer_gguf_import.py compares `gguf_import.read_gguf`'s
output with it (and, in the `live` tier, with transformers itself).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any, Mapping

import numpy as np

from pipelines import run_dir

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"
GEMMA_WEIGHTS_GOLDEN = DATA_DIR / "gemma3_270m_weights_golden.json"
SMOLLM2_WEIGHTS_GOLDEN = DATA_DIR / "smollm2_135m_weights_golden.json"
SCRIPT = ".venv/bin/python scripts/make_transformers_goldens.py"

# Config fields transformers' model reads, compared after transformers
# normalises our dict into its config class.
CONFIG_FIELDS = (
    "model_type", "vocab_size", "hidden_size", "intermediate_size",
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "max_position_embeddings", "tie_word_embeddings",
    "rope_parameters", "sliding_window", "layer_types",
    "query_pre_attn_scalar", "hidden_activation", "hidden_act",
    "final_logit_softcapping", "attn_logit_softcapping", "attention_bias",
    "mlp_bias", "bos_token_id", "eos_token_id", "pad_token_id")


def file_sha256(path: pathlib.Path) -> str:
  """The hex sha256 of a file's bytes (`run_dir.file_digest`'s)."""
  return run_dir.file_digest(str(path)).removeprefix("sha256:")


def tensor_sha256(value: np.ndarray) -> str:
  """The sha256 of a tensor's float32 little-endian C-order bytes."""
  return hashlib.sha256(np.ascontiguousarray(
      value, dtype="<f4").tobytes()).hexdigest()


def as_json(value: Any) -> Any:
  """`value` as a JSON round trip gives it back (tuples become lists)."""
  return json.loads(json.dumps(value))


def config_facts(config: Mapping[str, Any]) -> dict[str, Any]:
  """The compared fields of a transformers config's `to_dict()`."""
  return as_json({field: config.get(field) for field in CONFIG_FIELDS})


def golden_of(gguf_sha256: str, transformers_version: str,
              state: Mapping[str, np.ndarray],
              config: Mapping[str, Any]) -> dict[str, Any]:
  """What a golden file holds of transformers' model of one GGUF file.

  Args:
    gguf_sha256: the file's sha256.
    transformers_version: transformers' version.
    state: transformers' state dict as float32 arrays.
    config: transformers' config, `to_dict()`.

  Returns:
    A JSON-serialisable dict.
  """
  return {
      "gguf_sha256": gguf_sha256,
      "transformers_version": transformers_version,
      "config": config_facts(config),
      "rms_norm_eps": float(config["rms_norm_eps"]),
      "tensors": {name: {"shape": list(value.shape),
                         "sha256": tensor_sha256(value)}
                  for name, value in sorted(state.items())},
  }


def read(path: pathlib.Path) -> dict[str, Any]:
  return json.loads(path.read_text(encoding="utf-8"))


def write(path: pathlib.Path, golden: Mapping[str, Any]) -> None:
  path.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n",
                  encoding="utf-8")


def transformers_golden(path: pathlib.Path) -> dict[str, Any]:
  """The golden of `path` as transformers (torch, accelerate) reads it now.

  Args:
    path: a GGUF checkpoint.

  Returns:
    `golden_of` of transformers' float32 model of it.
  """
  import transformers  # pylint: disable=g-import-not-at-top

  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(path.parent), gguf_file=path.name)
  state = {k: v.float().numpy() for k, v in model.state_dict().items()}
  return golden_of(file_sha256(path), transformers.__version__, state,
                   model.config.to_dict())
