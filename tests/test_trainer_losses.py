"""Loss terms of paper section 3.4 against hand-computed values."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer import losses
from trainer import network
from trainer import output_projection


def test_negative_log_likelihood_sums_weighted_positions():
  # Two examples, three positions, vocab of 3.
  logits = np.array([
      [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [5.0, 0.0, 0.0]],
      [[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
  ], np.float32)
  targets = np.array([[0, 2, 1], [0, 1, 1]])
  weights = np.array([[0, 1, 1], [1, 0, 0]])
  log_z = math.log(math.exp(1) + math.exp(2) + math.exp(3))
  expected_terms = [
      log_z - 3.0,                                  # ex 0, pos 1, token 2
      math.log(math.exp(5) + 2) - 0.0,              # ex 0, pos 2, token 1
      math.log(math.exp(2) + 2) - 2.0,              # ex 1, pos 0, token 0
  ]
  total = losses.negative_log_likelihood(jnp.asarray(logits), targets, weights)
  np.testing.assert_allclose(float(total), sum(expected_terms), rtol=1e-6)


def test_loss_positions_lists_weighted_positions_first_in_order():
  weights = np.array([[0, 0, 1, 1, 1, 0],    # a target span in the middle
                      [1, 0, 1, 0, 0, 1],    # scattered weights
                      [0, 0, 0, 0, 0, 0]])   # a padding example
  positions = np.asarray(losses.loss_positions(jnp.asarray(weights), 3))
  np.testing.assert_array_equal(positions, [[2, 3, 4], [0, 2, 5], [0, 1, 2]])
  gathered = np.take_along_axis(weights, positions, axis=1)
  np.testing.assert_array_equal(gathered.sum(1), weights.sum(1))
  # Fewer weights than count: padded with unweighted positions in order.
  np.testing.assert_array_equal(
      np.asarray(losses.loss_positions(jnp.asarray(weights[:1]), 4)),
      [[2, 3, 4, 0]])


def test_mean_pool_averages_weighted_positions_only():
  hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
  weights = np.array([[1, 0, 1], [0, 0, 0]])
  pooled = np.asarray(losses.mean_pool(hidden, weights))
  np.testing.assert_allclose(pooled[0], (hidden[0, 0] + hidden[0, 2]) / 2)
  np.testing.assert_allclose(pooled[1], [0.0, 0.0])


# Targets t1=(1,0), t2=(0,1); users u1=(1,1), u2=(2,0) (cosine ignores scale).
_TARGETS = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
_USERS = np.array([[1.0, 1.0], [2.0, 0.0]], np.float32)
_TAU = 0.5


def _hand_info_nce_over_users():
  # cos(u1,t1)=1/sqrt2, cos(u2,t1)=1, cos(u1,t2)=1/sqrt2, cos(u2,t2)=0.
  s = 1 / math.sqrt(2) / _TAU
  term_1 = s - math.log(math.exp(s) + math.exp(1 / _TAU))   # target 1
  term_2 = 0.0 - math.log(math.exp(s) + math.exp(0.0))     # target 2
  return -(term_1 + term_2) / 2


def _hand_info_nce_over_targets():
  # The transposed softmax: for user i over targets j (not the paper's).
  s = 1 / math.sqrt(2) / _TAU
  term_1 = s - math.log(math.exp(s) + math.exp(s))           # user 1
  term_2 = 0.0 - math.log(math.exp(1 / _TAU) + math.exp(0.0))  # user 2
  return -(term_1 + term_2) / 2


def test_info_nce_matches_equations_2_and_3_softmax_over_users():
  loss = float(losses.info_nce(_TARGETS, _USERS, _TAU, np.array([True,
                                                                  True])))
  np.testing.assert_allclose(loss, _hand_info_nce_over_users(), rtol=1e-5)
  # The two axes give different values here, so this pins the user axis.
  assert abs(_hand_info_nce_over_users() - _hand_info_nce_over_targets()) > .05


def test_info_nce_padding_example_is_neither_anchor_nor_negative():
  targets = np.concatenate([_TARGETS, [[0.3, -2.0]]]).astype(np.float32)
  users = np.concatenate([_USERS, [[-1.0, 0.5]]]).astype(np.float32)
  loss = float(losses.info_nce(targets, users, _TAU,
                               np.array([True, True, False])))
  np.testing.assert_allclose(loss, _hand_info_nce_over_users(), rtol=1e-5)


def test_calrec_loss_weights():
  loss = losses.calrec_loss(2.0, 3.0, 5.0, alpha=0.125, beta=-0.025)
  np.testing.assert_allclose(
      float(loss), (1 - 0.125 + 0.025) * 2.0 + 0.125 * 3.0 - 0.025 * 5.0)


@pytest.mark.parametrize("which", ["info_nce", "next_item"])
def test_gradients_match_finite_differences(which):
  rng = np.random.RandomState(0)
  if which == "info_nce":
    targets = rng.randn(4, 3)
    users = rng.randn(4, 3)
    mask = np.array([True, True, False, True])

    def f(x):
      return losses.info_nce(x[:4], x[4:], _TAU, mask)

    x0 = np.concatenate([targets, users])
  else:
    targets = rng.randint(0, 5, (2, 3))
    weights = np.array([[1, 1, 0], [0, 1, 1]])

    def f(x):
      return losses.negative_log_likelihood(x, targets, weights)

    x0 = rng.randn(2, 3, 5)
  with jax.enable_x64(True):
    x0 = jnp.asarray(x0, jnp.float64)
    analytic = np.asarray(jax.grad(f)(x0))
    numeric = np.zeros_like(analytic)
    eps = 1e-6
    for index in np.ndindex(*x0.shape):
      step = jnp.zeros_like(x0).at[index].set(eps)
      numeric[index] = (float(f(x0 + step)) - float(f(x0 - step))) / (2 * eps)
  np.testing.assert_allclose(analytic, numeric, atol=1e-7, rtol=1e-5)


def _projection(rng, vocab_axis, scaled, vocab=67, emb=8):
  shape = (vocab, emb) if vocab_axis == 0 else (emb, vocab)
  return output_projection.OutputProjection(
      jnp.asarray(rng.randn(*shape), jnp.float32), vocab_axis,
      jnp.dtype("float32"), emb if scaled else None)


@pytest.mark.parametrize("vocab_axis", [0, 1], ids=["tied", "untied"])
@pytest.mark.parametrize("scaled", [True, False])
@pytest.mark.parametrize("chunk_size", [67, 10, 1])  # 1, 7 + tail, 67
def test_chunked_token_log_probs_equal_full_log_softmax(vocab_axis, scaled,
                                                        chunk_size):
  """Value and gradients (hidden, weights) of the streaming logsumexp."""
  rng = np.random.RandomState(0)
  projection = _projection(rng, vocab_axis, scaled)
  hidden = jnp.asarray(rng.randn(3, 5, 8), jnp.float32)
  targets = jnp.asarray(rng.randint(0, 67, (3, 5)))
  cotangent = jnp.asarray(rng.randn(3, 5), jnp.float32)

  def full(h, w):
    logits = output_projection.logits(projection._replace(weights=w), h)
    return losses.token_log_probs(logits, targets)

  def chunked(h, w):
    return output_projection.token_log_probs(
        projection._replace(weights=w), h, targets, chunk_size)

  args = (hidden, projection.weights)
  np.testing.assert_allclose(chunked(*args), full(*args), rtol=1e-6,
                             atol=1e-6)
  for expected, actual in zip(
      jax.grad(lambda h, w: jnp.vdot(full(h, w), cotangent), (0, 1))(*args),
      jax.jit(jax.grad(lambda h, w: jnp.vdot(chunked(h, w), cotangent),
                       (0, 1)))(*args)):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_output_projection_reads_the_decoder_layout():
  config = network.TransformerConfig(vocab_size=6, emb_dim=4,
                                     dtype="bfloat16")
  table = jnp.ones((6, 4))
  tied = output_projection.from_params({"embedding": {"embedding": table}},
                                       config)
  assert (tied.vocab_axis, tied.vocab_size, tied.scaled_by) == (0, 6, 4)
  assert tied.dtype == jnp.bfloat16
  untied = output_projection.from_params(
      {"embedding": {"embedding": table}, "output": {"kernel": table.T}},
      dataclasses.replace(config, logit_scaling=False, tie_embedding=False))
  assert (untied.vocab_axis, untied.vocab_size, untied.scaled_by) == (1, 6,
                                                                      None)


def test_chunked_log_probs_gradient_holds_no_full_logits():
  """Compiled temporaries: the gradient over 64 positions x 16,384 ids needs
  [64, V] float32 logits (4 MiB a copy) unchunked, a fraction chunked."""
  rng = np.random.RandomState(0)
  projection = _projection(rng, 0, True, vocab=16384, emb=16)
  hidden = jnp.asarray(rng.randn(64, 16), jnp.float32)
  targets = jnp.asarray(rng.randint(0, 16384, (64,)))

  def temp_bytes(log_probs):
    step = jax.jit(jax.grad(lambda w: jnp.sum(log_probs(w))))
    analysis = step.lower(projection.weights).compile().memory_analysis()
    return analysis.temp_size_in_bytes

  full = temp_bytes(lambda w: losses.token_log_probs(
      output_projection.logits(projection._replace(weights=w), hidden),
      targets))
  chunked = temp_bytes(lambda w: output_projection.token_log_probs(
      projection._replace(weights=w), hidden, targets, 1024))
  logits_bytes = 64 * 16384 * 4
  assert full >= logits_bytes
  assert chunked < logits_bytes / 4, (chunked, full)
