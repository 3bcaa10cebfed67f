"""TensorFlow's stateless random draws for a batch of seeds at once.

`tf.random.stateless_uniform` and `tf.random.experimental.stateless_fold_in`
take one seed per call, so a pipeline that draws one number per example from
a seed of its own pays a tf.data map call per example. The functions here give
the same numbers for a vector of seeds, bit for bit, with a handful of
element-wise ops on the whole vector: TensorFlow's CPU and GPU kernels
(`alg="auto_select"`) use Philox-4x32-10, whose seed scrambling and first
output block they reproduce (tensorflow/core/kernels/stateless_random_ops.cc,
tensorflow/core/lib/random/philox_random.h and random_distributions.h).
`tests/test_tasks_stateless_random.py` checks them against the TensorFlow ops.

Seeds are int64 pairs given as two vectors, (first, second), as
`tf.random.stateless_uniform(seed=[first, second])` reads them; a vector of
one element broadcasts.
"""

from __future__ import annotations

import tensorflow as tf

# Philox words live in the low 32 bits of uint64 tensors, so that a product
# of two words keeps its high half.
_WORD = tf.uint64
_LOW_32_BITS = 0xFFFFFFFF
# Multipliers of lanes 0 and 2, and the key's increments per round.
_MULTIPLIERS = ((0xD2511F53,), (0xCD9E8D57,))
_KEY_STEPS = (0x9E3779B9, 0xBB67AE85)
_ROUNDS = 10
# The key that scrambles a seed into the key and counter of the draws.
_SCRAMBLE_KEY = ((0x3EC8F720,), (0x02461E29,))


def _words(value: tf.Tensor | int) -> tf.Tensor:
  return tf.constant(value, _WORD) if isinstance(value, (int, tuple)) else value


def _low(x: tf.Tensor) -> tf.Tensor:
  return tf.bitwise.bitwise_and(x, _words(_LOW_32_BITS))


def _high(x: tf.Tensor) -> tf.Tensor:
  return tf.bitwise.right_shift(x, _words(32))


def _philox(even: tf.Tensor, odd: tf.Tensor,
            key: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Philox-4x32-10 of counters (c0, c1, c2, c3) under keys (k0, k1).

  Args:
    even: [2, n], the words c0 and c2 of n counters.
    odd: [2, n], their words c1 and c3.
    key: [2, n], the words k0 and k1 of their keys.

  Returns:
    The output block in the same layout: ([r0, r2], [r1, r3]).
  """
  multipliers = _words(_MULTIPLIERS)
  for round_number in range(_ROUNDS):
    round_key = key if not round_number else _low(key + _words(tuple(
        (round_number * step,) for step in _KEY_STEPS)))
    product = multipliers * even
    # r0 = hi(B * c2) ^ c1 ^ k0, r1 = lo(B * c2), r2 = hi(A * c0) ^ c3 ^ k1,
    # r3 = lo(A * c0).
    even = tf.bitwise.bitwise_xor(
        tf.bitwise.bitwise_xor(tf.reverse(_high(product), [0]), odd),
        round_key)
    odd = tf.reverse(_low(product), [0])
  return even, odd


def _first_block(first: tf.Tensor,
                 second: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Words r0 and r1 of the first block a stateless op draws from each seed.

  The seed (s0, s1) is scrambled into the key (m0, m1) and the counter
  (0, 0, m2, m3), m the Philox block of the counter (lo s0, hi s0, lo s1,
  hi s1) under the fixed scramble key.
  """
  first, second = tf.cast(first, tf.int64), tf.cast(second, tf.int64)
  shape = tf.broadcast_dynamic_shape(tf.shape(first), tf.shape(second))
  seeds = tf.bitcast(tf.stack([tf.broadcast_to(first, shape),
                               tf.broadcast_to(second, shape)]), _WORD)
  mix_even, mix_odd = _philox(_low(seeds), _high(seeds),
                              _words(_SCRAMBLE_KEY) + tf.zeros_like(seeds))
  zeros = tf.zeros_like(mix_even[1])
  even, odd = _philox(tf.stack([zeros, mix_even[1]]),
                      tf.stack([zeros, mix_odd[1]]),
                      tf.stack([mix_even[0], mix_odd[0]]))
  return even[0], odd[0]


def uniform_full_int64(first: tf.Tensor, second: tf.Tensor) -> tf.Tensor:
  """`tf.random.stateless_uniform([], seed=[first[i], second[i]],
  dtype=tf.int64, minval=None, maxval=None)` for every i: int64 [n]."""
  low, high = _first_block(first, second)
  return tf.bitcast(tf.bitwise.bitwise_or(
      low, tf.bitwise.left_shift(high, _words(32))), tf.int64)


def fold_in(first: tf.Tensor, second: tf.Tensor,
            data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """`tf.random.experimental.stateless_fold_in(seed=[first[i], second[i]],
  data[i])` for every i, int64 data: the new seeds as (first, second).

  The three vectors broadcast: one seed may be folded with many data.
  """
  data = tf.cast(data, tf.int64)
  folded = uniform_full_int64(first, second)
  shape = tf.broadcast_dynamic_shape(tf.shape(folded), tf.shape(data))
  return tf.broadcast_to(folded, shape), tf.broadcast_to(data, shape)


def uniform_int32(first: tf.Tensor, second: tf.Tensor,
                  maxval: tf.Tensor) -> tf.Tensor:
  """`tf.random.stateless_uniform([], seed=[first[i], second[i]], minval=0,
  maxval=maxval[i], dtype=tf.int32)` for every i: int32 [n].

  maxval must be positive (TensorFlow's op refuses an empty range).
  """
  low, _ = _first_block(first, second)
  return tf.cast(low % tf.cast(maxval, _WORD), tf.int32)
