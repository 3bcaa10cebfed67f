"""Microbatched gradients equal the full batch's, contrastive terms included."""

import jax
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


def _params(model):
  return jax.jit(lambda rng: models.unboxed_params(
      model.get_initial_variables(rng, {"decoder_input_tokens": (2, 8)})))(
          jax.random.PRNGKey(0))


def _value_and_grad(model, num_microbatches):
  return jax.jit(lambda p, b: microbatching.value_and_grad(
      model, p, b, None, num_microbatches))


def _assert_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5,
                               atol=1e-6)


@pytest.mark.parametrize("alpha,beta,num_microbatches", [
    (0.125, -0.025, 2), (0.125, -0.025, 4), (0.0, 0.0, 2)])
def test_microbatched_loss_and_gradients_equal_the_full_batch(
    batch, alpha, beta, num_microbatches):
  model = models.CALRecModel(CONFIG, alpha=alpha, beta=beta)
  params = _params(model)
  (loss, metrics), grads = _value_and_grad(model, 1)(params, batch)
  (micro_loss, micro_metrics), micro_grads = _value_and_grad(
      model, num_microbatches)(params, batch)
  np.testing.assert_allclose(float(micro_loss), float(loss), rtol=1e-6)
  _assert_close(micro_metrics, metrics)
  _assert_close(micro_grads, grads)


def test_naive_accumulation_would_shrink_the_negatives(batch):
  """Averaging per-microbatch losses is not the paper's loss (negatives = the
  whole batch), which is why the gradient is cached instead."""
  model = models.CALRecModel(CONFIG, alpha=0.5, beta=0.0)
  params = _params(model)
  full_tt = float(_value_and_grad(model, 2)(params, batch)[0][1]["tt_loss"])
  halves = microbatching.split(batch, 2)
  naive_tt = np.mean([
      float(model.loss_fn(params, {k: v[m] for k, v in halves.items()},
                          None)[1]["tt_loss"]) for m in range(2)])
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
