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
import json
import logging
import os
import sys
from typing import Any, Callable, Optional, Sequence

from evaluator import evaluate
from evaluator import files
from evaluator import generation
from evaluator import metrics
from evaluator import report
from pipelines import cli
from trainer import checkpoints

SELECTION_FILE = "selection.json"
# A generator loader per checkpoint step (tests); None loads the JAX model.
GeneratorFactory = Callable[[int], Callable[[], generation.TextGenerator]]


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
  parser.add_argument("--split", choices=evaluate.SPLITS,
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


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """Selection flags, and the flags passed on to each evaluation."""
  parser = _parser()
  args, passed_on = parser.parse_known_args(argv)
  available = checkpoints.available_steps(args.model_dir)
  if not available:
    parser.error(f"No checkpoints in {args.model_dir}.")
  if args.steps is None:
    args.steps = available
  missing = sorted(set(args.steps) - set(available))
  if missing:
    parser.error(f"--steps {missing} are not checkpoints of {args.model_dir} "
                 f"(it has {available}; older ones were deleted by "
                 "train.keep_checkpoints; train.keep_period keeps more).")
  if args.output_dir is None:
    args.output_dir = os.path.join(
        args.model_dir, f"selection_{args.category}_{args.split}")
  for flag in ("--output_dir", "--checkpoint_step", "--model", "--overwrite"):
    if any(arg.split("=")[0] == flag for arg in passed_on):
      parser.error(f"{flag} of evaluator.evaluate is set per step here.")
  # The evaluator checks the flags passed on (its own and Beam's) now, not
  # after the first steps have run.
  evaluate.parse_args(step_argv(args, passed_on, args.steps[0]),
                      check_model=False,
                      prog=f"{parser.prog} (flags of evaluator.evaluate)")
  return args, passed_on


def step_argv(args: argparse.Namespace, passed_on: Sequence[str],
              step: int) -> list[str]:
  """evaluator.evaluate's flags for one step."""
  return [f"--data_dir={args.data_dir}", f"--category={args.category}",
          f"--split={args.split}", f"--model_dir={args.model_dir}",
          f"--checkpoint_step={step}", f"--output_dir={step_dir(args, step)}",
          "--overwrite", *passed_on]


def step_dir(args: argparse.Namespace, step: int) -> str:
  """The evaluation folder of one step."""
  return os.path.join(args.output_dir, str(step))


def evaluate_step(args: argparse.Namespace, passed_on: Sequence[str],
                  step: int, load_generator: Optional[Callable[
                      [], generation.TextGenerator]]) -> dict[str, Any]:
  """metrics.json of one step's evaluation.

  An earlier evaluation in the step's folder is reused when it recorded every
  setting of this run (`evaluate.run_settings`: the data too) with the same
  value; otherwise, older ones recording fewer included, it is replaced.
  """
  step_args, beam_argv = evaluate.parse_args(
      step_argv(args, passed_on, step), check_model=load_generator is None)
  output_dir = step_dir(args, step)
  if files.exists(os.path.join(output_dir, report.METRICS_FILE)):
    summary = report.load_summary(output_dir)
    if evaluate.run_settings(step_args).items() <= summary.items():
      logging.info("Step %d: reusing %s.", step, output_dir)
      return summary
  logging.info("Step %d: evaluating %s/%s into %s.", step, args.category,
               args.split, output_dir)
  return evaluate.run_parsed(step_args, beam_argv, load_generator)


def select(args: argparse.Namespace, passed_on: Sequence[str],
           generator_for_step: Optional[GeneratorFactory] = None
          ) -> dict[str, Any]:
  """Evaluates args.steps and writes selection.json; returns its contents."""
  files.make_dirs(args.output_dir)
  scores = {}
  for step in args.steps:
    summary = evaluate_step(
        args, passed_on, step,
        generator_for_step(step) if generator_for_step else None)
    scores[step] = float(summary["metrics"][args.metric])
    logging.info("Step %d: %s %.4f", step, args.metric, scores[step])
  best_step = max(args.steps, key=lambda step: (scores[step], -step))
  selection = {
      "category": args.category, "split": args.split, "metric": args.metric,
      "scores": {str(step): score for step, score in scores.items()},
      "best_step": best_step,
      "best_checkpoint": str(checkpoints.step_path(args.model_dir,
                                                   best_step)),
  }
  files.write_text(os.path.join(args.output_dir, SELECTION_FILE),
                   json.dumps(selection, indent=2))
  return selection


def main(argv: Sequence[str] | None = None) -> None:
  cli.configure_logging()
  args, passed_on = parse_args(sys.argv[1:] if argv is None else argv)
  selection = select(args, passed_on)
  lines = [f"| step | {args.metric} |", "|---|---|"]
  for step, score in selection["scores"].items():
    best = " (best)" if int(step) == selection["best_step"] else ""
    lines.append(f"| {step}{best} | {score:.4f} |")
  lines.append(f"\nBest: {selection['best_checkpoint']}")
  sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
