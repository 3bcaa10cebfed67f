r"""Converts pretrained checkpoints into model directories of this project.

Import (a GGUF file or a transformers safetensors directory):

  python -m trainer.convert --source gemma-3-270m-q4_k_m.gguf \
      --output_dir models/gemma3_270m --name gemma3_270m

writes into --output_dir
  checkpoints/0/params  the parameters (orbax), the step a run's
                        `initial_checkpoint_path` (the model directory or
                        this step directory) starts from
  model.json            the network config, as `trainer.model_dir` writes
                        it (the loader reads it to find the checkpoint and to
                        check that a run trains the same network)
  vocabulary.model      the checkpoint's tokenizer: a SentencePiece model, or
  (or vocabulary.json)  for byte-level BPE (SmolLM2, Llama 3, Qwen2.5) a
                        `tasks.bpe_vocab` JSON whose ids put pad and EOS at
                        0 and 1; the embedding rows (and an untied output
                        kernel's) are renumbered alike
  model.gin             the `network.TransformerConfig` bindings (float32;
                        a run may set dtype = 'bfloat16')
  source.json           source file(s) sha256 and size, architecture,
                        licence, conversion time

Export (a model directory, converted or trained, to transformers):

  python -m trainer.convert --source models/gemma3_270m \
      --export_safetensors hf/gemma3_270m [--model_type gemma3_text]

writes config.json, model.safetensors and, when the model directory has
one, tokenizer.model (SentencePiece) or tokenizer.json (byte-level BPE, with
the source's ids again: the rows are put back in the source's order, and
config.json names its EOS and pad). An import with --export_safetensors
writes both.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import re
import resource
import shutil
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import gguf
import numpy as np

from pipelines import cli
from tasks import bpe_vocab
from trainer import checkpoints
from trainer import gguf_import
from trainer import hf_config as hf_config_lib
from trainer import hf_weights
from trainer import model_dir as model_dir_lib
from trainer import models
from trainer import network
from trainer import safetensors_io

SOURCE_JSON = "source.json"
MODEL_GIN = "model.gin"
STEP = 0
# The paper's input and target budgets (section 4): the prompt budget of a
# zero-shot evaluation of the converted directory.
DEFAULT_FEATURE_LENGTHS = {"inputs": 1024, "targets": 80}

# Licences of model families, when the source does not name one.
KNOWN_LICENSES = {"gemma3": "gemma", "gemma3_text": "gemma"}
# TransformerConfig fields left out of model.gin: run settings, and
# fine-tuning adapters (any 'lora_*' field) that a run chooses.
_RUN_FIELDS = ("dropout_rate", "attention_implementation", "remat")
_RUN_PREFIXES = ("lora_",)
_LLAMA3_FIELDS = ("rope_low_freq_factor", "rope_high_freq_factor",
                  "rope_original_max_position")
# Hugging Face tensors with one row per token id.
_TOKEN_ROW_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")

Log = Callable[[str], None]


def _print(line: str) -> None:
  print(line, flush=True)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def _gin_value(value: Any) -> str:
  if isinstance(value, tuple):
    return "(" + ", ".join(_gin_value(v) for v in value) + (
        ",)" if len(value) == 1 else ")")
  return repr(value)


def gin_bindings(config: network.TransformerConfig) -> list[str]:
  """`network.TransformerConfig.field = value` lines of every field that
  changes what the network computes (rope-scaling details only when used)."""
  lines = []
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if field.name in _RUN_FIELDS or field.name.startswith(_RUN_PREFIXES):
      continue
    if config.rope_scaling_type is None and field.name == (
        "rope_scaling_factor"):
      continue
    if config.rope_scaling_type != "llama3" and field.name in _LLAMA3_FIELDS:
      continue
    line = f"network.TransformerConfig.{field.name} = {_gin_value(value)}"
    if len(line) > 80 and isinstance(value, tuple):
      line = line.split("(", 1)[0] + "(\n" + _wrap(
          [_gin_value(v) for v in value]) + ")"
    lines.append(line)
  return lines


def _wrap(items: list[str], width: int = 76) -> str:
  """Comma-separated items on lines of at most `width`, indented by 4."""
  lines, line = [], ""
  for item in items:
    piece = item + ","
    if line and len(line) + 1 + len(piece) > width:
      lines.append(line)
      line = ""
    line = f"{line} {piece}" if line else piece
  lines.append(line)
  return "\n".join("    " + l for l in lines).removesuffix(",")


def model_gin(config: network.TransformerConfig, name: str,
              description: str) -> str:
  """The text of a model gin file (trainer/configs/models/*.gin layout)."""
  return "\n".join([
      f"# {name}: {description}",
      "# Written by python -m trainer.convert; activations in float32 (a run",
      "# may bind network.TransformerConfig.dtype = 'bfloat16').",
      "import trainer.models",
      "import trainer.network",
      "",
      "MODEL = @models.CALRecModel()",
      "models.CALRecModel.config = @network.TransformerConfig()",
      "",
      *gin_bindings(config),
  ]) + "\n"


def _license_from_readme(directory: str) -> Optional[str]:
  """`license:` of a Hugging Face model card's front matter, if any."""
  path = os.path.join(directory, "README.md")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8", errors="replace") as f:
    text = f.read(20_000)
  match = re.match(r"---\s*\n(.*?)\n---", text, re.S)
  if match:
    found = re.search(r"^license:\s*(\S+)", match.group(1), re.M)
    if found:
      return found.group(1).strip("'\"")
  return None


@dataclasses.dataclass
class Source:
  """A checkpoint read into Hugging Face form."""

  hf_config: dict[str, Any]
  tensors: dict[str, np.ndarray]
  # (file name in the model directory, contents), None without --vocabulary.
  vocabulary: Optional[tuple[str, bytes]]
  description: dict[str, Any]


def _gguf_vocabulary(path: str) -> tuple[str, bytes]:
  from tasks import gguf_vocab  # pylint: disable=g-import-not-at-top
  kind = gguf_vocab.read_gguf_metadata(path).get("tokenizer.ggml.model")
  if kind == "gpt2":
    return (model_dir_lib.BPE_VOCABULARY_FILE,
            bpe_vocab.vocabulary_json_from_gguf(path).encode("utf-8"))
  return (model_dir_lib.VOCABULARY_FILE,
          gguf_vocab.sentencepiece_model_from_gguf(path))


def _safetensors_vocabulary(path: str) -> tuple[str, bytes]:
  """tokenizer.model, or a byte-level BPE tokenizer.json with config.json's
  EOS and pad (the first EOS where it lists several)."""
  model = os.path.join(path, "tokenizer.model")
  if os.path.isfile(model):
    with open(model, "rb") as f:
      return model_dir_lib.VOCABULARY_FILE, f.read()
  tokenizer = os.path.join(path, "tokenizer.json")
  if not os.path.isfile(tokenizer):
    raise ValueError(
        f"{path} has neither tokenizer.model (SentencePiece) nor "
        "tokenizer.json (byte-level BPE); pass --no_vocabulary to convert "
        "the weights alone.")
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  first = lambda value: value[0] if isinstance(value, list) else value
  text = bpe_vocab.vocabulary_json_from_hf(
      tokenizer, eos_id=first(config.get("eos_token_id")),
      pad_id=first(config.get("pad_token_id")))
  return model_dir_lib.BPE_VOCABULARY_FILE, text.encode("utf-8")


def _token_order(vocabulary: Optional[tuple[str, bytes]]
                ) -> Optional[np.ndarray]:
  """The source id of each id of a byte-level BPE vocabulary (None for
  SentencePiece or no vocabulary: ids as the source's)."""
  if vocabulary is None or vocabulary[0] != model_dir_lib.BPE_VOCABULARY_FILE:
    return None
  return bpe_vocab.renumbering_of(json.loads(vocabulary[1]))


def renumber_rows(tensors: dict[str, np.ndarray], order: np.ndarray,
                  undo: bool = False) -> None:
  """Puts the token rows of the embedding (and an untied output kernel) in
  the vocabulary's order: row i becomes the source's row order[i]; `undo`
  puts them back. Rows past the vocabulary stay."""
  for name in _TOKEN_ROW_TENSORS:
    if name not in tensors:
      continue
    rows = np.array(tensors[name])
    if undo:
      rows[order] = np.asarray(tensors[name])[:len(order)]
    else:
      rows[:len(order)] = np.asarray(tensors[name])[order]
    tensors[name] = rows


def read_source(path: str, *, vocabulary: bool = True,
                log: Log = _print) -> Source:
  """Reads a .gguf file or a transformers safetensors directory.

  The vocabulary is built first (cheap), so that an unsupported tokenizer
  fails before the weights are read.

  Raises:
    ValueError: an unsupported architecture or tokenizer, or bad tensors.
    FileNotFoundError: no such file, or a directory that is not a
      transformers checkpoint.
  """
  if os.path.isfile(path):
    if not path.endswith(".gguf"):
      raise ValueError(f"{path}: expected a .gguf file or a transformers "
                       "checkpoint directory.")
    vocab = _gguf_vocabulary(path) if vocabulary else None
    log(f"reading {path}")
    reader = gguf.GGUFReader(path)
    info = gguf_import.describe_gguf(path, reader)
    log(f"GGUF: {info['name']} ({info['architecture']}), tensors "
        f"{info['tensor_types']}")
    hf_config, tensors = gguf_import.read_gguf(path, log=log, reader=reader)
    del reader
    log(f"hashing {path}")
    description = {
        "format": "gguf",
        "file": os.path.basename(path),
        "sha256": _sha256(path),
        "size_bytes": os.path.getsize(path),
        "architecture": info["architecture"],
        "name": info["name"],
        "license": info["license"] or KNOWN_LICENSES.get(
            info["architecture"]),
        "tensor_types": info["tensor_types"],
    }
  elif os.path.isdir(path):
    vocab = _safetensors_vocabulary(path) if vocabulary else None
    log(f"reading {path}")
    hf_config, tensors = safetensors_io.read_safetensors_dir(path)
    files = {}
    for name in sorted(os.listdir(path)):
      if name.endswith((".safetensors", ".json", ".model")):
        full = os.path.join(path, name)
        log(f"hashing {name}")
        files[name] = {"sha256": _sha256(full),
                       "size_bytes": os.path.getsize(full)}
    model_type = hf_config.get("model_type")
    description = {
        "format": "safetensors",
        "files": files,
        "size_bytes": sum(f["size_bytes"] for f in files.values()),
        "architecture": (hf_config.get("architectures") or [model_type])[0],
        "name": hf_config.get("_name_or_path") or os.path.basename(
            os.path.normpath(path)),
        "license": _license_from_readme(path) or KNOWN_LICENSES.get(
            model_type),
    }
  else:
    raise FileNotFoundError(f"No file or directory {path}.")
  description["model_type"] = hf_config.get("model_type")
  return Source(hf_config, tensors, vocab, description)


def import_checkpoint(source: str, output_dir: str, name: str, *,
                      vocabulary: bool = True, overwrite: bool = False,
                      task_feature_lengths: Mapping[str, int] = (
                          DEFAULT_FEATURE_LENGTHS),
                      log: Log = _print) -> network.TransformerConfig:
  """Converts `source` into the model directory `output_dir` (see module
  docstring) and returns the network config."""
  started = time.time()
  if os.path.exists(output_dir) and os.listdir(output_dir):
    if not overwrite:
      raise ValueError(f"--output_dir {output_dir} is not empty; pass "
                       "--overwrite to replace it.")
    shutil.rmtree(output_dir)
  loaded = read_source(source, vocabulary=vocabulary, log=log)
  config = hf_config_lib.config_from_hf(loaded.hf_config)
  order = _token_order(loaded.vocabulary)
  if order is not None:
    log("renumbering token rows: pad and EOS to ids 0 and 1")
    renumber_rows(loaded.tensors, order)
  log("mapping tensors onto trainer.network parameters")
  params = hf_weights.params_from_hf(loaded.tensors, config)
  del loaded.tensors
  os.makedirs(output_dir, exist_ok=True)
  log(f"writing {output_dir}")
  checkpoints.hide_orbax_info_logs()
  step_dir = os.fspath(checkpoints.save_params(output_dir, STEP, params))
  del params
  # A converted model has no training settings: the loss weights are the
  # model's defaults; the feature lengths budget a zero-shot evaluation.
  eos_id = (bpe_vocab.EOS_ID if order is not None else
            loaded.hf_config.get("eos_token_id"))
  model = (models.CALRecModel(config) if eos_id is None else
           models.CALRecModel(config, eos_id=int(eos_id)))
  model_dir_lib.write_model_json(output_dir, model, extra_ids=0,
                                 task_feature_lengths=task_feature_lengths)
  if loaded.vocabulary is not None:
    name, contents = loaded.vocabulary
    with open(os.path.join(output_dir, name), "wb") as f:
      f.write(contents)
  description = (f"{loaded.description['name']}, converted from "
                 f"{loaded.description['format']} "
                 f"({loaded.description['architecture']}).")
  with open(os.path.join(output_dir, MODEL_GIN), "w") as f:
    f.write(model_gin(config, name, description))
  source_json = dict(
      loaded.description, name_given=name,
      converted_at=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      conversion_seconds=round(time.time() - started, 1),
      hf_config=loaded.hf_config, checkpoint=os.path.relpath(step_dir,
                                                            output_dir))
  with open(os.path.join(output_dir, SOURCE_JSON), "w") as f:
    json.dump(source_json, f, indent=2)
    f.write("\n")
  return config


def export_safetensors(model_dir: str, output_dir: str,
                       model_type: Optional[str] = None,
                       step: Optional[int] = None,
                       log: Log = _print) -> dict[str, Any]:
  """Writes a model directory's checkpoint as a transformers directory.

  Args:
    model_dir: a model directory with model.json (converted or trained).
    output_dir: the transformers directory to write.
    model_type: transformers' model_type; defaults to the one source.json
      records (converted directories).
    step: the checkpoint; None: as `model_dir.resolve_checkpoint` picks.

  Returns:
    The written config.json dict.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  checkpoints.hide_orbax_info_logs()
  with open(os.path.join(model_dir, "model.json")) as f:
    config = network.TransformerConfig(**json.load(f)["network"])
  if model_type is None:
    source_path = os.path.join(model_dir, SOURCE_JSON)
    if not os.path.isfile(source_path):
      raise ValueError(f"{model_dir} has no {SOURCE_JSON}: pass "
                       "--model_type (e.g. gemma3_text, llama, qwen2).")
    with open(source_path) as f:
      model_type = json.load(f)["model_type"]
  hf_config = hf_config_lib.config_to_hf(config, model_type)
  step_dir = (checkpoints.step_path(model_dir, step) if step is not None
              else model_dir_lib.resolve_checkpoint(model_dir))
  log(f"reading {step_dir}")
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(step_dir / "params")
  tensors = hf_weights.params_to_hf(params, config, model_type)
  del params
  vocabulary = model_dir_lib.vocabulary_file(model_dir)
  bpe = vocabulary.name == model_dir_lib.BPE_VOCABULARY_FILE
  if bpe:
    stored = json.loads(vocabulary.read_text())
    order = bpe_vocab.renumbering_of(stored)
    renumber_rows(tensors, order, undo=True)
    # The tokenizer's EOS and pad in the source's ids, which an import of
    # the export reads back.
    hf_config.update(eos_token_id=int(order[bpe_vocab.EOS_ID]),
                     pad_token_id=int(order[bpe_vocab.PAD_ID]))
  log(f"writing {output_dir}")
  safetensors_io.write_safetensors_dir(output_dir, hf_config, tensors)
  if bpe:
    with open(os.path.join(output_dir, "tokenizer.json"), "w",
              encoding="utf-8") as f:
      f.write(bpe_vocab.source_tokenizer_json(stored))
  elif vocabulary.exists():
    shutil.copyfile(vocabulary, os.path.join(output_dir, "tokenizer.model"))
  return hf_config


def _peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m trainer.convert",
      description="Import a GGUF file or transformers safetensors directory "
      "as a model directory (orbax checkpoint, model.json, vocabulary.model "
      "or vocabulary.json, model.gin, source.json), or export a model "
      "directory to safetensors.")
  parser.add_argument("--source", required=True,
                      help="a .gguf file or a transformers checkpoint "
                      "directory to import; with only --export_safetensors, "
                      "a model directory to export")
  parser.add_argument("--output_dir",
                      help="the model directory to write (import)")
  parser.add_argument("--name", help="the model's name, e.g. gemma3_270m "
                      "(import; recorded in model.gin and source.json)")
  parser.add_argument("--export_safetensors", metavar="DIR",
                      help="also (or, without --output_dir: only) write a "
                      "transformers directory (config.json, "
                      "model.safetensors, tokenizer.model or tokenizer.json)")
  parser.add_argument("--model_type", help="transformers model_type of the "
                      "export when the model directory has no source.json")
  parser.add_argument("--no_vocabulary", action="store_true",
                      help="write no vocabulary (for tokenizers not "
                      "supported: the weights keep the source's ids)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a non-empty --output_dir")
  parser.add_argument("--inputs_length", type=cli.positive_int,
                      default=DEFAULT_FEATURE_LENGTHS["inputs"],
                      help="prompt token budget recorded for zero-shot "
                      "evaluation of the converted directory (default "
                      "%(default)s, the paper's)")
  parser.add_argument("--targets_length", type=cli.positive_int,
                      default=DEFAULT_FEATURE_LENGTHS["targets"],
                      help="target token budget recorded beside it "
                      "(default %(default)s)")
  args = parser.parse_args(argv)
  if args.output_dir is None and args.export_safetensors is None:
    parser.error("give --output_dir (import), --export_safetensors "
                 "(export), or both.")
  if args.output_dir is not None and not args.name:
    parser.error("--name is required with --output_dir.")
  return args


def main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  # TensorFlow (under orbax) would log its CPU and CUDA probing otherwise.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  started = time.time()
  try:
    if args.output_dir is not None:
      import_checkpoint(args.source, args.output_dir, args.name,
                        vocabulary=not args.no_vocabulary,
                        overwrite=args.overwrite,
                        task_feature_lengths={
                            "inputs": args.inputs_length,
                            "targets": args.targets_length})
      _print(f"imported {args.source} into {args.output_dir} in "
             f"{time.time() - started:.1f} s")
    if args.export_safetensors is not None:
      model_dir = args.output_dir or args.source
      export_safetensors(model_dir, args.export_safetensors,
                         model_type=args.model_type)
      _print(f"exported {model_dir} to {args.export_safetensors}")
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  _print(f"done in {time.time() - started:.1f} s, peak RSS "
         f"{_peak_rss_gb():.2f} GB")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
