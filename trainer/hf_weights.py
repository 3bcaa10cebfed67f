"""Hugging Face checkpoints <-> `trainer.network` configs and parameters.

Maps transformers' config.json and safetensors tensors of Gemma 3
('gemma3_text', or 'gemma3' with a text_config), Llama-family ('llama'),
Qwen2/Qwen2.5 ('qwen2') and Mistral ('mistral') decoders onto
`network.TransformerConfig` and the `network.Decoder` parameter tree, and back.

Conventions that make the mapping a plain relabelling:
- torch Linear weights are [out, in]; our kernels are [in, ...out] with heads
  split out: q_proj [H*D, E] -> query kernel [E, H, D], o_proj [E, H*D] -> out
  kernel [H, D, E].
- Our rope rotates feature pairs (i, i + d/2), as transformers' rotate_half
  does, so query and key weights need no permutation.
- Gemma's RMSNorm stores w and applies (1 + w); Gemma configs set
  `norm_scale_offset=1.0`, so our scale equals the stored weight. Norm weights
  are copied as stored: `params_from_hf` assumes the config came from
  `config_from_hf` (whose offset is the architecture's convention).
- Llama names the pre-MLP norm 'post_attention_layernorm'; Gemma uses that
  name for the norm after attention and has 'pre_feedforward_layernorm'.
"""

from __future__ import annotations

import json
import os
import re
import struct
from typing import Any, Iterable, Mapping, Optional

import ml_dtypes
import numpy as np

from trainer import network

SUPPORTED_MODEL_TYPES = ("gemma3_text", "gemma3", "llama", "qwen2", "mistral")

# What transformers assumes for config.json keys a checkpoint may omit, per
# model_type (its config classes' defaults). "num_key_value_heads": None and
# "head_dim": None mean num_attention_heads and hidden_size /
# num_attention_heads. Keys every config.json carries (vocab_size,
# hidden_size, intermediate_size, num_hidden_layers, num_attention_heads) have
# no default here: a config without them is refused.
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma3_text": {
        "num_key_value_heads": 4,
        "head_dim": 256,
        "rms_norm_eps": 1e-6,
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "sliding_window_pattern": 6,
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "use_bidirectional_attention": False,
    },
    "llama": {
        "num_key_value_heads": None,
        "head_dim": None,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "rope_theta": 10_000.0,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
    },
    "qwen2": {
        "num_key_value_heads": None,
        "head_dim": None,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "rope_theta": 10_000.0,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "max_window_layers": 28,
    },
    "mistral": {
        "num_key_value_heads": 8,
        "head_dim": None,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "rope_theta": 10_000.0,
        "tie_word_embeddings": False,
        "sliding_window": 4096,
    },
}

_ARCHITECTURES = {
    "gemma3_text": "Gemma3ForCausalLM",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
}
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size",
             "num_hidden_layers", "num_attention_heads")
_ACTIVATIONS = {"silu": "silu", "swish": "silu",
                "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}
_HF_LAYER_TYPES = {"sliding_attention": "local", "full_attention": "global"}
# Fields that do not change what a config computes.
_RUNTIME_FIELDS = ("dropout_rate", "dtype", "attention_implementation",
                   "remat")


def _unsupported(model_type: str) -> ValueError:
  return ValueError(f"Unsupported model_type {model_type!r}; supported: "
                    f"{', '.join(SUPPORTED_MODEL_TYPES)}.")


def _rope(section: Mapping[str, Any], theta_default: float,
          where: str) -> tuple[float, dict[str, Any]]:
  """(rope base, TransformerConfig rope-scaling fields) of one rope section."""
  if section.get("partial_rotary_factor", 1.0) != 1.0:
    raise ValueError(f"{where}: partial_rotary_factor is not supported.")
  theta = float(section.get("rope_theta", theta_default))
  kind = section.get("rope_type", section.get("type", "default"))
  if kind in (None, "default"):
    return theta, {}
  if kind == "linear":
    return theta, {"rope_scaling_type": "linear",
                   "rope_scaling_factor": float(section["factor"])}
  if kind == "llama3":
    return theta, {
        "rope_scaling_type": "llama3",
        "rope_scaling_factor": float(section["factor"]),
        "rope_low_freq_factor": float(section["low_freq_factor"]),
        "rope_high_freq_factor": float(section["high_freq_factor"]),
        "rope_original_max_position": int(
            section["original_max_position_embeddings"]),
    }
  raise ValueError(f"{where}: rope type {kind!r} is not supported (default, "
                   "linear, llama3).")


def _legacy_rope(hf: Mapping[str, Any], theta_key: str) -> dict[str, Any]:
  """A rope section from the pre-rope_parameters keys of config.json."""
  section = dict(hf.get("rope_scaling") or {})
  if theta_key in hf:
    section["rope_theta"] = hf[theta_key]
  return section


def config_from_hf(hf_config: Mapping[str, Any],
                   **overrides: Any) -> network.TransformerConfig:
  """The TransformerConfig of a transformers config.json dict.

  Args:
    hf_config: config.json as a dict (either rope format: 'rope_parameters',
      or the older 'rope_theta' / 'rope_scaling' / 'rope_local_base_freq').
    **overrides: TransformerConfig fields to set on top (e.g. dtype, remat).

  Returns:
    The config; keys the dict omits take `HF_DEFAULTS[model_type]`.

  Raises:
    ValueError: an unsupported model_type or feature (logit soft-capping,
      attention output bias, yarn rope, ...), or a missing required key.
  """
  model_type = hf_config.get("model_type")
  hf = dict(hf_config)
  if model_type == "gemma3":
    if "text_config" not in hf:
      raise ValueError("A 'gemma3' config.json needs a text_config.")
    text = dict(hf["text_config"] or {})
    if "tie_word_embeddings" not in text and "tie_word_embeddings" in hf:
      text["tie_word_embeddings"] = hf["tie_word_embeddings"]
    hf, model_type = text, "gemma3_text"
  if model_type not in HF_DEFAULTS:
    raise _unsupported(model_type)
  hf = {**HF_DEFAULTS[model_type], **hf}
  missing = [key for key in _REQUIRED if key not in hf]
  if missing:
    raise ValueError(f"{model_type} config.json lacks {', '.join(missing)}.")
  heads = int(hf["num_attention_heads"])
  layers = int(hf["num_hidden_layers"])
  activation = hf.get("hidden_activation") or hf.get("hidden_act")
  if activation not in _ACTIVATIONS:
    raise ValueError(f"Activation {activation!r} is not supported "
                     f"({', '.join(_ACTIVATIONS)}).")
  fields: dict[str, Any] = {
      "vocab_size": int(hf["vocab_size"]),
      "emb_dim": int(hf["hidden_size"]),
      "num_heads": heads,
      "num_kv_heads": int(hf["num_key_value_heads"] or heads),
      "head_dim": int(hf["head_dim"] or hf["hidden_size"] // heads),
      "mlp_dim": int(hf["intermediate_size"]),
      "num_layers": layers,
      "norm_epsilon": float(hf["rms_norm_eps"]),
      "mlp_activation": _ACTIVATIONS[activation],
      "logit_scaling": False,
      "tie_embedding": bool(hf["tie_word_embeddings"]),
  }
  if model_type == "gemma3_text":
    fields.update(_gemma3_fields(hf, layers))
  else:
    fields.update(_llama_family_fields(hf, model_type, layers))
  fields.update(overrides)
  return network.TransformerConfig(**fields)


def _gemma3_fields(hf: Mapping[str, Any], layers: int) -> dict[str, Any]:
  """Gemma 3's fields: (1 + w) norms, post and q/k norms, scaled embedding,
  query scale, sliding-window local layers with their own rope base."""
  rope_parameters = hf.get("rope_parameters")
  for key in ("attn_logit_softcapping", "final_logit_softcapping"):
    if hf[key] is not None:
      raise ValueError(f"{key} is not supported.")
  if hf["attention_bias"]:
    raise ValueError("attention_bias is not supported for gemma3_text.")
  if hf["use_bidirectional_attention"]:
    raise ValueError("use_bidirectional_attention is not supported.")
  if hf.get("layer_types"):
    layer_types = [_HF_LAYER_TYPES[kind] for kind in hf["layer_types"]]
  else:
    pattern = int(hf.get("_sliding_window_pattern") or
                  hf["sliding_window_pattern"])
    layer_types = ["local" if (i + 1) % pattern else "global"
                   for i in range(layers)]
  if rope_parameters:
    global_section = rope_parameters.get("full_attention") or {}
    local_section = rope_parameters.get("sliding_attention") or {}
  else:
    global_section = _legacy_rope(hf, "rope_theta")
    local_section = {"rope_theta": hf["rope_local_base_freq"]}
  theta, scaling = _rope(global_section, hf["rope_theta"], "full_attention")
  local_theta, local_scaling = _rope(local_section,
                                     hf["rope_local_base_freq"],
                                     "sliding_attention")
  if local_scaling:
    raise ValueError("Rope scaling of sliding-attention layers is not "
                     "supported.")
  return dict(
      norm_scale_offset=1.0, post_norms=True, qk_norm=True,
      scale_embedding=True,
      query_scale=float(hf["query_pre_attn_scalar"])**-0.5,
      sliding_window=int(hf["sliding_window"]),
      layer_types=tuple(layer_types), rope_max_wavelength=theta,
      local_rope_max_wavelength=local_theta, **scaling)


def _llama_family_fields(hf: Mapping[str, Any], model_type: str,
                         layers: int) -> dict[str, Any]:
  """Llama, Mistral and Qwen2's fields: rope (and its scaling), Qwen2's q/k/v
  biases, sliding-window layers where the config enables them."""
  rope_parameters = hf.get("rope_parameters")
  if hf.get("attention_bias") or hf.get("mlp_bias"):
    raise ValueError(f"{model_type}: attention_bias / mlp_bias (biases on "
                     "the output and MLP projections) are not supported.")
  section = (rope_parameters if rope_parameters else
             _legacy_rope(hf, "rope_theta"))
  theta, scaling = _rope(section, hf["rope_theta"], model_type)
  window = None
  layer_types: list[str] = []
  if model_type == "qwen2":
    if hf.get("layer_types"):
      layer_types = [_HF_LAYER_TYPES[kind] for kind in hf["layer_types"]]
    elif hf["use_sliding_window"]:
      layer_types = ["local" if i >= hf["max_window_layers"] else "global"
                     for i in range(layers)]
    if hf["use_sliding_window"]:
      window = hf["sliding_window"]
  elif model_type == "mistral" and hf["sliding_window"] is not None:
    window = hf["sliding_window"]
    layer_types = ["local"] * layers
  if "local" not in layer_types:
    layer_types, window = [], None
  elif scaling:
    raise ValueError(f"{model_type}: rope scaling together with "
                     "sliding-window layers is not supported.")
  return dict(qkv_bias=model_type == "qwen2", rope_max_wavelength=theta,
              local_rope_max_wavelength=theta,
              sliding_window=None if window is None else int(window),
              layer_types=tuple(layer_types), **scaling)


def _number(value: float) -> float | int:
  return int(value) if float(value).is_integer() else float(value)


def _semantics(config: network.TransformerConfig) -> dict[str, Any]:
  """The config's fields that change what it computes, normalised."""
  fields = {field: getattr(config, field)
            for field in config.__dataclass_fields__
            if field not in _RUNTIME_FIELDS}
  if fields["query_scale"] is None:
    fields["query_scale"] = config.head_dim**-0.5
  if "local" not in config.layer_types:
    fields.update(layer_types=(), sliding_window=None,
                  local_rope_max_wavelength=None)
  if config.rope_scaling_type is None:
    fields.update(rope_scaling_factor=None)
  if config.rope_scaling_type != "llama3":
    fields.update(rope_low_freq_factor=None, rope_high_freq_factor=None,
                  rope_original_max_position=None)
  return fields


def config_to_hf(config: network.TransformerConfig,
                 model_type: str) -> dict[str, Any]:
  """A transformers config.json dict for `config` as `model_type`.

  Raises:
    ValueError: an unsupported model_type, or a config that the architecture
      cannot express (e.g. logit_scaling=True, or Gemma norms as 'llama');
      the message lists the fields that differ.
  """
  if model_type not in _ARCHITECTURES:
    raise _unsupported(model_type)
  global_layers = ["full_attention" if not config.is_local(i) else
                   "sliding_attention" for i in range(config.num_layers)]
  rope_scaling = None
  if config.rope_scaling_type == "linear":
    rope_scaling = {"rope_type": "linear",
                    "factor": config.rope_scaling_factor}
  elif config.rope_scaling_type == "llama3":
    rope_scaling = {
        "rope_type": "llama3", "factor": config.rope_scaling_factor,
        "low_freq_factor": config.rope_low_freq_factor,
        "high_freq_factor": config.rope_high_freq_factor,
        "original_max_position_embeddings":
            config.rope_original_max_position,
    }
  hf: dict[str, Any] = {
      "architectures": [_ARCHITECTURES[model_type]],
      "model_type": model_type,
      "vocab_size": config.vocab_size,
      "hidden_size": config.emb_dim,
      "intermediate_size": config.mlp_dim,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim,
      "rms_norm_eps": config.norm_epsilon,
      "rope_theta": _number(config.rope_max_wavelength),
      "rope_scaling": rope_scaling,
      "tie_word_embeddings": config.tie_embedding,
      "torch_dtype": "float32",
  }
  activation = ("gelu_pytorch_tanh" if config.mlp_activation == "gelu_tanh"
                else "silu")
  if model_type == "gemma3_text":
    scale = config.query_scale or config.head_dim**-0.5
    hf.update(
        hidden_activation=activation,
        query_pre_attn_scalar=_number(round(scale**-2, 6)),
        sliding_window=config.sliding_window or HF_DEFAULTS[model_type][
            "sliding_window"],
        layer_types=global_layers,
        rope_local_base_freq=_number(config.local_rope_max_wavelength))
  else:
    hf["hidden_act"] = activation
    if model_type == "qwen2":
      local = [config.is_local(i) for i in range(config.num_layers)]
      # Older transformers know only max_window_layers: local from there up.
      first_local = local.index(True) if any(local) else config.num_layers
      hf.update(use_sliding_window=any(local),
                sliding_window=config.sliding_window,
                layer_types=global_layers if any(local) else None,
                max_window_layers=first_local)
    elif model_type == "mistral":
      hf["sliding_window"] = config.sliding_window
  expected, got = _semantics(config), _semantics(config_from_hf(hf))
  differ = sorted(key for key in expected if expected[key] != got[key])
  if differ:
    raise ValueError(
        f"{model_type} cannot express this config; differing fields: " +
        ", ".join(f"{key}={expected[key]!r}" for key in differ) + ".")
  return hf


# One tensor: HF name, our path, HF shape, and how it is laid out.
_Spec = tuple[str, tuple[str, ...], tuple[int, ...], str]


def _tensor_specs(config: network.TransformerConfig) -> list[_Spec]:
  """Every HF tensor of `config`, in the order of the parameter tree."""
  e, d, m = config.emb_dim, config.head_dim, config.mlp_dim
  h, kv, v = config.num_heads, config.num_kv_heads, config.vocab_size
  specs: list[_Spec] = [
      ("model.embed_tokens.weight", ("embedding", "embedding"), (v, e),
       "copy"),
      ("model.norm.weight", ("final_norm", "scale"), (e,), "copy"),
  ]
  if not config.tie_embedding:
    specs.append(("lm_head.weight", ("output", "kernel"), (v, e),
                  "transpose"))
  for i in range(config.num_layers):
    hf, ours = f"model.layers.{i}.", (f"layers_{i}",)
    attention = ours + ("attention",)
    norms = [("input_layernorm", "pre_attention_norm")]
    if config.post_norms:
      norms += [("post_attention_layernorm", "post_attention_norm"),
                ("pre_feedforward_layernorm", "pre_mlp_norm"),
                ("post_feedforward_layernorm", "post_mlp_norm")]
    else:
      norms.append(("post_attention_layernorm", "pre_mlp_norm"))
    specs += [(f"{hf}{name}.weight", ours + (our_name, "scale"), (e,), "copy")
              for name, our_name in norms]
    for name, our_name, heads in (("q", "query", h), ("k", "key", kv),
                                  ("v", "value", kv)):
      specs.append((f"{hf}self_attn.{name}_proj.weight",
                    attention + (our_name, "kernel"), (heads * d, e),
                    f"split_out:{heads}"))
      if config.qkv_bias:
        specs.append((f"{hf}self_attn.{name}_proj.bias",
                      attention + (our_name, "bias"), (heads * d,),
                      f"split_bias:{heads}"))
    if config.qk_norm:
      specs += [(f"{hf}self_attn.q_norm.weight",
                 attention + ("query_norm", "scale"), (d,), "copy"),
                (f"{hf}self_attn.k_norm.weight",
                 attention + ("key_norm", "scale"), (d,), "copy")]
    specs += [
        (f"{hf}self_attn.o_proj.weight", attention + ("out", "kernel"),
         (e, h * d), f"split_in:{h}"),
        (f"{hf}mlp.gate_proj.weight", ours + ("mlp", "wi_gate", "kernel"),
         (m, e), "transpose"),
        (f"{hf}mlp.up_proj.weight", ours + ("mlp", "wi_up", "kernel"),
         (m, e), "transpose"),
        (f"{hf}mlp.down_proj.weight", ours + ("mlp", "wo", "kernel"),
         (e, m), "transpose"),
    ]
  return specs


def _to_ours(array: np.ndarray, layout: str) -> np.ndarray:
  kind, _, heads = layout.partition(":")
  if kind == "copy":
    return array
  if kind == "transpose":
    return array.T
  n = int(heads)
  if kind == "split_out":  # [N*D, E] -> [E, N, D]
    return array.T.reshape(array.shape[1], n, -1)
  if kind == "split_bias":  # [N*D] -> [N, D]
    return array.reshape(n, -1)
  return array.T.reshape(n, -1, array.shape[0])  # split_in: [E, N*D]


def _to_hf(array: np.ndarray, layout: str) -> np.ndarray:
  kind = layout.partition(":")[0]
  if kind == "copy":
    return array
  if kind == "transpose":
    return array.T
  if kind == "split_out":  # [E, N, D] -> [N*D, E]
    return array.reshape(array.shape[0], -1).T
  if kind == "split_bias":
    return array.reshape(-1)
  return array.reshape(-1, array.shape[-1]).T  # split_in: [N, D, E]


# Tensors a checkpoint may hold that the decoder does not use.
_IGNORED = re.compile(r"(^|\.)rotary_emb\.|^(model\.)?(vision_tower|"
                      r"multi_modal_projector)\.")
# Prefixes of the language model inside multimodal (Gemma 3) checkpoints.
_PREFIXES = (("model.language_model.", "model."),
             ("language_model.model.", "model."),
             ("language_model.lm_head.", "lm_head."))


def _canonical(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for name, array in tensors.items():
    if _IGNORED.search(name):
      continue
    for prefix, replacement in _PREFIXES:
      if name.startswith(prefix):
        name = replacement + name[len(prefix):]
        break
    out[name] = array
  return out


def params_from_hf(tensors: Mapping[str, np.ndarray],
                   config: network.TransformerConfig) -> dict[str, Any]:
  """The `network.Decoder(config)` parameter tree of HF-named tensors.

  Args:
    tensors: name -> array, as in a transformers safetensors checkpoint (any
      float dtype; multimodal Gemma 3 prefixes and vision tensors accepted).
    config: the decoder config, e.g. from `config_from_hf`.

  Returns:
    Nested dicts of float32 numpy arrays, the tree of
    `Decoder(config).init(...)['params']` without axis metadata.

  Raises:
    ValueError: a tensor missing, of the wrong shape, or left over.
  """
  tensors = _canonical(tensors)
  params: dict[str, Any] = {}
  used = set()
  for name, path, shape, layout in _tensor_specs(config):
    if name not in tensors:
      raise ValueError(f"Checkpoint lacks tensor {name} (shape {shape}).")
    array = np.asarray(tensors[name])
    if tuple(array.shape) != shape:
      raise ValueError(f"Tensor {name} has shape {tuple(array.shape)}; "
                       f"expected {shape}.")
    used.add(name)
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = np.ascontiguousarray(
        _to_ours(array.astype(np.float32), layout))
  if config.tie_embedding and "lm_head.weight" in tensors:
    # Some tied checkpoints store the output matrix too; it must be the
    # embedding.
    if not np.array_equal(np.asarray(tensors["lm_head.weight"]),
                          np.asarray(tensors["model.embed_tokens.weight"])):
      raise ValueError("lm_head.weight differs from model.embed_tokens.weight"
                       " but the config ties them (tie_embedding=True).")
    used.add("lm_head.weight")
  leftover = sorted(set(tensors) - used)
  if leftover:
    shown = ", ".join(leftover[:5]) + (", ..." if len(leftover) > 5 else "")
    raise ValueError(f"{len(leftover)} checkpoint tensors have no place in "
                     f"this config: {shown}.")
  return params


def params_to_hf(params: Mapping[str, Any], config: network.TransformerConfig,
                 model_type: str) -> dict[str, np.ndarray]:
  """HF-named float32 tensors of a parameter tree (inverse of params_from_hf).

  Raises:
    ValueError: `config_to_hf` refuses the config, or the tree lacks a
      parameter or has one of the wrong shape.
  """
  config_to_hf(config, model_type)  # Refuses configs HF cannot express.
  tensors = {}
  for name, path, shape, layout in _tensor_specs(config):
    node = params
    for key in path:
      if key not in node:
        raise ValueError(f"Parameters lack {'/'.join(path)}.")
      node = node[key]
    array = _to_hf(np.asarray(node, np.float32), layout)
    if tuple(array.shape) != shape:
      raise ValueError(f"Parameter {'/'.join(path)} gives {name} of shape "
                       f"{tuple(array.shape)}; expected {shape}.")
    tensors[name] = np.ascontiguousarray(array)
  return tensors


# safetensors dtypes; numpy has no bfloat16 or float8, ml_dtypes does.
_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """The tensors of one .safetensors file (memory-mapped, read-only)."""
  with open(path, "rb") as f:
    (header_size,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_size))
  header.pop("__metadata__", None)
  start = 8 + header_size
  data = (np.memmap(path, np.uint8, mode="r", offset=start)
          if os.path.getsize(path) > start else np.zeros(0, np.uint8))
  tensors = {}
  for name, info in header.items():
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{path}: tensor {name} has unsupported dtype "
                       f"{info['dtype']}.")
    begin, end = info["data_offsets"]
    tensors[name] = data[begin:end].view(_DTYPES[info["dtype"]]).reshape(
        info["shape"])
  return tensors


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray]) -> None:
  """Writes tensors (name order) as one .safetensors file."""
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  arrays, offset = [], 0
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    if array.dtype.byteorder == ">":
      array = array.astype(array.dtype.newbyteorder("<"))
    if array.dtype not in _DTYPE_NAMES:
      raise ValueError(f"Tensor {name} has dtype {array.dtype}, which "
                       "safetensors cannot store.")
    header[name] = {"dtype": _DTYPE_NAMES[array.dtype],
                    "shape": list(array.shape),
                    "data_offsets": [offset, offset + array.nbytes]}
    arrays.append(array)
    offset += array.nbytes
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(encoded)))
    f.write(encoded)
    for array in arrays:
      f.write(array.tobytes())


def read_safetensors_dir(
    path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config.json dict, tensors) of a transformers checkpoint directory.

  Reads model.safetensors, or the shards that model.safetensors.index.json
  names. Tensors keep their stored dtype.

  Raises:
    FileNotFoundError: no config.json, or neither weights file.
    ValueError: an index naming a tensor that its shard lacks.
  """
  config_path = os.path.join(path, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"No config.json in {path}: not a transformers "
                            "checkpoint directory.")
  with open(config_path) as f:
    hf_config = json.load(f)
  index_path = os.path.join(path, _INDEX)
  if os.path.isfile(index_path):
    with open(index_path) as f:
      weight_map = json.load(f)["weight_map"]
    tensors = {}
    for shard in sorted(set(weight_map.values())):
      shard_path = os.path.join(path, shard)
      if not os.path.isfile(shard_path):
        raise FileNotFoundError(f"{_INDEX} in {path} names {shard}, which is "
                                "missing.")
      tensors.update(read_safetensors(shard_path))
    absent = sorted(set(weight_map) - set(tensors))
    if absent:
      raise ValueError(f"{_INDEX} in {path} lists tensors its shards lack: "
                       f"{', '.join(absent[:5])}.")
    return hf_config, tensors
  single = os.path.join(path, _SINGLE)
  if not os.path.isfile(single):
    raise FileNotFoundError(f"Neither {_SINGLE} nor {_INDEX} in {path}.")
  return hf_config, read_safetensors(single)


def _shards(tensors: Mapping[str, np.ndarray],
            max_shard_bytes: Optional[int]) -> list[list[str]]:
  """Names grouped in order into shards of at most max_shard_bytes (a tensor
  larger than that gets a shard of its own)."""
  shards: list[list[str]] = [[]]
  size = 0
  for name in sorted(tensors):
    nbytes = np.asarray(tensors[name]).nbytes
    if (max_shard_bytes is not None and shards[-1] and
        size + nbytes > max_shard_bytes):
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += nbytes
  return shards


def _remove(paths: Iterable[str]) -> None:
  for stale in paths:
    if os.path.isfile(stale):
      os.remove(stale)


def write_safetensors_dir(path: str, hf_config: Mapping[str, Any],
                          tensors: Mapping[str, np.ndarray],
                          max_shard_bytes: Optional[int] = None) -> None:
  """Writes a checkpoint directory that transformers' from_pretrained loads.

  Args:
    path: the directory (created if needed); weights files left there by an
      earlier write are replaced.
    hf_config: written as config.json.
    tensors: HF-named arrays, e.g. from `params_to_hf`.
    max_shard_bytes: None writes model.safetensors; otherwise shards
      model-0000i-of-0000n.safetensors of at most this size (a larger tensor
      alone) with model.safetensors.index.json, even when one shard suffices.
  """
  os.makedirs(path, exist_ok=True)
  _remove([os.path.join(path, name) for name in os.listdir(path)
           if name in (_INDEX, _SINGLE) or _SHARD.fullmatch(name)])
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(dict(hf_config), f, indent=2, sort_keys=True)
    f.write("\n")
  if max_shard_bytes is None:
    write_safetensors(os.path.join(path, _SINGLE), tensors)
    return
  shards = _shards(tensors, max_shard_bytes)
  weight_map = {}
  for number, names in enumerate(shards, start=1):
    shard = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
    write_safetensors(os.path.join(path, shard),
                      {name: tensors[name] for name in names})
    weight_map.update({name: shard for name in names})
  total = sum(np.asarray(array).nbytes for array in tensors.values())
  with open(os.path.join(path, _INDEX), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
              f, indent=2, sort_keys=True)
    f.write("\n")
