"""Temperature sampling up to stop ids (paper section 3.5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

import newline_vocab
from tasks import vocab
from trainer import decoding

BATCH, VOCAB, STEPS = 16, 6, 8


def _table(seed=0):
  """Logits [STEPS + 1, BATCH, VOCAB]: step s's, whatever the tokens."""
  return jax.random.normal(jax.random.PRNGKey(seed),
                           (STEPS + 1, BATCH, VOCAB)) * 1.5


def _sample(table, rng, temperature, stop_ids, on_step=None):
  def step_fn(tokens, positions, step):
    del tokens, positions
    if on_step is not None:
      jax.debug.callback(on_step, step)
    return table[step + 1], step + 1

  return jax.jit(lambda table, rng: decoding.temperature_sample(
      step_fn, table[0], jnp.int32(0), jnp.zeros((BATCH,), jnp.int32), rng,
      temperature=temperature, max_decode_length=STEPS,
      stop_ids=stop_ids))(table, rng)


def _reference(table, rng, temperature, stop_ids):
  """The sampler as a Python loop: same draws, rows ended at a stop id."""
  tokens = np.zeros((BATCH, STEPS), np.int64)
  log_prob = np.zeros(BATCH)
  done = np.zeros(BATCH, bool)
  key = rng
  for step in range(STEPS):
    key, sample_key = jax.random.split(key)
    drawn = np.asarray(jax.random.categorical(sample_key,
                                              table[step] / temperature))
    logits = np.asarray(table[step], np.float64)
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    for row in np.flatnonzero(~done):
      tokens[row, step] = drawn[row]
      log_prob[row] += log_softmax[row, drawn[row]]
      done[row] = drawn[row] in stop_ids
  return tokens, log_prob


@pytest.mark.parametrize("stop_ids", [(1,), (1, 4)], ids=["eos", "eos_4"])
def test_samples_end_at_their_first_stop_id(stop_ids):
  table, rng = _table(), jax.random.PRNGKey(3)
  tokens, log_prob = _sample(table, rng, 1.0, stop_ids)
  expected_tokens, expected_log_prob = _reference(table, rng, 1.0, stop_ids)
  np.testing.assert_array_equal(tokens, expected_tokens)
  # The log-prob covers the tokens up to the stop token, nothing after it.
  np.testing.assert_allclose(log_prob, expected_log_prob, rtol=1e-5)
  ended = 0
  for row in np.asarray(tokens).tolist():
    stops = [i for i, token in enumerate(row) if token in stop_ids]
    if stops:
      assert not any(row[stops[0] + 1:])
      ended += stops[0] < STEPS - 1
  assert ended >= 3  # Else the test would not show the cut.


def test_loop_ends_when_every_row_has_stopped():
  # Every row draws id 4 at step 2 (its logit is far above the others).
  table = _table().at[2, :, 4].set(100.0)
  steps = []
  tokens, _ = _sample(table, jax.random.PRNGKey(0), 1.0, (1, 4),
                      on_step=lambda step: steps.append(int(step)))
  assert np.all(np.asarray(tokens)[:, 3:] == 0)
  # At most 3 draws; rows stopping earlier do not extend the loop.
  assert 1 <= len(steps) <= 3


def test_stop_ids_must_not_be_empty():
  with pytest.raises(ValueError, match="stop_ids"):
    _sample(_table(), jax.random.PRNGKey(0), 1.0, ())


def test_item_stop_ids_of_a_vocabulary_keeping_newlines(tmp_path):
  vocabulary = newline_vocab.newline_vocabulary(tmp_path / "spm.model")
  processor = vocabulary.tokenizer
  expected = {1, processor.piece_to_id("<0x0A>")} | {
      processor.piece_to_id(piece) for piece in newline_vocab.NEWLINE_PIECES}
  assert vocab.item_stop_ids(vocabulary) == tuple(sorted(expected))
  # Text tokenizes to them.
  ids = vocabulary.encode("Title: a.\nPrice: 10.\n")
  assert set(ids) & set(expected)


def test_item_stop_ids_of_a_vocabulary_without_pieces():
  assert vocab.item_stop_ids(seqio.ByteVocabulary()) == (1,)


def _inverse_cdf_reference(logits, uniform, temperature, chunk_size):
  """NumPy's inverse CDF of the tempered softmax, two levels, per row."""
  tokens = []
  for row, u in zip(np.asarray(logits, np.float32), np.asarray(uniform)):
    mass = np.exp(row / np.float32(temperature) -
                  np.max(row / np.float32(temperature)))
    mass = np.concatenate([mass, np.zeros(-len(mass) % chunk_size,
                                          np.float32)])
    chunks = mass.reshape(-1, chunk_size)
    cumulative = np.cumsum(chunks.sum(axis=1))
    target = np.float32(u) * cumulative[-1]
    chunk = int(np.searchsorted(cumulative, target, side="right"))
    before = cumulative[chunk - 1] if chunk else 0.0
    entry = int(np.searchsorted(np.cumsum(chunks[chunk]), target - before,
                                side="right"))
    tokens.append(chunk * chunk_size + entry)
  return np.array(tokens)


def test_inverse_cdf_equals_numpy_reference_of_the_same_scheme():
  """The same uniform per row gives NumPy's token (1000 ids in 16 chunks of
  64, the last padded)."""
  logits = jax.random.normal(jax.random.PRNGKey(3), (64, 1000)) * 2.0
  for seed in range(20):
    key = jax.random.PRNGKey(seed)
    drawn = decoding.inverse_cdf_sample(logits, key, jnp.float32(0.7),
                                        chunk_size=64)
    uniform = jax.random.uniform(key, (64,), jnp.float32)
    np.testing.assert_array_equal(
        drawn, _inverse_cdf_reference(logits, uniform, 0.7, 64))


def test_inverse_cdf_draws_the_tempered_softmax_chi_square():
  """40,000 draws over 10 ids (chunks of 4, two padded entries) fit
  softmax(logits / T): chi-square p-value above 0.001."""
  import scipy.stats  # pylint: disable=g-import-not-at-top
  logits = jnp.array([1.0, 0.2, -0.5, 2.0, 0.0, -1.5, 0.7, 1.2, -0.3, 0.4])
  rows = jnp.broadcast_to(logits, (40_000, 10))
  drawn = decoding.inverse_cdf_sample(rows, jax.random.PRNGKey(0),
                                      jnp.float32(0.7), chunk_size=4)
  counts = np.bincount(np.asarray(drawn), minlength=10)
  probabilities = np.exp(np.asarray(logits, np.float64) / 0.7)
  expected = probabilities / probabilities.sum() * 40_000
  assert len(counts) == 10
  assert scipy.stats.chisquare(counts, expected).pvalue > 1e-3


def test_inverse_cdf_never_draws_entries_without_mass():
  """Masked ids (-inf) and the padding after the last id are never drawn,
  whatever the uniform."""
  logits = jnp.full((4096, 5), -jnp.inf).at[:, 1].set(0.0).at[:, 3].set(0.5)
  drawn = np.asarray(decoding.inverse_cdf_sample(
      logits, jax.random.PRNGKey(1), jnp.float32(1.0), chunk_size=4))
  assert set(drawn) == {1, 3}


@pytest.mark.parametrize("sampler", decoding.SAMPLERS)
def test_temperature_zero_is_greedy_for_every_sampler(sampler):
  table = _table(4)

  def step_fn(tokens, positions, step):
    del tokens, positions
    return table[step + 1], step + 1

  tokens, _ = decoding.temperature_sample(
      step_fn, table[0], jnp.int32(0), jnp.zeros((BATCH,), jnp.int32),
      jax.random.PRNGKey(0), temperature=0.0, max_decode_length=STEPS,
      stop_ids=(VOCAB + 1,), sampler=sampler)
  np.testing.assert_array_equal(tokens, np.argmax(table[:STEPS], axis=-1).T)


def test_unknown_sampler_is_refused():
  with pytest.raises(ValueError, match="Unknown sampler 'topk'"):
    decoding.temperature_sample(
        lambda *a: None, jnp.zeros((1, 3)), None, jnp.zeros((1,), jnp.int32),
        jax.random.PRNGKey(0), temperature=1.0, max_decode_length=2,
        stop_ids=(1,), sampler="topk")
