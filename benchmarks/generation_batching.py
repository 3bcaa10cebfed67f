r"""Generation handed one batch of requests at a time, or several.

  .venv/bin/python -m benchmarks.generation_batching --model_dir=MODEL_DIR \
      --data_dir=DATA_DIR --category=Gift_Cards [--num_users=48] \
      [--batch_size=4] [--num_generations=8] [--max_decode_length=48] \
      [--sampler=inverse_cdf] [--dtype=float32] [--rounds=2]

`evaluator.model_handler.JaxGenerator` samples in batches of `batch_size`
prompts of one length bucket and pads a bucket's last batch with copies, so
its cost follows the rows it computes, not the users. The evaluator hands
it `generation.BATCHES_PER_CALL` batches' worth of requests at a time; this
compares that with handing it one batch's worth at a time (what it was
given before), on one loaded generator in one process:

  - the same users (the --num_users of the split with the smallest
    `transforms.user_sample_key`, in that order) and seeds as the evaluator;
  - a warm-up call over all of them first (every bucket's sampler compiled),
    then --rounds rounds alternating the two ways;
  - figures: users/s (median round) and sampler rows per user, each way
    against the one-batch way; the run stops if any user's texts differ
    between the two ways, and reports the largest log-prob difference.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Optional, Sequence

import tensorflow as tf

from benchmarks import figures
from evaluator import data
from evaluator import generation
from evaluator import model_handler
from evaluator import transforms
from pipelines import cli


def split_requests(data_dir: str, category: str, split: str, num_users: int,
                   seed: int) -> list[generation.GenerationRequest]:
  """The requests the evaluator makes for the split's first users by
  `transforms.user_sample_key` (its --max_users subset)."""
  users = [data.parse_example(record.numpy()) for record in
           tf.data.TFRecordDataset(
               data.split_files(data_dir, category, split).paths)]
  users.sort(key=lambda user: transforms.user_sample_key(0, user.user_id))
  return [generation.GenerationRequest(
      user.history_texts, generation.user_seed(seed, user.user_id))
          for user in users[:num_users]]


class _CountedGenerator:
  """A JaxGenerator whose sampler calls count their rows."""

  def __init__(self, generator: model_handler.JaxGenerator):
    self.generator = generator
    self.rows = 0
    sample = generator._sample  # pylint: disable=protected-access

    def counted(params, tokens, causal_attention, keys):
      self.rows += tokens.shape[0]
      return sample(params, tokens, causal_attention, keys)

    generator._sample = counted  # pylint: disable=protected-access

  def generate_in_calls(self, requests: Sequence[generation.GenerationRequest],
                        call_size: int) -> list[generation.Samples]:
    samples = []
    for start in range(0, len(requests), call_size):
      samples += self.generator.generate(requests[start:start + call_size])
    return samples


def run(args: argparse.Namespace) -> None:
  requests = split_requests(args.data_dir, args.category, args.split,
                            args.num_users, args.seed)
  generator = _CountedGenerator(model_handler.GeneratorLoader(
      model_dir=args.model_dir, num_generations=args.num_generations,
      sampler=args.sampler, dtype=args.dtype,
      max_decode_length=args.max_decode_length,
      batch_size=args.batch_size)())
  calls = {"one_batch": args.batch_size,
           "batches_per_call": args.batch_size * generation.BATCHES_PER_CALL}
  generator.generate_in_calls(requests, calls["batches_per_call"])  # Compile.
  seconds = {way: [] for way in calls}
  rows, samples = {}, {}
  for _ in range(args.rounds):
    for way, call_size in calls.items():
      generator.rows = 0
      start = time.perf_counter()
      samples[way] = generator.generate_in_calls(requests, call_size)
      seconds[way].append(time.perf_counter() - start)
      rows[way] = generator.rows
  texts = {way: [[text for text, _ in user] for user in outputs]
           for way, outputs in samples.items()}
  if texts["one_batch"] != texts["batches_per_call"]:
    raise RuntimeError("The samples differ between the two ways.")
  log_prob_difference = max(
      (abs(a[1] - b[1]) for one, many in zip(samples["one_batch"],
                                              samples["batches_per_call"])
       for a, b in zip(one, many)), default=0.0)
  label = f"{args.category}_{len(requests)}_users_batch_{args.batch_size}"
  rates = {way: len(requests) / statistics.median(times)
           for way, times in seconds.items()}
  figures.emit(f"generation_users_per_s_{label}", rates["batches_per_call"],
               "users/s", rates["one_batch"])
  figures.emit(f"sampler_rows_per_user_{label}",
               rows["batches_per_call"] / len(requests), "rows/user",
               rows["one_batch"] / len(requests))
  figures.emit("max_log_prob_difference", log_prob_difference, "nats", None)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.generation_batching", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model_dir", required=True,
                      help="a model directory (trainer.train or "
                      "trainer.convert)")
  parser.add_argument("--data_dir", required=True,
                      help="output folder of pipelines.preprocess")
  parser.add_argument("--category", required=True)
  parser.add_argument("--split", default="test", help="(default %(default)s)")
  parser.add_argument("--num_users", type=cli.positive_int, default=48,
                      help="(default %(default)s)")
  parser.add_argument("--batch_size", type=cli.positive_int, default=4,
                      help="users per sampler batch (default %(default)s)")
  parser.add_argument("--num_generations", type=cli.positive_int, default=8,
                      help="(default %(default)s)")
  parser.add_argument("--max_decode_length", type=cli.positive_int,
                      default=48, help="(default %(default)s)")
  parser.add_argument("--sampler", choices=generation.SAMPLERS,
                      default="inverse_cdf", help="(default %(default)s)")
  parser.add_argument("--dtype", choices=generation.DTYPES, default=None,
                      help="(default: the run's)")
  parser.add_argument("--seed", type=int, default=0,
                      help="the evaluator's --seed (default %(default)s)")
  parser.add_argument("--rounds", type=cli.positive_int, default=2,
                      help="(default %(default)s)")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
  run(parse_args(argv))


if __name__ == "__main__":
  main()
