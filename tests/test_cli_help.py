"""Every command line of the project answers --help with its flags."""

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

# Starts a Python process per command line.
pytestmark = pytest.mark.slow

# module -> a flag its help must name.
COMMANDS = {
    "experiments.sample_data": "--num_users",
    "pipelines.preprocess": "--config",
    "tasks.vocab": "--vocab_size",
    "trainer.train": "--gin_file",
    "trainer.convert": "--export_safetensors",
    "evaluator.evaluate": "--num_generations",
    "evaluator.report": "ttest",
    "evaluator.select_checkpoint": "--metric",
    "experiments.sample_run": "--output_dir",
    "experiments.ablations": "--output_dir",
    "experiments.report": "--output_dir",
    "experiments.pretrained": "--quick",
    "benchmarks.preprocess": "--num_reviews",
    "benchmarks.input_pipeline": "--num_batches",
    "benchmarks.train_step": "--peak_tflops",
    "benchmarks.train_memory": "--num_microbatches",
    "benchmarks.decode": "--num_decodes",
    "benchmarks.retrieval": "--num_items",
    "benchmarks.evaluate": "--max_users",
    "benchmarks.finetune_memory": "--num_layers",
}


@pytest.fixture(scope="module")
def help_texts():
  """Runs all --help commands, two at a time."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  texts, pending = {}, list(COMMANDS)
  while pending:
    batch, pending = pending[:2], pending[2:]
    processes = {module: subprocess.Popen(
        [sys.executable, "-m", module, "--help"], cwd=REPO_ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for module in batch}
    for module, process in processes.items():
      texts[module] = process.communicate(timeout=120)[0]
  return texts


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help_names_the_flags(help_texts, module):
  assert COMMANDS[module] in help_texts[module], help_texts[module][-2000:]
