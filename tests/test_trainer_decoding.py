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
