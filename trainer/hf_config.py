"""Hugging Face config.json <-> `trainer.network.TransformerConfig`.

Gemma 3 ('gemma3_text', or 'gemma3' with a text_config), Llama-family
('llama'), Qwen2/Qwen2.5 ('qwen2') and Mistral ('mistral') decoders: each
config.json key a checkpoint may omit takes transformers' default for its
model_type (`HF_DEFAULTS`), and `config_to_hf` refuses a config the
architecture cannot express. `trainer.hf_weights` maps the tensors.
"""

from __future__ import annotations

from typing import Any, Mapping

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
