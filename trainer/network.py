"""A decoder-only Transformer LM in flax linen (the LLM of paper section 3).

The paper fine-tunes pretrained PaLM-2 XXS; these models start from random
initialisation (README, "Where this implementation departs from the paper").

PaLM/Llama-style blocks: pre-RMSNorm, rotary positions, grouped-query attention
(multi-query when `num_kv_heads == 1`), SwiGLU MLP, tied input/output embedding.
Attention is causal over the whole sequence, prompt included, as in PaLM-2.
Switches in `TransformerConfig` (all off by default) make the same network
represent pretrained Gemma 3, Llama-family and Qwen2 decoders exactly
(`trainer.hf_weights` maps their checkpoints): Gemma's (1 + w) norms, GeGLU,
post-norms, query/key norms, scaled embeddings and interleaved sliding-window
layers; Qwen2's query/key/value biases; Llama 3's rope scaling; untied output.
`lora_rank` > 0 adds LoRA adapters to the attention and MLP kernels for
parameter-efficient fine-tuning of such a pretrained model.

Parameters and activations carry logical axis names ('batch', 'length',
'embed', 'heads', 'kv_heads', 'kv', 'mlp', 'vocab') that
`trainer.partitioning` maps onto a ('data', 'model') mesh. Projections and
norms come from `trainer.layers`, attention and its key/value caches from
`trainer.attention`; the modules here bind them to a `TransformerConfig`.

The decoder runs on full sequences (training, scoring), or cached (prefill
and sampling, `trainer.decoding`) with `init_cache`, or with
`shared_prefix_cache` when several samples share a prompt (paper section
3.5).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from trainer import attention
from trainer import layers

Array = jax.Array
# One `attention.LayerCache` per layer: global layers' hold cache_length
# slots, local (sliding-window) layers' a ring of min(cache_length,
# sliding_window) slots.
Cache = list[attention.LayerCache]

MLP_ACTIVATIONS = ("silu", "gelu_tanh")
LAYER_TYPES = ("global", "local")
ROPE_SCALING_TYPES = (None, "linear", "llama3")
# The DenseGeneral modules LoRA may adapt: attention's projections and the
# gated MLP's three kernels.
LORA_TARGETS = ("query", "key", "value", "out", "wi_gate", "wi_up", "wo")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Sizes and numerics of the decoder, set in gin (configs/models/*.gin)."""

  vocab_size: int = 2048
  emb_dim: int = 128
  num_heads: int = 4
  num_kv_heads: int = 1
  head_dim: int = 32
  mlp_dim: int = 512
  num_layers: int = 2
  dropout_rate: float = 0.0
  # Activation dtype; parameters are always kept in float32.
  dtype: str = "float32"
  # Rope base of global layers (all layers unless `layer_types` says 'local').
  rope_max_wavelength: float = 10_000.0
  # None lets jax pick; 'cudnn' selects the fused kernel on GPUs.
  attention_implementation: Optional[str] = None
  # Rematerialise each layer in the backward pass (saves activation memory).
  remat: bool = False

  # Switches for pretrained architectures; the defaults are the model above.
  # Epsilon of every RMSNorm.
  norm_epsilon: float = 1e-6
  # RMSNorm multiplies by (offset + scale). Gemma stores w and applies
  # (1 + w): offset 1.0 (scales then initialised to 0).
  norm_scale_offset: float = 0.0
  # Gated-MLP activation: 'silu' (SwiGLU: PaLM, Llama, Qwen2) or 'gelu_tanh'
  # (GeGLU with the tanh-approximate GELU: Gemma).
  mlp_activation: str = "silu"
  # Gemma 2/3: RMSNorm on the attention and the MLP outputs before each
  # residual add ('post_attention_norm', 'post_mlp_norm').
  post_norms: bool = False
  # Gemma 3: RMSNorm over head_dim on queries and keys before rope.
  qk_norm: bool = False
  # Qwen2: biases on the query, key and value projections.
  qkv_bias: bool = False
  # Gemma: token embeddings multiplied by sqrt(emb_dim).
  scale_embedding: bool = False
  # Multiplier of query-key dot products; None is 1/sqrt(head_dim). Gemma 3:
  # query_pre_attn_scalar**-0.5.
  query_scale: Optional[float] = None
  # Divide the tied-embedding logits by sqrt(emb_dim) (keeps the logits of a
  # randomly initialised model at unit scale); False for pretrained models.
  logit_scaling: bool = True
  # False: a separate output kernel [emb_dim, vocab] ('output') instead of the
  # transposed embedding (Llama 3 8B, larger Qwen2.5).
  tie_embedding: bool = True
  # Window of local layers: a query at position q attends to keys at
  # positions q - sliding_window + 1 .. q (transformers' definition).
  sliding_window: Optional[int] = None
  # 'global' or 'local' per layer; empty means all global. Gemma 3: five local
  # layers, then one global; Mistral: all local; Qwen2 optionally the top ones.
  layer_types: tuple[str, ...] = ()
  # Rope base of local layers (Gemma 3: 1e4 while global layers use 1e6).
  local_rope_max_wavelength: float = 10_000.0
  # Rope frequency scaling: None, 'linear' (frequencies / factor: Gemma 3 4B
  # and larger) or 'llama3' (Llama 3.1+: only low frequencies scaled, smooth
  # in between). Applied to global layers only (all layers when none is
  # local), as transformers does for Gemma 3.
  rope_scaling_type: Optional[str] = None
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_position: int = 8192

  # LoRA (low-rank adaptation, Hu et al. 2021) of the `lora_targets`
  # DenseGenerals of every layer: y = x W + (lora_alpha / lora_rank) x A B
  # with A [in, rank] small random and B [rank, out] zero, so a fresh LoRA
  # model computes what its base does. 0: no LoRA parameters. Freeze the rest
  # with train_lib.create_optimizer.frozen_params (configs/peft/lora.gin).
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = LORA_TARGETS

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
          f"({self.num_kv_heads}).")
    if self.head_dim % 2:
      raise ValueError(f"head_dim ({self.head_dim}) must be even for rotary "
                       "position embeddings.")
    if self.mlp_activation not in MLP_ACTIVATIONS:
      raise ValueError(f"mlp_activation {self.mlp_activation!r} is not one of "
                       f"{MLP_ACTIVATIONS}.")
    # gin passes lists; a tuple keeps the config hashable.
    object.__setattr__(self, "layer_types", tuple(self.layer_types))
    object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
    if self.lora_rank < 0:
      raise ValueError(f"lora_rank must be >= 0 (0: no LoRA), got "
                       f"{self.lora_rank}.")
    unknown = [name for name in self.lora_targets if name not in LORA_TARGETS]
    if unknown:
      raise ValueError(f"lora_targets {unknown} are not among {LORA_TARGETS}.")
    if self.layer_types:
      if len(self.layer_types) != self.num_layers:
        raise ValueError(
            f"layer_types has {len(self.layer_types)} entries; num_layers is "
            f"{self.num_layers}.")
      unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
      if unknown:
        raise ValueError(f"layer_types {unknown} are not one of {LAYER_TYPES}.")
    if "local" in self.layer_types and (self.sliding_window is None or
                                        self.sliding_window < 1):
      raise ValueError("Local layers need a positive sliding_window, got "
                       f"{self.sliding_window}.")
    if self.rope_scaling_type not in ROPE_SCALING_TYPES:
      raise ValueError(f"rope_scaling_type {self.rope_scaling_type!r} is not "
                       f"one of {ROPE_SCALING_TYPES}.")
    if self.rope_scaling_type == "llama3" and not (
        self.rope_high_freq_factor > self.rope_low_freq_factor):
      raise ValueError("llama3 rope scaling needs rope_high_freq_factor > "
                       "rope_low_freq_factor.")

  @property
  def activation_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  def is_local(self, layer: int) -> bool:
    """Whether layer `layer` attends within the sliding window only."""
    return bool(self.layer_types) and self.layer_types[layer] == "local"

  def lora_rank_of(self, name: str) -> int:
    """The LoRA rank of the DenseGeneral `name` of a layer (0: none)."""
    return self.lora_rank if name in self.lora_targets else 0

  @property
  def lora_scale(self) -> float:
    """alpha / rank, the multiplier of the LoRA product."""
    return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

  def num_lora_params(self) -> int:
    """Parameters of LoRA's A and B matrices, all layers."""
    query = self.num_heads * self.head_dim
    key_value = self.num_kv_heads * self.head_dim
    # (fan-in, fan-out) of each target.
    sizes = {"query": (self.emb_dim, query), "key": (self.emb_dim, key_value),
             "value": (self.emb_dim, key_value), "out": (query, self.emb_dim),
             "wi_gate": (self.emb_dim, self.mlp_dim),
             "wi_up": (self.emb_dim, self.mlp_dim),
             "wo": (self.mlp_dim, self.emb_dim)}
    return self.num_layers * sum(
        self.lora_rank_of(name) * (fan_in + fan_out)
        for name, (fan_in, fan_out) in sizes.items())

  def num_params(self) -> int:
    """Parameter count (embedding counted once when tied; LoRA included)."""
    attention_params = self.emb_dim * self.head_dim * (
        2 * self.num_heads + 2 * self.num_kv_heads)
    if self.qkv_bias:
      attention_params += self.head_dim * (
          self.num_heads + 2 * self.num_kv_heads)
    if self.qk_norm:
      attention_params += 2 * self.head_dim
    mlp = 3 * self.emb_dim * self.mlp_dim
    norms = (4 if self.post_norms else 2) * self.emb_dim
    output = 0 if self.tie_embedding else self.emb_dim * self.vocab_size
    return (self.vocab_size * self.emb_dim + self.emb_dim + output +
            self.num_layers * (attention_params + mlp + norms) +
            self.num_lora_params())


def _norm(cfg: TransformerConfig, name: str, axis_name: str = "embed"
         ) -> layers.RMSNorm:
  return layers.RMSNorm(cfg.activation_dtype, cfg.norm_epsilon,
                        cfg.norm_scale_offset, axis_name, name=name)


class Attention(nn.Module):
  """Grouped-query self-attention, rotary positions, an optional cache.

  Projects, normalises and rotates queries and keys as `config` says, then
  `attention.attend`s. A local layer (`local`) attends to the last
  `config.sliding_window` positions only, and its cache is a ring of that
  many slots.
  """

  config: TransformerConfig
  local: bool = False

  @nn.compact
  def __call__(self, x: Array, positions: Array,
               cache: Optional[attention.LayerCache],
               lengths: Optional[Array] = None,
              ) -> tuple[Array, Optional[attention.LayerCache]]:
    cfg = self.config
    dtype = cfg.activation_dtype

    def projection(name, heads, head_axis):
      return layers.DenseGeneral(
          (heads, cfg.head_dim), ("embed", head_axis, "kv"), dtype=dtype,
          use_bias=cfg.qkv_bias, lora_rank=cfg.lora_rank_of(name),
          lora_scale=cfg.lora_scale, name=name)(x)

    query = projection("query", cfg.num_heads, "heads")
    key = projection("key", cfg.num_kv_heads, "kv_heads")
    value = projection("value", cfg.num_kv_heads, "kv_heads")
    query = layers.constrain(query, ("batch", "length", "heads", "kv"))
    if cfg.qk_norm:
      query = _norm(cfg, "query_norm", "kv")(query)
      key = _norm(cfg, "key_norm", "kv")(key)
    # Local layers have their own rope base; rope scaling is global layers'.
    inverse_frequency = attention.rope_inverse_frequency(
        cfg.head_dim, (cfg.local_rope_max_wavelength if self.local else
                       cfg.rope_max_wavelength),
        scaling_type=None if self.local else cfg.rope_scaling_type,
        scaling_factor=cfg.rope_scaling_factor,
        low_freq_factor=cfg.rope_low_freq_factor,
        high_freq_factor=cfg.rope_high_freq_factor,
        original_max_position=cfg.rope_original_max_position)
    query = attention.apply_rotary(query, positions, cfg.rope_max_wavelength,
                                   inverse_frequency)
    key = attention.apply_rotary(key, positions, cfg.rope_max_wavelength,
                                 inverse_frequency)
    attended, new_cache = attention.attend(
        query, key, value, positions, cache, lengths,
        window=cfg.sliding_window if self.local else None,
        scale=cfg.query_scale, implementation=cfg.attention_implementation)
    attended = layers.constrain(attended, ("batch", "length", "heads", "kv"))
    out = layers.DenseGeneral((cfg.emb_dim,), ("heads", "kv", "embed"),
                              num_contracted=2, dtype=dtype,
                              lora_rank=cfg.lora_rank_of("out"),
                              lora_scale=cfg.lora_scale, name="out")(attended)
    return out, new_cache


class GatedMLP(nn.Module):
  """Gated feed-forward block: SwiGLU, or GeGLU (tanh GELU) for Gemma."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype

    def dense(name, features, names):
      return layers.DenseGeneral((features,), names, dtype=dtype,
                                 lora_rank=cfg.lora_rank_of(name),
                                 lora_scale=cfg.lora_scale, name=name)

    gate = dense("wi_gate", cfg.mlp_dim, ("embed", "mlp"))(x)
    up = dense("wi_up", cfg.mlp_dim, ("embed", "mlp"))(x)
    if cfg.mlp_activation == "gelu_tanh":
      gate = jax.nn.gelu(gate, approximate=True)
    else:
      gate = nn.silu(gate)
    hidden = layers.constrain(gate * up, ("batch", "length", "mlp"))
    return dense("wo", cfg.emb_dim, ("mlp", "embed"))(hidden)


class DecoderLayer(nn.Module):
  """Pre-norm residual block: attention, then gated MLP.

  With `config.post_norms` (Gemma), each block's output is normalised again
  before its residual add.
  """

  config: TransformerConfig
  deterministic: bool = True
  local: bool = False

  @nn.compact
  def __call__(self, x: Array, positions: Array,
               cache: Optional[attention.LayerCache],
               lengths: Optional[Array] = None,
              ) -> tuple[Array, Optional[attention.LayerCache]]:
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)
    attended, new_cache = Attention(cfg, self.local, name="attention")(
        _norm(cfg, "pre_attention_norm")(x), positions, cache, lengths)
    if cfg.post_norms:
      attended = _norm(cfg, "post_attention_norm")(attended)
    x = x + dropout(attended)
    mlp_out = GatedMLP(cfg, name="mlp")(_norm(cfg, "pre_mlp_norm")(x))
    if cfg.post_norms:
      mlp_out = _norm(cfg, "post_mlp_norm")(mlp_out)
    x = x + dropout(mlp_out)
    return layers.constrain(x, ("batch", "length", "embed")), new_cache


class Decoder(nn.Module):
  """Token ids -> (logits, final hidden states, updated cache)."""

  config: TransformerConfig

  @nn.compact
  def __call__(
      self,
      tokens: Array,
      positions: Optional[Array] = None,
      cache: Optional[Cache] = None,
      *,
      deterministic: bool = True,
      logits_at: Optional[Array] = None,
      compute_logits: bool = True,
      lengths: Optional[Array] = None,
  ) -> tuple[Optional[Array], Array, Optional[Cache]]:
    """Runs the decoder.

    Args:
      tokens: [B, T] int token ids.
      positions: [B, T] absolute positions; defaults to 0..T-1. In cached mode
        each row's positions must be consecutive.
      cache: per-layer key/value cache (see `init_cache`, and
        `shared_prefix_cache` for samples sharing a prompt's), or None for
        plain causal attention over `tokens`.
      deterministic: disables dropout.
      logits_at: optional [B, K] positions; logits are then computed only
        there (shape [B, K, V]), which saves the output projection and the
        softmax elsewhere (training needs them on target positions only).
      compute_logits: False skips the output projection (logits is None).
      lengths: optional [B] count of real (not padding) tokens per row of a
        cached call; local layers' ring caches store only those, so that
        right-padding a prefill does not evict the window that later steps
        need. None: all T tokens are real.

    Returns:
      (logits [B, T, V] (or [B, K, V]) float32 or None, final hidden states
      [B, T, E] after the final norm, updated cache or None).
    """
    cfg = self.config
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    embedding = nn.Embed(
        num_embeddings=cfg.vocab_size, features=cfg.emb_dim,
        dtype=cfg.activation_dtype, param_dtype=jnp.float32,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
        name="embedding")
    x = embedding(tokens.astype(jnp.int32))
    if cfg.scale_embedding:
      # In the activation dtype, as transformers' Gemma does (bfloat16
      # rounds sqrt(E)).
      x = x * jnp.asarray(math.sqrt(cfg.emb_dim), cfg.activation_dtype)
    x = nn.Dropout(cfg.dropout_rate, deterministic=deterministic)(x)
    x = layers.constrain(x, ("batch", "length", "embed"))

    layer_cls = nn.remat(DecoderLayer) if cfg.remat else DecoderLayer
    new_cache = [] if cache is not None else None
    for index in range(cfg.num_layers):
      x, layer_cache = layer_cls(
          cfg, deterministic=deterministic, local=cfg.is_local(index),
          name=f"layers_{index}")(
              x, positions, None if cache is None else cache[index], lengths)
      if cache is not None:
        new_cache.append(layer_cache)
    hidden = _norm(cfg, "final_norm")(x)

    logits = None
    if compute_logits:
      projected = hidden
      if logits_at is not None:
        projected = jnp.take_along_axis(hidden, logits_at[:, :, None],
                                        axis=1)
      if cfg.tie_embedding:
        logits = embedding.attend(projected).astype(jnp.float32)
      else:
        logits = layers.DenseGeneral(
            (cfg.vocab_size,), ("embed", "vocab"), dtype=cfg.activation_dtype,
            name="output")(projected).astype(jnp.float32)
      if cfg.logit_scaling:
        # 1/sqrt(E) keeps initial logits at unit scale.
        logits = logits / jnp.sqrt(jnp.float32(cfg.emb_dim))
      logits = layers.constrain(logits, ("batch", "length", "vocab"))
    return logits, hidden, new_cache


def init_cache(config: TransformerConfig, batch_size: int,
               cache_length: int) -> Cache:
  """An empty key/value cache for `batch_size` sequences.

  Global layers get `cache_length` slots; local layers a ring of
  min(cache_length, sliding_window) slots with their positions (-1: empty).
  """
  cache = []
  for index in range(config.num_layers):
    slots = cache_length
    if config.is_local(index):
      slots = min(cache_length, config.sliding_window)
    cache.append(attention.empty_cache(
        batch_size, slots, config.num_kv_heads, config.head_dim,
        config.activation_dtype, ring=config.is_local(index)))
  return cache


def shared_prefix_cache(config: TransformerConfig, prompt_cache: Cache,
                        lengths: Array, num_samples: int,
                        suffix_length: int) -> Cache:
  """The cache of `num_samples` samples per prompt sharing one prompt cache.

  The cascade layout of paper section 3.5's N_gen samples: the prefilled
  `prompt_cache` (`init_cache` of B rows, then a cached call with `lengths`)
  is kept once as each layer's 'prefix', and every sample (row b *
  num_samples + n) gets a ring of its own for the tokens it generates:
  `suffix_length` slots (min(suffix_length, sliding_window) for local layers).
  Decoding with it (same positions as with `num_samples` copies of the
  prompt cache) gives the same attention.

  Args:
    config: the decoder's config.
    prompt_cache: the prompt's cache, [B, slots, ...] per layer.
    lengths: [B] real prompt tokens per row; later global slots are padding.
    num_samples: samples per prompt.
    suffix_length: tokens each sample generates at most.
  """
  cache = []
  for index, layer in enumerate(prompt_cache):
    suffix_slots = suffix_length
    if config.is_local(index):
      suffix_slots = min(suffix_length, config.sliding_window)
    cache.append(attention.shared_prefix(layer, lengths, num_samples,
                                         suffix_slots))
  return cache
