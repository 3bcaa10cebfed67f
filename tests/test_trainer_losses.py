"""Loss terms of paper section 3.4 against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer import losses


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
