"""Temperature sampling with a key/value cache (paper section 3.5).

The sampler is model-agnostic: it calls `step_fn(tokens [B, 1], positions
[B, 1], cache) -> (logits [B, V], cache)` once per generated token, so each step
costs one token's forward pass instead of re-running the whole prefix.

A sample ends at the first of its stop ids: EOS, and for a pretrained LM's
vocabulary every piece that holds a newline (`tasks.vocab.item_stop_ids`),
since such a model runs on past the item into a new line of text.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
StepFn = Callable[[Array, Array, Any], tuple[Array, Any]]

def temperature_sample(
    step_fn: StepFn,
    initial_logits: Array,
    initial_cache: Any,
    start_positions: Array,
    rng: Array,
    *,
    temperature: float | Array,
    max_decode_length: int,
    stop_ids: Sequence[int],
) -> tuple[Array, Array]:
  """Samples up to `max_decode_length` tokens per row, up to a stop id.

  Args:
    step_fn: feeds one token per row at the given positions.
    initial_logits: [B, V] logits for the first generated token.
    initial_cache: the cache after the prompt (prefill).
    start_positions: [B] position of the first generated token.
    rng: PRNG key.
    temperature: sampling temperature; 0 means greedy (argmax).
    max_decode_length: number of tokens generated at most.
    stop_ids: the ids that end a sample (EOS and, for pretrained LMs, the
      newline pieces: `tasks.vocab.item_stop_ids`); the stop token is kept in
      the output and scored.

  Returns:
    tokens [B, max_decode_length] (0 after the stop token) and log-probs [B]:
    the sum over generated tokens, the stop token included, of the UNTEMPERED
    model log-probability log softmax(logits). Temperature only shapes which
    tokens are drawn; the score is the model's probability of the text,
    comparable across samples and temperatures and equal to re-scoring the
    text with the model. The loop ends once every row has stopped.
  """
  if not len(stop_ids):
    raise ValueError("stop_ids must hold at least one id (EOS).")
  batch_size = initial_logits.shape[0]
  temperature = jnp.asarray(temperature, jnp.float32)
  stop_ids = jnp.asarray(stop_ids, jnp.int32).reshape(-1)

  def sample(logits, key):
    tempered = logits / jnp.maximum(temperature, 1e-6)
    drawn = jax.random.categorical(key, tempered, axis=-1)
    return jnp.where(temperature > 0, drawn, jnp.argmax(logits, axis=-1))

  def cond(state):
    step, _, _, _, done, _, _ = state
    return (step < max_decode_length) & ~jnp.all(done)

  def body(state):
    step, tokens, logits, cache, done, log_prob, key = state
    key, sample_key = jax.random.split(key)
    logits = logits.astype(jnp.float32)
    token = jnp.where(done, 0, sample(logits, sample_key)).astype(jnp.int32)
    token_log_prob = jnp.take_along_axis(
        jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
    log_prob = log_prob + jnp.where(done, 0.0, token_log_prob)
    tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, step))
    done = done | jnp.any(token[:, None] == stop_ids[None, :], axis=-1)
    next_logits, cache = step_fn(token[:, None],
                                 (start_positions + step)[:, None], cache)
    return step + 1, tokens, next_logits, cache, done, log_prob, key

  state = (
      jnp.int32(0),
      jnp.zeros((batch_size, max_decode_length), jnp.int32),
      initial_logits,
      initial_cache,
      jnp.zeros((batch_size,), bool),
      jnp.zeros((batch_size,), jnp.float32),
      rng,
  )
  _, tokens, _, _, _, log_prob, _ = jax.lax.while_loop(cond, body, state)
  return tokens, log_prob
