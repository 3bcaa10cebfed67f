"""LoRA fine-tuning: the adapters, frozen base parameters, Stage II restores."""

import dataclasses
import json
import pathlib
import re

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tasks_testdata
import trainer_batches

from trainer import checkpoints
from trainer import layers
from trainer import model_dir as model_dir_lib
from trainer import models
from trainer import network
from trainer import partitioning
from trainer import train_config
from trainer import train_lib
from trainer import train_loop

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
LORA_GIN = REPO_ROOT / "trainer" / "configs" / "peft" / "lora.gin"
# Gemma 3's switches, tiny.
BASE = network.TransformerConfig(
    vocab_size=64, emb_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
    mlp_dim=48, num_layers=2, norm_scale_offset=1.0,
    mlp_activation="gelu_tanh", post_norms=True, qk_norm=True,
    scale_embedding=True, logit_scaling=False, sliding_window=4,
    layer_types=("local", "global"))
LORA = dataclasses.replace(BASE, lora_rank=4, lora_alpha=8.0)
LENGTHS = {"inputs": 24, "targets": 8}


def _params(config: network.TransformerConfig, seed: int = 0):
  return nn.meta.unbox(network.Decoder(config).init(
      jax.random.PRNGKey(seed), jnp.zeros((1, 8), jnp.int32))["params"])


def _flat(tree) -> dict[str, np.ndarray]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(x)
          for path, x in leaves}


def _is_lora(name: str) -> bool:
  return name.rsplit("/", 1)[-1] in layers.LORA_PARAMS


def _with_base(lora_params, base_params):
  """LoRA parameters whose base parameters are `base_params`'."""
  base = _flat(base_params)
  return jax.tree_util.tree_map_with_path(
      lambda path, x: base.get("/".join(str(k.key) for k in path), x),
      lora_params)


def _shipped_frozen_params() -> list[str]:
  gin.clear_config()
  try:
    gin.parse_config_file(str(LORA_GIN))
    return list(gin.query_parameter(
        "train_lib.create_optimizer.frozen_params"))
  finally:
    gin.clear_config()


def test_lora_params_and_axes_on_every_target():
  boxed = network.Decoder(LORA).init(jax.random.PRNGKey(0),
                                     jnp.zeros((1, 8), jnp.int32))["params"]
  attention = boxed["layers_0"]["attention"]
  assert attention["out"]["lora_a"].names == ("heads", "kv", "lora_rank")
  assert attention["out"]["lora_b"].names == ("lora_rank", "embed")
  assert attention["key"]["lora_a"].value.shape == (32, 4)
  assert attention["key"]["lora_b"].names == ("lora_rank", "kv_heads", "kv")
  assert boxed["layers_1"]["mlp"]["wo"]["lora_a"].names == ("mlp",
                                                             "lora_rank")
  names = _flat(nn.meta.unbox(boxed))
  lora = [name for name in names if _is_lora(name)]
  assert len(lora) == 2 * 2 * len(network.LORA_TARGETS)
  assert all(not np.any(names[name]) for name in lora
             if name.endswith("lora_b"))
  assert all(np.std(names[name]) > 0 for name in lora
             if name.endswith("lora_a"))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_fresh_lora_model_computes_its_base_model_exactly(dtype):
  base_config = dataclasses.replace(BASE, dtype=dtype)
  lora_config = dataclasses.replace(LORA, dtype=dtype, remat=True)
  base = _params(base_config)
  lora = _with_base(_params(lora_config, seed=1), base)
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 10), 0, 64)
  expected = network.Decoder(base_config).apply({"params": base}, tokens)
  got = network.Decoder(lora_config).apply({"params": lora}, tokens)
  np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(expected[0]))
  np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(expected[1]))
  # The cached path (prefill) too.
  cache = network.init_cache(lora_config, 2, 16)
  cached = network.Decoder(lora_config).apply({"params": lora}, tokens,
                                              cache=cache)
  base_cached = network.Decoder(base_config).apply(
      {"params": base}, tokens, cache=network.init_cache(base_config, 2, 16))
  np.testing.assert_array_equal(np.asarray(cached[0]),
                                np.asarray(base_cached[0]))


def test_the_adapters_add_scale_times_x_a_b():
  layer = layers.DenseGeneral((3,), ("embed", "mlp"), lora_rank=2,
                              lora_scale=0.5)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
  params = layer.init(jax.random.PRNGKey(1), x)["params"]
  params = nn.meta.unbox(params)
  params["lora_b"] = jax.random.normal(jax.random.PRNGKey(2), (2, 3))
  expected = x @ params["kernel"] + 0.5 * (x @ params["lora_a"]) @ (
      params["lora_b"])
  np.testing.assert_allclose(layer.apply({"params": params}, x), expected,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides", [
    {}, {"lora_targets": ("query", "wo")}, {"qkv_bias": True},
    {"tie_embedding": False, "num_kv_heads": 4}])
def test_num_params_counts_the_adapters(overrides):
  config = dataclasses.replace(LORA, **overrides)
  params = _flat(_params(config))
  assert config.num_params() == sum(x.size for x in params.values())
  assert config.num_lora_params() == sum(
      x.size for name, x in params.items() if _is_lora(name))
  assert dataclasses.replace(config, lora_rank=0).num_lora_params() == 0


def test_an_unknown_lora_target_names_the_valid_ones():
  with pytest.raises(ValueError) as error:
    dataclasses.replace(BASE, lora_rank=4, lora_targets=["query", "q_proj"])
  # The first line: gin adds the configurable's name below.
  assert str(error.value).splitlines()[0] == (
      "lora_targets ['q_proj'] are not among ('query', 'key', 'value', "
      "'out', 'wi_gate', 'wi_up', 'wo').")
  with pytest.raises(ValueError, match="lora_rank must be >= 0"):
    dataclasses.replace(BASE, lora_rank=-1)


def _trainer(config: network.TransformerConfig,
             frozen_params=(), seed: int = 0) -> train_lib.Trainer:
  batch = trainer_batches.random_batch(0, 4, config.vocab_size,
                                       LENGTHS["inputs"], LENGTHS["targets"])
  return train_lib.Trainer(
      models.CALRecModel(config),
      train_lib.create_optimizer(1e-2, frozen_params=frozen_params),
      partitioning.Partitioner(), {k: v.shape for k, v in batch.items()},
      seed=seed)


@pytest.fixture(scope="module")
def lora_trainer() -> train_lib.Trainer:
  """A LoRA trainer with the shipped freezing, as a Stage II run has.

  Shared: each `Trainer` compiles its own steps, so one per module saves
  their compilation. Tests take fresh states from it (`initial_state`).
  """
  return _trainer(LORA, _shipped_frozen_params(), seed=7)


@pytest.fixture(scope="module")
def base_trainer() -> train_lib.Trainer:
  """A trainer of the network without LoRA (the pretrained one)."""
  return _trainer(BASE, seed=5)


@pytest.mark.slow
def test_training_with_the_shipped_freezing_moves_only_the_adapters(
    lora_trainer):
  trainer = lora_trainer
  state = trainer.initial_state()
  before = _flat(state.params)
  for step in range(3):
    batch = trainer_batches.random_batch(step, 4, LORA.vocab_size,
                                         LENGTHS["inputs"],
                                         LENGTHS["targets"])
    state, metrics = trainer.train_step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
  after = _flat(state.params)
  for name, value in before.items():
    if _is_lora(name):
      assert not np.array_equal(after[name], value), name
    else:
      np.testing.assert_array_equal(after[name], value, err_msg=name)
  # AdamW moments for the adapters only.
  moments = sum(x.size for x in jax.tree.leaves(state.opt_state)
                if np.ndim(x) > 0)
  assert moments == 2 * LORA.num_lora_params()


def _write_run(model_dir: pathlib.Path, trainer: train_lib.Trainer,
               state: train_lib.TrainState) -> pathlib.Path:
  """A model directory as `trainer.train` or `trainer.convert` leaves it."""
  manager = checkpoints.CheckpointManager(model_dir)
  manager.save(state)
  manager.close()
  (model_dir / model_dir_lib.MODEL_JSON).write_text(json.dumps({
      "network": dataclasses.asdict(trainer.model.config),
      "loss": {"alpha": 0.125, "beta": -0.025,
               "contrastive_temperature": 0.5},
      "eos_id": 1, "extra_ids": 0, "task_feature_lengths": {},
      "best_metric": None, "best_mode": "min"}))
  return checkpoints.step_path(model_dir, int(state.step))


@pytest.mark.slow
def test_stage2_lora_from_a_checkpoint_without_lora(tmp_path, base_trainer,
                                                   lora_trainer):
  pretrained = base_trainer
  pretrained_state = pretrained.initial_state()
  expected = _flat(pretrained_state.params)
  step_dir = _write_run(tmp_path / "pretrained", pretrained, pretrained_state)
  lora = lora_trainer
  fresh = _flat(lora.initial_state().params)
  manager = checkpoints.CheckpointManager(tmp_path / "stage2")
  config = train_config.TrainConfig(
      model_dir=str(tmp_path / "stage2"), mixture_or_task_name="unused",
      task_feature_lengths=LENGTHS, train_steps=0, batch_size=4,
      initial_checkpoint_path=str(tmp_path / "pretrained"))
  state = train_loop._initial_state(  # pylint: disable=protected-access
      config, lora, manager, iter([]))
  manager.close()
  restored = _flat(state.params)
  assert int(state.step) == 0 and set(restored) == set(fresh)
  for name, value in restored.items():
    np.testing.assert_array_equal(
        value, fresh[name] if _is_lora(name) else expected[name],
        err_msg=name)
  # The checkpoint's function at step 0 (B = 0 adds exact zeros, but XLA
  # may fuse the two networks' float32 sums in another order).
  batch = trainer_batches.random_batch(9, 4, BASE.vocab_size,
                                       LENGTHS["inputs"], LENGTHS["targets"])
  np.testing.assert_allclose(
      float(lora.eval_step(state.params, batch)["loss"]),
      float(pretrained.eval_step(pretrained_state.params, batch)["loss"]),
      rtol=1e-6)
  # Without fresh parameters the adapters cannot be made up.
  with pytest.raises(ValueError, match=r"has no LoRA parameters \(layers_0/"):
    checkpoints.restore_params(step_dir, lora.abstract_params)


@pytest.mark.slow
def test_a_lora_checkpoint_into_a_model_without_lora_is_refused(
    tmp_path, base_trainer, lora_trainer):
  lora = lora_trainer
  step_dir = _write_run(tmp_path, lora, lora.initial_state())
  with pytest.raises(ValueError, match=re.escape(
      "is of another network: lora_rank 4 there, 0 here")):
    model_dir_lib.check_same_network(step_dir, BASE)
  # Another rank of a LoRA checkpoint is another network too.
  with pytest.raises(ValueError, match="lora_rank 4 there, 8 here"):
    model_dir_lib.check_same_network(
        step_dir, dataclasses.replace(LORA, lora_rank=8))
  model_dir_lib.check_same_network(step_dir, dataclasses.replace(
      LORA, dtype="bfloat16"))
  # Without model.json (a bare step directory): the parameters tell.
  with pytest.raises(ValueError, match=(
      r"does not fit the model: holds layers_0/attention/key/lora_a, .* and "
      r"\d+ more, which the model has not")):
    checkpoints.restore_params(step_dir, base_trainer.abstract_params)


@pytest.mark.slow
def test_load_for_inference_loads_a_lora_run(tmp_path, lora_trainer):
  trainer = lora_trainer
  state = trainer.initial_state()
  # Trained adapters: B no longer zero.
  state = state.replace(params=jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.01 if path[-1].key == "lora_b" else x,
      state.params))
  manager = checkpoints.CheckpointManager(tmp_path)
  manager.save(state)
  manager.close()
  vocabulary = tasks_testdata.train_test_vocabulary(tmp_path / "v.model")
  model_dir_lib.write_model_metadata(
      tmp_path, trainer.model, seqio.SentencePieceVocabulary(vocabulary),
      LENGTHS, None, "min")
  metadata = json.loads((tmp_path / model_dir_lib.MODEL_JSON).read_text())
  assert metadata["network"]["lora_rank"] == 4
  assert metadata["network"]["lora_targets"] == list(network.LORA_TARGETS)
  loaded = model_dir_lib.load_for_inference(tmp_path)
  assert loaded.model.config == LORA
  for name, value in _flat(state.params).items():
    np.testing.assert_array_equal(_flat(loaded.params)[name], value)
  tokens = jnp.arange(12)[None] % LORA.vocab_size
  np.testing.assert_array_equal(
      loaded.model.module.apply({"params": loaded.params}, tokens)[0],
      network.Decoder(LORA).apply({"params": state.params}, tokens)[0])


@pytest.mark.parametrize("peft, lora_rank, frozen", [
    (None, 0, ()), ("frozen_embedding", 0, ("embedding/.*",)),
    ("lora", 16, ("(?!.*/lora_[ab]$).*",))])
def test_gemma_stage2_config_and_its_switches(peft, lora_rank, frozen):
  from trainer import train  # pylint: disable=g-import-not-at-top
  files = ["trainer/configs/runs/gemma3_270m_stage2.gin"]
  if peft:
    files.append(f"trainer/configs/peft/{peft}.gin")
  gin.clear_config()
  try:
    train.parse_gin(files, [
        "MODEL_DIR = 'm'", "DATA_DIR = 'd'", "VOCABULARY = 'v'",
        "MIXTURE_OR_TASK_NAME = 'calrec_scientific'",
        "INITIAL_CHECKPOINT_PATH = 'gemma3_270m'"])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    assert (model.config.dtype, model.config.remat) == ("bfloat16", True)
    assert model.config.lora_rank == lora_rank
    assert model.config.vocab_size == 262144 and model.config.num_layers == 18
    assert (model.alpha, model.beta, model.contrastive_temperature) == (
        0.125, -0.025, 0.5)
    assert gin.query_parameter("%LEARNING_RATE") == 1e-4
    try:
      bound = tuple(gin.query_parameter(
          "train_lib.create_optimizer.frozen_params"))
    except ValueError:
      bound = ()
    assert bound == frozen
  finally:
    gin.clear_config()
