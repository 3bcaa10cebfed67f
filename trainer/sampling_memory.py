"""The memory one prompt's sampling takes, to size generation batches.

Sampling N_gen continuations of a prompt (paper section 3.5;
`models.CALRecModel.predict_batch_with_aux`) holds, beside the parameters:

- the key/value caches: with the shared prefix, the prompt's cache once and
  a cache of `max_decode_length` generated tokens per sample; without it, a
  copy of the prompt and its generated tokens per sample. A local layer
  holds at most its window (`network.init_cache`). Each cached token of a
  layer is 2 x num_kv_heads x head_dim activations (e.g. 2 KiB a layer, 36
  KiB in all, for Gemma 3 270M in float32);
- each decoding step's float32 logits over the vocabulary for every sample,
  and the sampler's arrays of the same size (tempered logits, their
  exponentials or Gumbel noise, the log-softmax of the score): 1 MiB per
  sample and array for Gemma's 262,144 tokens;
- the prefill's activations over the prompt: per token the residual
  stream, queries, keys, values and the MLP's hidden units, and per head a
  float32 row of attention scores over the prompt.

`sampling_bytes` adds these up. It is an estimate made to bound XLA's own
buffer assignment from above (tested against `memory_analysis` of the
compiled sampler), not a measurement: allocators and fragmentation add to
it on a device.
"""

from __future__ import annotations

import numpy as np

from trainer import network

# Arrays of [samples, vocabulary] 32-bit values alive at once in a decoding
# step: the logits, the tempered logits, the draw's exponentials (or Gumbel
# noise and the random bits it comes from), the score's log-softmax, and
# XLA's fused temporaries.
_STEP_VOCAB_ARRAYS = 6
# The caches are the decoding loop's carried state: XLA may hold the
# state a step reads beside the one it writes.
_CACHE_BUFFERS = 2
# Activations per prefill token and layer, in units of emb_dim, beside the
# MLP's: the residual stream, its normalisation, the attention output and
# its projection, with headroom for the fused temporaries of XLA.
_PREFILL_EMB_ARRAYS = 6


def _cached_slots(config: network.TransformerConfig, tokens: int) -> int:
  """Cache slots of all layers for `tokens` tokens (local layers: window)."""
  return sum(min(tokens, config.sliding_window) if config.is_local(layer)
             else tokens for layer in range(config.num_layers))


def cache_bytes(config: network.TransformerConfig, prompt_length: int,
                num_decodes: int, max_decode_length: int,
                shared_prefix: bool = True) -> int:
  """Bytes of one prompt's key/value caches while its samples decode."""
  slot_bytes = (2 * config.num_kv_heads * config.head_dim *
                np.dtype(config.activation_dtype).itemsize)
  if shared_prefix:
    slots = (_cached_slots(config, prompt_length) +
             num_decodes * _cached_slots(config, max_decode_length))
  else:
    slots = num_decodes * _cached_slots(config,
                                        prompt_length + max_decode_length)
  return slots * slot_bytes


def sampling_bytes(config: network.TransformerConfig, prompt_length: int,
                   num_decodes: int, max_decode_length: int,
                   shared_prefix: bool = True) -> int:
  """Bytes one prompt's sampling takes beside the parameters (see above).

  Args:
    config: the decoder's config (its activation dtype included).
    prompt_length: P of the inference batch (`models.prompt_batch`).
    num_decodes: N_gen samples of the prompt.
    max_decode_length: tokens each sample generates at most.
    shared_prefix: whether the samples share the prompt's cache
      (`models.CALRecModel.shared_prefix`).
  """
  activation = np.dtype(config.activation_dtype).itemsize
  step = _STEP_VOCAB_ARRAYS * num_decodes * config.vocab_size * 4
  per_token = (_PREFILL_EMB_ARRAYS * config.emb_dim +
               (config.num_heads + 2 * config.num_kv_heads) * config.head_dim
               + 2 * config.mlp_dim) * activation
  scores = config.num_heads * prompt_length * 4
  prefill = prompt_length * (per_token + scores) + config.vocab_size * 4
  return (_CACHE_BUFFERS * cache_bytes(config, prompt_length, num_decodes,
                                       max_decode_length, shared_prefix)
          + step + prefill)
