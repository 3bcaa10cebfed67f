r"""Memory of the CALRec gradient by microbatch count or L_NIG vocabulary chunk.

XLA's memory analysis of the compiled gradient computation (paper section 3.4
loss, `trainer.microbatching`): temporary buffers for each microbatch count,
against one microbatch (the whole batch at once) as the baseline. Compiles
only, so it runs for large batches on any machine; the figures are for the
platform it compiles for. L_NIG takes the model's default vocabulary chunks.

  python -m benchmarks.train_memory --model=base --batch_size=32 \
      --num_microbatches=1,2,4,8

With --loss_vocab_chunk_sizes, instead: the chunked L_NIG
(`trainer.output_projection`) at each chunk size against the full-vocabulary
logits (`loss_vocab_chunk_size=None`), one microbatch: temporaries, and with
--steps > 0 seconds per gradient step (value and gradient of the loss, no
optimizer; best of --rounds, variants interleaved). At a 262,144-token
vocabulary with Gemma 3 270M's embedding width (tiny model otherwise):

  python -m benchmarks.train_memory --vocab_size=262144 --emb_dim=640 \
      --batch_size=8 --inputs_length=48 --targets_length=80 \
      --loss_vocab_chunk_sizes=16384 --steps=1 --rounds=1

Prints one JSON line per figure: {"name", "value", "unit", "baseline",
"ratio"}.
"""

from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence

import jax
import numpy as np

from benchmarks import figures
from benchmarks import train_step
from pipelines import cli
from trainer import microbatching
from trainer import models


def _initial_params(model: models.CALRecModel):
  return models.unboxed_params(model.get_initial_variables(
      jax.random.PRNGKey(0), {"decoder_input_tokens": (1, 8)}))


def _gradient(model: models.CALRecModel, num_microbatches: int):
  return jax.jit(lambda p, b: microbatching.value_and_grad(
      model, p, b, None, num_microbatches))


def temp_bytes(model: models.CALRecModel, batch, num_microbatches: int
              ) -> int:
  """Temporary bytes of the compiled value-and-gradient computation."""
  params = jax.eval_shape(lambda: _initial_params(model))
  gradient = _gradient(model, num_microbatches)
  analysis = gradient.lower(params, batch).compile().memory_analysis()
  return int(analysis.temp_size_in_bytes)


def seconds_per_step(models_by_name: dict[str, models.CALRecModel], batch,
                     steps: int, rounds: int) -> dict[str, float]:
  """Best-of-rounds seconds per gradient step, variants interleaved."""
  params = _initial_params(next(iter(models_by_name.values())))
  gradients = {}
  for name, model in models_by_name.items():  # Compile and warm up.
    gradients[name] = _gradient(model, 1)
    jax.block_until_ready(gradients[name](params, batch))
  best = {name: float("inf") for name in models_by_name}
  for _ in range(rounds):
    for name, gradient in gradients.items():
      start = time.perf_counter()
      for _ in range(steps):
        result = gradient(params, batch)
      jax.block_until_ready(result)
      best[name] = min(best[name], (time.perf_counter() - start) / steps)
  return best


def compare_loss_vocab_chunks(args: argparse.Namespace, config, batch,
                              prefix: str) -> None:
  """Chunked L_NIG at each chunk size against the full-vocabulary logits."""
  variants = {size: models.CALRecModel(config, loss_vocab_chunk_size=size)
              for size in [None] + args.loss_vocab_chunk_sizes}
  memory = {size: temp_bytes(model, batch, 1) / 2**30
            for size, model in variants.items()}
  seconds = {}
  if args.steps:
    seconds = seconds_per_step(variants, batch, args.steps, args.rounds)
  prefix = f"{prefix}/vocab{config.vocab_size}/loss_vocab_chunk"
  for size in variants:
    name = f"{prefix}{size or 'full'}"
    figures.emit(name, memory[size], "GiB", memory[None])
    if seconds:
      figures.emit(f"{name}/step_seconds", seconds[size], "s",
                   seconds[None])


def run(args: argparse.Namespace) -> None:
  overrides = {name: getattr(args, name)
               for name in ("dtype", "vocab_size", "emb_dim", "num_layers")
               if getattr(args, name)}
  config = train_step.load_config(args.model, **overrides)
  batch = train_step.random_batch(np.random.RandomState(0), args.batch_size,
                                  config.vocab_size, args.inputs_length,
                                  args.targets_length)
  prefix = (f"train_memory/{args.model}/{jax.devices()[0].platform}/"
            f"batch{args.batch_size}")
  if args.loss_vocab_chunk_sizes:
    compare_loss_vocab_chunks(args, config, batch, prefix)
    return
  model = models.CALRecModel(config)
  baseline = temp_bytes(model, batch, 1) / 2**30
  for count in args.num_microbatches:
    value = baseline if count == 1 else temp_bytes(model, batch, count) / 2**30
    figures.emit(f"{prefix}/microbatches{count}", value, "GiB", baseline)


def _counts(value: str) -> list[int]:
  counts = [int(count) for count in value.split(",")]
  if any(count < 1 for count in counts):
    raise argparse.ArgumentTypeError("microbatch counts must be >= 1")
  return counts


def _sizes(value: str) -> list[int]:
  sizes = [int(size) for size in value.split(",")]
  if any(size < 1 for size in sizes):
    raise argparse.ArgumentTypeError("chunk sizes must be >= 1")
  return sizes


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      allow_abbrev=False,
      prog="python -m benchmarks.train_memory",
      description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", choices=train_step.MODELS, default="tiny")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--inputs_length", type=int, default=256)
  parser.add_argument("--targets_length", type=int, default=64)
  parser.add_argument("--dtype", choices=["float32", "bfloat16"],
                      help="Activation dtype (default: the model's).")
  parser.add_argument("--vocab_size", type=cli.positive_int,
                      help="Overrides the model's vocabulary size.")
  parser.add_argument("--emb_dim", type=cli.positive_int,
                      help="Overrides the model's embedding width.")
  parser.add_argument("--num_layers", type=cli.positive_int,
                      help="Overrides the model's layer count.")
  parser.add_argument("--num_microbatches", type=_counts, default=[1, 2, 4],
                      help="Comma-separated counts (default: 1,2,4); each "
                      "must divide --batch_size.")
  parser.add_argument("--loss_vocab_chunk_sizes", type=_sizes, default=[],
                      help="Comma-separated L_NIG vocabulary chunk sizes to "
                      "compare with the full-vocabulary logits (instead of "
                      "microbatch counts).")
  parser.add_argument("--steps", type=int, default=0,
                      help="With --loss_vocab_chunk_sizes: timed gradient "
                      "steps per variant and round (0: memory only).")
  parser.add_argument("--rounds", type=cli.positive_int, default=2,
                      help="Rounds of --steps; the best round counts.")
  args = parser.parse_args(argv)
  for count in args.num_microbatches:
    train_step.check_microbatches(parser, args.batch_size, count)
  return args


if __name__ == "__main__":
  run(parse_args())
