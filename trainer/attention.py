"""Causal attention with rotary positions over the decoder's key/value caches.

`attend` runs one layer's attention in any of the decoder's modes:
- full sequences (training, scoring; no cache): causal attention over the
  call's tokens;
- cached (prefill and sampling, `trainer.decoding`): keys and values are
  written into a fixed-size cache at each example's own positions and
  queries attend to cache slots at or before their position. Sliding-window
  ('local') layers keep only their window: a ring buffer of `window` slots
  indexed by position mod window, with the position held in each slot.
- shared-prefix sampling (`shared_prefix`, paper section 3.5): several
  samples per prompt read one copy of the prompt's cache and keep their own
  cache of generated tokens only; each query's attention is one softmax over
  the scores of both.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp

Array = jax.Array
# One layer's cache: 'keys' and 'values', each [batch, slots, num_kv_heads,
# head_dim]: cache_length slots for global layers; for local (sliding-window)
# layers min(cache_length, window) slots used as a ring, plus 'positions'
# [batch, slots] int32, each slot's position (-1: empty). A shared-prefix
# cache (`shared_prefix`) holds 'prefix': the prompt's keys, values and
# positions [batch, prefix slots] (-1: padding), read by all samples of the
# row, and 'keys', 'values', 'positions' [batch * samples, suffix slots]: each
# sample's generated tokens, as a ring.
LayerCache = dict[str, Any]


def rope_inverse_frequency(head_dim: int, max_wavelength: float,
                           scaling_type: Optional[str], scaling_factor: float,
                           low_freq_factor: float, high_freq_factor: float,
                           original_max_position: int) -> Array:
  """Inverse frequencies [head_dim / 2] of rotary position embeddings.

  Feature pair (i, i + d/2) turns by position * max_wavelength**(-2i/d),
  rescaled by `scaling_type`: None, 'linear' (frequencies / factor) or
  'llama3' (Llama 3.1+: only low frequencies scaled, smooth in between).
  """
  half = head_dim // 2
  inverse_frequency = max_wavelength**(
      -jnp.arange(half, dtype=jnp.float32) / half)
  if scaling_type is None:
    return inverse_frequency
  if scaling_type == "linear":
    return inverse_frequency / scaling_factor
  # 'llama3': wavelengths above original_max / low_freq_factor are stretched
  # by the factor, those below original_max / high_freq_factor are kept, and
  # those between interpolate linearly in original_max / wavelength.
  wavelength = 2 * math.pi / inverse_frequency
  ratio = original_max_position / wavelength
  smooth = ((ratio - low_freq_factor) / (high_freq_factor - low_freq_factor))
  smooth = jnp.clip(smooth, 0.0, 1.0)
  return ((1 - smooth) * inverse_frequency / scaling_factor +
          smooth * inverse_frequency)


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


def empty_cache(batch_size: int, slots: int, num_kv_heads: int,
                head_dim: int, dtype: Any, ring: bool) -> LayerCache:
  """One layer's empty cache of `slots` slots; a `ring` has positions too."""
  shape = (batch_size, slots, num_kv_heads, head_dim)
  layer = {
      "keys": jnp.zeros(shape, dtype),
      "values": jnp.zeros(shape, dtype),
  }
  if ring:
    layer["positions"] = jnp.full((batch_size, slots), -1, jnp.int32)
  return layer


def shared_prefix(layer: LayerCache, lengths: Array, num_samples: int,
                  suffix_slots: int) -> LayerCache:
  """One layer's cache of `num_samples` samples per row of a prompt cache.

  The prefilled `layer` ([B, slots, ...], a full cache or a ring) becomes
  the 'prefix', read once for all samples; every sample (row b *
  num_samples + n) gets an empty ring of `suffix_slots` for the tokens it
  generates. `lengths` [B] counts the real prompt tokens per row; later
  slots of a full cache are padding.
  """
  rows = lengths.shape[0] * num_samples
  slots, num_kv_heads, head_dim = layer["keys"].shape[1:]
  positions = layer.get("positions")
  if positions is None:
    slot = jnp.arange(slots, dtype=jnp.int32)[None, :]
    positions = jnp.where(slot < lengths[:, None], slot, -1)
  shape = (rows, suffix_slots, num_kv_heads, head_dim)
  return {
      "prefix": {"keys": layer["keys"], "values": layer["values"],
                 "positions": positions.astype(jnp.int32)},
      "keys": jnp.zeros(shape, layer["keys"].dtype),
      "values": jnp.zeros(shape, layer["values"].dtype),
      "positions": jnp.full((rows, suffix_slots), -1, jnp.int32),
  }


def attend(query: Array, key: Array, value: Array, positions: Array,
           cache: Optional[LayerCache], lengths: Optional[Array],
           window: Optional[int], scale: Optional[float],
           implementation: Optional[str]
          ) -> tuple[Array, Optional[LayerCache]]:
  """Grouped-query attention of one layer, reading and writing its cache.

  Args:
    query: [B, T, H, d] rotated queries, in the activation dtype.
    key: [B, T, K, d] rotated keys (H a multiple of K).
    value: [B, T, K, d].
    positions: [B, T] absolute positions, consecutive along T when cached.
    cache: the layer's cache (`empty_cache` or `shared_prefix`), or None for
      causal attention over the call's tokens.
    lengths: optional [B] count of real tokens of a cached call; a ring
      stores only those. None: all T tokens are real.
    window: a local layer's sliding window (a ring cache), None for global.
    scale: multiplier of query-key dot products; None is 1/sqrt(d).
    implementation: `jax.nn.dot_product_attention`'s, for the uncached call.

  Returns:
    (attended [B, T, H, d], the updated cache or None).
  """
  dtype = query.dtype
  if cache is None:
    return jax.nn.dot_product_attention(
        query, key, value, scale=scale, is_causal=True,
        local_window_size=None if window is None else (window - 1, 0),
        implementation=implementation), None
  if "prefix" in cache:
    # Shared-prefix sampling: attend, then write this call's tokens into
    # the rows' own ring of generated tokens.
    attended = _shared_prefix_attention(query, key, value, positions, cache,
                                        window, scale)
    new_cache = _write_ring(
        cache, key, value, positions,
        jnp.full((query.shape[0], 1), query.shape[1], jnp.int32))
    new_cache["prefix"] = cache["prefix"]
    return attended, new_cache
  if window is None:
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
        new_cache["values"].astype(dtype), scale=scale, mask=mask[:, None])
    return attended, new_cache
  # Attend over the ring's earlier entries and this call's tokens, then
  # write the tokens into the ring.
  start = positions[:, :1]
  old = cache["positions"]
  key_positions = jnp.concatenate(
      [jnp.where((old >= 0) & (old < start), old, -1 - window), positions],
      axis=1)
  query_positions = positions[:, :, None]
  mask = ((key_positions[:, None, :] <= query_positions) &
          (key_positions[:, None, :] > query_positions - window))
  attended = jax.nn.dot_product_attention(
      query,
      jnp.concatenate([cache["keys"].astype(dtype), key], axis=1),
      jnp.concatenate([cache["values"].astype(dtype), value], axis=1),
      scale=scale, mask=mask[:, None])
  if lengths is None:
    lengths = jnp.full((query.shape[0],), query.shape[1], jnp.int32)
  lengths = jnp.clip(lengths, 0, query.shape[1]).astype(jnp.int32)
  return attended, _write_ring(cache, key, value, positions,
                               lengths[:, None])


def _write_cache(cache: Array, update: Array, start: Array) -> Array:
  """Writes update [B, T, ...] into cache [B, S, ...] at per-example start."""

  def write_one(cache_row, update_row, start_row):
    indices = (start_row,) + (0,) * (cache_row.ndim - 1)
    return jax.lax.dynamic_update_slice(cache_row,
                                        update_row.astype(cache_row.dtype),
                                        indices)

  return jax.vmap(write_one)(cache, update, start)


def _write_ring(cache: LayerCache, key: Array, value: Array,
                positions: Array, lengths: Array) -> LayerCache:
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
                             positions: Array, cache: LayerCache,
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
