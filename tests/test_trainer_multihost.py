"""Training on 2 processes (hosts) of 2 CPU devices each, over loopback.

The parent starts two child processes that join one `jax.distributed` run
and train a tiny model; this module is also that child. The children train
4 steps, checkpointing at steps 2 and 4, then drop step 4 and resume from 2.
The command line (`python -m trainer.train --distributed`) then trains the
same run from a gin file, which imports this module for its task.
"""

import contextlib
import dataclasses
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
from typing import Sequence

import gin
import jax
from jax.experimental import multihost_utils
import numpy as np
import pytest
import seqio
import tasks_testdata
import tensorflow as tf

from trainer import checkpoints
from trainer import model_dir as model_dir_lib
from trainer import models
from trainer import network
from trainer import partitioning
from trainer import train_lib
from trainer import train_inputs
from trainer import train_loop

# Trains in child processes over loopback.
pytestmark = pytest.mark.slow

_REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# The name the children's gin configuration imports this module by.
_MODULE = pathlib.Path(__file__).stem
_NUM_PROCESSES = 2
_TIMEOUT_S = 150
_TASK = "trainer_multihost_test_task"
_LENGTHS = {"inputs": 24, "targets": 16}
_BATCH_SIZE = 4
_SEED = 5
_ITEMS = ("Red Wire", "Steel Nail Kit", "Blue Paper", "Clear Sealant",
          "Pro Flex")
_TRAIN_STEPS = 4
_LEARNING_RATE = 1e-2
_MODEL_CONFIG = network.TransformerConfig(
    vocab_size=512, emb_dim=32, num_heads=2, num_kv_heads=1, head_dim=16,
    mlp_dim=64, num_layers=1)
# The `train_loop.train` arguments of every run here, besides the model,
# model_dir, optimizer and train_steps.
_TRAIN_ARGS = dict(
    mixture_or_task_name=_TASK, task_feature_lengths=_LENGTHS,
    batch_size=_BATCH_SIZE, random_seed=_SEED, checkpoint_period=2,
    validation_batches=None, log_period=1)


@gin.configurable
def register_task(vocabulary_path: str = gin.REQUIRED) -> None:
  """4 training examples; 5 validation ones, which 2 shards split 3 + 2."""

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    items = _ITEMS if split == "validation" else _ITEMS[:4]
    return tf.data.Dataset.from_tensor_slices({
        "inputs": [f"Title: {item}. Category: Tools." for item in items],
        "targets": [f"Title: {item} Pack." for item in items]})

  tasks_testdata.register_in_memory_task(_TASK, dataset_fn, vocabulary_path)


def _train(model_dir: pathlib.Path, train_steps: int) -> train_lib.TrainState:
  return train_loop.train(
      model=models.CALRecModel(_MODEL_CONFIG), model_dir=str(model_dir),
      train_steps=train_steps,
      optimizer=train_lib.create_optimizer(_LEARNING_RATE), **_TRAIN_ARGS)


def _write_gin_config(path: pathlib.Path, vocabulary_path: str) -> None:
  """`_train(MODEL_DIR, _TRAIN_STEPS)` as a gin file for the command line."""
  lines = [f"import {_MODULE}", "import trainer.models",
           "import trainer.network", "import trainer.train_lib",
           "import trainer.train_loop",
           "MODEL_DIR = %gin.REQUIRED",
           "train.model = @models.CALRecModel()",
           "models.CALRecModel.config = @network.TransformerConfig()"]
  lines += [f"network.TransformerConfig.{name} = {value!r}"
            for name, value in dataclasses.asdict(_MODEL_CONFIG).items()]
  lines += [f"train.{name} = {value!r}" for name, value in _TRAIN_ARGS.items()]
  lines += ["train.model_dir = %MODEL_DIR",
            f"train.train_steps = {_TRAIN_STEPS}",
            "train.optimizer = @train_lib.create_optimizer()",
            f"train_lib.create_optimizer.learning_rate = {_LEARNING_RATE!r}",
            f"train.register_tasks = @{_MODULE}.register_task",
            f"{_MODULE}.register_task.vocabulary_path = {vocabulary_path!r}"]
  path.write_text("\n".join(lines) + "\n")


def _child(process_id: int, port: int, vocabulary_path: str,
           work_dir: pathlib.Path) -> None:
  """Trains straight and with a resume; saves parameters and its batch."""
  jax.distributed.initialize(f"127.0.0.1:{port}", _NUM_PROCESSES, process_id)

  assert jax.process_count() == _NUM_PROCESSES
  assert jax.device_count() == 2 * _NUM_PROCESSES
  register_task(vocabulary_path)
  model_dir = work_dir / "model"
  straight = _train(model_dir, _TRAIN_STEPS)
  if process_id == 0:
    shutil.rmtree(model_dir / "checkpoints" / str(_TRAIN_STEPS))
  multihost_utils.sync_global_devices("dropped the last checkpoint")
  resumed = _train(model_dir, _TRAIN_STEPS)
  # This process's first training batch, read as train() reads it.
  first_batch = next(train_inputs._dataset(  # pylint: disable=protected-access
      _TASK, _LENGTHS, train_inputs.default_feature_converter_cls()(pack=False),
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


def _run_processes(commands: Sequence[Sequence[str]], log_dir: pathlib.Path,
                   cache_dir: pathlib.Path) -> None:
  """Runs the commands at once as CPU processes of 2 devices each.

  Args:
    commands: one command line per process, in process order.
    log_dir: where `process_{i}.log` holds each one's output.
    cache_dir: their persistent compilation cache: runs of the same programs
      (a resume, the command line) compile them once.

  Raises:
    AssertionError: a process failed or outlived `_TIMEOUT_S`; with its log.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(_REPO_ROOT),
                                         str(_REPO_ROOT / "tests")]),
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  logs = [log_dir / f"process_{i}.log" for i in range(len(commands))]
  processes, killed = [], set()
  with contextlib.ExitStack() as stack:
    try:
      for command, log in zip(commands, logs):
        processes.append(subprocess.Popen(
            command, env=env, cwd=_REPO_ROOT,
            stdout=stack.enter_context(open(log, "w")),
            stderr=subprocess.STDOUT))
      deadline = time.monotonic() + _TIMEOUT_S
      # Also stop at the first failure: the others would wait for it.
      while time.monotonic() < deadline:
        codes = [process.poll() for process in processes]
        if None not in codes or any(codes):
          break
        time.sleep(0.2)
    finally:
      for process_id, process in enumerate(processes):
        if process.poll() is None:
          killed.add(process_id)
          process.kill()
          process.wait()
  for process_id, (process, log) in enumerate(zip(processes, logs)):
    if process.returncode and process_id not in killed:
      raise AssertionError(f"Process {process_id} exited with status "
                           f"{process.returncode}:\n{log.read_text()[-3000:]}")
  if killed:
    process_id = min(killed)
    raise AssertionError(f"Process {process_id} still ran after {_TIMEOUT_S} "
                         f"s:\n{logs[process_id].read_text()[-3000:]}")


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory) -> pathlib.Path:
  """Holds the vocabulary and compilation cache of all runs here."""
  path = tmp_path_factory.mktemp("shared")
  tasks_testdata.train_test_vocabulary(path / "test.model")
  return path


@pytest.fixture(scope="module")
def in_process_run(shared_dir, tmp_path_factory) -> pathlib.Path:
  """The work directory of `_child`'s runs: model/ and process_{i}.npz."""
  work_dir = tmp_path_factory.mktemp("in_process")
  port = _free_port()
  _run_processes(
      [[sys.executable, __file__, str(process_id), str(port),
        str(shared_dir / "test.model"), str(work_dir)]
       for process_id in range(_NUM_PROCESSES)],
      work_dir, shared_dir / "jax_cache")
  return work_dir


def _first_step_loss(model_dir: pathlib.Path) -> float:
  for path in (model_dir / "train").glob("events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if event.step == 1 and value.tag == "loss":
          return float(tf.make_ndarray(value.tensor))
  raise AssertionError(f"No step-1 loss summary under {model_dir}.")


def _load_results(work_dir: pathlib.Path) -> list[np.lib.npyio.NpzFile]:
  return [np.load(work_dir / f"process_{i}.npz")
          for i in range(_NUM_PROCESSES)]


def test_two_processes_train_as_one_on_the_joined_batch(in_process_run):
  results = _load_results(in_process_run)

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
  model = models.CALRecModel(_MODEL_CONFIG)
  params = train_lib.Trainer(
      model, train_lib.create_optimizer(_LEARNING_RATE),
      partitioning.Partitioner(devices=jax.devices()[:1]),
      {k: v.shape for k, v in joined.items()},
      seed=_SEED).initial_state().params
  loss, _ = model.loss_fn(params, joined, dropout_rng=None)
  np.testing.assert_allclose(_first_step_loss(in_process_run / "model"),
                             float(loss), rtol=1e-5)


def test_distributed_command_line_trains_the_same_run(
    shared_dir, in_process_run, tmp_path):
  """`python -m trainer.train --distributed` on 2 processes, from gin.

  Process 0 names the multi-host flags this project's way, process 1 t5x's
  way (--multiprocess_gpu --process_count --process_index).
  """
  gin_file = tmp_path / "run.gin"
  _write_gin_config(gin_file, str(shared_dir / "test.model"))
  model_dir = tmp_path / "model"
  port = _free_port()
  flag_names = [("distributed", "num_processes", "process_id"),
                ("multiprocess_gpu", "process_count", "process_index")]
  _run_processes(
      [[sys.executable, "-m", "trainer.train", f"--{join}",
        f"--coordinator_address=127.0.0.1:{port}",
        f"--{count}={_NUM_PROCESSES}", f"--{index}={process_id}",
        f"--gin_file={gin_file}", f"--gin.MODEL_DIR={str(model_dir)!r}"]
       for process_id, (join, count, index) in enumerate(flag_names)],
      tmp_path, shared_dir / "jax_cache")

  assert checkpoints.CheckpointManager(model_dir).all_steps() == [2, 4]
  # Each process saved its input state as one of 2 processes.
  dataset_dir = model_dir / "checkpoints" / str(_TRAIN_STEPS) / "dataset"
  assert {p.name.split(".")[0] for p in dataset_dir.glob("process_*")} == {
      f"process_{i}-of-{_NUM_PROCESSES}" for i in range(_NUM_PROCESSES)}
  # The parameters are those of `train_loop.train` called directly.
  params = model_dir_lib.load_for_inference(model_dir, _TRAIN_STEPS).params
  expected = _load_results(in_process_run)[0]
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  assert {f"straight/{jax.tree_util.keystr(path)}" for path, _ in flat} == {
      k for k in expected.files if k.startswith("straight/")}
  for path, value in flat:
    name = f"straight/{jax.tree_util.keystr(path)}"
    np.testing.assert_array_equal(np.asarray(value), expected[name], name)


if __name__ == "__main__":
  _child(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
         pathlib.Path(sys.argv[4]))
