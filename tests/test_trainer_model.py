"""The model object: loss, scoring and KV-cached sampling (paper 3.4, 3.5)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import newline_vocab
import trainer_batches
from tasks import vocab
from trainer import models
from trainer import network
from trainer import train_metrics

CONFIG = network.TransformerConfig(vocab_size=64, emb_dim=32, num_heads=4,
                                   num_kv_heads=2, head_dim=8, mlp_dim=64,
                                   num_layers=2)
ALPHA, BETA, TAU = 0.125, -0.025, 0.5


@pytest.fixture(scope="module")
def model():
  return models.CALRecModel(CONFIG, alpha=ALPHA, beta=BETA,
                            contrastive_temperature=TAU)


@pytest.fixture(scope="module")
def params(model):
  return jax.jit(lambda rng: models.unboxed_params(
      model.get_initial_variables(rng, {"decoder_input_tokens": (2, 8)})))(
          jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def loss_fn(model):
  return jax.jit(lambda params, batch: model.loss_fn(params, batch, None))


@pytest.fixture(scope="module")
def apply(model):
  return jax.jit(lambda params, tokens: model.module.apply({"params": params},
                                                          tokens))


@pytest.fixture(scope="module")
def score(model):
  """The compiled `score_batch`, shared so that tests share its compilations."""
  return jax.jit(model.score_batch)


@pytest.fixture(scope="module")
def batch():
  return trainer_batches.random_batch(seed=1, batch_size=5,
                                      vocab_size=CONFIG.vocab_size)


def _numpy_info_nce(targets, users, tau):
  """Equations 2/3 written out with loops."""
  def cos(a, b):
    return a @ b / np.linalg.norm(a) / np.linalg.norm(b)
  total = 0.0
  for i in range(len(targets)):
    scores = [np.exp(cos(users[j], targets[i]) / tau)
              for j in range(len(users))]
    total += np.log(scores[i] / np.sum(scores))
  return -total / len(targets)


def _numpy_pool(hidden, weights):
  return (hidden * weights[..., None]).sum(1) / weights.sum(1, keepdims=True)


def _numpy_next_item_loss(logits, targets, weights):
  """Equation 1 from full-sequence logits, per target token."""
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  target_log_probs = np.take_along_axis(log_probs, targets[..., None],
                                        -1)[..., 0]
  return -(target_log_probs * weights).sum() / weights.sum()


def _numpy_losses(apply, params, batch, rows):
  """(L_NIG, L_TT, L_UT) in numpy over the examples `rows` of `batch`."""
  logits, hidden, _ = apply(params, batch["decoder_input_tokens"])
  _, item_hidden, _ = apply(params, batch["item_input_tokens"])
  logits, hidden, item_hidden = (np.asarray(x)[rows]
                                 for x in (logits, hidden, item_hidden))
  batch = {name: value[rows] for name, value in batch.items()}
  nig = _numpy_next_item_loss(logits, batch["decoder_target_tokens"],
                              batch["decoder_loss_weights"])
  item = _numpy_pool(item_hidden, batch["item_pool_weights"])
  tt = _numpy_info_nce(item, _numpy_pool(hidden, batch["target_pool_weights"]),
                       TAU)
  ut = _numpy_info_nce(item, _numpy_pool(hidden,
                                         batch["history_pool_weights"]), TAU)
  return nig, tt, ut


def _check_against_numpy(loss_fn, apply, params, batch, rows):
  """loss_fn's terms and loss equal numpy's over the examples `rows`."""
  loss, metrics = loss_fn(params, batch)
  nig, tt, ut = _numpy_losses(apply, params, batch, rows)
  for name, expected in (("nig_loss", nig), ("tt_loss", tt), ("ut_loss", ut)):
    np.testing.assert_allclose(float(metrics[name]), expected, rtol=1e-5,
                               err_msg=name)
  np.testing.assert_allclose(
      float(loss), (1 - ALPHA - BETA) * nig + ALPHA * tt + BETA * ut,
      rtol=1e-5)
  return metrics


def test_loss_fn_matches_independent_computation(loss_fn, apply, params,
                                                batch):
  metrics = _check_against_numpy(loss_fn, apply, params, batch, np.arange(5))
  assert float(metrics["target_tokens"]) == batch["decoder_loss_weights"].sum()
  assert float(metrics["contrastive_examples"]) == 5


def test_padding_examples_count_in_no_loss_term(loss_fn, apply, params,
                                               batch):
  """All-zero rows are neither anchors nor in-batch negatives (eq. 2, 3)."""
  valid = np.array([0, 2, 3, 5, 7])
  padded = {name: np.zeros((8,) + value.shape[1:], value.dtype)
            for name, value in batch.items()}
  for name, value in batch.items():
    padded[name][valid] = value
  metrics = _check_against_numpy(loss_fn, apply, params, padded, valid)
  assert float(metrics["contrastive_examples"]) == len(valid)


def test_split_metrics_of_one_batch_are_its_loss_fn_metrics(model, loss_fn,
                                                            params, batch):
  """Validation combines a split's terms into the loss as the train step
  combines a batch's: one batch's split metrics are its metrics."""
  _, metrics = jax.device_get(loss_fn(params, batch))
  split = train_metrics.split_metrics(model, [metrics])
  assert split == pytest.approx({k: float(v) for k, v in metrics.items()},
                                rel=1e-6)


def test_target_span_logits_give_the_full_sequence_loss(model, apply, params):
  """Padding rows and target spans at every offset, up to Li tokens long."""
  batch = trainer_batches.random_batch(seed=4, batch_size=6,
                                       vocab_size=CONFIG.vocab_size,
                                       inputs_length=10, targets_length=4)
  batch = {name: np.concatenate([value, np.zeros_like(value[:2])])
           for name, value in batch.items()}
  _, metrics = jax.jit(lambda p, b: model.loss_fn(p, b, None))(params, batch)
  logits, _, _ = apply(params, batch["decoder_input_tokens"])
  np.testing.assert_allclose(
      float(metrics["nig_loss"]),
      _numpy_next_item_loss(np.asarray(logits),
                            batch["decoder_target_tokens"],
                            batch["decoder_loss_weights"]), rtol=1e-5)


def test_score_batch_agrees_with_training_cross_entropy(model, loss_fn, params,
                                                        batch):
  sequence_scores, aux = jax.jit(
      lambda p, b: model.score_batch(p, b, return_intermediates=True))(params,
                                                                        batch)
  _, metrics = loss_fn(params, batch)
  weights = batch["decoder_loss_weights"]
  np.testing.assert_allclose(
      -float(jnp.sum(aux["token_scores"])) / weights.sum(),
      float(metrics["nig_loss"]), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(sequence_scores),
                             np.asarray(aux["token_scores"]).sum(-1),
                             rtol=1e-6)
  assert np.all(np.asarray(aux["token_scores"])[weights == 0] == 0)


@pytest.mark.slow
def test_model_loss_gradient_matches_finite_difference(loss_fn, params, batch):
  """Directional derivative of the whole loss against central differences."""
  def loss(p):
    return loss_fn(p, batch)[0]

  eps = 1e-3

  @jax.jit
  def analytic_and_shifted(params):
    """(grad . direction, params +- eps * direction), compiled at once."""
    grads = jax.grad(loss)(params)
    keys = jax.random.split(jax.random.PRNGKey(3),
                            len(jax.tree.leaves(params)))
    direction = jax.tree.unflatten(
        jax.tree.structure(params),
        [jax.random.normal(k, x.shape) for k, x in
         zip(keys, jax.tree.leaves(params))])
    analytic = sum(jnp.vdot(g, d) for g, d in zip(
        jax.tree.leaves(grads), jax.tree.leaves(direction)))
    return analytic, [jax.tree.map(lambda p, d, s=s: p + s * eps * d,
                                   params, direction) for s in (1, -1)]

  analytic, shifted = analytic_and_shifted(params)
  analytic = float(analytic)
  numeric = (float(loss(shifted[0])) - float(loss(shifted[1]))) / (2 * eps)
  np.testing.assert_allclose(analytic, numeric, rtol=2e-2)


def _kept(sample, stop_ids=(1,)):
  """A sample's tokens up to and including its first stop id."""
  for index, token in enumerate(sample):
    if token in stop_ids:
      return sample[:index + 1]
  return sample


def _rescoring_batch(prompt, samples, stop_ids=(1,)):
  """Rows [0, prompt, sample] scored on the sample's tokens up to its stop."""
  length = 1 + len(prompt) + samples.shape[1]
  inputs = np.zeros((len(samples), length), np.int32)
  targets = np.zeros_like(inputs)
  weights = np.zeros_like(inputs)
  for row, sample in enumerate(samples.tolist()):
    sample = _kept(sample, stop_ids)
    sequence = list(prompt) + sample
    targets[row, :len(sequence)] = sequence
    inputs[row, 1:len(sequence)] = sequence[:-1]
    weights[row, len(prompt):len(sequence)] = 1
  return {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
          "decoder_loss_weights": weights}


PROMPTS = [[5, 9, 11], [7], [20, 21, 22, 23, 24, 25, 26]]


def _sample(model, params, seed, temperature):
  """3 samples of up to 11 tokens for PROMPTS (one compiled shape)."""
  batch = models.prompt_batch(PROMPTS, batch_size=4, prompt_length=10)
  decodes, aux = model.predict_batch_with_aux(
      params, batch, jax.random.PRNGKey(seed), num_decodes=3,
      temperature=temperature, max_decode_length=11)
  return np.asarray(decodes), np.asarray(aux["scores"])


@pytest.mark.parametrize("temperature", [1.0, 0.5])
@pytest.mark.slow
def test_kv_cached_sampling_log_probs_equal_rescoring(model, params, score,
                                                      temperature):
  """Scores are the untempered log-probs that re-scoring the text gives."""
  decodes, scores = _sample(model, params, 7, temperature)
  assert decodes.shape == (4, 3, 11) and scores.shape == (4, 3)
  assert np.all(np.diff(scores, axis=1) <= 0)  # Best first.
  for row in decodes.reshape(-1, 11).tolist():
    if 1 in row:
      assert not any(row[row.index(1) + 1:])
  for index, prompt in enumerate(PROMPTS):
    rescored = score(params, _rescoring_batch(prompt, decodes[index]))
    np.testing.assert_allclose(scores[index], np.asarray(rescored),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_samples_end_at_newline_pieces_of_a_pretrained_vocabulary(tmp_path):
  """A newline piece ends a sample like EOS: 0 after it, scored up to it."""
  vocabulary = newline_vocab.newline_vocabulary(tmp_path / "spm.model")
  stop_ids = vocab.item_stop_ids(vocabulary)
  newline_ids = set(stop_ids) - {1}
  assert len(newline_ids) == 4  # "\n", ".\n", "\n\n" and '<0x0A>'.
  model = models.CALRecModel(
      dataclasses.replace(CONFIG, vocab_size=vocabulary.vocab_size),
      stop_ids=sorted(newline_ids))
  assert model.stop_ids == stop_ids  # EOS always among them.
  params = models.unboxed_params(model.get_initial_variables(
      jax.random.PRNGKey(0), {"decoder_input_tokens": (1, 8)}))
  prompts = [vocabulary.encode("Title: a.\nTitle: b."),
             vocabulary.encode("Price: 10.\nTitle:")]
  batch = models.prompt_batch(prompts, batch_size=2, prompt_length=24)
  decodes, aux = model.predict_batch_with_aux(
      params, batch, jax.random.PRNGKey(5), num_decodes=64, temperature=1.0,
      max_decode_length=10)
  decodes, scores = np.asarray(decodes), np.asarray(aux["scores"])
  ended_early = 0
  for row in decodes.reshape(-1, 10).tolist():
    kept = _kept(row, stop_ids)
    assert not any(row[len(kept):])
    if kept[-1] in newline_ids:
      ended_early += len(kept) < len(row)
      assert "\n" not in vocabulary.decode(kept[:-1])
  assert ended_early >= 5
  score = jax.jit(model.score_batch)
  for index, prompt in enumerate(prompts):
    rescored = score(params, _rescoring_batch(prompt, decodes[index],
                                              stop_ids))
    np.testing.assert_allclose(scores[index], np.asarray(rescored),
                               rtol=1e-5, atol=1e-5)


# Gemma-like: local layers whose window (5) is shorter than prompt + decode,
# so a window spans the shared prompt and the sample's own tokens.
_GEMMA_LIKE = network.TransformerConfig(
    vocab_size=64, emb_dim=32, num_heads=4, num_kv_heads=1, head_dim=8,
    mlp_dim=64, num_layers=3, sliding_window=5,
    layer_types=("local", "global", "local"), post_norms=True, qk_norm=True,
    norm_scale_offset=1.0, mlp_activation="gelu_tanh", scale_embedding=True,
    query_scale=0.3, logit_scaling=False, local_rope_max_wavelength=100.0)


@pytest.mark.parametrize(
    "config",
    [CONFIG, pytest.param(_GEMMA_LIKE, marks=pytest.mark.slow)],
    ids=["global", "gemma_like"])
def test_shared_prefix_sampling_equals_copying_the_prompt_cache(config):
  """One prompt cache for all samples: the tokens and log-probs of copies."""
  shared = models.CALRecModel(config)
  copying = models.CALRecModel(config, shared_prefix=False)
  assert shared.shared_prefix and not copying.shared_prefix
  params = models.unboxed_params(shared.get_initial_variables(
      jax.random.PRNGKey(0), {"decoder_input_tokens": (1, 8)}))
  batch = models.prompt_batch(PROMPTS + [[30, 31, 32, 33, 34, 35, 36, 37, 38]],
                              batch_size=4, prompt_length=10)
  decodes, scores = [], []
  for model in (shared, copying):
    decode, aux = model.predict_batch_with_aux(
        params, batch, jax.random.PRNGKey(7), num_decodes=5, temperature=1.0,
        max_decode_length=11)
    decodes.append(np.asarray(decode))
    scores.append(np.asarray(aux["scores"]))
  np.testing.assert_array_equal(decodes[0], decodes[1])
  np.testing.assert_allclose(scores[0], scores[1], rtol=0, atol=1e-5)
  assert np.count_nonzero(decodes[0]) > 100  # Long samples, windows full.


def test_sampling_is_seeded(model, params):
  runs = [_sample(model, params, seed, 0.5)[0] for seed in (1, 1, 2)]
  np.testing.assert_array_equal(runs[0], runs[1])
  assert not np.array_equal(runs[0], runs[2])


def test_greedy_cached_decode_equals_rerunning_the_prefix(model, apply,
                                                          params):
  prompts = [[5, 9, 11, 3], [40, 41]]
  batch = models.prompt_batch(prompts, batch_size=2, prompt_length=6)
  decodes, _ = model.predict_batch_with_aux(
      params, batch, jax.random.PRNGKey(0), num_decodes=1, temperature=0.0,
      max_decode_length=6)
  for prompt, decode in zip(prompts, np.asarray(decodes)[:, 0]):
    sequence = [0] + prompt
    expected = []
    for _ in range(6):
      # Causal attention: the zero padding after the sequence is never seen.
      padded = np.zeros((1, 12), np.int32)
      padded[0, :len(sequence)] = sequence
      logits = apply(params, padded)[0]
      token = int(np.argmax(logits[0, len(sequence) - 1]))
      expected.append(token)
      if token == 1:
        break
      sequence.append(token)
    np.testing.assert_array_equal(decode[:len(expected)], expected)


def test_prompt_batch_layout_and_errors():
  batch = models.prompt_batch([[4, 5], [6]], batch_size=3, prompt_length=4)
  np.testing.assert_array_equal(batch["decoder_input_tokens"],
                                [[0, 4, 5, 0], [0, 6, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(batch["decoder_causal_attention"],
                                [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
  with pytest.raises(ValueError, match="oldest history items"):
    models.prompt_batch([[1, 2, 3, 4]], batch_size=1, prompt_length=4)
  with pytest.raises(ValueError, match="do not fit"):
    models.prompt_batch([[1], [2]], batch_size=1, prompt_length=4)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_first_sampled_token_follows_tempered_softmax(model, apply, params,
                                                      temperature):
  """4096 draws of one token against softmax(logits / T) of a full pass.

  The bound is twice the expected total variation of sampling noise,
  E|p_hat - p|_i ~ sqrt(2 p_i (1 - p_i) / (pi N)): 0.019 at T=0.5 (observed
  0.010) and 0.093 at T=2 (observed 0.045). Sampling at T=1, at T^2 or
  greedily instead would give >= 0.059 (T=0.5) and >= 0.13 (T=2).
  """
  prompt, num_decodes = [5, 9, 11], 4096
  batch = models.prompt_batch([prompt], batch_size=1, prompt_length=6)
  decodes, _ = model.predict_batch_with_aux(
      params, batch, jax.random.PRNGKey(3), num_decodes=num_decodes,
      temperature=temperature, max_decode_length=1)
  logits = np.asarray(apply(params, batch["decoder_input_tokens"])[0],
                      np.float64)[0, len(prompt)] / temperature
  expected = np.exp(logits - logits.max())
  expected /= expected.sum()
  empirical = np.bincount(np.asarray(decodes)[0, :, 0],
                          minlength=CONFIG.vocab_size) / num_decodes
  noise = 0.5 * np.sum(np.sqrt(2 * expected * (1 - expected) /
                               (np.pi * num_decodes)))
  assert 0.5 * np.abs(empirical - expected).sum() < 2 * noise


# The chunked L_NIG (trainer.output_projection) against the decoder's own
# full-vocabulary logits on a small model; NIG only (alpha = beta = 0), so the
# gradients compared are L_NIG's alone (the contrastive terms do not change).
# tests/test_trainer_losses.py covers more layouts on the projection alone.
_SMALL = network.TransformerConfig(vocab_size=64, emb_dim=16, num_heads=2,
                                   num_kv_heads=1, head_dim=8, mlp_dim=32,
                                   num_layers=1)


@pytest.mark.slow
@pytest.mark.parametrize("output_layer,chunk_size", [
    ({}, 10),  # tied, 1/sqrt(E): 7 strided chunks of 9 ids and a tail of 1
    ({"logit_scaling": False, "tie_embedding": False}, 16),  # 4 chunks
], ids=["tied_scaled", "untied_unscaled"])
def test_chunked_loss_equals_full_logits_value_and_gradients(output_layer,
                                                             chunk_size):
  config = dataclasses.replace(_SMALL, **output_layer)
  full, chunked = (models.CALRecModel(config, alpha=0.0, beta=0.0,
                                      loss_vocab_chunk_size=size)
                   for size in (None, chunk_size))
  params = models.unboxed_params(full.get_initial_variables(
      jax.random.PRNGKey(1), {"decoder_input_tokens": (1, 8)}))
  if "tie_embedding" in output_layer:
    assert "output" in params
  batch = trainer_batches.random_batch(seed=2, batch_size=4,
                                       vocab_size=config.vocab_size)

  def value_and_grad(model):
    return jax.jit(jax.value_and_grad(
        lambda p: model.loss_fn(p, batch, None), has_aux=True))(params)

  (loss, metrics), grads = value_and_grad(full)
  (chunked_loss, chunked_metrics), chunked_grads = value_and_grad(chunked)
  np.testing.assert_allclose(float(chunked_metrics["nig_loss"]),
                             float(metrics["nig_loss"]), rtol=1e-6)
  np.testing.assert_allclose(float(chunked_loss), float(loss), rtol=1e-6)
  assert jax.tree.structure(chunked_grads) == jax.tree.structure(grads)
  for (path, grad), chunked_grad in zip(
      jax.tree_util.tree_leaves_with_path(grads),
      jax.tree.leaves(chunked_grads)):
    grad = np.asarray(grad)
    np.testing.assert_allclose(np.asarray(chunked_grad), grad, rtol=1e-5,
                               atol=1e-6 * np.abs(grad).max(),
                               err_msg=jax.tree_util.keystr(path))

  score = {name: jax.jit(lambda p, b, m=m: m.score_batch(
      p, b, return_intermediates=True)) for name, m in (("full", full),
                                                        ("chunked", chunked))}
  (sequence, aux), (chunked_sequence, chunked_aux) = (
      score[name](params, batch) for name in ("full", "chunked"))
  np.testing.assert_allclose(np.asarray(chunked_aux["token_scores"]),
                             np.asarray(aux["token_scores"]), rtol=1e-6,
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(chunked_sequence),
                             np.asarray(sequence), rtol=1e-6)


def test_loss_vocab_chunk_size_must_be_positive():
  with pytest.raises(ValueError, match="loss_vocab_chunk_size"):
    models.CALRecModel(_SMALL, loss_vocab_chunk_size=0)
