"""The CALRec training objective (paper section 3.4, equations 1-4).

All functions take global-batch arrays: under a sharded (jit) step the
contrastive negatives are therefore every example of the global batch, not one
shard's. Everything is computed in float32 at least.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# Logit of a padded (invalid) user column: exp() underflows to exactly 0 while
# gradients stay finite (an -inf here would make 0 * inf = nan).
_MASKED_LOGIT = -1e9


def _at_least_float32(x: Array) -> Array:
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def token_log_probs(logits: Array, targets: Array) -> Array:
  """log P(target token) at every position: [B, L, V], [B, L] -> [B, L]."""
  log_probs = jax.nn.log_softmax(_at_least_float32(logits), axis=-1)
  return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def loss_positions(weights: Array, count: int) -> Array:
  """Positions of each row's non-zero weights, in order: [B, L] -> [B, count].

  Rows with fewer than `count` weighted positions are padded with unweighted
  ones, so gathering `weights` at the result keeps every weight as long as no
  row has more than `count` of them (the feature converter's target span holds
  at most Li = targets length tokens, docs/contracts.md).
  """
  unweighted = (weights == 0).astype(jnp.int32)
  return jnp.argsort(unweighted, axis=-1, stable=True)[:, :count]


def negative_log_likelihood(logits: Array, targets: Array,
                            weights: Array) -> Array:
  """The sum of -log P(t_j | t_<j) over weighted positions (equation 1)."""
  log_probs = token_log_probs(logits, targets)
  return -jnp.sum(log_probs * weights.astype(log_probs.dtype))


def mean_pool(hidden: Array, weights: Array) -> Array:
  """Weighted mean over positions: [B, L, E], [B, L] -> [B, E] (0 if empty)."""
  hidden = _at_least_float32(hidden)
  weights = weights.astype(hidden.dtype)
  total = jnp.einsum("ble,bl->be", hidden, weights)
  return total / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), 1.0)


def cosine_similarities(targets: Array, users: Array,
                        epsilon: float = 1e-6) -> Array:
  """cos(targets_i, users_j) for every pair: [B, E], [B, E] -> [B_i, B_j]."""

  def normalise(vectors):
    return vectors * jax.lax.rsqrt(
        jnp.sum(vectors * vectors, axis=-1, keepdims=True) + epsilon**2)

  return normalise(targets) @ normalise(users).T


def info_nce(targets: Array, users: Array, temperature: float,
             example_mask: Array) -> Array:
  """In-batch InfoNCE of equations 2 and 3.

  For each target item i the softmax runs over the users j of the batch:
    -1/N sum_i log( exp(cos(u_i, t_i)/tau) / sum_j exp(cos(u_j, t_i)/tau) ).

  Args:
    targets: [B, E] v^T, the item-alone tower.
    users: [B, E] v^{T|U} (L_TT) or v^U (L_UT), the user tower.
    temperature: tau_c.
    example_mask: [B] bool, False for padding examples, which are neither
      anchors nor negatives.

  Returns:
    The loss averaged over the valid examples.
  """
  logits = cosine_similarities(targets, users) / temperature
  logits = jnp.where(example_mask[None, :], logits, _MASKED_LOGIT)
  log_softmax_over_users = jax.nn.log_softmax(logits, axis=1)
  per_target = -jnp.diagonal(log_softmax_over_users)
  mask = example_mask.astype(per_target.dtype)
  return jnp.sum(per_target * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def calrec_loss(nig: Array, tt: Array, ut: Array, alpha: float,
                beta: float) -> Array:
  """Equation 4: (1 - alpha - beta) L_NIG + alpha L_TT + beta L_UT."""
  return (1.0 - alpha - beta) * nig + alpha * tt + beta * ut
