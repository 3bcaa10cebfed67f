"""The sampling memory estimate: hand-counted caches, and an upper bound of
XLA's own buffer assignment for the compiled sampler."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import pytest

from trainer import models
from trainer import network
from trainer import sampling_memory

# Two layers, one local with a window of 4 slots: 2 x 1 x 8 float32 = 64
# bytes per cached token and layer.
SMALL = network.TransformerConfig(
    vocab_size=64, emb_dim=16, num_heads=2, num_kv_heads=1, head_dim=8,
    mlp_dim=32, num_layers=2, layer_types=("local", "global"),
    sliding_window=4)
# Gemma 3 270M's shapes but for two layers (one local, one global) and an
# eighth of its vocabulary, and the tiny model the project trains.
GEMMA_LIKE = network.TransformerConfig(
    vocab_size=32768, emb_dim=640, num_heads=4, num_kv_heads=1, head_dim=256,
    mlp_dim=2048, num_layers=2, mlp_activation="gelu_tanh", post_norms=True,
    qk_norm=True, scale_embedding=True, query_scale=0.0625,
    logit_scaling=False, sliding_window=64, layer_types=("local", "global"))
TINY = network.TransformerConfig(vocab_size=1024, emb_dim=128, num_heads=4,
                                 num_kv_heads=1, head_dim=32, mlp_dim=512)


def test_caches_count_the_prompt_once_and_local_layers_their_window():
  # Prompt 10, 3 samples of 5 tokens. Shared: the prompt in 4 + 10 slots,
  # each sample min(5, 4) + 5; copies: each sample min(15, 4) + 15.
  assert sampling_memory.cache_bytes(SMALL, 10, 3, 5) == (14 + 3 * 9) * 64
  assert sampling_memory.cache_bytes(SMALL, 10, 3, 5,
                                     shared_prefix=False) == 3 * 19 * 64
  bfloat16 = dataclasses.replace(SMALL, dtype="bfloat16")
  assert sampling_memory.cache_bytes(bfloat16, 10, 3, 5) == 41 * 32


def _xla_bytes(model, params, prompts, prompt_length, num_decodes,
               max_decode_length):
  """Temporaries + outputs of the compiled sampler for `prompts` prompts."""
  sample = jax.jit(functools.partial(
      model.predict_batch_with_aux, num_decodes=num_decodes,
      temperature=0.5, max_decode_length=max_decode_length))
  tokens = jnp.zeros((prompts, prompt_length), jnp.int32)
  batch = {"decoder_input_tokens": tokens,
           "decoder_causal_attention": tokens}
  analysis = sample.lower(params, batch,
                          jax.random.PRNGKey(0)).compile().memory_analysis()
  return analysis.temp_size_in_bytes + analysis.output_size_in_bytes


@pytest.mark.parametrize("config, sampler, shared_prefix, shape", [
    pytest.param(GEMMA_LIKE, "gumbel", True, (256, 32, 80),
                 marks=pytest.mark.slow),
    pytest.param(GEMMA_LIKE, "inverse_cdf", False, (64, 8, 48),
                 marks=pytest.mark.slow),
    (TINY, "gumbel", False, (256, 32, 80)),
    (TINY, "inverse_cdf", True, (128, 4, 16)),
])
def test_the_estimate_bounds_xlas_buffers_from_above(config, sampler,
                                                     shared_prefix, shape):
  prompt_length, num_decodes, max_decode_length = shape
  model = models.CALRecModel(config, sampler=sampler,
                             shared_prefix=shared_prefix)
  # Compiling needs the parameters' shapes only (no initialisation).
  params = jax.eval_shape(
      lambda rng: models.unboxed_params(model.get_initial_variables(
          rng, {"decoder_input_tokens": (1, 8)})), jax.random.PRNGKey(0))
  estimate = sampling_memory.sampling_bytes(
      config, prompt_length, num_decodes, max_decode_length, shared_prefix)
  for prompts in (1, 4):
    xla = _xla_bytes(model, params, prompts, prompt_length, num_decodes,
                     max_decode_length)
    # An upper bound, and not a loose one (1.1x to 2.3x measured).
    assert xla <= prompts * estimate <= 2.5 * xla
