"""The system's commands as `stages.Stage`s, with their completion markers.

One builder per command, shared by the sample run and the ablations so each
command line is written once. `inputs` are the stages whose outputs the
command reads (see `stages.Stage`).
"""

from __future__ import annotations

import pathlib
from typing import Sequence

from experiments.stages import Stage

TINY_STAGE1_GIN = "trainer/configs/runs/tiny_stage1.gin"
TINY_STAGE2_GIN = "trainer/configs/runs/tiny_stage2.gin"


def _beam_flags(num_workers: int = 2) -> tuple[str, ...]:
  """Local Beam runner flags (DirectRunner would try to download Prism)."""
  return ("--runner=FnApiRunner", f"--direct_num_workers={num_workers}",
          "--direct_running_mode=multi_processing")


def _gin_string(value: str | pathlib.Path) -> str:
  return repr(str(value))


def generate_sample(raw_dir: pathlib.Path, seed: int, num_users: int) -> Stage:
  return Stage(
      name="sample", module="experiments.sample_data",
      args=[f"--output_dir={raw_dir}", f"--seed={seed}",
            f"--num_users={num_users}"],
      done_marker=raw_dir / "config.json")


def preprocess(config: pathlib.Path, data_dir: pathlib.Path,
               inputs: Sequence[Stage], num_workers: int = 2) -> Stage:
  return Stage(
      name="preprocess", module="pipelines.preprocess",
      args=[f"--config={config}", f"--output_dir={data_dir}", "--overwrite",
            *_beam_flags(num_workers)],
      done_marker=data_dir / "manifest.json", inputs=inputs)


def build_vocabulary(data_dir: pathlib.Path, vocabulary: pathlib.Path,
                     vocab_size: int, inputs: Sequence[Stage]) -> Stage:
  return Stage(
      name="vocabulary", module="tasks.vocab",
      args=[f"--data_dir={data_dir}", f"--output={vocabulary}",
            f"--vocab_size={vocab_size}"],
      done_marker=vocabulary, inputs=inputs)


def train(name: str, gin_file: str, model_dir: pathlib.Path,
          data_dir: pathlib.Path, vocabulary: pathlib.Path, train_steps: int,
          bindings: Sequence[str], inputs: Sequence[Stage],
          extra_gin_files: Sequence[str] = ()) -> Stage:
  """`trainer.train` with t5x-style `--gin.NAME=VALUE` macros.

  `extra_gin_files` are read after `gin_file` (e.g. a PEFT switch).
  Complete once the checkpoint of the last step exists. An interrupted run
  resumes from its checkpoints; one with other flags starts afresh.
  """
  return Stage(
      name=name, module="trainer.train",
      args=[f"--gin_file={gin_file}",
            *(f"--gin_file={extra}" for extra in extra_gin_files),
            f"--gin.MODEL_DIR={_gin_string(model_dir)}",
            f"--gin.DATA_DIR={_gin_string(data_dir)}",
            f"--gin.VOCABULARY={_gin_string(vocabulary)}",
            f"--gin.TRAIN_STEPS={train_steps}",
            *(f"--gin.{binding}" for binding in bindings)],
      done_marker=model_dir / "checkpoints" / str(train_steps),
      inputs=inputs, resume_dir=model_dir)


def convert(source: pathlib.Path, model_dir: pathlib.Path, name: str,
            inputs_length: int) -> Stage:
  """`trainer.convert` of a pretrained checkpoint into a model directory
  whose zero-shot evaluation budgets prompts to `inputs_length` tokens."""
  return Stage(
      name="convert", module="trainer.convert",
      args=[f"--source={source}", f"--output_dir={model_dir}",
            f"--name={name}", f"--inputs_length={inputs_length}",
            "--overwrite"],
      done_marker=model_dir / "source.json")


def evaluate(name: str, data_dir: pathlib.Path, category: str,
             output_dir: pathlib.Path, model_dir: pathlib.Path | None,
             flags: Sequence[str], inputs: Sequence[Stage],
             num_workers: int = 2) -> Stage:
  """`evaluator.evaluate` on the test split; `model_dir=None` runs LIR.

  `--overwrite` replaces what an earlier (perhaps interrupted) run wrote.
  Each of the `num_workers` Beam workers loads the model and compiles its
  sampler: one worker suits a model that takes every core (an LLM on a CPU).
  """
  model_args = (["--model=lir"] if model_dir is None else
                ["--model=calrec", f"--model_dir={model_dir}"])
  return Stage(
      name=name, module="evaluator.evaluate",
      args=[f"--data_dir={data_dir}", f"--category={category}",
            "--split=test", f"--output_dir={output_dir}", *model_args, *flags,
            "--overwrite", *_beam_flags(num_workers)],
      done_marker=output_dir / "metrics.json", inputs=inputs)


def report(run_dir: pathlib.Path) -> Stage:
  """`experiments.report`: Table 1, Table 2 and the training curves."""
  return Stage(name="report", module="experiments.report",
               args=[f"--output_dir={run_dir}"], done_marker=None,
               show_plain=True)
