"""Microbatched gradients equal the full batch's, contrastive terms included."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import trainer_batches
from trainer import microbatching
from trainer import models
from trainer import network
from trainer import partitioning
from trainer import train_lib

CONFIG = network.TransformerConfig(vocab_size=64, emb_dim=32, num_heads=4,
                                   num_kv_heads=2, head_dim=8, mlp_dim=64,
                                   num_layers=2)


@pytest.fixture(scope="module")
def batch():
  """7 random examples and one padding example."""
  batch = trainer_batches.random_batch(seed=2, batch_size=7,
                                       vocab_size=CONFIG.vocab_size)
  return {name: np.concatenate([value, np.zeros_like(value[:1])])
          for name, value in batch.items()}


@pytest.fixture(scope="module")
def params():
  """Initial parameters; they depend on neither the loss weights nor dropout."""
  model = models.CALRecModel(CONFIG)
  return jax.jit(lambda rng: models.unboxed_params(
      model.get_initial_variables(rng, {"decoder_input_tokens": (2, 8)})))(
          jax.random.PRNGKey(0))


@functools.cache
def _value_and_grad(alpha, beta, num_microbatches):
  """The compiled loss and gradients of CONFIG's model with these weights.

  Cached: the tests share each compilation (the full batch's for one).
  """
  model = models.CALRecModel(CONFIG, alpha=alpha, beta=beta)
  return jax.jit(lambda p, b: microbatching.value_and_grad(
      model, p, b, None, num_microbatches))


def _assert_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5,
                               atol=1e-6)


@pytest.mark.parametrize("alpha,beta,num_microbatches", [
    (0.125, -0.025, 2), (0.125, -0.025, 4), (0.0, 0.0, 2)])
@pytest.mark.slow
def test_microbatched_loss_and_gradients_equal_the_full_batch(
    batch, params, alpha, beta, num_microbatches):
  (loss, metrics), grads = _value_and_grad(alpha, beta, 1)(params, batch)
  (micro_loss, micro_metrics), micro_grads = _value_and_grad(
      alpha, beta, num_microbatches)(params, batch)
  np.testing.assert_allclose(float(micro_loss), float(loss), rtol=1e-6)
  _assert_close(micro_metrics, metrics)
  _assert_close(micro_grads, grads)


def _dropout_reference(model, params, batch, dropout_rng, num_microbatches):
  """The batch loss with microbatch m's rows run under fold_in(rng, m).

  Differentiated directly (no gradient cache): every forward pass is in the
  graph, so this is the plain gradient of that stochastic loss.
  """
  terms = [model.loss_terms(
      params, {name: value[m::num_microbatches] for name, value in
               batch.items()}, jax.random.fold_in(dropout_rng, m))
           for m in range(num_microbatches)]
  vectors = models.PooledVectors(*(
      jnp.concatenate(parts) for parts in zip(*(t.vectors for t in terms))))
  return model.loss_from_terms(models.LossTerms(
      sum(t.nig_total for t in terms), sum(t.target_tokens for t in terms),
      vectors))


@pytest.mark.slow
def test_microbatched_dropout_gradient_equals_direct_differentiation(
    batch, params):
  """Dropout keeps the gradient cache exact.

  Microbatch m draws its dropout masks from fold_in(rng, m) in both passes
  (`microbatching.value_and_grad`), so the cached vector gradients are taken
  at the very vectors the second pass recomputes, and the accumulated
  gradient is the plain gradient of the loss under those masks.
  """
  model = models.CALRecModel(dataclasses.replace(CONFIG, dropout_rate=0.2),
                             alpha=0.125, beta=-0.025)
  rng = jax.random.PRNGKey(5)
  (loss, metrics), grads = jax.jit(
      lambda p, b, r: microbatching.value_and_grad(model, p, b, r, 2))(
          params, batch, rng)
  reference = jax.jit(jax.value_and_grad(
      lambda p, b, r: _dropout_reference(model, p, b, r, 2), has_aux=True))
  (ref_loss, ref_metrics), ref_grads = reference(params, batch, rng)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
  _assert_close(metrics, ref_metrics)
  _assert_close(grads, ref_grads)
  # Not vacuous: dropout is on, so another key gives another gradient.
  (other_loss, _), other_grads = reference(params, batch,
                                           jax.random.PRNGKey(6))
  assert abs(float(other_loss) - float(loss)) > 1e-3
  assert not np.allclose(np.asarray(jax.tree.leaves(other_grads)[0]),
                         np.asarray(jax.tree.leaves(grads)[0]), rtol=1e-3)


@pytest.mark.slow
def test_naive_accumulation_would_shrink_the_negatives(batch, params):
  """Averaging per-microbatch losses is not the paper's loss (negatives = the
  whole batch), which is why the gradient is cached instead."""
  model = models.CALRecModel(CONFIG, alpha=0.5, beta=0.0)
  full_tt = float(_value_and_grad(0.5, 0.0, 2)(params, batch)[0][1]["tt_loss"])
  halves = microbatching.split(batch, 2)
  tt_loss = jax.jit(lambda p, b: model.loss_fn(p, b, None)[1]["tt_loss"])
  naive_tt = np.mean([
      float(tt_loss(params, {k: v[m] for k, v in halves.items()}))
      for m in range(2)])
  # log(8) against log(4) for near-uniform similarities at initialisation.
  assert full_tt > naive_tt + 0.3


def test_split_interleaves_rows_and_rejects_uneven_batches():
  rows = {"x": np.arange(6)[:, None]}
  np.testing.assert_array_equal(
      np.asarray(microbatching.split(rows, 3)["x"])[..., 0],
      [[0, 3], [1, 4], [2, 5]])
  with pytest.raises(ValueError, match="does not split into 4"):
    microbatching.split(rows, 4)


def test_trainer_refuses_microbatches_that_do_not_split_the_batch(batch):
  shapes = {name: value.shape for name, value in batch.items()}
  with pytest.raises(ValueError, match="multiple of num_microbatches"):
    train_lib.Trainer(models.CALRecModel(CONFIG), optax.sgd(0.1),
                      partitioning.Partitioner(), shapes, seed=0,
                      num_microbatches=3)


@pytest.mark.slow
def test_trainer_draws_dropout_from_the_seed_folded_with_the_step(
    batch, params):
  """Step s runs dropout under fold_in(PRNGKey(seed), s): a plain SGD step
  equals one taken with `loss_fn`'s gradient under that key."""
  model = models.CALRecModel(dataclasses.replace(CONFIG, dropout_rate=0.2))
  learning_rate, seed = 0.5, 3
  trainer = train_lib.Trainer(
      model, optax.sgd(learning_rate), partitioning.Partitioner(),
      {name: value.shape for name, value in batch.items()}, seed=seed)
  grad = jax.jit(jax.grad(lambda p, key: model.loss_fn(p, batch, key)[0]))

  def sgd_step(before, key_step):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), key_step)
    return jax.tree.map(lambda p, g: p - learning_rate * g, before,
                        grad(before, key))

  state = trainer.state_from_params(params)
  for step in range(2):
    before = jax.device_get(state.params)
    state, _ = trainer.train_step(state, batch)
    _assert_close(state.params, sgd_step(before, step))
  # Not vacuous: step 0's masks would have given step 1 another update.
  with pytest.raises(AssertionError):
    _assert_close(state.params, sgd_step(before, 0))
