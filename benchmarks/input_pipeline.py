"""Examples/s of the Stage-I mixture through CALRecFeatureConverter.

Writes a generated multi-category preprocessing output (random item texts,
5 to 20 items per user), trains a vocabulary on it, and times batches of 64
with the paper's input budget (1,024 tokens). Baseline, measured in the same
run: the same examples built one by one in plain Python
(`tasks.preprocessors.budgeted_prompt` plus the target's tokens).

  python -m benchmarks.input_pipeline
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time

import seqio

from tasks import feature_converters
from tasks import mixtures
from tasks import preprocessors
from tasks import test_utils
from tasks import vocab

BATCH_SIZE = 64
LENGTHS = {"inputs": 1024, "targets": 128}


def _write_sample(data_dir: str, num_categories: int, num_users: int) -> list:
  """Train records of every category; returns their item-text lists."""
  records = []
  for index in range(num_categories):
    written = test_utils.write_category(
        data_dir, f"Category_{index}", num_users=num_users, seed=index,
        min_items=5, max_items=20, num_shards=2)
    test_utils.write_stats(data_dir, f"Category_{index}",
                           num_users * (index + 1) ** 2)
    records += [texts for _, texts in written["train"]]
  return records


def _mixture_rate(num_batches: int) -> float:
  ds = seqio.get_dataset(
      mixtures.STAGE1_MIXTURE, LENGTHS, dataset_split="train", shuffle=True,
      seed=0, num_epochs=None,
      feature_converter=feature_converters.CALRecFeatureConverter())
  batches = ds.batch(BATCH_SIZE).as_numpy_iterator()
  for _ in range(5):  # Warm-up: graph tracing, shuffle buffers.
    next(batches)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(batches)
  return num_batches * BATCH_SIZE / (time.perf_counter() - start)


def _python_rate(records: list, vocabulary: seqio.Vocabulary,
                 num_examples: int) -> float:
  rng = random.Random(0)
  start = time.perf_counter()
  for texts in rng.choices(records, k=num_examples):
    preprocessors.budgeted_prompt(texts[:-1], vocabulary, LENGTHS["inputs"])
    vocabulary.encode(texts[-1])
  return num_examples / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.input_pipeline",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--num_batches", type=int, default=200,
                      help="timed batches of 64")
  parser.add_argument("--num_categories", type=int, default=14)
  parser.add_argument("--users_per_category", type=int, default=300)
  parser.add_argument("--vocab_size", type=int, default=4000)
  args = parser.parse_args(argv)
  for name in ("num_batches", "num_categories", "users_per_category"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be positive.")
  with tempfile.TemporaryDirectory() as tmp:
    records = _write_sample(tmp, args.num_categories, args.users_per_category)
    model = vocab.train_sentencepiece(
        (text for texts in records for text in texts), f"{tmp}/bench.model",
        args.vocab_size)
    mixtures.register_mixtures(tmp, model)
    mixture = _mixture_rate(args.num_batches)
    baseline = _python_rate(records, vocab.get_vocabulary(model), 2000)
  print(json.dumps({"name": "stage1_mixture_feature_converter_batch64",
                    "value": round(mixture, 1), "unit": "examples/s",
                    "baseline": round(baseline, 1),
                    "ratio": round(mixture / baseline, 2)}))


if __name__ == "__main__":
  main()
