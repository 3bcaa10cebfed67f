"""A decoder-only Transformer LM in flax linen (the LLM of paper section 3).

The paper fine-tunes pretrained PaLM-2 XXS; these models start from random
initialisation (README, "Where this implementation departs from the paper").

PaLM/Llama-style blocks: pre-RMSNorm, rotary positions, grouped-query attention
(multi-query when `num_kv_heads == 1`), SwiGLU MLP, tied input/output embedding.
Attention is causal over the whole sequence, prompt included, as in PaLM-2.

Parameters and activations carry logical axis names ('batch', 'length',
'embed', 'heads', 'kv_heads', 'kv', 'mlp', 'vocab') that
`trainer.partitioning` maps onto a ('data', 'model') mesh.

The decoder runs in two modes:
- full sequences (training, scoring): causal attention over `tokens`;
- cached (prefill and sampling, `trainer.decoding`): keys and values are
  written into a fixed-size per-layer cache at each example's own positions and
  queries attend to cache slots at or before their position.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

Array = jax.Array
# One dict per layer with 'keys' and 'values', each [batch, cache_length,
# num_kv_heads, head_dim].
Cache = list[dict[str, Array]]


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
  rope_max_wavelength: float = 10_000.0
  # None lets jax pick; 'cudnn' selects the fused kernel on GPUs.
  attention_implementation: Optional[str] = None
  # Rematerialise each layer in the backward pass (saves activation memory).
  remat: bool = False

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
          f"({self.num_kv_heads}).")
    if self.head_dim % 2:
      raise ValueError(f"head_dim ({self.head_dim}) must be even for rotary "
                       "position embeddings.")

  @property
  def activation_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  def num_params(self) -> int:
    """Parameter count (embedding counted once: it is tied)."""
    attention = self.emb_dim * self.head_dim * (
        2 * self.num_heads + 2 * self.num_kv_heads)
    mlp = 3 * self.emb_dim * self.mlp_dim
    norms = 2 * self.emb_dim
    return (self.vocab_size * self.emb_dim + self.emb_dim +
            self.num_layers * (attention + mlp + norms))


def _constrain(x: Array, names: Sequence[Optional[str]]) -> Array:
  return nn.with_logical_constraint(x, tuple(names))


class DenseGeneral(nn.Module):
  """Contracts the last `num_contracted` axes of x with a named kernel.

  The kernel has shape x.shape[-num_contracted:] + features, logical axes
  `kernel_axes`, and a truncated-normal init scaled by its fan-in.
  """

  features: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  num_contracted: int = 1
  dtype: Any = jnp.float32

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
    return jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype),
                         axes=(x_axes, tuple(range(self.num_contracted))))


class RMSNorm(nn.Module):
  """Root-mean-square layer norm with a learned scale."""

  dtype: Any = jnp.float32
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        (x.shape[-1],), jnp.float32)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) +
                          self.epsilon)
    return (x * scale).astype(self.dtype)


def apply_rotary(x: Array, positions: Array, max_wavelength: float) -> Array:
  """Rotates feature pairs (i, i + d/2) of x [B, T, N, d] by position angles."""
  half = x.shape[-1] // 2
  inverse_frequency = max_wavelength**(-jnp.arange(half, dtype=jnp.float32) /
                                       half)
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


class Attention(nn.Module):
  """Grouped-query self-attention, rotary positions, an optional cache."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, positions: Array,
               cache: Optional[dict[str, Array]]
              ) -> tuple[Array, Optional[dict[str, Array]]]:
    cfg = self.config
    dtype = cfg.activation_dtype

    def projection(name, heads, head_axis):
      return DenseGeneral((heads, cfg.head_dim), ("embed", head_axis, "kv"),
                          dtype=dtype, name=name)(x)

    query = projection("query", cfg.num_heads, "heads")
    key = projection("key", cfg.num_kv_heads, "kv_heads")
    value = projection("value", cfg.num_kv_heads, "kv_heads")
    query = _constrain(query, ("batch", "length", "heads", "kv"))
    query = apply_rotary(query, positions, cfg.rope_max_wavelength)
    key = apply_rotary(key, positions, cfg.rope_max_wavelength)

    if cache is None:
      new_cache = None
      attended = jax.nn.dot_product_attention(
          query, key, value, is_causal=True,
          implementation=cfg.attention_implementation)
    else:
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
          new_cache["values"].astype(dtype), mask=mask[:, None])
    attended = _constrain(attended, ("batch", "length", "heads", "kv"))
    out = DenseGeneral((cfg.emb_dim,), ("heads", "kv", "embed"),
                       num_contracted=2, dtype=dtype, name="out")(attended)
    return out, new_cache


class GatedMLP(nn.Module):
  """SwiGLU feed-forward block."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    dtype = cfg.activation_dtype

    def dense(name, features, names):
      return DenseGeneral((features,), names, dtype=dtype, name=name)

    gate = dense("wi_gate", cfg.mlp_dim, ("embed", "mlp"))(x)
    up = dense("wi_up", cfg.mlp_dim, ("embed", "mlp"))(x)
    hidden = _constrain(nn.silu(gate) * up, ("batch", "length", "mlp"))
    return dense("wo", cfg.emb_dim, ("mlp", "embed"))(hidden)


class DecoderLayer(nn.Module):
  """Pre-norm residual block: attention, then gated MLP."""

  config: TransformerConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, positions: Array,
               cache: Optional[dict[str, Array]]
              ) -> tuple[Array, Optional[dict[str, Array]]]:
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)
    attended, new_cache = Attention(cfg, name="attention")(
        RMSNorm(cfg.activation_dtype, name="pre_attention_norm")(x), positions,
        cache)
    x = x + dropout(attended)
    x = x + dropout(GatedMLP(cfg, name="mlp")(
        RMSNorm(cfg.activation_dtype, name="pre_mlp_norm")(x)))
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
  ) -> tuple[Optional[Array], Array, Optional[Cache]]:
    """Runs the decoder.

    Args:
      tokens: [B, T] int token ids.
      positions: [B, T] absolute positions; defaults to 0..T-1.
      cache: per-layer key/value cache (see `init_cache`), or None for plain
        causal attention over `tokens`.
      deterministic: disables dropout.
      logits_at: optional [B, K] positions; logits are then computed only
        there (shape [B, K, V]), which saves the output projection and the
        softmax elsewhere (training needs them on target positions only).
      compute_logits: False skips the output projection (logits is None).

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
    x = nn.Dropout(cfg.dropout_rate, deterministic=deterministic)(x)
    x = _constrain(x, ("batch", "length", "embed"))

    layer_cls = nn.remat(DecoderLayer) if cfg.remat else DecoderLayer
    new_cache = [] if cache is not None else None
    for index in range(cfg.num_layers):
      x, layer_cache = layer_cls(
          cfg, deterministic=deterministic, name=f"layers_{index}")(
              x, positions, None if cache is None else cache[index])
      if cache is not None:
        new_cache.append(layer_cache)
    hidden = RMSNorm(cfg.activation_dtype, name="final_norm")(x)

    logits = None
    if compute_logits:
      projected = hidden
      if logits_at is not None:
        projected = jnp.take_along_axis(hidden, logits_at[:, :, None],
                                        axis=1)
      # Tied embedding; 1/sqrt(E) keeps initial logits at unit scale.
      logits = embedding.attend(projected).astype(jnp.float32)
      logits = logits / jnp.sqrt(jnp.float32(cfg.emb_dim))
      logits = _constrain(logits, ("batch", "length", "vocab"))
    return logits, hidden, new_cache


def init_cache(config: TransformerConfig, batch_size: int,
               cache_length: int) -> Cache:
  """An all-zero key/value cache for `batch_size` sequences."""
  shape = (batch_size, cache_length, config.num_kv_heads, config.head_dim)
  return [{
      "keys": jnp.zeros(shape, config.activation_dtype),
      "values": jnp.zeros(shape, config.activation_dtype),
  } for _ in range(config.num_layers)]
