"""Hugging Face checkpoints against transformers (trainer.hf_weights).

Tiny random Gemma 3, Llama (llama3 rope scaling, untied) and Qwen2 (q/k/v
biases) models are built here, saved with save_pretrained, read back, converted
and run by `network.Decoder`; their logits must equal transformers' logits.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer import hf_config as hf_config_lib
from trainer import hf_weights
from trainer import network
from trainer import safetensors_io

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LENGTH = 12  # Longer than the Gemma window (4), shorter than llama3's 16.
TOLERANCE = 1e-4


def _gemma():
  return transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
      vocab_size=96, hidden_size=32, intermediate_size=48,
      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
      head_dim=16, query_pre_attn_scalar=12, sliding_window=4,
      layer_types=["sliding_attention", "sliding_attention",
                   "full_attention", "sliding_attention"],
      rope_parameters={
          "full_attention": {"rope_type": "linear", "factor": 2.0,
                             "rope_theta": 1_000_000.0},
          "sliding_attention": {"rope_type": "default",
                                "rope_theta": 10_000.0}},
      attn_implementation="eager"))


def _llama():
  return transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=80, hidden_size=32, intermediate_size=40,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
      rms_norm_eps=1e-5, tie_word_embeddings=False,
      rope_parameters={"rope_type": "llama3", "rope_theta": 10_000.0,
                       "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 16},
      attn_implementation="eager"))


def _qwen2():
  return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
      vocab_size=72, hidden_size=32, intermediate_size=40,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
      rms_norm_eps=1e-6, tie_word_embeddings=True,
      rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
      attn_implementation="eager"))


BUILDERS = {"gemma3_text": _gemma, "llama": _llama, "qwen2": _qwen2}
# The Llama checkpoint is written in shards.
SHARD_SIZE = {"llama": "20KB"}


def _randomize(model):
  """Random weights everywhere (norm weights and biases start at 0 or 1)."""
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for parameter in model.parameters():
      parameter.copy_(0.3 * torch.randn(parameter.shape,
                                        generator=generator))
  return model.eval()


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.as_tensor(tokens)).logits.numpy()


def _our_logits(config, params, tokens):
  logits, _, _ = jax.jit(network.Decoder(config).apply)({"params": params},
                                                         tokens)
  return np.asarray(logits)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """model_type -> (checkpoint dir, transformers model, tokens, HF logits)."""
  out = {}
  for model_type, build in BUILDERS.items():
    torch.manual_seed(0)
    model = _randomize(build())
    path = str(tmp_path_factory.mktemp(model_type))
    model.save_pretrained(path,
                          max_shard_size=SHARD_SIZE.get(model_type, "5GB"))
    tokens = np.random.default_rng(1).integers(
        0, model.config.vocab_size, (2, LENGTH))
    out[model_type] = (path, model, tokens, _hf_logits(model, tokens))
  return out


@pytest.fixture(scope="module")
def converted(checkpoints):
  """model_type -> (config, params) read from the saved checkpoint."""
  out = {}
  for model_type, (path, _, _, _) in checkpoints.items():
    hf_config, tensors = safetensors_io.read_safetensors_dir(path)
    config = hf_config_lib.config_from_hf(hf_config)
    out[model_type] = (config, hf_weights.params_from_hf(tensors, config))
  return out


@pytest.mark.parametrize("model_type", list(BUILDERS))
def test_logits_equal_transformers(checkpoints, converted, model_type):
  path, model, tokens, expected = checkpoints[model_type]
  config, params = converted[model_type]
  if model_type == "llama":
    assert any(name.startswith("model-") for name in os.listdir(path))
  variables = jax.eval_shape(network.Decoder(config).init,
                             jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))
  shapes = jax.tree.map(lambda x: x.shape, nn.meta.unbox(variables)["params"])
  assert jax.tree.map(np.shape, params) == shapes
  assert config.num_params() == sum(
      p.numel() for p in model.parameters()) == sum(
          x.size for x in jax.tree.leaves(params))
  logits = _our_logits(config, params, tokens)
  difference = float(np.max(np.abs(logits - expected)))
  print(f"{model_type}: max |logit difference| {difference:.2e}")
  assert difference < TOLERANCE


def test_gemma_cached_decoding_equals_full_sequence(converted, checkpoints):
  """Prefill then one token at a time, far past the 4-slot ring window; rows
  right-padded to different prompt lengths, as the sampler feeds them."""
  config, params = converted["gemma3_text"]
  tokens = checkpoints["gemma3_text"][2]
  full = _our_logits(config, params, tokens)
  decoder = network.Decoder(config)
  prompt_lengths = jnp.array([3, 7])
  padded = jnp.where(jnp.arange(8)[None] < prompt_lengths[:, None],
                     tokens[:, :8], 0)
  cache = network.init_cache(config, 2, LENGTH)
  assert [layer["keys"].shape[1] for layer in cache] == [4, 4, LENGTH, 4]
  prefill, _, cache = jax.jit(decoder.apply)({"params": params}, padded,
                                             cache=cache,
                                             lengths=prompt_lengths)
  for row, length in enumerate([3, 7]):
    np.testing.assert_allclose(prefill[row, :length], full[row, :length],
                               atol=TOLERANCE)
  step = jax.jit(lambda cache, token, position: decoder.apply(
      {"params": params}, token, position, cache))
  got = {0: [], 1: []}
  for offset in range(LENGTH - 3):
    positions = prompt_lengths + offset
    live = positions < LENGTH
    positions = jnp.minimum(positions, LENGTH - 1)
    token = jnp.take_along_axis(jnp.asarray(tokens), positions[:, None], 1)
    logits, _, new_cache = step(cache, token, positions[:, None])
    # A finished row keeps its cache (a stand-in for the sampler's padding).
    cache = jax.tree.map(
        lambda new, old: jnp.where(
            live.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
        new_cache, cache)
    for row in range(2):
      if live[row]:
        got[row].append(logits[row, 0])
  for row, length in enumerate([3, 7]):
    np.testing.assert_allclose(np.stack(got[row]), full[row, length:],
                               atol=TOLERANCE)


def test_cached_decoding_of_unpadded_prompt(converted, checkpoints):
  """Without `lengths`, a prefill longer than the window fills the ring."""
  config, params = converted["gemma3_text"]
  tokens = checkpoints["gemma3_text"][2]
  full = _our_logits(config, params, tokens)
  apply = jax.jit(network.Decoder(config).apply)
  cache = network.init_cache(config, 2, LENGTH)
  _, _, cache = apply({"params": params}, tokens[:, :9], cache=cache)
  positions = np.arange(9, LENGTH)[None].repeat(2, 0)
  logits, _, _ = apply({"params": params}, tokens[:, 9:], positions, cache)
  np.testing.assert_allclose(logits, full[:, 9:], atol=TOLERANCE)


@pytest.mark.parametrize("model_type", list(BUILDERS))
def test_export_round_trip(checkpoints, converted, model_type, tmp_path):
  config, params = converted[model_type]
  _, _, tokens, expected = checkpoints[model_type]
  hf_config = hf_config_lib.config_to_hf(config, model_type)
  tensors = hf_weights.params_to_hf(params, config, model_type)
  shard = 4096 if model_type == "gemma3_text" else None
  safetensors_io.write_safetensors_dir(str(tmp_path), hf_config, tensors,
                                   max_shard_bytes=shard)
  read_config, read_tensors = safetensors_io.read_safetensors_dir(str(tmp_path))
  assert read_config == json.loads(json.dumps(hf_config))
  assert hf_config_lib.config_from_hf(read_config) == config
  again = hf_weights.params_from_hf(read_tensors, config)
  jax.tree.map(np.testing.assert_array_equal, again, params)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), attn_implementation="eager")
  logits = _hf_logits(model.eval(), tokens)
  assert float(np.max(np.abs(logits - expected))) < TOLERANCE


def test_legacy_and_multimodal_gemma_configs(checkpoints, converted):
  """Pre-rope_parameters keys and a 'gemma3' wrapper give the same config."""
  config = converted["gemma3_text"][0]
  with open(os.path.join(checkpoints["gemma3_text"][0], "config.json")) as f:
    hf_config = json.load(f)
  legacy = {key: value for key, value in hf_config.items()
            if key not in ("rope_parameters", "layer_types",
                           "_sliding_window_pattern")}
  legacy.update(rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
                rope_scaling={"rope_type": "linear", "factor": 2.0},
                sliding_window_pattern=3, num_hidden_layers=4)
  # Pattern 3 over 4 layers: local, local, global, local.
  assert hf_config_lib.config_from_hf(legacy) == config
  wrapped = {"model_type": "gemma3", "text_config": legacy,
             "vision_config": {}}
  assert hf_config_lib.config_from_hf(wrapped, dtype="bfloat16") == (
      network.TransformerConfig(**{**config.__dict__, "dtype": "bfloat16"}))


def test_multimodal_tensor_names(converted):
  config, params = converted["qwen2"]
  tensors = hf_weights.params_to_hf(params, config, "qwen2")
  renamed = {name.replace("model.", "model.language_model.", 1): array
             for name, array in tensors.items()}
  renamed["model.vision_tower.patch.weight"] = np.zeros(3)
  renamed["model.rotary_emb.inv_freq"] = np.zeros(4)
  again = hf_weights.params_from_hf(renamed, config)
  jax.tree.map(np.testing.assert_array_equal, again, params)


def test_tensor_errors(converted):
  config, params = converted["llama"]
  tensors = hf_weights.params_to_hf(params, config, "llama")
  missing = dict(tensors)
  del missing["model.layers.1.self_attn.k_proj.weight"]
  with pytest.raises(ValueError, match=r"lacks tensor model\.layers\.1\."
                     r"self_attn\.k_proj\.weight"):
    hf_weights.params_from_hf(missing, config)
  wrong = dict(tensors, **{"lm_head.weight": np.zeros((80, 31))})
  with pytest.raises(ValueError, match=r"lm_head\.weight has shape \(80, 31\)"
                     r"; expected \(80, 32\)"):
    hf_weights.params_from_hf(wrong, config)
  extra = dict(tensors, **{"model.layers.0.mlp.extra.weight": np.zeros(2)})
  with pytest.raises(ValueError, match="model.layers.0.mlp.extra.weight"):
    hf_weights.params_from_hf(extra, config)
  tied_config, tied_params = converted["qwen2"]
  tied = hf_weights.params_to_hf(tied_params, tied_config, "qwen2")
  tied["lm_head.weight"] = tied["model.embed_tokens.weight"] + 1
  with pytest.raises(ValueError, match="lm_head.weight differs"):
    hf_weights.params_from_hf(tied, tied_config)


def test_config_errors():
  with pytest.raises(ValueError, match="supported: gemma3_text, gemma3, "
                     "llama, qwen2, mistral"):
    hf_config_lib.config_from_hf({"model_type": "gpt2"})
  with pytest.raises(ValueError, match="lacks intermediate_size"):
    hf_config_lib.config_from_hf({"model_type": "llama", "vocab_size": 8,
                               "hidden_size": 8, "num_hidden_layers": 1,
                               "num_attention_heads": 2})
  # Today's randomly initialised models scale their tied logits.
  with pytest.raises(ValueError, match="logit_scaling=True"):
    hf_config_lib.config_to_hf(network.TransformerConfig(), "llama")
  with pytest.raises(ValueError, match="Unsupported model_type 'gpt2'"):
    hf_config_lib.config_to_hf(network.TransformerConfig(), "gpt2")


def test_mistral_is_llama_with_a_window():
  hf = {"model_type": "mistral", "vocab_size": 8, "hidden_size": 16,
        "intermediate_size": 8, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1,
        "sliding_window": 5}
  config = hf_config_lib.config_from_hf(hf)
  assert config.layer_types == ("local", "local")
  assert config.sliding_window == 5 and config.head_dim == 8
  assert hf_config_lib.config_from_hf(
      {**hf, "sliding_window": None}).layer_types == ()


def test_directory_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="No config.json"):
    safetensors_io.read_safetensors_dir(str(tmp_path))
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="Neither model.safetensors"):
    safetensors_io.read_safetensors_dir(str(tmp_path))
  safetensors_io.write_safetensors_dir(str(tmp_path), {"model_type": "llama"},
                                   {"a": np.ones(300, np.float32),
                                    "b": np.ones(3, np.float32)},
                                   max_shard_bytes=1000)
  os.remove(tmp_path / "model-00002-of-00002.safetensors")
  with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
    safetensors_io.read_safetensors_dir(str(tmp_path))


def test_safetensors_dtypes_round_trip(tmp_path):
  """bfloat16 (most HF checkpoints) and others, against the reference
  safetensors reader."""
  from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
  tensors = {
      "bf16": np.arange(6, dtype=np.float32).reshape(2, 3).astype(
          jnp.bfloat16),
      "f16": np.full((2,), 0.5, np.float16),
      "i64": np.arange(3, dtype=np.int64),
      "empty": np.zeros((0, 4), np.float32),
  }
  path = str(tmp_path / "x.safetensors")
  safetensors_io.write_safetensors(path, tensors)
  read = safetensors_io.read_safetensors(path)
  for name, array in tensors.items():
    assert read[name].dtype == array.dtype
    np.testing.assert_array_equal(read[name], array)
  reference = load_file(path)
  assert reference["bf16"].dtype == torch.bfloat16
  np.testing.assert_array_equal(reference["bf16"].float().numpy(),
                                tensors["bf16"].astype(np.float32))
