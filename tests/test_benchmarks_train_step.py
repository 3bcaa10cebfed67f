"""benchmarks/train_step: the MFU numerator against XLA's own FLOP count,
its imports on a host without Beam or TensorFlow, and its flag checks."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import train_step
from trainer import models
from trainer import network

CONFIG = network.TransformerConfig(vocab_size=1024, emb_dim=64, num_heads=4,
                                   num_kv_heads=1, head_dim=16, mlp_dim=256,
                                   num_layers=2)
BATCH, INPUTS, TARGETS = 4, 96, 32
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("alpha,beta", [(0.125, -0.025), (0.0, 0.0)])
@pytest.mark.slow
def test_model_flops_match_the_compiled_gradient_step(alpha, beta):
  """The formula counts matmuls only; XLA adds norms, softmax and the like.

  Counting the output projection at every position instead of the target span
  would overshoot XLA's count by about 20 % here.
  """
  model = models.CALRecModel(CONFIG, alpha=alpha, beta=beta)
  batch = train_step.random_batch(np.random.RandomState(0), BATCH,
                                  CONFIG.vocab_size, INPUTS, TARGETS)
  params = jax.eval_shape(lambda: models.unboxed_params(
      model.get_initial_variables(jax.random.PRNGKey(0),
                                  {"decoder_input_tokens": (1, 8)})))
  gradient_step = jax.jit(jax.value_and_grad(
      lambda p, b: model.loss_fn(p, b, None), has_aux=True))
  cost = gradient_step.lower(params, batch).compile().cost_analysis()
  xla_flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
  formula = train_step.model_flops_per_step(
      CONFIG, BATCH, INPUTS + TARGETS, TARGETS, item_tower=alpha != 0)
  assert 0.95 * xla_flops <= formula <= xla_flops


def test_benchmarks_import_without_beam_or_tensorflow():
  """An accelerator host may carry only the JAX stack (README, Benchmarks)."""
  blocked = ("apache_beam", "tensorflow", "tensorflow_text", "seqio", "clu")
  script = f"""
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in {blocked!r}:
      raise ImportError("refused " + name)
sys.meta_path.insert(0, Refuse())
import benchmarks.decode, benchmarks.train_step
"""
  result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, cwd=REPO_ROOT, check=False)
  assert result.returncode == 0, result.stderr


def _usage_error(capsys, *argv: str) -> str:
  with pytest.raises(SystemExit) as exit_info:
    train_step.parse_args(argv)
  assert exit_info.value.code == 2
  return capsys.readouterr().err


def test_flags_the_step_cannot_run_with_are_usage_errors(capsys):
  """Refused before start-up, not by a traceback of the first step."""
  devices = jax.device_count()
  assert (f"error: num_partitions={devices + 1} must divide the {devices} "
          "available devices.") in _usage_error(
              capsys, f"--num_partitions={devices + 1}")
  assert ("error: argument --num_partitions: must be an integer >= 1, got 0"
          in _usage_error(capsys, "--num_partitions=0"))
  assert ("error: --batch_size 16 does not split into 3 microbatches."
          in _usage_error(capsys, "--batch_size=16", "--num_microbatches=3"))


def test_partitions_that_cannot_split_the_model_are_a_usage_error():
  """3 of 3 devices on 'model': the tiny model's 4 heads do not split."""
  result = subprocess.run(
      [sys.executable, "-c", "from benchmarks import train_step; "
       "train_step.parse_args(['--num_partitions=3'])"],
      capture_output=True, text=True, cwd=REPO_ROOT, check=False,
      env=dict(os.environ,
               XLA_FLAGS="--xla_force_host_platform_device_count=3"))
  assert result.returncode == 2
  assert ("error: network.TransformerConfig.vocab_size=1024, "
          "network.TransformerConfig.num_heads=4, "
          "network.TransformerConfig.mlp_dim=512 cannot be split over the 3 "
          "devices of mesh axis 'model'") in result.stderr
