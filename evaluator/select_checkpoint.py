r"""Model selection by a ranking metric on a validation split (paper section 4).

The paper selects every checkpoint by pessimistic NDCG@10 on validation data:
Stage I on the validation category ('CDs'), Stage II on the category's own
validation split. This command evaluates each kept checkpoint of a training
run with `evaluator.evaluate` and names the best one:

  python -m evaluator.select_checkpoint --model_dir=runs/stage1 \
      --data_dir=DATA --category=CDs [--metric=NDCG@10/pes] \
      [--steps=45000,135000] [any evaluator.evaluate or Beam flag]

Writes `{output_dir}/{step}/`, the evaluation of each step (a step evaluated
before with the same settings, data and parameter files is reused; a step
trained again since, or evaluated before on other data, is evaluated again),
and `{output_dir}/selection.json` with every step's score, the best step and
its checkpoint path, which is what Stage II's INITIAL_CHECKPOINT_PATH and
`evaluator.evaluate --checkpoint_step` take. Ties go to the earlier step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any, Callable, Optional, Sequence

from evaluator import config as config_lib
from evaluator import evaluate
from evaluator import metrics
from evaluator import report
from pipelines import cli
from pipelines import files
from trainer import checkpoints

SELECTION_FILE = "selection.json"
# A generator loader per checkpoint step (tests); None loads the JAX model.
GeneratorFactory = Callable[[int], evaluate.LoadGenerator]


def _steps(value: str) -> list[int]:
  try:
    steps = sorted({int(step) for step in value.split(",")})
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated steps, e.g. 45000,135000, got {value!r}")
  return steps


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      allow_abbrev=False,
      prog="python -m evaluator.select_checkpoint", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Other flags go to evaluator.evaluate (e.g. --num_generations) "
      "and to Beam; they are checked before the first step.")
  parser.add_argument("--model_dir", required=True,
                      help="Training output folder of trainer.train.")
  parser.add_argument("--data_dir", required=True,
                      help="Output folder of the preprocessing pipeline.")
  parser.add_argument("--category", required=True,
                      help="Category whose split selects, e.g. CDs.")
  parser.add_argument("--split", choices=config_lib.SPLITS,
                      default="validation",
                      help="Split that selects (default: %(default)s).")
  parser.add_argument("--metric", choices=metrics.metric_keys(),
                      default="NDCG@10/pes",
                      help="Metric to maximise (default: %(default)s, the "
                      "paper's).")
  parser.add_argument("--steps", type=_steps, default=None,
                      help="Steps to compare (default: every checkpoint in "
                      "--model_dir).")
  parser.add_argument("--output_dir", default=None,
                      help="Default: MODEL_DIR/selection_{category}_{split}.")
  return parser


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
  """The steps to compare by a metric, each evaluated with `evaluation` in
  its folder under `output_dir` (`step_config`)."""

  evaluation: config_lib.EvaluationConfig
  steps: tuple[int, ...]
  metric: str
  output_dir: str


def parse_args(argv: Sequence[str]) -> tuple[SelectionConfig, list[str]]:
  """The selection's config, and the Beam flags of each evaluation.

  The flags that are not the selection's go through evaluator.evaluate's
  parser once, with the selection's data and model, and its inputs are
  checked: a bad flag or folder fails before the first step has run.
  """
  parser = _parser()
  args, passed_on = parser.parse_known_args(argv)
  available = checkpoints.available_steps(args.model_dir)
  if not available:
    parser.error(f"No checkpoints in {args.model_dir}.")
  steps = args.steps or available
  missing = sorted(set(steps) - set(available))
  if missing:
    parser.error(f"--steps {missing} are not checkpoints of {args.model_dir} "
                 f"(it has {available}; older ones were deleted by "
                 "train.keep_checkpoints; train.keep_period keeps more).")
  output_dir = args.output_dir or os.path.join(
      args.model_dir, f"selection_{args.category}_{args.split}")
  for flag in ("--output_dir", "--checkpoint_step", "--model", "--overwrite"):
    if any(arg.split("=")[0] == flag for arg in passed_on):
      parser.error(f"{flag} of evaluator.evaluate is set per step here.")
  prog = f"{parser.prog} (flags of evaluator.evaluate)"
  evaluation, beam_argv = evaluate.parse_flags(
      [f"--data_dir={args.data_dir}", f"--category={args.category}",
       f"--split={args.split}", f"--model_dir={args.model_dir}",
       f"--output_dir={output_dir}", *passed_on], prog=prog)
  selection = SelectionConfig(evaluation, tuple(steps), args.metric,
                              output_dir)
  evaluate.resolve_or_exit(step_config(selection, steps[0]),
                           check_model=False, prog=prog)
  return selection, beam_argv


def step_config(selection: SelectionConfig,
                step: int) -> config_lib.EvaluationConfig:
  """The evaluation of one step, in `{output_dir}/{step}`, replacing what an
  earlier one left there."""
  return dataclasses.replace(
      selection.evaluation, checkpoint_step=step,
      output_dir=os.path.join(selection.output_dir, str(step)),
      overwrite=True)


def evaluate_step(config: config_lib.EvaluationConfig,
                  beam_argv: Sequence[str],
                  load_generator: Optional[evaluate.LoadGenerator]
                 ) -> dict[str, Any]:
  """metrics.json of one step's evaluation (`step_config`).

  An earlier evaluation in the step's folder is reused when it recorded every
  setting of this run (`config.ResolvedRun.settings`: the data too) with the
  same value; otherwise, older ones recording fewer included, it is replaced.
  """
  resolved = evaluate.resolve_or_exit(config,
                                      check_model=load_generator is None)
  output_dir, step = config.output_dir, config.checkpoint_step
  if files.exists(os.path.join(output_dir, report.METRICS_FILE)):
    summary = report.load_summary(output_dir)
    if resolved.settings().items() <= summary.items():
      logging.info("Step %d: reusing %s.", step, output_dir)
      return summary
  logging.info("Step %d: evaluating %s/%s into %s.", step, config.category,
               config.split, output_dir)
  return evaluate.run_resolved(resolved, beam_argv, load_generator)


def select(selection: SelectionConfig, beam_argv: Sequence[str],
           generator_for_step: Optional[GeneratorFactory] = None
          ) -> dict[str, Any]:
  """Evaluates the selection's steps and writes selection.json; returns its
  contents."""
  files.make_dirs(selection.output_dir)
  metric, scores = selection.metric, {}
  for step in selection.steps:
    summary = evaluate_step(
        step_config(selection, step), beam_argv,
        generator_for_step(step) if generator_for_step else None)
    scores[step] = float(summary["metrics"][metric])
    logging.info("Step %d: %s %.4f", step, metric, scores[step])
  best_step = max(selection.steps, key=lambda step: (scores[step], -step))
  evaluation = selection.evaluation
  result = {
      "category": evaluation.category, "split": evaluation.split,
      "metric": metric,
      "scores": {str(step): score for step, score in scores.items()},
      "best_step": best_step,
      "best_checkpoint": str(checkpoints.step_path(evaluation.model_dir,
                                                   best_step)),
  }
  files.write_text(os.path.join(selection.output_dir, SELECTION_FILE),
                   json.dumps(result, indent=2))
  return result


def main(argv: Sequence[str] | None = None) -> None:
  cli.configure_logging()
  selection, beam_argv = parse_args(sys.argv[1:] if argv is None else argv)
  result = select(selection, beam_argv)
  lines = [f"| step | {selection.metric} |", "|---|---|"]
  for step, score in result["scores"].items():
    best = " (best)" if int(step) == result["best_step"] else ""
    lines.append(f"| {step}{best} | {score:.4f} |")
  lines.append(f"\nBest: {result['best_checkpoint']}")
  sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
