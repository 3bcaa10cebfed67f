"""The batched stateless draws equal TensorFlow's, seed by seed."""

import numpy as np
import pytest
import tensorflow as tf

from tasks import preprocessors
from tasks import stateless_random

_INT64 = np.iinfo(np.int64)


def _seeds(count, seed):
  rng = np.random.default_rng(seed)
  first = rng.integers(_INT64.min, _INT64.max, size=count, dtype=np.int64)
  second = rng.integers(_INT64.min, _INT64.max, size=count, dtype=np.int64)
  # Edge words: zero, one, all bits set, the sign bit alone.
  first[:4] = [0, 1, -1, _INT64.min]
  second[:4] = [0, 0, 5, -1]
  return first, second


def test_full_int64_draws_equal_tensorflow():
  first, second = _seeds(300, 0)
  got = stateless_random.uniform_full_int64(first, second).numpy()
  want = [tf.random.stateless_uniform(
      [], seed=[a, b], dtype=tf.int64, minval=None, maxval=None).numpy()
          for a, b in zip(first, second)]
  assert got.tolist() == want


def test_int32_draws_in_a_range_equal_tensorflow():
  first, second = _seeds(300, 1)
  maxvals = np.random.default_rng(2).integers(1, 9, size=300, dtype=np.int32)
  got = stateless_random.uniform_int32(first, second, maxvals).numpy()
  want = [tf.random.stateless_uniform(
      [], seed=[a, b], minval=0, maxval=int(m), dtype=tf.int32).numpy()
          for a, b, m in zip(first, second, maxvals)]
  assert got.tolist() == want


def test_fold_in_equals_tensorflow_and_broadcasts_one_seed():
  data = np.arange(-5, 45, dtype=np.int64) * 7919
  first, second = stateless_random.fold_in(
      tf.constant([11], tf.int64), tf.constant([3], tf.int64), data)
  want = [tf.random.experimental.stateless_fold_in([11, 3], d).numpy()
          for d in data]
  assert np.stack([first, second], axis=1).tolist() == [
      w.tolist() for w in want]


@pytest.mark.parametrize("seed", [0, 12345])
def test_example_seeds_equal_example_seed(seed):
  user_ids = tf.constant([f"A{i}Z" for i in range(40)] + ["", "ü"])
  indexes = tf.range(42, dtype=tf.int64) * 1_000_003
  first, second = preprocessors.example_seeds(seed, user_ids, indexes)
  want = [preprocessors.example_seed(seed, user, index).numpy().tolist()
          for user, index in zip(user_ids, indexes)]
  assert np.stack([first, second], axis=1).tolist() == want
