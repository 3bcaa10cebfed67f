"""A sharded train step on 8 CPU devices equals the 1-device step.

jax fixes its device count when it first starts, so the comparison runs in a
child process started with 8 host devices; this module is also that child.
"""

import os
import pathlib
import subprocess
import sys
import types

import gin
import jax
import numpy as np
import pytest

from trainer import network
from trainer import partitioning

_NUM_DEVICES = 8


def _run_steps(output_path: str) -> None:
  """Child: 2 train steps on 1 device and on a (4 data x 2 model) mesh, the
  latter whole and in 2 microbatches."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(pathlib.Path(__file__).parent))
  import trainer_batches  # pylint: disable=g-import-not-at-top
  from trainer import models, network, train_lib  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == _NUM_DEVICES, jax.devices()
  config = network.TransformerConfig(vocab_size=64, emb_dim=32, num_heads=4,
                                     num_kv_heads=2, head_dim=8, mlp_dim=64,
                                     num_layers=2)
  model = models.CALRecModel(config)
  batch = trainer_batches.random_batch(seed=0, batch_size=8, vocab_size=64)
  shapes = {k: v.shape for k, v in batch.items()}
  results = {}
  for name, partitioner, num_microbatches in [
      ("single", partitioning.Partitioner(devices=jax.devices()[:1]), 1),
      ("sharded", partitioning.Partitioner(num_partitions=2), 1),
      ("microbatched", partitioning.Partitioner(num_partitions=2), 2),
  ]:
    # Plain SGD keeps updates linear in the gradients, so float rounding
    # differences stay at rounding size (Adam normalises them up to +-lr).
    trainer = train_lib.Trainer(model, optax.sgd(0.5), partitioner, shapes,
                                seed=0, num_microbatches=num_microbatches)
    state = trainer.initial_state()
    losses = []
    for _ in range(2):
      state, metrics = trainer.train_step(state, batch)
      losses.append([float(metrics[k]) for k in ("loss", "tt_loss",
                                                 "ut_loss")])
    results[f"{name}/losses"] = np.array(losses)
    flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
    for path, value in flat:
      results[f"{name}/{jax.tree_util.keystr(path)}"] = np.asarray(value)
    if name == "sharded":
      embedding = state.params["embedding"]["embedding"]
      results["sharded_embedding_shard_shape"] = np.array(
          embedding.sharding.shard_shape(embedding.shape))
  try:
    partitioning.Partitioner(num_partitions=8).check_shardable(config)
  except ValueError as error:
    results["indivisible_error"] = np.array(str(error))
  np.savez(output_path, **results)


@pytest.mark.slow
def test_sharded_step_equals_single_device_step(tmp_path):
  output = tmp_path / "steps.npz"
  repo_root = pathlib.Path(__file__).resolve().parent.parent
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(repo_root),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={_NUM_DEVICES}")
  subprocess.run([sys.executable, __file__, str(output)], check=True, env=env,
                 cwd=repo_root, timeout=300)
  results = np.load(output)
  # The vocabulary axis really is split over the 2 'model' devices.
  np.testing.assert_array_equal(results["sharded_embedding_shard_shape"],
                                [32, 32])
  # 4 heads do not split over a 'model' axis of 8 devices.
  assert str(results["indivisible_error"]).startswith(
      "network.TransformerConfig.num_heads=4 cannot be split over the 8 "
      "devices of mesh axis 'model'")
  # Equal contrastive terms: the negatives are the global batch of 8, not a
  # data shard's 2 examples nor a microbatch's 4.
  names = [k[len("single/"):] for k in results.files
           if k.startswith("single/") and k != "single/losses"]
  assert len(names) > 10
  for variant in ("sharded", "microbatched"):
    np.testing.assert_allclose(results[f"{variant}/losses"],
                               results["single/losses"], rtol=1e-5)
    for name in names:
      np.testing.assert_allclose(results[f"{variant}/{name}"],
                                 results[f"single/{name}"], rtol=1e-4,
                                 atol=1e-6, err_msg=f"{variant}/{name}")


def _base_config() -> network.TransformerConfig:
  gin.clear_config()
  try:
    gin.parse_config_file("trainer/configs/models/base.gin")
    return gin.query_parameter(
        "models.CALRecModel.config").scoped_configurable_fn()
  finally:
    gin.clear_config()


def test_check_shardable_names_the_fields_a_mesh_axis_cannot_split():
  rules = partitioning.DEFAULT_LOGICAL_AXIS_RULES
  config = _base_config()
  partitioning.check_shardable(config, {"data": 2, "model": 4}, rules)
  with pytest.raises(ValueError) as error:
    partitioning.check_shardable(config, {"data": 1, "model": 8}, rules)
  assert str(error.value) == (
      "network.TransformerConfig.num_heads=12 cannot be split over the 8 "
      "devices of mesh axis 'model', which must divide vocab_size, "
      "num_heads, mlp_dim (set by partitioning.Partitioner.num_partitions).")
  # Rules that shard other axes check those.
  with pytest.raises(ValueError, match=r"num_kv_heads=4 cannot be split over "
                     r"the 8 devices of mesh axis 'data'"):
    partitioning.check_shardable(config, {"data": 8, "model": 1},
                                 [("kv_heads", "data"), *rules])


def _grid(process_indices):
  """A (data, model) grid of stand-in devices of the given processes."""
  return np.vectorize(
      lambda i: types.SimpleNamespace(process_index=int(i)),
      otypes=[object])(np.asarray(process_indices))


@pytest.mark.parametrize("grid, process_index, shard_id, num_shards", [
    ([[0], [0], [0], [0]], 0, 0, 1),
    ([[0], [0], [1], [1]], 1, 1, 2),
    # 'model' spans both processes: they hold the same rows, one shard.
    ([[0, 1], [0, 1]], 1, 0, 1),
    ([[0, 0], [1, 1], [2, 2]], 2, 2, 3),
])
def test_data_layout(grid, process_index, shard_id, num_shards):
  layout = partitioning.data_layout(_grid(grid), process_index)
  assert (layout.shard_id, layout.num_shards) == (shard_id, num_shards)


@pytest.mark.parametrize("grid, process_index, message", [
    ([[0], [1], [0], [1]], 0, "equal, contiguous block"),
    ([[0], [0], [0], [1]], 1, "equal, contiguous block"),
    ([[0], [1]], 2, "no device in the mesh"),
])
def test_data_layout_rejects(grid, process_index, message):
  with pytest.raises(ValueError, match=message):
    partitioning.data_layout(_grid(grid), process_index)


def test_local_batch_size():
  layout = partitioning.DataLayout(shard_id=1, num_shards=4)
  assert layout.local_batch_size(512) == 128
  with pytest.raises(ValueError, match="multiple of the 4 data shards"):
    layout.local_batch_size(510)


def test_shard_batch_on_one_process_is_the_whole_batch():
  partitioner = partitioning.Partitioner()
  batch = {"x": np.arange(12, dtype=np.int32).reshape(len(jax.devices()) * 2,
                                                      -1)}
  sharded = partitioner.shard_batch(batch)
  assert sharded["x"].sharding == partitioner.data_sharding()
  np.testing.assert_array_equal(np.asarray(sharded["x"]), batch["x"])


if __name__ == "__main__":
  _run_steps(sys.argv[1])
