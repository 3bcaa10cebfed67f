r"""Memory of the CALRec gradient against the number of microbatches.

XLA's memory analysis of the compiled gradient computation (paper section 3.4
loss, `trainer.microbatching`): temporary buffers for each microbatch count,
against one microbatch (the whole batch at once) as the baseline. Compiles
only, so it runs for large batches on any machine; the figures are for the
platform it compiles for.

  python -m benchmarks.train_memory --model=base --batch_size=32 \
      --num_microbatches=1,2,4,8

Prints one JSON line per microbatch count: {"name", "value", "unit",
"baseline", "ratio"}.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

import jax
import numpy as np

from benchmarks import figures
from benchmarks import train_step
from trainer import microbatching
from trainer import models


def temp_bytes(model: models.CALRecModel, batch, num_microbatches: int
              ) -> int:
  """Temporary bytes of the compiled value-and-gradient computation."""
  params = jax.eval_shape(lambda: models.unboxed_params(
      model.get_initial_variables(jax.random.PRNGKey(0),
                                  {"decoder_input_tokens": (1, 8)})))
  gradient = jax.jit(lambda p, b: microbatching.value_and_grad(
      model, p, b, None, num_microbatches))
  analysis = gradient.lower(params, batch).compile().memory_analysis()
  return int(analysis.temp_size_in_bytes)


def run(args: argparse.Namespace) -> None:
  overrides = {"dtype": args.dtype} if args.dtype else {}
  config = train_step.load_config(args.model, **overrides)
  model = models.CALRecModel(config)
  batch = train_step.random_batch(np.random.RandomState(0), args.batch_size,
                                  config.vocab_size, args.inputs_length,
                                  args.targets_length)
  baseline = temp_bytes(model, batch, 1) / 2**30
  for count in args.num_microbatches:
    value = baseline if count == 1 else temp_bytes(model, batch, count) / 2**30
    figures.emit(
        f"train_memory/{args.model}/{jax.devices()[0].platform}/"
        f"batch{args.batch_size}/microbatches{count}", value, "GiB", baseline)


def _counts(value: str) -> list[int]:
  counts = [int(count) for count in value.split(",")]
  if any(count < 1 for count in counts):
    raise argparse.ArgumentTypeError("microbatch counts must be >= 1")
  return counts


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
  parser.add_argument("--num_microbatches", type=_counts, default=[1, 2, 4],
                      help="Comma-separated counts (default: 1,2,4); each "
                      "must divide --batch_size.")
  args = parser.parse_args(argv)
  for count in args.num_microbatches:
    train_step.check_microbatches(parser, args.batch_size, count)
  return args


if __name__ == "__main__":
  run(parse_args())
