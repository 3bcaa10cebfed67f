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
`trainer.partitioning` maps onto a ('data', 'model') mesh.

The decoder runs in two modes:
- full sequences (training, scoring): causal attention over `tokens`;
- cached (prefill and sampling, `trainer.decoding`): keys and values are
  written into a fixed-size per-layer cache at each example's own positions and
  queries attend to cache slots at or before their position. Sliding-window
  ('local') layers keep only their window: a ring buffer of `sliding_window`
  slots indexed by position mod window, with the position held in each slot.
- shared-prefix sampling (`shared_prefix_cache`, paper section 3.5): several
  samples per prompt read one copy of the prompt's cache and keep their own
  cache of generated tokens only; each query's attention is one softmax over
  the scores of both.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

Array = jax.Array
# One dict per layer with 'keys' and 'values', each [batch, slots,
# num_kv_heads, head_dim]: cache_length slots for global layers; for local
# (sliding-window) layers min(cache_length, sliding_window) slots used as a
# ring, plus 'positions' [batch, slots] int32, each slot's position (-1: empty).
# A shared-prefix cache (`shared_prefix_cache`) holds, per layer, 'prefix': the
# prompt's keys, values and positions [batch, prefix slots] (-1: padding),
# read by all samples of the row, and 'keys', 'values', 'positions' [batch *
# samples, suffix slots]: each sample's generated tokens, as a ring.
Cache = list[dict[str, Any]]

MLP_ACTIVATIONS = ("silu", "gelu_tanh")
LAYER_TYPES = ("global", "local")
ROPE_SCALING_TYPES = (None, "linear", "llama3")
# The DenseGeneral modules LoRA may adapt: attention's projections and the
# gated MLP's three kernels.
LORA_TARGETS = ("query", "key", "value", "out", "wi_gate", "wi_up", "wo")
# Names of the LoRA parameters (`DenseGeneral`); frozen_params patterns and
# checkpoint restoring recognise LoRA parameters by them.
LORA_PARAMS = ("lora_a", "lora_b")


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
    attention = self.emb_dim * self.head_dim * (
        2 * self.num_heads + 2 * self.num_kv_heads)
    if self.qkv_bias:
      attention += self.head_dim * (self.num_heads + 2 * self.num_kv_heads)
    if self.qk_norm:
      attention += 2 * self.head_dim
    mlp = 3 * self.emb_dim * self.mlp_dim
    norms = (4 if self.post_norms else 2) * self.emb_dim
    output = 0 if self.tie_embedding else self.emb_dim * self.vocab_size
    return (self.vocab_size * self.emb_dim + self.emb_dim + output +
            self.num_layers * (attention + mlp + norms) +
            self.num_lora_params())


def _constrain(x: Array, names: Sequence[Optional[str]]) -> Array:
  return nn.with_logical_constraint(x, tuple(names))


class DenseGeneral(nn.Module):
  """Contracts the last `num_contracted` axes of x with a named kernel.

  The kernel has shape x.shape[-num_contracted:] + features, logical axes
  `kernel_axes`, and a truncated-normal init scaled by its fan-in. With
  `use_bias`, a zero-initialised 'bias' of shape `features` (logical axes the
  kernel's last ones) is added.

  With `lora_rank` r > 0, `lora_scale` * x A B is added (LoRA): 'lora_a' of
  shape contracted + (r,) (the kernel's input axes, then 'lora_rank'),
  initialised like the kernel, and 'lora_b' of shape (r,) + features
  ('lora_rank', then the kernel's output axes), initialised to zero.
  """

  features: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  num_contracted: int = 1
  dtype: Any = jnp.float32
  use_bias: bool = False
  lora_rank: int = 0
  lora_scale: float = 0.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    contracted = tuple(x.shape[-self.num_contracted:])
    shape = contracted + tuple(self.features)
    init = nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal",
        in_axis=tuple(range(self.num_contracted)),
        out_axis=tuple(range(self.num_contracted, len(shape))))
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(init, self.kernel_axes), shape,
        jnp.float32)
    x_axes = tuple(range(x.ndim - self.num_contracted, x.ndim))
    y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype),
                      axes=(x_axes, tuple(range(self.num_contracted))))
    if self.use_bias:
      bias = self.param(
          "bias",
          nn.with_logical_partitioning(
              nn.initializers.zeros,
              self.kernel_axes[self.num_contracted:]),
          tuple(self.features), jnp.float32)
      y = y + bias.astype(self.dtype)
    if self.lora_rank:
      y = y + self._lora(x, x_axes)
    return y

  def _lora(self, x: Array, x_axes: tuple[int, ...]) -> Array:
    """lora_scale * x A B, in the activation dtype."""
    contracted = tuple(x.shape[-self.num_contracted:])
    rank_axis = ("lora_rank",)
    a_init = nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal",
        in_axis=tuple(range(self.num_contracted)), out_axis=-1)
    lora_a = self.param(
        "lora_a", nn.with_logical_partitioning(
            a_init, self.kernel_axes[:self.num_contracted] + rank_axis),
        contracted + (self.lora_rank,), jnp.float32)
    lora_b = self.param(
        "lora_b", nn.with_logical_partitioning(
            nn.initializers.zeros,
            rank_axis + self.kernel_axes[self.num_contracted:]),
        (self.lora_rank,) + tuple(self.features), jnp.float32)
    low = jnp.tensordot(x.astype(self.dtype), lora_a.astype(self.dtype),
                        axes=(x_axes, tuple(range(self.num_contracted))))
    low = low * jnp.asarray(self.lora_scale, self.dtype)
    return jnp.tensordot(low, lora_b.astype(self.dtype), axes=((-1,), (0,)))


class RMSNorm(nn.Module):
  """Root-mean-square layer norm with a learned scale.

  The output is normalised x times (scale_offset + scale), computed in
  float32; Gemma's convention is scale_offset 1.0 with scale initialised to 0.
  """

  dtype: Any = jnp.float32
  epsilon: float = 1e-6
  scale_offset: float = 0.0
  axis_name: str = "embed"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param(
        "scale", nn.with_logical_partitioning(
            nn.initializers.constant(1.0 - self.scale_offset),
            (self.axis_name,)),
        (x.shape[-1],), jnp.float32)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) +
                          self.epsilon)
    if self.scale_offset:
      scale = self.scale_offset + scale
    return (x * scale).astype(self.dtype)


def _norm(cfg: TransformerConfig, name: str, axis_name: str = "embed"
         ) -> RMSNorm:
  return RMSNorm(cfg.activation_dtype, cfg.norm_epsilon, cfg.norm_scale_offset,
                 axis_name, name=name)


def rope_inverse_frequency(config: TransformerConfig, local: bool) -> Array:
  """Inverse frequencies [head_dim / 2] of a global or local layer's rope.

  Feature pair (i, i + d/2) turns by position * base**(-2i/d), base being
  `rope_max_wavelength` (global) or `local_rope_max_wavelength` (local).
  Rope scaling applies to global layers only.
  """
  half = config.head_dim // 2
  base = (config.local_rope_max_wavelength if local else
          config.rope_max_wavelength)
  inverse_frequency = base**(-jnp.arange(half, dtype=jnp.float32) / half)
  if local or config.rope_scaling_type is None:
    return inverse_frequency
  factor = config.rope_scaling_factor
  if config.rope_scaling_type == "linear":
    return inverse_frequency / factor
  # 'llama3': wavelengths above original_max / low_freq_factor are stretched
  # by the factor, those below original_max / high_freq_factor are kept, and
  # those between interpolate linearly in original_max / wavelength.
  wavelength = 2 * math.pi / inverse_frequency
  ratio = config.rope_original_max_position / wavelength
  smooth = ((ratio - config.rope_low_freq_factor) /
            (config.rope_high_freq_factor - config.rope_low_freq_factor))
  smooth = jnp.clip(smooth, 0.0, 1.0)
  return (1 - smooth) * inverse_frequency / factor + smooth * inverse_frequency


def apply_rotary(x: Array, positions: Array, max_wavelength: float,
                 inverse_frequency: Optional[Array] = None) -> Array:
  """Rotates feature pairs (i, i + d/2) of x [B, T, N, d] by position angles.

  The pairing equals transformers' rotate_half, so Hugging Face query and key
  weights need no permutation. `inverse_frequency` [d/2], when given,
  replaces the plain frequencies of `max_wavelength`.
  """
  half = x.shape[-1] // 2
  if inverse_frequency is None:
    inverse_frequency = max_wavelength**(
        -jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions[..., None].astype(jnp.float32) * inverse_frequency
  sin = jnp.sin(angles)[:, :, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate(
      [first * cos - second * sin, second * cos + first * sin], axis=-1)
  return rotated.astype(x.dtype)


def _write_cache(cache: Array, update: Array, start: Array) -> Array:
  """Writes update [B, T, ...] into cache [B, S, ...] at per-example start."""

  def write_one(cache_row, update_row, start_row):
    indices = (start_row,) + (0,) * (cache_row.ndim - 1)
    return jax.lax.dynamic_update_slice(cache_row,
                                        update_row.astype(cache_row.dtype),
                                        indices)

  return jax.vmap(write_one)(cache, update, start)


def _write_ring(cache: dict[str, Array], key: Array, value: Array,
                positions: Array, lengths: Array) -> dict[str, Array]:
  """Writes the first `lengths` tokens of key/value into a ring cache.

  Token t of row b (position positions[b, t], consecutive along t) goes to
  slot position mod slots; where several tokens share a slot the latest wins.
  """
  slots = cache["keys"].shape[1]
  start = positions[:, :1]
  slot = jnp.arange(slots)[None, :]
  # The earliest token index that maps to each slot, then the latest one
  # below `lengths` (lengths [B, 1]).
  first = (slot - start) % slots
  written = first < lengths
  latest = first + (lengths - 1 - first) // slots * slots
  latest = jnp.where(written, latest, 0)

  def gather(update, old):
    picked = jnp.take_along_axis(update, latest[:, :, None, None], axis=1)
    return jnp.where(written[:, :, None, None], picked.astype(old.dtype), old)

  return {
      "keys": gather(key, cache["keys"]),
      "values": gather(value, cache["values"]),
      "positions": jnp.where(
          written, jnp.take_along_axis(positions, latest, axis=1),
          cache["positions"]).astype(jnp.int32),
  }


def _shared_prefix_attention(query: Array, key: Array, value: Array,
                             positions: Array, cache: dict[str, Any],
                             window: Optional[int],
                             scale: Optional[float]) -> Array:
  """Attention of sampled tokens over a shared prompt and their own tokens.

  Rows r = b * samples + n of query [R, T, H, d] (sample n of prompt b) attend
  to three key sets: the prompt's cache `cache['prefix']` [B, Sp, K, d], read
  once for all samples of b (their queries are batched together, as in
  Hydragen); the row's earlier generated tokens `cache['keys']` [R, Ss, K, d];
  and this call's key [R, T, K, d] (causally). One float32 softmax runs over
  the concatenated scores, so the result equals attention over one cache
  holding all of them (paper section 3.5). A key is visible when its
  position is at or before the query's and, with a `window`, within it.

  Returns:
    [R, T, H, d] in the query's dtype.
  """
  rows, length, num_heads, head_dim = query.shape
  prefix = cache["prefix"]
  batch, _, num_kv_heads, _ = prefix["keys"].shape
  samples = rows // batch
  groups = num_heads // num_kv_heads
  dtype = query.dtype
  if scale is None:
    scale = 1.0 / math.sqrt(head_dim)

  def per_prompt(x):  # [R, ...] -> [B, N, ...]
    return x.reshape((batch, samples) + x.shape[1:])

  grouped = per_prompt(query).reshape(batch, samples, length, num_kv_heads,
                                      groups, head_dim)
  query_positions = per_prompt(positions)[:, :, :, None]  # [B, N, T, 1]

  def visible(key_positions):  # [B, N or 1, 1 or T, S] -> [B, N, T, S]
    mask = (key_positions >= 0) & (key_positions <= query_positions)
    if window is not None:
      mask &= key_positions > query_positions - window
    return mask

  start = per_prompt(positions[:, :1])[:, :, :, None]  # [B, N, 1, 1]
  suffix_positions = per_prompt(cache["positions"])[:, :, None, :]
  masks = [
      visible(prefix["positions"][:, None, None, :]),
      visible(jnp.where(suffix_positions < start, suffix_positions, -1)),
      visible(per_prompt(positions)[:, :, None, :]),
  ]
  keys = [prefix["keys"], per_prompt(cache["keys"]), per_prompt(key)]
  values = [prefix["values"], per_prompt(cache["values"]), per_prompt(value)]
  equations = ["bntkgd,bskd->bnkgts", "bntkgd,bnskd->bnkgts",
               "bntkgd,bnskd->bnkgts"]
  large_negative = jnp.float32(-0.7 * jnp.finfo(jnp.float32).max)
  scores = []
  for equation, keys_part, mask in zip(equations, keys, masks):
    part = jnp.einsum(equation, grouped, keys_part.astype(dtype),
                      preferred_element_type=jnp.float32) * scale
    scores.append(jnp.where(mask[:, :, None, None], part, large_negative))
  sizes = [part.shape[-1] for part in scores]
  probs = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1)
  probs = jnp.split(probs.astype(dtype), [sizes[0], sizes[0] + sizes[1]],
                    axis=-1)
  out_equations = ["bnkgts,bskd->bntkgd", "bnkgts,bnskd->bntkgd",
                   "bnkgts,bnskd->bntkgd"]
  attended = sum(
      jnp.einsum(equation, part, values_part.astype(dtype),
                 preferred_element_type=jnp.float32)
      for equation, part, values_part in zip(out_equations, probs, values))
  return attended.astype(dtype).reshape(rows, length, num_heads, head_dim)


class Attention(nn.Module):
  """Grouped-query self-attention, rotary positions, an optional cache.

  A local layer (`local`) attends to the last `config.sliding_window`
  positions only, and its cache is a ring of that many slots.
  """

  config: TransformerConfig
  local: bool = False

  @nn.compact
  def __call__(self, x: Array, positions: Array,
               cache: Optional[dict[str, Array]],
               lengths: Optional[Array] = None,
              ) -> tuple[Array, Optional[dict[str, Array]]]:
    cfg = self.config
    dtype = cfg.activation_dtype

    def projection(name, heads, head_axis):
      return DenseGeneral((heads, cfg.head_dim), ("embed", head_axis, "kv"),
                          dtype=dtype, use_bias=cfg.qkv_bias,
                          lora_rank=cfg.lora_rank_of(name),
                          lora_scale=cfg.lora_scale, name=name)(x)

    query = projection("query", cfg.num_heads, "heads")
    key = projection("key", cfg.num_kv_heads, "kv_heads")
    value = projection("value", cfg.num_kv_heads, "kv_heads")
    query = _constrain(query, ("batch", "length", "heads", "kv"))
    if cfg.qk_norm:
      query = _norm(cfg, "query_norm", "kv")(query)
      key = _norm(cfg, "key_norm", "kv")(key)
    inverse_frequency = rope_inverse_frequency(cfg, self.local)
    query = apply_rotary(query, positions, cfg.rope_max_wavelength,
                         inverse_frequency)
    key = apply_rotary(key, positions, cfg.rope_max_wavelength,
                       inverse_frequency)
    window = cfg.sliding_window if self.local else None

    if cache is None:
      new_cache = None
      attended = jax.nn.dot_product_attention(
          query, key, value, scale=cfg.query_scale, is_causal=True,
          local_window_size=None if window is None else (window - 1, 0),
          implementation=cfg.attention_implementation)
    elif "prefix" in cache:
      # Shared-prefix sampling: attend, then write this call's tokens into
      # the rows' own ring of generated tokens.
      attended = _shared_prefix_attention(query, key, value, positions, cache,
                                          window, cfg.query_scale)
      new_cache = _write_ring(
          cache, key, value, positions,
          jnp.full((x.shape[0], 1), x.shape[1], jnp.int32))
      new_cache["prefix"] = cache["prefix"]
    elif not self.local:
      start = positions[:, 0]
      new_cache = {
          "keys": _write_cache(cache["keys"], key, start),
          "values": _write_cache(cache["values"], value, start),
      }
      slots = jnp.arange(cache["keys"].shape[1])
      # A query attends to the cache slots at or before its own position.
      mask = slots[None, None, :] <= positions[:, :, None]
      attended = jax.nn.dot_product_attention(
          query, new_cache["keys"].astype(dtype),
          new_cache["values"].astype(dtype), scale=cfg.query_scale,
          mask=mask[:, None])
    else:
      # Attend over the ring's earlier entries and this call's tokens, then
      # write the tokens into the ring.
      start = positions[:, :1]
      old = cache["positions"]
      key_positions = jnp.concatenate(
          [jnp.where((old >= 0) & (old < start), old, -1 - window),
           positions], axis=1)
      query_positions = positions[:, :, None]
      mask = ((key_positions[:, None, :] <= query_positions) &
              (key_positions[:, None, :] > query_positions - window))
      attended = jax.nn.dot_product_attention(
          query,
          jnp.concatenate([cache["keys"].astype(dtype), key], axis=1),
          jnp.concatenate([cache["values"].astype(dtype), value], axis=1),
          scale=cfg.query_scale, mask=mask[:, None])
      if lengths is None:
        lengths = jnp.full((x.shape[0],), x.shape[1], jnp.int32)
      lengths = jnp.clip(lengths, 0, x.shape[1]).astype(jnp.int32)
      new_cache = _write_ring(cache, key, value, positions, lengths[:, None])
    attended = _constrain(attended, ("batch", "length", "heads", "kv"))
    out = DenseGeneral((cfg.emb_dim,), ("heads", "kv", "embed"),
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
      return DenseGeneral((features,), names, dtype=dtype,
                          lora_rank=cfg.lora_rank_of(name),
                          lora_scale=cfg.lora_scale, name=name)

    gate = dense("wi_gate", cfg.mlp_dim, ("embed", "mlp"))(x)
    up = dense("wi_up", cfg.mlp_dim, ("embed", "mlp"))(x)
    if cfg.mlp_activation == "gelu_tanh":
      gate = jax.nn.gelu(gate, approximate=True)
    else:
      gate = nn.silu(gate)
    hidden = _constrain(gate * up, ("batch", "length", "mlp"))
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
               cache: Optional[dict[str, Array]],
               lengths: Optional[Array] = None,
              ) -> tuple[Array, Optional[dict[str, Array]]]:
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
    return _constrain(x, ("batch", "length", "embed")), new_cache


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
    x = _constrain(x, ("batch", "length", "embed"))

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
        logits = DenseGeneral((cfg.vocab_size,), ("embed", "vocab"),
                              dtype=cfg.activation_dtype, name="output")(
                                  projected).astype(jnp.float32)
      if cfg.logit_scaling:
        # 1/sqrt(E) keeps initial logits at unit scale.
        logits = logits / jnp.sqrt(jnp.float32(cfg.emb_dim))
      logits = _constrain(logits, ("batch", "length", "vocab"))
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
    shape = (batch_size, slots, config.num_kv_heads, config.head_dim)
    layer = {
        "keys": jnp.zeros(shape, config.activation_dtype),
        "values": jnp.zeros(shape, config.activation_dtype),
    }
    if config.is_local(index):
      layer["positions"] = jnp.full((batch_size, slots), -1, jnp.int32)
    cache.append(layer)
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
  rows = lengths.shape[0] * num_samples
  cache = []
  for index, layer in enumerate(prompt_cache):
    slots = layer["keys"].shape[1]
    positions = layer.get("positions")
    if positions is None:
      slot = jnp.arange(slots, dtype=jnp.int32)[None, :]
      positions = jnp.where(slot < lengths[:, None], slot, -1)
    suffix_slots = suffix_length
    if config.is_local(index):
      suffix_slots = min(suffix_length, config.sliding_window)
    shape = (rows, suffix_slots, config.num_kv_heads, config.head_dim)
    cache.append({
        "prefix": {"keys": layer["keys"], "values": layer["values"],
                   "positions": positions.astype(jnp.int32)},
        "keys": jnp.zeros(shape, layer["keys"].dtype),
        "values": jnp.zeros(shape, layer["values"].dtype),
        "positions": jnp.full((rows, suffix_slots), -1, jnp.int32),
    })
  return cache
