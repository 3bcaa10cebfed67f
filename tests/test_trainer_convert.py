"""Tests of trainer.convert: tiny GGUF files round-tripped through a model
directory and transformers safetensors, and (slow) the real Gemma 3 270M
against transformers' outputs stored in tests/data/gemma3_270m_golden.npz."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tasks import vocab
from trainer import checkpoints
from trainer import convert
from trainer import gguf_import
from trainer import hf_config as hf_config_lib
from trainer import hf_weights
from trainer import model_dir as model_dir_lib
from trainer import models
from trainer import network
from trainer import safetensors_io

import test_trainer_gguf_import as tiny  # pylint: disable=g-bad-import-order

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
GOLDEN = REPO_ROOT / "tests" / "data" / "gemma3_270m_golden.npz"
CHECKED_IN_GIN = REPO_ROOT / "trainer" / "configs" / "models" / (
    "gemma3_270m.gin")


def tiny_gemma(path: pathlib.Path, tokenizer: str = "llama") -> pathlib.Path:
  rng = np.random.default_rng(7)
  tensors = tiny.random_block(rng, tiny.GEMMA_BLOCK, layers=2)
  return tiny.write_gguf(path, "gemma3", tensors, layers=2,
                         tokenizer=tokenizer,
                         **{"attention.sliding_window": 8,
                            "rope.freq_base": 1e6})


def restored_params(model_dir: os.PathLike[str],
                    config: network.TransformerConfig):
  """The parameters as the trainer's initial_checkpoint_path reads them."""
  model = models.CALRecModel(config)
  abstract = jax.eval_shape(lambda: models.unboxed_params(
      model.get_initial_variables(jax.random.PRNGKey(0),
                                  {"decoder_input_tokens": (1, 1)})))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      abstract)
  return checkpoints.restore_params(
      model_dir_lib.resolve_checkpoint(model_dir), abstract)


def gin_config(path: os.PathLike[str]) -> network.TransformerConfig:
  with gin.unlock_config():
    gin.clear_config()
    try:
      gin.parse_config_file(os.fspath(path))
      return network.TransformerConfig()
    finally:
      gin.clear_config()


def assert_trees_equal(a, b) -> None:
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = dict(jax.tree_util.tree_leaves_with_path(b))
  assert len(flat_a) == len(flat_b)
  for path, value in flat_a:
    np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_b[path]),
                                  err_msg=jax.tree_util.keystr(path))


def test_help_names_flags():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "trainer.convert", "--help"], cwd=REPO_ROOT,
      env=env, capture_output=True, text=True, timeout=120, check=True)
  for flag in ("--source", "--output_dir", "--name", "--export_safetensors",
               "--no_vocabulary"):
    assert flag in result.stdout


def test_gguf_import_export_round_trip(tmp_path):
  source = tiny_gemma(tmp_path / "tiny-gemma.gguf")
  model_dir = tmp_path / "model"
  lines = []

  config = convert.import_checkpoint(str(source), str(model_dir), "tiny",
                                     log=lines.append)

  assert any(line.startswith("dequantizing") for line in lines)
  hf_config, tensors = gguf_import.read_gguf(source)
  assert config == hf_config_lib.config_from_hf(hf_config)
  assert config.layer_types == ("local", "local")
  # The step a run's initial_checkpoint_path resolves to, with its params.
  step_dir = model_dir_lib.resolve_checkpoint(model_dir)
  assert step_dir == checkpoints.model_path(model_dir / "checkpoints" / "0")
  assert_trees_equal(restored_params(model_dir, config),
                     hf_weights.params_from_hf(tensors, config))
  metadata = json.loads((model_dir / "model.json").read_text())
  assert network.TransformerConfig(**metadata["network"]) == config
  assert metadata["eos_id"] == 1 and metadata["best_metric"] is None
  assert gin_config(model_dir / "model.gin") == config
  source_json = json.loads((model_dir / "source.json").read_text())
  assert source_json["sha256"] == hashlib.sha256(
      source.read_bytes()).hexdigest()
  assert source_json["size_bytes"] == source.stat().st_size
  assert (source_json["architecture"], source_json["model_type"],
          source_json["license"]) == ("gemma3", "gemma3_text", "gemma")
  vocabulary = (model_dir / "vocabulary.model").read_bytes()
  import sentencepiece  # pylint: disable=g-import-not-at-top
  processor = sentencepiece.SentencePieceProcessor(model_proto=vocabulary)
  assert processor.get_piece_size() == tiny.VOCAB

  hf_dir = tmp_path / "hf"
  convert.export_safetensors(str(model_dir), str(hf_dir), log=lines.append)
  exported_config, exported = safetensors_io.read_safetensors_dir(str(hf_dir))
  assert hf_config_lib.config_from_hf(exported_config) == config
  assert sorted(exported) == sorted(tensors)
  for name, value in tensors.items():
    # The GGUF's values: Gemma norms as transformers stores them (w, not
    # 1 + w), rows in transformers' order.
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
  assert (hf_dir / "tokenizer.model").read_bytes() == vocabulary

  again = tmp_path / "again"
  assert convert.import_checkpoint(str(hf_dir), str(again), "tiny",
                                   log=lines.append) == config
  assert_trees_equal(restored_params(again, config),
                     restored_params(model_dir, config))
  assert (again / "vocabulary.model").read_bytes() == vocabulary
  assert json.loads((again / "source.json").read_text())["license"] == "gemma"


def test_converted_dir_passes_same_network_check(tmp_path):
  # model.json holds layer_types as a JSON list, the config a tuple.
  model_dir = tmp_path / "model"
  config = convert.import_checkpoint(
      str(tiny_gemma(tmp_path / "g.gguf")), str(model_dir), "tiny",
      log=lambda line: None)
  model_dir_lib.check_same_network(
      model_dir_lib.resolve_checkpoint(model_dir), config)


def test_converted_dir_loads_for_zero_shot_evaluation(tmp_path):
  # The evaluator's loader: the recorded budget sets the prompt length, the
  # GGUF's tokenizer decodes, and BOS starts the decoder (Gemma: id 2).
  model_dir = tmp_path / "model"
  convert.import_checkpoint(
      str(tiny_gemma(tmp_path / "g.gguf")), str(model_dir), "tiny",
      task_feature_lengths={"inputs": 96, "targets": 16},
      log=lambda line: None)
  loaded = model_dir_lib.load_for_inference(model_dir)
  assert loaded.step == convert.STEP
  assert loaded.prompt_length == 97
  assert loaded.vocabulary.tokenizer.bos_id() == vocab.decoder_start_id(
      loaded.vocabulary)


def test_unsupported_byte_level_pre_refused_unless_skipped(tmp_path, capsys):
  rng = np.random.default_rng(8)
  source = tiny.write_gguf(tmp_path / "smol.gguf", "llama",
                           tiny.random_block(rng, tiny.LLAMA_BLOCK),
                           tokenizer="gpt2")
  model_dir = tmp_path / "model"
  argv = ["--source", str(source), "--output_dir", str(model_dir), "--name",
          "smol"]
  assert convert.main(argv) == 1
  error = capsys.readouterr().err.strip()
  # The file names no tokenizer.ggml.pre: llama.cpp's 'default'.
  assert "\n" not in error
  assert "tokenizer.ggml.pre 'default' is not supported; supported: " in error
  assert not model_dir.exists()

  hf_dir = tmp_path / "hf"
  assert convert.main(argv + ["--no_vocabulary", "--export_safetensors",
                              str(hf_dir)]) == 0
  assert not (model_dir / "vocabulary.model").exists()
  out = capsys.readouterr().out
  assert "peak RSS" in out and "imported" in out
  exported_config, exported = safetensors_io.read_safetensors_dir(str(hf_dir))
  assert exported_config["model_type"] == "llama"
  _, tensors = gguf_import.read_gguf(source)
  for name, value in tensors.items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)

  # A safetensors directory with neither tokenizer, or another one.
  with pytest.raises(ValueError, match=r"neither tokenizer\.model "
                     r"\(SentencePiece\) nor tokenizer\.json"):
    convert.read_source(str(hf_dir), log=lambda line: None)
  (hf_dir / "tokenizer.json").write_text('{"model": {"type": "Unigram"}}')
  with pytest.raises(ValueError, match=r"not a byte-level BPE tokenizer "
                     r"\(model type 'Unigram'\)"):
    convert.read_source(str(hf_dir), log=lambda line: None)

  assert convert.main(argv) == 1
  assert "not empty" in capsys.readouterr().err


def test_renumber_rows_moves_embedding_and_output_rows_and_back():
  rng = np.random.default_rng(3)
  # 6 token ids, 8 rows (padded vocabulary); pad is id 4, EOS id 2.
  order = np.array([4, 2, 0, 3, 1, 5])
  tensors = {name: rng.normal(size=(8, 3)).astype(np.float32)
             for name in ("model.embed_tokens.weight", "lm_head.weight",
                          "model.norm.weight")}
  source = {name: value.copy() for name, value in tensors.items()}
  convert.renumber_rows(tensors, order)
  for name in ("model.embed_tokens.weight", "lm_head.weight"):
    np.testing.assert_array_equal(tensors[name][:6], source[name][order])
    np.testing.assert_array_equal(tensors[name][6:], source[name][6:])
  np.testing.assert_array_equal(tensors["model.norm.weight"],
                                source["model.norm.weight"])
  convert.renumber_rows(tensors, order, undo=True)
  for name, value in source.items():
    np.testing.assert_array_equal(tensors[name], value, err_msg=name)


def test_model_dir_stores_and_finds_a_byte_level_vocabulary(tmp_path):
  from pipelines import run_dir  # pylint: disable=g-import-not-at-top
  from tasks import bpe_vocab  # pylint: disable=g-import-not-at-top
  import test_tasks_bpe_vocab  # pylint: disable=g-import-not-at-top
  path = tmp_path / "tiny.json"
  path.write_text(bpe_vocab.vocabulary_json_from_gguf(
      test_tasks_bpe_vocab.tiny_gguf(tmp_path / "tiny.gguf")),
                  encoding="utf-8")
  vocabulary = vocab.get_vocabulary(path)
  model = models.CALRecModel(network.TransformerConfig())
  model_dir = tmp_path / "model"
  model_dir_lib.write_model_metadata(model_dir, model, vocabulary,
                                     {"inputs": 40, "targets": 8},
                                     best_metric=None, best_mode="min")
  assert (model_dir / "vocabulary.json").read_bytes() == path.read_bytes()
  assert not (model_dir / "vocabulary.model").exists()
  found = model_dir_lib.vocabulary_file(model_dir)
  assert found.name == "vocabulary.json"
  made_from = model_dir_lib.training_made_from(model, vocabulary,
                                               {"inputs": 40, "targets": 8})
  assert made_from["vocabulary"] == run_dir.file_digest(os.fspath(found))
  (model_dir / "vocabulary.model").write_bytes(b"")
  with pytest.raises(ValueError, match="has both vocabulary.model and "
                     "vocabulary.json"):
    model_dir_lib.vocabulary_file(model_dir)


# ---------------------------------------------------------------------------
# SmolLM2 135M's byte-level BPE (slow: converts the real file).


@pytest.mark.slow
def test_smollm2_import_renumbers_rows_and_export_restores_them(tmp_path):
  from pipelines import run_dir  # pylint: disable=g-import-not-at-top
  from tasks import bpe_vocab  # pylint: disable=g-import-not-at-top
  source = tiny.smollm2_gguf_path()
  model_dir = tmp_path / "smollm2"
  config = convert.import_checkpoint(str(source), str(model_dir), "smollm2",
                                     log=lambda line: None)
  vocabulary_file = model_dir_lib.vocabulary_file(model_dir)
  assert vocabulary_file.name == "vocabulary.json"
  assert not (model_dir / "vocabulary.model").exists()
  assert json.loads((model_dir / "model.json").read_text())["eos_id"] == 1
  stored = json.loads(vocabulary_file.read_text())
  order = bpe_vocab.renumbering_of(stored)
  assert list(order[:3]) == [0, 2, 1]

  _, tensors = gguf_import.read_gguf(source)
  dequantized = tensors["model.embed_tokens.weight"]
  embedding = np.asarray(
      restored_params(model_dir, config)["embedding"]["embedding"])
  # Row i of the converted embedding is row order[i] of the file's.
  np.testing.assert_array_equal(embedding[:len(order)], dequantized[order])
  np.testing.assert_array_equal(embedding[1], dequantized[2])

  # The evaluator's loader and the resume digest see vocabulary.json.
  loaded = model_dir_lib.load_for_inference(model_dir)
  newline = loaded.vocabulary.encode("a\nb")[1]
  assert newline in loaded.model.stop_ids and 1 in loaded.model.stop_ids
  made_from = model_dir_lib.training_made_from(
      loaded.model, loaded.vocabulary, loaded.task_feature_lengths)
  assert made_from["vocabulary"] == run_dir.file_digest(
      os.fspath(vocabulary_file))

  hf_dir = tmp_path / "hf"
  convert.export_safetensors(str(model_dir), str(hf_dir),
                             log=lambda line: None)
  _, exported = safetensors_io.read_safetensors_dir(str(hf_dir))
  np.testing.assert_array_equal(exported["model.embed_tokens.weight"],
                                dequantized)
  tokenizers = pytest.importorskip("tokenizers")
  exported_tokenizer = tokenizers.Tokenizer.from_file(
      str(hf_dir / "tokenizer.json"))
  text = "<|im_start|>user\nA $25 gift card, 2 pack.<|im_end|>"
  assert exported_tokenizer.encode(text).ids == [
      int(order[i]) for i in loaded.vocabulary.encode(text)]
  assert exported_tokenizer.token_to_id("<|im_end|>") == 2

  # The export imports back to the same vocabulary and rows.
  again = tmp_path / "again"
  convert.import_checkpoint(str(hf_dir), str(again), "smollm2",
                            log=lambda line: None)
  assert (again / "vocabulary.json").read_bytes() == (
      vocabulary_file.read_bytes())
  np.testing.assert_array_equal(
      restored_params(again, config)["embedding"]["embedding"], embedding)


# ---------------------------------------------------------------------------
# The real Gemma 3 270M (slow: about 1.5 min to convert on 2 cores).


@pytest.fixture(scope="module")
def converted_gemma(tmp_path_factory):
  source = tiny.gemma_gguf_path()
  model_dir = tmp_path_factory.mktemp("gemma3_270m")
  started = time.time()
  config = convert.import_checkpoint(str(source), str(model_dir),
                                     "gemma3_270m", overwrite=True,
                                     log=lambda line: None)
  print(f"converted in {time.time() - started:.1f} s")
  return model_dir, config


@pytest.mark.slow
def test_checked_in_gin_is_what_convert_writes(converted_gemma):
  model_dir, config = converted_gemma

  def bindings(path):
    return [line for line in pathlib.Path(path).read_text().splitlines()
            if line and not line.startswith("#")]

  assert bindings(CHECKED_IN_GIN) == bindings(model_dir / "model.gin")
  assert gin_config(CHECKED_IN_GIN) == config


def _greedy(decoder, params, prompt, steps):
  """Greedy decoding by re-running the prefix (no cache): plain and exact."""
  length = len(prompt)
  tokens = np.zeros((1, length + steps), np.int32)
  tokens[0, :length] = prompt

  @jax.jit
  def next_logits(params, tokens, position):
    logits, _, _ = decoder.apply({"params": params}, tokens,
                                 logits_at=position[None, None])
    return logits[0, 0]

  for i in range(steps):
    logits = next_logits(params, jnp.asarray(tokens),
                         jnp.int32(length + i - 1))
    tokens[0, length + i] = int(jnp.argmax(logits))
  return tokens[0, length:]


@pytest.mark.slow
def test_converted_gemma_matches_transformers_golden(converted_gemma):
  model_dir, config = converted_gemma
  golden = np.load(GOLDEN)
  params = restored_params(model_dir, config)
  decoder = network.Decoder(config)
  # Parameters as an argument: closed over, jit would embed them as constants.
  apply = jax.jit(lambda params, tokens: decoder.apply({"params": params},
                                                       tokens)[0][0])

  import sentencepiece  # pylint: disable=g-import-not-at-top
  vocabulary = sentencepiece.SentencePieceProcessor(
      model_file=str(model_dir / "vocabulary.model"))
  worst = {}
  for i, prompt in enumerate(golden["prompts"].tolist()):
    ids = golden[f"ids_{i}"]
    # transformers' tokenizer of the same file: <bos>, then the pieces.
    assert ids[0] == 2 and vocabulary.encode(prompt) == ids[1:].tolist()
    logits = np.asarray(apply(params, jnp.asarray(ids[None])))
    ours = np.take_along_axis(logits, golden[f"topk_ids_{i}"], axis=-1)
    worst[i] = float(np.max(np.abs(ours - golden[f"topk_logits_{i}"])))
    lse = jax.nn.logsumexp(logits, axis=-1)
    np.testing.assert_allclose(lse, golden[f"logsumexp_{i}"], atol=2e-3)
    np.testing.assert_array_equal(logits.argmax(-1),
                                  golden[f"topk_ids_{i}"][:, 0])
    if i == 0:
      worst["last_position_full_vocab"] = float(np.max(np.abs(
          logits[-1] - golden["last_logits_0"])))
  print("max |logit diff| vs transformers:", worst)
  assert max(worst.values()) < 2e-3, worst

  completion = _greedy(decoder, params, golden["ids_0"], 20)
  np.testing.assert_array_equal(completion, golden["greedy_0"])
  assert vocabulary.decode(completion.tolist()) == (
      " the capital of the country of France. It is the largest city in "
      "France and the second largest city")
