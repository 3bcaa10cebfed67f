"""Temperature sampling with a key/value cache (paper section 3.5).

The sampler is model-agnostic: it calls `step_fn(tokens [B, 1], positions
[B, 1], cache) -> (logits [B, V], cache)` once per generated token, so each step
costs one token's forward pass instead of re-running the whole prefix.

A sample ends at the first of its stop ids: EOS, and for a pretrained LM's
vocabulary every piece that holds a newline (`tasks.vocab.item_stop_ids`),
since such a model runs on past the item into a new line of text.

Two seeded streams draw from the same tempered distribution softmax(logits /
T). "gumbel" (the default, `jax.random.categorical`) adds Gumbel noise to
every logit: one random number per vocabulary entry, which dominates a step
over a pretrained LM's 262k-token vocabulary. "inverse_cdf" draws one
uniform number per row and finds its token by the inverse of the cumulative
distribution in two levels, over chunk sums and then within one chunk
(`inverse_cdf_sample`); it is a different stream, so a seed gives other
samples than "gumbel" gives.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
StepFn = Callable[[Array, Array, Any], tuple[Array, Any]]

SAMPLERS = ("gumbel", "inverse_cdf")
# Entries per chunk of the two-level inverse CDF: 262,144 / 512 = 512 chunks.
INVERSE_CDF_CHUNK = 512


def gumbel_sample(logits: Array, key: Array, temperature: Array) -> Array:
  """[B] tokens drawn from softmax(logits / temperature) by Gumbel-max."""
  return jax.random.categorical(
      key, logits / jnp.maximum(temperature, 1e-6), axis=-1)


def _first_above(cumulative: Array, threshold: Array) -> Array:
  """Per row, the first index whose cumulative sum exceeds `threshold`."""
  return jnp.sum(cumulative <= threshold[:, None], axis=-1)


def inverse_cdf_sample(logits: Array, key: Array, temperature: Array,
                       chunk_size: int = INVERSE_CDF_CHUNK) -> Array:
  """[B] tokens drawn from softmax(logits / temperature) by inverse CDF.

  One uniform u per row, scaled by the row's total mass, selects the first
  chunk of `chunk_size` entries whose cumulative mass exceeds it, then the
  first entry of that chunk whose cumulative mass exceeds the rest. Only
  entries of positive mass can be drawn: the remainder is kept below the
  chosen chunk's last positive entry even where float sums disagree.
  """
  batch_size, vocab_size = logits.shape
  padding = -vocab_size % chunk_size
  tempered = logits / jnp.maximum(temperature, 1e-6)
  tempered = jnp.pad(tempered, ((0, 0), (0, padding)),
                     constant_values=-jnp.inf)
  mass = jnp.exp(tempered - jnp.max(tempered, axis=-1, keepdims=True))
  chunks = mass.reshape(batch_size, -1, chunk_size)
  chunk_cumulative = jnp.cumsum(jnp.sum(chunks, axis=-1), axis=-1)
  target = (jax.random.uniform(key, (batch_size,), jnp.float32) *
            chunk_cumulative[:, -1])
  chunk = jnp.minimum(_first_above(chunk_cumulative, target),
                      chunk_cumulative.shape[1] - 1)
  before = jnp.where(chunk > 0, jnp.take_along_axis(
      chunk_cumulative, jnp.maximum(chunk - 1, 0)[:, None], axis=-1)[:, 0],
                     0.0)
  inside = jnp.take_along_axis(chunks, chunk[:, None, None], axis=1)[:, 0]
  last_positive = chunk_size - 1 - jnp.argmax(inside[:, ::-1] > 0, axis=-1)
  entry = jnp.minimum(
      _first_above(jnp.cumsum(inside, axis=-1), target - before),
      last_positive)
  return chunk * chunk_size + entry

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
    sampler: str = "gumbel",
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
    sampler: the seeded stream that draws tokens, one of `SAMPLERS`.

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
  if sampler not in SAMPLERS:
    raise ValueError(f"Unknown sampler {sampler!r}; one of {SAMPLERS}.")
  draw = gumbel_sample if sampler == "gumbel" else inverse_cdf_sample
  batch_size = initial_logits.shape[0]
  temperature = jnp.asarray(temperature, jnp.float32)
  stop_ids = jnp.asarray(stop_ids, jnp.int32).reshape(-1)

  def sample(logits, key):
    drawn = draw(logits, key, temperature)
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
