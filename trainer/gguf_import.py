"""Reads GGUF checkpoints (llama.cpp's format) as Hugging Face-style weights.

`read_gguf(path)` returns `(hf_config, tensors)`: a config dict with the keys
of the model's Hugging Face `config.json`, and float32 numpy arrays under the
Hugging Face parameter names (`model.layers.0.self_attn.q_proj.weight`, ...),
so that `trainer.hf_weights` maps both GGUF files and safetensors directories
onto `trainer.network`. Architectures: `gemma3` (model_type 'gemma3_text'),
`llama` (also SmolLM2, Mistral-style files) and `qwen2`.

What llama.cpp's writer (convert_hf_to_gguf.py) changed, and this module
undoes:
- Dimensions: GGUF lists a tensor's dimensions fastest-varying first
  (`[in, out]` for a projection); the arrays here have Hugging Face's
  row-major shapes (`[out, in]`), i.e. the GGUF dimensions reversed.
- Quantization: every block type `gguf.quants.dequantize` knows (F32, F16,
  BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K, ...) is expanded to float32. The
  values are those of the quantized file, not of the original checkpoint.
- Gemma norms: Gemma's RMSNorm multiplies by `1 + weight`; the writer stores
  `1 + weight` for every tensor named `*norm.weight` (input, post-attention,
  pre- and post-feed-forward, final, and Gemma 3's per-head query/key norms),
  so 1 is subtracted here and the weights are Hugging Face's again.
- Llama rotary order: Hugging Face's Llama rotates feature pairs (i, i + d/2)
  of a head, llama.cpp's Llama kernel adjacent pairs (2i, 2i + 1); the writer
  reorders the rows of `attn_q` and `attn_k` within each head (query heads
  for q, key/value heads for k) from half-split to interleaved order. The
  rows are put back in half-split order here. Gemma and Qwen2 files use
  llama.cpp's NeoX rotary (half-split) and are stored unpermuted.
- Llama 3 rope scaling: the writer replaces `rope_scaling` (type 'llama3') by
  a `rope_freqs.weight` tensor of per-frequency divisors; the parameters are
  recovered from it (`_LLAMA3_ROPE_CANDIDATES`) and the tensor is dropped.

Values the metadata lacks (Gemma 3's query scale, sliding-window layer
pattern, local rope base, activation) come from `ARCHITECTURES`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Mapping, Optional

import gguf
import numpy as np

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Architecture:
  """How one GGUF architecture maps onto a Hugging Face model."""

  model_type: str
  hf_architecture: str
  # Hugging Face name (after 'model.layers.N.') of each GGUF block tensor
  # name (after 'blk.N.', without '.weight'/'.bias').
  block_tensors: Mapping[str, str]
  # Added by the writer to '*norm.weight' tensors; subtracted on reading.
  norm_shift: float = 0.0
  # The writer interleaved the rotary halves of attn_q / attn_k rows.
  permuted_qk: bool = False
  # attn_q/k/v carry biases.
  qkv_bias: bool = False
  # Config values the GGUF metadata does not hold.
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  # The licence of the model family, when general.license is absent.
  license: Optional[str] = None


_LLAMA_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

_GEMMA3_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_output": "self_attn.o_proj",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_ffw_norm": "post_feedforward_layernorm",
}

ARCHITECTURES: dict[str, Architecture] = {
    "gemma3": Architecture(
        model_type="gemma3_text",
        hf_architecture="Gemma3ForCausalLM",
        block_tensors=_GEMMA3_BLOCK,
        norm_shift=1.0,
        defaults={
            # Hugging Face's Gemma3TextConfig defaults, which the released
            # 270M, 1B, 4B and 12B configs keep (27B uses 168: pass it to
            # read_gguf's overrides).
            "query_pre_attn_scalar": 256,
            # Every 6th layer global, the others sliding-window.
            "sliding_window_pattern": 6,
            "rope_local_base_freq": 10_000.0,
            "hidden_activation": "gelu_pytorch_tanh",
            "final_logit_softcapping": None,
            "attn_logit_softcapping": None,
            "attention_bias": False,
        },
        license="gemma"),
    "llama": Architecture(
        model_type="llama",
        hf_architecture="LlamaForCausalLM",
        block_tensors=_LLAMA_BLOCK,
        permuted_qk=True,
        defaults={"hidden_act": "silu", "attention_bias": False,
                  "mlp_bias": False}),
    "qwen2": Architecture(
        model_type="qwen2",
        hf_architecture="Qwen2ForCausalLM",
        block_tensors=_LLAMA_BLOCK,
        qkv_bias=True,
        defaults={"hidden_act": "silu", "use_sliding_window": False}),
}

# Llama 3 rope settings to try against a file's rope_freqs tensor:
# (low_freq_factor, high_freq_factor, original_max_position_embeddings); the
# factor is the largest divisor in the tensor. Meta's Llama 3.1, 3.2 and 3.3
# all use these.
_LLAMA3_ROPE_CANDIDATES = ((1.0, 4.0, 8192),)


_CHUNK_ROWS = 8192


def _float32(value: Any) -> float:
  """A float32 metadata value as the shortest decimal that rounds to it
  (1e-06, not 9.999999974752427e-07)."""
  return float(repr(np.float32(value)).removeprefix("np.float32(").rstrip(")"))


def _field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def _llama3_divisors(head_dim: int, base: float, factor: float, low: float,
                     high: float, original: int) -> np.ndarray:
  """llama.cpp's rope_freqs for Llama 3 scaling: what each frequency is
  divided by."""
  frequencies = base**(-np.arange(0, head_dim, 2, dtype=np.float64) /
                       head_dim)
  wavelengths = 2 * math.pi / frequencies
  smooth = (original / wavelengths - low) / (high - low)
  divisors = 1.0 / ((1 - smooth) / factor + smooth)
  divisors = np.where(wavelengths < original / high, 1.0, divisors)
  return np.where(wavelengths > original / low, factor, divisors)


def _llama3_rope_scaling(divisors: np.ndarray, head_dim: int,
                         base: float) -> dict[str, Any]:
  factor = float(divisors.max())
  for low, high, original in _LLAMA3_ROPE_CANDIDATES:
    expected = _llama3_divisors(head_dim, base, factor, low, high, original)
    if expected.shape == divisors.shape and np.allclose(expected, divisors,
                                                        rtol=1e-4):
      return {"rope_type": "llama3", "factor": factor,
              "low_freq_factor": low, "high_freq_factor": high,
              "original_max_position_embeddings": original}
  raise ValueError(
      "The GGUF's rope_freqs tensor matches no known Llama 3 rope scaling "
      f"(tried {_LLAMA3_ROPE_CANDIDATES} as (low, high, original) factors).")


def describe_gguf(path: str | os.PathLike[str],
                  reader: Optional[gguf.GGUFReader] = None) -> dict[str, Any]:
  """Metadata of a GGUF file: architecture, name, licence, tensor types.

  `reader`, when given, is the file's open reader (opening one parses all
  metadata: about 20 s for Gemma 3's 262,144 tokens).
  """
  reader = reader or gguf.GGUFReader(path)
  architecture = _field(reader, "general.architecture")
  known = ARCHITECTURES.get(architecture)
  return {
      "architecture": architecture,
      "name": _field(reader, "general.name"),
      "license": _field(reader, "general.license",
                        known.license if known else None),
      "tensor_types": describe_types(reader.tensors),
      "tokenizer_model": _field(reader, "tokenizer.ggml.model"),
  }


def _architecture(reader: gguf.GGUFReader, path: Any) -> tuple[str,
                                                              Architecture]:
  name = _field(reader, "general.architecture")
  if name not in ARCHITECTURES:
    raise ValueError(f"{path}: GGUF architecture {name!r} is not supported; "
                     f"supported: {', '.join(sorted(ARCHITECTURES))}.")
  return name, ARCHITECTURES[name]


def _config(reader: gguf.GGUFReader, name: str, arch: Architecture,
            tensor_names: set[str], path: Any) -> dict[str, Any]:
  """The Hugging Face config of the file's metadata and `arch.defaults`."""

  def required(key: str) -> Any:
    value = _field(reader, f"{name}.{key}")
    if value is None:
      raise ValueError(f"{path}: GGUF metadata lacks {name}.{key}.")
    return value

  hidden = int(required("embedding_length"))
  heads = int(required("attention.head_count"))
  kv_heads = _field(reader, f"{name}.attention.head_count_kv", heads)
  if not isinstance(kv_heads, int):
    raise ValueError(f"{path}: per-layer key/value head counts {kv_heads} "
                     "are not supported.")
  head_dim = int(_field(reader, f"{name}.attention.key_length",
                        hidden // heads))
  value_dim = _field(reader, f"{name}.attention.value_length", head_dim)
  if value_dim != head_dim:
    raise ValueError(f"{path}: key length {head_dim} != value length "
                     f"{value_dim} is not supported.")
  rope_dims = _field(reader, f"{name}.rope.dimension_count", head_dim)
  if rope_dims != head_dim:
    raise ValueError(f"{path}: partial rotary embedding ({rope_dims} of "
                     f"{head_dim} head dimensions) is not supported.")
  vocab_size = _field(reader, f"{name}.vocab_size")
  if vocab_size is None:
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
      raise ValueError(f"{path}: GGUF metadata has neither {name}.vocab_size"
                       " nor tokenizer.ggml.tokens.")
    vocab_size = len(tokens.data)
  config: dict[str, Any] = {
      "architectures": [arch.hf_architecture],
      "model_type": arch.model_type,
      "vocab_size": int(vocab_size),
      "hidden_size": hidden,
      "intermediate_size": int(required("feed_forward_length")),
      "num_hidden_layers": int(required("block_count")),
      "num_attention_heads": heads,
      "num_key_value_heads": int(kv_heads),
      "head_dim": head_dim,
      "max_position_embeddings": int(_field(reader, f"{name}.context_length",
                                            2048)),
      "rms_norm_eps": _float32(required("attention.layer_norm_rms_epsilon")),
      "rope_theta": _float32(_field(reader, f"{name}.rope.freq_base",
                                    10_000.0)),
      "rope_scaling": None,
      "tie_word_embeddings": "output.weight" not in tensor_names,
  }
  for key, hf_key in (("bos_token_id", "bos_token_id"),
                      ("eos_token_id", "eos_token_id"),
                      ("padding_token_id", "pad_token_id")):
    value = _field(reader, f"tokenizer.ggml.{key}")
    if value is not None:
      config[hf_key] = int(value)
  sliding_window = _field(reader, f"{name}.attention.sliding_window")
  if sliding_window is not None:
    config["sliding_window"] = int(sliding_window)

  scaling_type = _field(reader, f"{name}.rope.scaling.type")
  if scaling_type not in (None, "none"):
    config["rope_scaling"] = {
        "rope_type": scaling_type,
        "factor": _float32(required("rope.scaling.factor"))}
    original = _field(reader, f"{name}.rope.scaling.original_context_length")
    if original is not None:
      config["rope_scaling"]["original_max_position_embeddings"] = int(
          original)

  defaults = dict(arch.defaults)
  pattern = defaults.pop("sliding_window_pattern", None)
  config.update(defaults)
  if pattern is not None:
    config["layer_types"] = [
        "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
        for i in range(config["num_hidden_layers"])]
  return config


def _expected_shapes(config: Mapping[str, Any],
                     arch: Architecture) -> dict[str, tuple[int, ...]]:
  """Hugging Face name -> shape of every tensor the model has."""
  hidden, mlp = config["hidden_size"], config["intermediate_size"]
  head_dim = config["head_dim"]
  q_dim = config["num_attention_heads"] * head_dim
  kv_dim = config["num_key_value_heads"] * head_dim
  block = {
      "input_layernorm": (hidden,),
      "self_attn.q_proj": (q_dim, hidden),
      "self_attn.k_proj": (kv_dim, hidden),
      "self_attn.v_proj": (kv_dim, hidden),
      "self_attn.q_norm": (head_dim,),
      "self_attn.k_norm": (head_dim,),
      "self_attn.o_proj": (hidden, q_dim),
      "post_attention_layernorm": (hidden,),
      "pre_feedforward_layernorm": (hidden,),
      "post_feedforward_layernorm": (hidden,),
      "mlp.gate_proj": (mlp, hidden),
      "mlp.up_proj": (mlp, hidden),
      "mlp.down_proj": (hidden, mlp),
  }
  shapes = {"model.embed_tokens.weight": (config["vocab_size"], hidden),
            "model.norm.weight": (hidden,)}
  if not config["tie_word_embeddings"]:
    shapes["lm_head.weight"] = (config["vocab_size"], hidden)
  for layer in range(config["num_hidden_layers"]):
    for hf_name in arch.block_tensors.values():
      prefix = f"model.layers.{layer}.{hf_name}"
      shapes[f"{prefix}.weight"] = block[hf_name]
      if arch.qkv_bias and hf_name in ("self_attn.q_proj", "self_attn.k_proj",
                                       "self_attn.v_proj"):
        shapes[f"{prefix}.bias"] = block[hf_name][:1]
  return shapes


def _hf_name(gguf_name: str, arch: Architecture) -> Optional[str]:
  """The Hugging Face name of a GGUF tensor (None if it has none)."""
  top = {"token_embd.weight": "model.embed_tokens.weight",
         "output_norm.weight": "model.norm.weight",
         "output.weight": "lm_head.weight"}
  if gguf_name in top:
    return top[gguf_name]
  parts = gguf_name.split(".")
  if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and (
      parts[3] in ("weight", "bias")) and parts[2] in arch.block_tensors:
    return (f"model.layers.{parts[1]}.{arch.block_tensors[parts[2]]}."
            f"{parts[3]}")
  return None


def _gguf_name(hf_name: str, arch: Architecture) -> str:
  """The GGUF name of a Hugging Face tensor name (inverse of `_hf_name`)."""
  top = {"model.embed_tokens.weight": "token_embd.weight",
         "model.norm.weight": "output_norm.weight",
         "lm_head.weight": "output.weight"}
  if hf_name in top:
    return top[hf_name]
  _, _, layer, rest = hf_name.split(".", 3)
  module, kind = rest.rsplit(".", 1)
  block = {hf: g for g, hf in arch.block_tensors.items()}
  return f"blk.{layer}.{block[module]}.{kind}"


def unpermute_rotary_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
  """llama.cpp's interleaved rotary row order -> Hugging Face's half-split.

  Within each head of `d` rows, row 2i + j (j in {0, 1}) of the GGUF tensor
  is row i + j * d/2 of the Hugging Face one.
  """
  rows = weight.shape[0]
  per_head = rows // num_heads
  if per_head * num_heads != rows or per_head % 2:
    raise ValueError(f"Cannot split {rows} rows into {num_heads} heads of an "
                     "even size.")
  split = weight.reshape(num_heads, per_head // 2, 2, *weight.shape[1:])
  return split.swapaxes(1, 2).reshape(weight.shape)


def permute_rotary_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
  """The inverse of `unpermute_rotary_rows` (as llama.cpp's writer does)."""
  rows = weight.shape[0]
  split = weight.reshape(num_heads, 2, rows // num_heads // 2,
                         *weight.shape[1:])
  return split.swapaxes(1, 2).reshape(weight.shape)


def _dequantize(tensor: Any, shape: tuple[int, ...]) -> np.ndarray:
  """A reader tensor as a new float32 array of `shape`, in row chunks (the
  block decoders' temporaries of a 262k-row embedding would take GBs)."""
  data = tensor.data
  out = np.empty(shape, np.float32)
  flat = out.reshape(data.shape[0] if data.ndim > 1 else 1, -1)
  rows = data if data.ndim > 1 else data[None]
  for start in range(0, rows.shape[0], _CHUNK_ROWS):
    chunk = gguf.quants.dequantize(np.asarray(rows[start:start +
                                                   _CHUNK_ROWS]),
                                   tensor.tensor_type)
    flat[start:start + _CHUNK_ROWS] = chunk.reshape(chunk.shape[0], -1)
  return out


def read_gguf(path: str | os.PathLike[str],
              log: Optional[Log] = None,
              reader: Optional[gguf.GGUFReader] = None,
              **overrides: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Reads a GGUF checkpoint as a Hugging Face config and float32 tensors.

  Args:
    path: a .gguf file.
    log: called with a progress line (reading, dequantizing) when given.
    reader: the file's open `gguf.GGUFReader`, if the caller has one.
    **overrides: config values that replace what the metadata and
      `ARCHITECTURES` give (e.g. query_pre_attn_scalar=168 for Gemma 3 27B).

  Returns:
    (config dict with Hugging Face config.json keys, {Hugging Face parameter
    name: float32 array in Hugging Face's shape}).

  Raises:
    ValueError: an unsupported architecture or rope scaling, or a tensor that
      is missing, unknown or of another shape than the config implies.
  """
  log = log or (lambda line: None)
  if reader is None:
    log(f"reading {os.fspath(path)}")
    reader = gguf.GGUFReader(path)
  name, arch = _architecture(reader, path)
  by_name = {tensor.name: tensor for tensor in reader.tensors}
  config = _config(reader, name, arch, set(by_name), path)
  config.update(overrides)
  expected = _expected_shapes(config, arch)

  tensors: dict[str, np.ndarray] = {}
  rope_freqs = by_name.pop("rope_freqs.weight", None)
  unknown = [n for n in by_name if _hf_name(n, arch) not in expected]
  if unknown:
    raise ValueError(f"{path}: unexpected tensor {unknown[0]} for a {name} "
                     f"model of this config ({len(unknown)} unexpected).")
  by_hf_name = {_hf_name(n, arch): t for n, t in by_name.items()}
  missing = [n for n in expected if n not in by_hf_name]
  if missing:
    raise ValueError(f"{path}: missing tensor {_gguf_name(missing[0], arch)} "
                     f"({missing[0]}); {len(missing)} missing.")

  log(f"dequantizing {len(by_hf_name)} tensors "
      f"({describe_types(reader.tensors)})")
  for hf_name, shape in expected.items():
    tensor = by_hf_name[hf_name]
    stored = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    if stored != shape:
      raise ValueError(f"{path}: tensor {tensor.name} has shape {stored} "
                       f"(GGUF order reversed), expected {shape}.")
    values = _dequantize(tensor, shape)
    if arch.norm_shift and hf_name.endswith("norm.weight"):
      values -= np.float32(arch.norm_shift)
    if arch.permuted_qk and hf_name.endswith("q_proj.weight"):
      values = unpermute_rotary_rows(values, config["num_attention_heads"])
    elif arch.permuted_qk and hf_name.endswith("k_proj.weight"):
      values = unpermute_rotary_rows(values, config["num_key_value_heads"])
    tensors[hf_name] = values

  if rope_freqs is not None:
    divisors = np.array(gguf.quants.dequantize(rope_freqs.data,
                                               rope_freqs.tensor_type),
                        dtype=np.float64).reshape(-1)
    if "rope_scaling" not in overrides:
      config["rope_scaling"] = _llama3_rope_scaling(
          divisors, config["head_dim"], config["rope_theta"])
  return config, tensors


def describe_types(tensors: Any) -> str:
  """'F32 109, Q5_0 81, ...': the tensor types of GGUF reader tensors."""
  counts: dict[str, int] = {}
  for tensor in tensors:
    counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
  return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(),
                                                 key=lambda kv: -kv[1]))
