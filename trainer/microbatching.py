"""Gradients of the CALRec loss over a batch split into microbatches.

t5x accumulates gradients over microbatches (`num_microbatches`) when a batch
does not fit in accelerator memory; that is exact there because its losses add
up over examples. The contrastive terms of paper section 3.4 do not: every
example's softmax runs over the whole batch (512 users in the paper), so
plain accumulation would shrink the in-batch negatives to one microbatch.

Here the gradient stays the full batch's (the approach of gradient caching):
1. a forward pass per microbatch, without gradients or logits, gives the
   pooled vectors v^T, v^{T|U}, v^U of every example;
2. the contrastive terms and their gradients with respect to those vectors are
   computed on the whole batch;
3. a second pass per microbatch differentiates its NIG sum plus the dot
   product of its vectors with their cached gradients, and the parameter
   gradients add up.
The cost is one extra forward pass without the output projection; memory is
that of one microbatch. Microbatch m holds rows m, m + k, m + 2k, ... so that
each holds an equal part of every data shard.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from trainer import models

Array = jax.Array
PyTree = Any


def split(batch: Mapping[str, Array], num_microbatches: int
         ) -> dict[str, Array]:
  """[B, ...] -> [k, B / k, ...]; microbatch m holds rows m, m + k, ..."""

  def to_microbatches(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"Batch of {x.shape[0]} rows does not split into "
                       f"{num_microbatches} microbatches.")
    x = x.reshape((x.shape[0] // num_microbatches, num_microbatches) +
                  x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  return {name: to_microbatches(value) for name, value in batch.items()}


def _merge(x: Array) -> Array:
  """[k, B / k, ...] -> [B, ...] (any fixed order: InfoNCE ignores it)."""
  return x.reshape((-1,) + x.shape[2:])


def value_and_grad(
    model: models.CALRecModel, params: PyTree, batch: Mapping[str, Array],
    dropout_rng: Optional[Array], num_microbatches: int = 1,
    to_params: Optional[Callable[[PyTree], PyTree]] = None
) -> tuple[tuple[Array, dict[str, Array]], PyTree]:
  """((loss, metrics), gradients) of `model.loss_fn` on the whole batch.

  With one microbatch this is `jax.value_and_grad(model.loss_fn)`. Otherwise
  microbatch m draws dropout from `fold_in(dropout_rng, m)` in both passes.

  Args:
    model: the model whose `loss_fn` is differentiated.
    params: what the gradients are of.
    batch: the whole batch.
    dropout_rng: None without dropout.
    num_microbatches: see the module docstring.
    to_params: the model's parameters from `params` (by default `params`
      themselves), e.g. the trained parameters merged with frozen ones, which
      then get no gradient.
  """
  if to_params is None:
    loss_fn, loss_terms = model.loss_fn, model.loss_terms
  else:
    def loss_fn(p, *args):
      return model.loss_fn(to_params(p), *args)

    def loss_terms(p, *args, **kwargs):
      return model.loss_terms(to_params(p), *args, **kwargs)
  if num_microbatches == 1:
    return jax.value_and_grad(loss_fn, has_aux=True)(params, batch,
                                                     dropout_rng)
  microbatches = split(batch, num_microbatches)
  indices = jnp.arange(num_microbatches)
  num_tokens = jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32))

  def rng_of(index):
    return None if dropout_rng is None else jax.random.fold_in(dropout_rng,
                                                               index)

  # Pass 1: every example's pooled vectors, [k, B / k, E].
  vectors = None
  if model.uses_item_tower:
    vectors = jax.lax.stop_gradient(jax.lax.map(
        lambda xs: loss_terms(params, xs[0], rng_of(xs[1]),
                              with_nig=False).vectors,
        (microbatches, indices)))

  def batch_loss(nig_total, pooled):
    """Equation 4 from the whole batch's terms; `pooled` is (v^T, v^{T|U},
    v^U) merged over microbatches, or None."""
    merged = None
    if pooled is not None:
      merged = models.PooledVectors(*pooled, mask=_merge(vectors.mask))
    return model.loss_from_terms(models.LossTerms(nig_total, num_tokens,
                                                  merged))

  pooled = None if vectors is None else tuple(
      _merge(x) for x in (vectors.item, vectors.target, vectors.history))
  # d loss / d nig_total is (1 - a - b) / tokens whatever nig_total is.
  nig_weight, pooled_grads = jax.grad(
      lambda n, v: batch_loss(n, v)[0], argnums=(0, 1))(jnp.float32(0.0),
                                                        pooled)
  if pooled_grads is not None:
    pooled_grads = tuple(g.reshape(vectors.item.shape) for g in pooled_grads)

  # Pass 2: each microbatch's share of the full-batch parameter gradient.
  def surrogate(p, microbatch, index, grads_of_pooled):
    terms = loss_terms(p, microbatch, rng_of(index))
    value = nig_weight * terms.nig_total
    if grads_of_pooled is not None:
      value += sum(jnp.vdot(g, v) for g, v in zip(
          grads_of_pooled, (terms.vectors.item, terms.vectors.target,
                            terms.vectors.history)))
    return value, terms.nig_total

  def accumulate(carry, xs):
    grads_sum, nig_sum = carry
    grads, nig_total = jax.grad(surrogate, has_aux=True)(params, *xs)
    return (jax.tree.map(jnp.add, grads_sum, grads), nig_sum + nig_total), None

  (grads, nig_total), _ = jax.lax.scan(
      accumulate, (jax.tree.map(jnp.zeros_like, params), jnp.float32(0.0)),
      (microbatches, indices, pooled_grads))
  return batch_loss(nig_total, pooled), grads
