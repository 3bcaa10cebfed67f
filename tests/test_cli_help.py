"""Every command line of the project answers --help with its flags."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

# Starts a Python process that runs every command line.
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


# Runs each module named on the command line as `python -m MODULE --help`
# does (runpy, as __main__), one after another in this one process, so that
# the libraries they share are imported once; prints {module: output}.
_HELP_RUNNER = """
import contextlib, io, json, runpy, sys
texts = {}
for module in sys.argv[1:]:
  output = io.StringIO()
  sys.argv = [module, "--help"]
  with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
    try:
      runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:  # argparse and absl exit after printing the help.
      pass
  texts[module] = output.getvalue()
print(json.dumps(texts))
"""


@pytest.fixture(scope="module")
def help_texts():
  """The --help output of every command line."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  completed = subprocess.run(
      [sys.executable, "-c", _HELP_RUNNER, *COMMANDS], cwd=REPO_ROOT,
      env=env, capture_output=True, text=True, timeout=300, check=True)
  return json.loads(completed.stdout.splitlines()[-1])


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help_names_the_flags(help_texts, module):
  assert COMMANDS[module] in help_texts[module], help_texts[module][-2000:]
