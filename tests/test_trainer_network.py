"""The decoder against an independent numpy forward pass (trainer.network).

Rotary embeddings (trainer.attention) are checked by hand.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer import attention
from trainer import network

# num_kv_heads=2 < num_heads=4: grouped-query attention with 2 groups.
CONFIG = network.TransformerConfig(vocab_size=64, emb_dim=32, num_heads=4,
                                   num_kv_heads=2, head_dim=8, mlp_dim=64,
                                   num_layers=2, rope_max_wavelength=100.0)
EPSILON = 1e-6  # RMSNorm's default epsilon.


@pytest.fixture(scope="module")
def params():
  """Initial params with random norm scales (all ones would hide them)."""
  variables = jax.jit(network.Decoder(CONFIG).init)(
      jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))
  params = jax.tree.map(np.asarray, nn.meta.unbox(variables)["params"])
  rng = np.random.default_rng(0)
  for scope in [params] + [params[f"layers_{i}"]
                           for i in range(CONFIG.num_layers)]:
    for module in scope.values():
      if "scale" in module:
        module["scale"] = rng.uniform(0.5, 1.5, module["scale"].shape).astype(
            np.float32)
  return params


def _rms_norm(x, scale):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPSILON) * scale


def _rotary(x, positions):
  """x [T, N, d] with pairs (i, i + d/2) rotated by positions [T] angles."""
  half = x.shape[-1] // 2
  frequency = CONFIG.rope_max_wavelength**(-np.arange(half) / half)
  angle = positions[:, None, None] * frequency
  first, second = x[..., :half], x[..., half:]
  return np.concatenate([
      first * np.cos(angle) - second * np.sin(angle),
      second * np.cos(angle) + first * np.sin(angle)], axis=-1)


def _attention(x, p):
  """Causal grouped-query attention over one sequence x [T, E]."""
  length = x.shape[0]
  positions = np.arange(length, dtype=np.float64)
  query = _rotary(np.einsum("te,enh->tnh", x, p["query"]["kernel"]),
                  positions)
  key = _rotary(np.einsum("te,enh->tnh", x, p["key"]["kernel"]), positions)
  value = np.einsum("te,enh->tnh", x, p["value"]["kernel"])
  group = CONFIG.num_heads // CONFIG.num_kv_heads
  heads = []
  for h in range(CONFIG.num_heads):
    kv = h // group  # Standard GQA: consecutive query heads share a kv head.
    scores = query[:, h] @ key[:, kv].T / np.sqrt(CONFIG.head_dim)
    scores = np.where(np.tril(np.ones((length, length), bool)), scores,
                      -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads.append(weights @ value[:, kv])
  return np.einsum("tnh,nhe->te", np.stack(heads, 1), p["out"]["kernel"])


def _mlp(x, p):
  gate = x @ p["wi_gate"]["kernel"]
  silu = gate / (1 + np.exp(-gate))
  return (silu * (x @ p["wi_up"]["kernel"])) @ p["wo"]["kernel"]


def _numpy_decoder(params, tokens):
  """(logits [T, V], hidden [T, E]) of one sequence, in float64."""
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  embedding = params["embedding"]["embedding"]
  x = embedding[tokens]
  for i in range(CONFIG.num_layers):
    layer = params[f"layers_{i}"]
    x = x + _attention(
        _rms_norm(x, layer["pre_attention_norm"]["scale"]),
        layer["attention"])
    x = x + _mlp(_rms_norm(x, layer["pre_mlp_norm"]["scale"]), layer["mlp"])
  hidden = _rms_norm(x, params["final_norm"]["scale"])
  return hidden @ embedding.T / np.sqrt(CONFIG.emb_dim), hidden


def test_decoder_matches_numpy_forward_pass(params):
  tokens = np.random.default_rng(1).integers(0, CONFIG.vocab_size, (2, 7))
  logits_at = np.array([[6, 0], [3, 4]])
  apply = jax.jit(lambda p, t, at: network.Decoder(CONFIG).apply(
      {"params": p}, t, logits_at=at))
  logits, hidden, cache = apply(params, tokens, None)
  picked, _, _ = apply(params, tokens, logits_at)
  assert cache is None and logits.dtype == jnp.float32
  for row in range(2):
    expected_logits, expected_hidden = _numpy_decoder(params, tokens[row])
    np.testing.assert_allclose(hidden[row], expected_hidden, atol=1e-5,
                               rtol=1e-5)
    np.testing.assert_allclose(logits[row], expected_logits, atol=1e-5,
                               rtol=1e-5)
    np.testing.assert_allclose(picked[row], expected_logits[logits_at[row]],
                               atol=1e-5, rtol=1e-5)


def test_rotary_by_hand():
  """d=4, wavelength 100: frequencies (1, 0.1); pairs are (0, 2), (1, 3)."""
  x = np.eye(4, dtype=np.float32)[None, None, :2]  # [1, 1, 2 heads, 4]
  for position in (0.0, 1.0, 2.5):
    rotated = attention.apply_rotary(jnp.asarray(x),
                                     jnp.full((1, 1), position), 100.0)[0, 0]
    c, s = np.cos(position), np.sin(position)
    c10, s10 = np.cos(position / 10), np.sin(position / 10)
    np.testing.assert_allclose(rotated, [[c, 0, s, 0], [0, c10, 0, s10]],
                               atol=1e-6)


def test_rotary_dot_product_depends_only_on_offset():
  rng = np.random.default_rng(2)
  q, k = rng.normal(size=(2, 1, 1, 1, 8)).astype(np.float32)

  def rotate(x, position):
    return attention.apply_rotary(jnp.asarray(x), jnp.full((1, 1), position),
                                  10_000.0)[0, 0, 0]

  np.testing.assert_allclose(rotate(q, 0), q[0, 0, 0], atol=1e-6)
  for offset in (0, 1, 3):
    dots = [float(rotate(q, n + offset) @ rotate(k, n)) for n in (0, 5, 17)]
    np.testing.assert_allclose(dots, dots[0], atol=1e-4)
  assert abs(float(rotate(q, 3) @ rotate(k, 0)) -
             float(q[0, 0, 0] @ k[0, 0, 0])) > 1e-2


def test_num_params_counts_every_switch():
  config = network.TransformerConfig(
      vocab_size=64, emb_dim=16, num_heads=4, num_kv_heads=2, head_dim=8,
      mlp_dim=24, num_layers=3, norm_scale_offset=1.0, post_norms=True,
      qk_norm=True, qkv_bias=True, tie_embedding=False, sliding_window=2,
      layer_types=["local", "global", "local"], mlp_activation="gelu_tanh")
  variables = jax.eval_shape(network.Decoder(config).init,
                             jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))
  leaves = jax.tree.leaves(nn.meta.unbox(variables)["params"])
  assert config.num_params() == sum(leaf.size for leaf in leaves)
  assert config.layer_types == ("local", "global", "local")  # Hashable.
  assert CONFIG.num_params() == 64 * 32 + 32 + 2 * (
      32 * 8 * 12 + 3 * 32 * 64 + 2 * 32)


@pytest.mark.parametrize("fields, message", [
    ({"layer_types": ("local",)}, "layer_types has 1 entries"),
    ({"layer_types": ("global", "sliding")}, "not one of"),
    ({"layer_types": ("local", "global")}, "positive sliding_window"),
    ({"mlp_activation": "relu"}, "mlp_activation 'relu'"),
    ({"rope_scaling_type": "yarn"}, "rope_scaling_type 'yarn'"),
])
def test_config_validation(fields, message):
  with pytest.raises(ValueError, match=message):
    network.TransformerConfig(num_layers=2, **fields)
