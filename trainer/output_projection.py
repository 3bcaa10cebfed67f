"""Output projection and chunked target log-probabilities (paper section 3.4).

L_NIG (equation 1) needs log P(t_j | t_<j) of the target token only, yet a
plain log-softmax materialises [positions, vocab] float32 logits, two or three
times over with the softmax and its gradient: 5 GiB per copy for 64 examples
of 80 target tokens over a 262,144-token vocabulary. `token_log_probs` streams
over chunks of the vocabulary instead (an online logsumexp) under a custom VJP
whose backward pass recomputes each chunk's logits, so neither pass holds more
than [positions, chunk] logits at a time.

The projection mirrors `trainer.network.Decoder`'s output layer, read from the
parameters: the tied embedding table `params['embedding']['embedding']`
[vocab, emb], or an untied `params['output']['kernel']` [emb, vocab] when the
config says so (or, with no such switch, when that parameter exists); operands
in the activation dtype, logits in float32, divided by sqrt(emb_dim) when
`config.logit_scaling` (default True).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from trainer import network

Array = jax.Array
PyTree = Any


class OutputProjection(NamedTuple):
  """The decoder's output layer: hidden [..., E] -> logits [..., V]."""

  weights: Array        # [V, E] (tied embedding) or [E, V] (untied kernel)
  vocab_axis: int       # 0 for the embedding table, 1 for the kernel
  dtype: jnp.dtype      # activation dtype of the matmul
  scaled_by: Optional[int]  # emb_dim when logits are divided by its sqrt

  @property
  def vocab_size(self) -> int:
    return self.weights.shape[self.vocab_axis]


def from_params(params: PyTree,
                config: network.TransformerConfig) -> OutputProjection:
  """The output layer of `trainer.network.Decoder` with `config`, unboxed."""
  if config.tie_embedding:
    weights, vocab_axis = params["embedding"]["embedding"], 0
  else:
    weights, vocab_axis = params["output"]["kernel"], 1
  return OutputProjection(weights, vocab_axis,
                          jnp.dtype(config.activation_dtype),
                          config.emb_dim if config.logit_scaling else None)


def _project(hidden: Array, weights: Array, vocab_axis: int, dtype: Any,
             scaled_by: Optional[int]) -> Array:
  """Float32 logits of `hidden` against a (chunk of the) weights."""
  hidden = hidden.astype(dtype)
  weights = weights.astype(dtype)
  if vocab_axis == 0:
    logits = jnp.dot(hidden, weights.T)
  else:
    logits = jnp.dot(hidden, weights)
  logits = logits.astype(jnp.float32)
  if scaled_by is not None:
    logits = logits / jnp.sqrt(jnp.float32(scaled_by))
  return logits


def logits(projection: OutputProjection, hidden: Array) -> Array:
  """All logits, [..., E] -> [..., V] float32 (the unchunked reference)."""
  return _project(hidden, projection.weights, projection.vocab_axis,
                  projection.dtype, projection.scaled_by)


@dataclasses.dataclass(frozen=True)
class _Chunks:
  """Static layout of the vocabulary chunks.

  Chunk j < num_chunks holds the `size` ids j, j + num_chunks,
  j + 2 num_chunks, ... of the first size * num_chunks ids (strided, so that
  a vocabulary sharded in contiguous ranges keeps every chunk sharded); the
  remaining `tail` < num_chunks ids form one last chunk.
  """

  vocab_axis: int
  dtype: Any
  scaled_by: Optional[int]
  num_chunks: int
  size: int
  tail: int

  def project(self, hidden: Array, weights: Array) -> Array:
    return _project(hidden, weights, self.vocab_axis, self.dtype,
                    self.scaled_by)

  def strided(self, weights: Array) -> Array:
    """The first size * num_chunks ids, as [size, num_chunks, E] (tied) or
    [E, size, num_chunks] (untied)."""
    main = self.size * self.num_chunks
    if self.vocab_axis == 0:
      return weights[:main].reshape(self.size, self.num_chunks, -1)
    return weights[:, :main].reshape(-1, self.size, self.num_chunks)

  def chunk(self, strided: Array, index: Array) -> Array:
    axis = 1 if self.vocab_axis == 0 else 2
    return jax.lax.dynamic_index_in_dim(strided, index, axis, keepdims=False)

  def ids(self, index: Array) -> Array:
    return jnp.arange(self.size) * self.num_chunks + index

  def tail_weights(self, weights: Array) -> Array:
    main = self.size * self.num_chunks
    return weights[main:] if self.vocab_axis == 0 else weights[:, main:]

  def tail_ids(self) -> Array:
    return self.size * self.num_chunks + jnp.arange(self.tail)


def _chunks(projection: OutputProjection, chunk_size: int) -> _Chunks:
  vocab = projection.vocab_size
  num_chunks = -(-vocab // max(1, min(chunk_size, vocab)))
  size = vocab // num_chunks
  return _Chunks(projection.vocab_axis, projection.dtype, projection.scaled_by,
                 num_chunks, size, vocab - size * num_chunks)


def _target_logit(logits: Array, ids: Array, targets: Array) -> Array:
  return jnp.sum(jnp.where(ids[None, :] == targets[:, None], logits, 0.0),
                 axis=-1)


def _forward(chunks: _Chunks, hidden: Array, weights: Array,
             targets: Array) -> tuple[Array, Array]:
  """(log-probabilities, logsumexp) of [N] targets, one chunk at a time."""

  def update(carry, chunk_logits, ids):
    maximum, total, target = carry
    new_maximum = jnp.maximum(maximum, jnp.max(chunk_logits, axis=-1))
    total = total * jnp.exp(maximum - new_maximum) + jnp.sum(
        jnp.exp(chunk_logits - new_maximum[:, None]), axis=-1)
    return (new_maximum, total,
            target + _target_logit(chunk_logits, ids, targets))

  rows = hidden.shape[0]
  carry = (jnp.full((rows,), -jnp.inf, jnp.float32),
           jnp.zeros((rows,), jnp.float32), jnp.zeros((rows,), jnp.float32))
  strided = chunks.strided(weights)

  def body(carry, index):
    chunk_logits = chunks.project(hidden, chunks.chunk(strided, index))
    return update(carry, chunk_logits, chunks.ids(index)), None

  carry, _ = jax.lax.scan(body, carry, jnp.arange(chunks.num_chunks))
  if chunks.tail:
    carry = update(carry,
                   chunks.project(hidden, chunks.tail_weights(weights)),
                   chunks.tail_ids())
  maximum, total, target = carry
  logsumexp = maximum + jnp.log(total)
  return target - logsumexp, logsumexp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked_log_probs(chunks: _Chunks, hidden: Array, weights: Array,
                       targets: Array) -> Array:
  return _forward(chunks, hidden, weights, targets)[0]


def _chunked_fwd(chunks, hidden, weights, targets):
  log_probs, logsumexp = _forward(chunks, hidden, weights, targets)
  return log_probs, (hidden, weights, targets, logsumexp)


def _chunked_bwd(chunks, residuals, grad):
  """d/dlogits of log p(target) is onehot(target) - softmax: per chunk, the
  logits are recomputed and pulled back through the projection."""
  hidden, weights, targets, logsumexp = residuals
  grad = grad.astype(jnp.float32)

  def pull_back(chunk_weights, ids):
    chunk_logits, vjp = jax.vjp(chunks.project, hidden, chunk_weights)
    onehot = (ids[None, :] == targets[:, None]).astype(jnp.float32)
    softmax = jnp.exp(chunk_logits - logsumexp[:, None])
    return vjp(grad[:, None] * (onehot - softmax))

  strided = chunks.strided(weights)
  axis = 1 if chunks.vocab_axis == 0 else 2

  def body(carry, index):
    grad_hidden, grad_strided = carry
    chunk_hidden, chunk_weights = pull_back(chunks.chunk(strided, index),
                                            chunks.ids(index))
    grad_strided = jax.lax.dynamic_update_index_in_dim(
        grad_strided, chunk_weights.astype(grad_strided.dtype), index, axis)
    return (grad_hidden + chunk_hidden.astype(jnp.float32), grad_strided), None

  carry = (jnp.zeros(hidden.shape, jnp.float32), jnp.zeros_like(strided))
  (grad_hidden, grad_strided), _ = jax.lax.scan(
      body, carry, jnp.arange(chunks.num_chunks))
  main = chunks.size * chunks.num_chunks
  if chunks.vocab_axis == 0:
    grad_weights = grad_strided.reshape(main, -1)
  else:
    grad_weights = grad_strided.reshape(-1, main)
  if chunks.tail:
    tail_hidden, tail_weights = pull_back(chunks.tail_weights(weights),
                                          chunks.tail_ids())
    grad_hidden += tail_hidden.astype(jnp.float32)
    grad_weights = jnp.concatenate(
        [grad_weights, tail_weights.astype(grad_weights.dtype)],
        axis=chunks.vocab_axis)
  return grad_hidden.astype(hidden.dtype), grad_weights, None


_chunked_log_probs.defvjp(_chunked_fwd, _chunked_bwd)


def token_log_probs(projection: OutputProjection, hidden: Array,
                    targets: Array, chunk_size: int) -> Array:
  """log P(target) from final hidden states, the vocabulary in chunks.

  Equal (to float32 rounding) to a log-softmax of `logits(projection,
  hidden)` gathered at `targets`, value and gradients, with at most
  [positions, chunk_size] float32 logits alive at once in either pass (the
  backward pass recomputes them).

  Args:
    projection: the output layer (`from_params`).
    hidden: [..., E] final hidden states (after the final norm).
    targets: [...] int token ids.
    chunk_size: vocabulary ids per chunk; the vocabulary is split into
      ceil(V / chunk_size) chunks of equal size (plus a remainder chunk of
      fewer ids than there are chunks when they do not divide V).

  Returns:
    [...] float32 log-probabilities.
  """
  chunks = _chunks(projection, chunk_size)
  batch_shape = targets.shape
  flat_hidden = hidden.reshape((-1, hidden.shape[-1]))
  log_probs = _chunked_log_probs(chunks, flat_hidden, projection.weights,
                                 targets.reshape(-1).astype(jnp.int32))
  return log_probs.reshape(batch_shape)
