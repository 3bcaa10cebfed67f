"""Hugging Face tensors <-> the `trainer.network.Decoder` parameter tree.

Maps transformers' safetensors tensors of the decoders `trainer.hf_config`
knows onto the parameters of `network.Decoder`, and back; files are read and
written by `trainer.safetensors_io`.

Conventions that make the mapping a plain relabelling:
- torch Linear weights are [out, in]; our kernels are [in, ...out] with heads
  split out: q_proj [H*D, E] -> query kernel [E, H, D], o_proj [E, H*D] -> out
  kernel [H, D, E].
- Our rope rotates feature pairs (i, i + d/2), as transformers' rotate_half
  does, so query and key weights need no permutation.
- Gemma's RMSNorm stores w and applies (1 + w); Gemma configs set
  `norm_scale_offset=1.0`, so our scale equals the stored weight. Norm weights
  are copied as stored: `params_from_hf` assumes the config came from
  `hf_config.config_from_hf` (whose offset is the architecture's convention).
- Llama names the pre-MLP norm 'post_attention_layernorm'; Gemma uses that
  name for the norm after attention and has 'pre_feedforward_layernorm'.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from trainer import hf_config
from trainer import network

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
    config: the decoder config, e.g. from `hf_config.config_from_hf`.

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
    ValueError: `hf_config.config_to_hf` refuses the config, or the tree lacks a
      parameter or has one of the wrong shape.
  """
  hf_config.config_to_hf(config, model_type)  # Refuses configs HF cannot express.
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
