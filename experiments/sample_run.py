r"""The whole system on the bundled generated sample, from raw JSON to tables.

  python -m experiments.sample_run [--output_dir=output/sample_run]

Steps, each a real command of the system run as its own process (see
`experiments.commands`), with progress shown throughout:

  1. `experiments.sample_data` writes Amazon-2018-format review and meta files of
     four categories (one stage1_only, CDs for validation, two eval) and
     `pipelines.preprocess` (Beam, FnApiRunner, 2 workers) turns them into
     TFRecords, corpora and statistics;
  2. `tasks.vocab` trains the SentencePiece vocabulary;
  3. `trainer.train` Stage I: the tiny model on the multi-category mixture
     (paper section 3.3), model selection on CDs' validation split;
  4. `trainer.train` Stage II: the same model fine-tuned on `--category` from
     the Stage I checkpoint;
  5. `evaluator.evaluate` scores the category's test split with CALRec (paper
     section 3.5) and with the Last-Item-Repeater baseline (section 4);
  6. prints Table 1 (dataset statistics) and Table 2 (CALRec vs. LIR,
     optimistic/pessimistic) and plots the training curves (NIG and TT losses
     against steps, like Figure 2).

Everything lands in `--output_dir`:

  .sample_run     marks the folder as a run's, written first
  raw/            generated review + meta files and their config.json
  data/           preprocessing output (docs/contracts.md)
  vocab/          spm.model
  stage1/         Stage I MODEL_DIR (checkpoints, config.gin, TensorBoard)
  stage2/         Stage II MODEL_DIR
  eval/calrec/    evaluation output of the Stage II model
  eval/lir/       evaluation output of the Last-Item-Repeater
  logs/           the full output of every step, and (NAME.json) the
                  command, inputs and code digest it ran with
  results.md      Table 1 and Table 2
  training_curves.png

A step whose output is complete is skipped, so rerunning after an interruption
continues where it stopped; a step whose flags changed since, or that reads the
output of one that did, runs again, and so does every step after a change of
the project's code or configs (an interrupted training restarts from step 0
then). `--force` reruns every step. A non-empty
`--output_dir` without `.sample_run` is refused, so neither a run nor `--force`
touches other files.
"""

from __future__ import annotations

import argparse
import pathlib
import time
from typing import Sequence

from evaluator import generation
from experiments import commands
from experiments import sample_data
from experiments import stages
from experiments.layout import RunLayout
from pipelines import cli
from tasks import names


def parse_args(argv: Sequence[str] | None, prog: str = "experiments.sample_run",
               description: str = __doc__) -> argparse.Namespace:
  """The flags of a run on the generated sample (shared with the ablations)."""
  parser = argparse.ArgumentParser(
      allow_abbrev=False, prog=f"python -m {prog}", description=description,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--output_dir", default="output/sample_run",
                      help="folder for every artifact (default %(default)s)")
  parser.add_argument("--seed", type=int, default=0,
                      help="seed of the sample, training and sampling "
                      "(default %(default)s)")
  parser.add_argument("--num_users", type=cli.positive_int, default=4000,
                      help="users of the generated sample over all categories "
                      "(default %(default)s)")
  parser.add_argument("--category", default="Games",
                      choices=sample_data.eval_category_names(),
                      help="eval category for Stage II and the test metrics "
                      "(default %(default)s)")
  parser.add_argument("--vocab_size", type=cli.positive_int, default=1000,
                      help="SentencePiece pieces (default %(default)s)")
  parser.add_argument("--stage1_steps", type=cli.positive_int, default=400,
                      help="Stage I training steps (default %(default)s)")
  parser.add_argument("--stage2_steps", type=cli.positive_int, default=200,
                      help="Stage II training steps (default %(default)s)")
  parser.add_argument("--num_generations", type=cli.positive_int, default=16,
                      help="N_gen samples per test user (default %(default)s; "
                      "paper: 32, 16 keeps the sample run short on 2 CPU "
                      "cores)")
  parser.add_argument("--max_decode_length", type=cli.positive_int,
                      default=generation.MAX_DECODE_LENGTH,
                      help="new tokens per sample at most (default "
                      "%(default)s, the paper's)")
  parser.add_argument("--beam_workers", type=cli.positive_int, default=2,
                      help="worker processes of the preprocessing and "
                      "evaluation jobs (default %(default)s; each evaluation "
                      "worker loads the model and compiles its sampler, so "
                      "one suits a small run)")
  parser.add_argument("--force", action="store_true",
                      help="delete --output_dir (an earlier run's) first and "
                      "rerun every step")
  args = parser.parse_args(argv)
  layout = RunLayout(pathlib.Path(args.output_dir))
  if layout.holds_other_files():
    parser.error(f"--output_dir {layout.root} is not empty and holds no "
                 f"earlier run (no {layout.marker.name}); refusing to write "
                 "into or delete it, pick another folder.")
  return args


def training_stages(layout: RunLayout, args: argparse.Namespace,
                    data: Sequence[stages.Stage], name_suffix: str = "",
                    extra_bindings: Sequence[str] = (),
                    stage1: bool = True) -> list[stages.Stage]:
  """Stage I then Stage II from its checkpoint (paper section 3.3).

  `data` are the `data_stages` they train on. Without `stage1`, Stage II alone
  trains from scratch for the steps of both stages, so that it sees as many
  batches as the two-stage model.
  """
  seed_binding = f"RANDOM_SEED={args.seed}"
  stage1_dir = layout.model_dir("stage1" + name_suffix)
  result = []
  if stage1:
    result.append(commands.train(
        "stage1" + name_suffix, commands.TINY_STAGE1_GIN, stage1_dir,
        layout.data, layout.vocabulary, args.stage1_steps,
        [seed_binding, *extra_bindings], data))
    init = [f"INITIAL_CHECKPOINT_PATH={str(stage1_dir)!r}"]
    stage2_steps = args.stage2_steps
  else:
    init = ["INITIAL_CHECKPOINT_PATH=None"]  # Stage II's gin requires a choice.
    stage2_steps = args.stage1_steps + args.stage2_steps
  result.append(commands.train(
      "stage2" + name_suffix, commands.TINY_STAGE2_GIN,
      layout.model_dir("stage2" + name_suffix), layout.data,
      layout.vocabulary, stage2_steps,
      [seed_binding,
       f"MIXTURE_OR_TASK_NAME={names.task_name(args.category)!r}", *init,
       *extra_bindings], [*data, *result]))
  return result


def evaluation(layout: RunLayout, args: argparse.Namespace,
               data: Sequence[stages.Stage], name: str,
               model: stages.Stage | None) -> stages.Stage:
  """`eval_{name}` of the test split into eval/{name}.

  Evaluates the model that the training stage `model` wrote, or LIR if None.
  """
  flags = [f"--seed={args.seed}", f"--num_generations={args.num_generations}",
           f"--max_decode_length={args.max_decode_length}"]
  model_dir, inputs = None, list(data)
  if model is not None:
    model_dir = layout.model_dir(model.name)
    inputs.append(model)
  return commands.evaluate(f"eval_{name}", layout.data, args.category,
                           layout.eval_dir(name), model_dir, flags, inputs,
                           num_workers=args.beam_workers)


def data_stages(layout: RunLayout, args: argparse.Namespace
                ) -> list[stages.Stage]:
  """The sample, its preprocessing and the vocabulary, each reading the last."""
  sample = commands.generate_sample(layout.raw, args.seed, args.num_users)
  data = commands.preprocess(layout.raw / "config.json", layout.data, [sample],
                             num_workers=args.beam_workers)
  return [sample, data,
          commands.build_vocabulary(layout.data, layout.vocabulary,
                                    args.vocab_size, [data])]


def open_layout(args: argparse.Namespace) -> RunLayout:
  """The run's folder, marked as one; `--force` deletes an earlier run first.

  `parse_args` has refused folders holding anything but a run.
  """
  layout = RunLayout(pathlib.Path(args.output_dir))
  layout.open(force=args.force)
  return layout


def run(argv: Sequence[str] | None = None) -> RunLayout:
  args = parse_args(argv)
  layout = open_layout(args)
  start = time.monotonic()
  run_stages(main_stages(layout, args) + [commands.report(layout.root)],
             layout, start)
  print(f"Wrote {layout.results} and {layout.training_curves} in "
        f"{time.monotonic() - start:.0f}s.", flush=True)
  return layout


def main_stages(layout: RunLayout, args: argparse.Namespace
                ) -> list[stages.Stage]:
  """Data, Stage I, Stage II, then CALRec and LIR on the test split."""
  data = data_stages(layout, args)
  training = training_stages(layout, args, data)
  return [*data, *training,
          evaluation(layout, args, data, "calrec", training[-1]),
          evaluation(layout, args, data, "lir", None)]


def run_stages(steps: Sequence[stages.Stage], layout: RunLayout,
               start: float) -> None:
  for number, stage in enumerate(steps, 1):
    print(f"=== step {number}/{len(steps)}: {stage.name} "
          f"({time.monotonic() - start:.0f}s elapsed)", flush=True)
    stages.run_stage(stage, layout.logs)


def main(argv: Sequence[str] | None = None) -> None:
  stages.main_exiting_on_stage_error(run, argv)


if __name__ == "__main__":
  main()
