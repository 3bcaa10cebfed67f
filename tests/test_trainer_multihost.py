"""Training on 2 processes (hosts) of 2 CPU devices each, over loopback.

The parent starts two child processes that join one `jax.distributed` run
and train a tiny model; this module is also that child. The children train
4 steps, checkpointing at steps 2 and 4, then drop step 4 and resume from 2.
"""

import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import jax
from jax.experimental import multihost_utils
import numpy as np
import seqio
import tensorflow as tf

from tasks import test_utils as tasks_test_utils
from trainer import models
from trainer import network
from trainer import partitioning
from trainer import train_lib
from trainer import train_loop

_NUM_PROCESSES = 2
_TASK = "trainer_multihost_test_task"
_LENGTHS = {"inputs": 24, "targets": 16}
_BATCH_SIZE = 4
_SEED = 5
_ITEMS = ("Red Wire", "Steel Nail Kit", "Blue Paper", "Clear Sealant",
          "Pro Flex")
_TRAIN_STEPS = 4


def _register_task(vocabulary_path: str) -> None:
  """4 training examples; 5 validation ones, which 2 shards split 3 + 2."""

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    items = _ITEMS if split == "validation" else _ITEMS[:4]
    return tf.data.Dataset.from_tensor_slices({
        "inputs": [f"Title: {item}. Category: Tools." for item in items],
        "targets": [f"Title: {item} Pack." for item in items]})

  tasks_test_utils.register_in_memory_task(_TASK, dataset_fn, vocabulary_path)


def _model():
  config = network.TransformerConfig(vocab_size=512, emb_dim=32, num_heads=2,
                                     num_kv_heads=1, head_dim=16, mlp_dim=64,
                                     num_layers=1)
  return models.CALRecModel(config)


def _train(model_dir: pathlib.Path, train_steps: int):
  return train_loop.train(
      model=_model(), model_dir=str(model_dir), mixture_or_task_name=_TASK,
      task_feature_lengths=_LENGTHS, train_steps=train_steps,
      batch_size=_BATCH_SIZE, random_seed=_SEED, checkpoint_period=2,
      validation_batches=None, log_period=1,
      optimizer=train_lib.create_optimizer(1e-2))


def _child(process_id: int, port: int, vocabulary_path: str,
           work_dir: pathlib.Path) -> None:
  """Trains straight and with a resume; saves parameters and its batch."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{port}", _NUM_PROCESSES, process_id)

  assert jax.process_count() == _NUM_PROCESSES
  assert jax.device_count() == 2 * _NUM_PROCESSES
  _register_task(vocabulary_path)
  model_dir = work_dir / "model"
  straight = _train(model_dir, _TRAIN_STEPS)
  if process_id == 0:
    shutil.rmtree(model_dir / "checkpoints" / str(_TRAIN_STEPS))
  multihost_utils.sync_global_devices("dropped the last checkpoint")
  resumed = _train(model_dir, _TRAIN_STEPS)
  # This process's first training batch, read as train() reads it.
  first_batch = next(train_loop._dataset(  # pylint: disable=protected-access
      _TASK, _LENGTHS, train_loop.default_feature_converter_cls()(pack=False),
      "train", shuffle=True, seed=_SEED, num_epochs=None,
      batch_size=_BATCH_SIZE // _NUM_PROCESSES,
      shard_info=seqio.ShardInfo(process_id, _NUM_PROCESSES)
  ).as_numpy_iterator())
  results = {f"batch/{k}": v for k, v in first_batch.items()}
  for name, state in [("straight", straight), ("resumed", resumed)]:
    for path, value in jax.tree_util.tree_flatten_with_path(state.params)[0]:
      results[f"{name}/{jax.tree_util.keystr(path)}"] = np.asarray(value)
  np.savez(work_dir / f"process_{process_id}.npz", **results)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_children(vocabulary_path: str, work_dir: pathlib.Path) -> None:
  repo_root = pathlib.Path(__file__).resolve().parent.parent
  # The two runs of a child compile the same programs: cache them.
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(repo_root),
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_COMPILATION_CACHE_DIR=str(work_dir / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  port = _free_port()
  children = []
  with contextlib.ExitStack() as stack:
    try:
      for process_id in range(_NUM_PROCESSES):
        log = stack.enter_context(
            open(work_dir / f"process_{process_id}.log", "w"))
        children.append(subprocess.Popen(
            [sys.executable, __file__, str(process_id), str(port),
             vocabulary_path, str(work_dir)],
            env=env, cwd=repo_root, stdout=log, stderr=subprocess.STDOUT))
      for child in children:
        child.wait(timeout=150)
    finally:
      for child in children:
        if child.poll() is None:
          child.kill()
          child.wait()
  for process_id, child in enumerate(children):
    if child.returncode:
      tail = (work_dir / f"process_{process_id}.log").read_text()[-3000:]
      raise AssertionError(f"Process {process_id} failed:\n{tail}")


def _first_step_loss(model_dir: pathlib.Path) -> float:
  for path in (model_dir / "train").glob("events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if event.step == 1 and value.tag == "loss":
          return float(tf.make_ndarray(value.tensor))
  raise AssertionError(f"No step-1 loss summary under {model_dir}.")


def test_two_processes_train_as_one_on_the_joined_batch(tmp_path):
  vocabulary_path = tasks_test_utils.train_test_vocabulary(
      tmp_path / "test.model")
  _run_children(vocabulary_path, tmp_path)
  results = [np.load(tmp_path / f"process_{i}.npz")
             for i in range(_NUM_PROCESSES)]

  names = [k for k in results[0].files if k.startswith("straight/")]
  assert len(names) > 5
  for name in names:
    # The processes hold the same parameters, and the run resumed from the
    # step-2 checkpoint (parameters and both input states) ends equal.
    np.testing.assert_array_equal(results[0][name], results[1][name], name)
    resumed = name.replace("straight/", "resumed/")
    np.testing.assert_array_equal(results[0][resumed], results[0][name],
                                  name)

  # Each process read its own half of the training examples.
  prompts = [{tuple(row) for row in r["batch/decoder_input_tokens"]}
             for r in results]
  assert len(prompts[0]) == len(prompts[1]) == _BATCH_SIZE // 2
  assert not prompts[0] & prompts[1]

  # Step 1's loss is the loss of the joined local batches in one process.
  joined = {k[len("batch/"):]: np.concatenate([r[k] for r in results])
            for k in results[0].files if k.startswith("batch/")}
  model = _model()
  params = train_lib.Trainer(
      model, train_lib.create_optimizer(1e-2),
      partitioning.Partitioner(devices=jax.devices()[:1]),
      {k: v.shape for k, v in joined.items()},
      seed=_SEED).initial_state().params
  loss, _ = model.loss_fn(params, joined, dropout_rng=None)
  np.testing.assert_allclose(_first_step_loss(tmp_path / "model"),
                             float(loss), rtol=1e-5)


if __name__ == "__main__":
  _child(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
         pathlib.Path(sys.argv[4]))
