"""Examples/s of the Stage-I mixture through CALRecFeatureConverter.

Generates the sample of `experiments.sample_data`, preprocesses it
(`pipelines.preprocess`), trains a vocabulary on its corpora, and times
batches of 64 with the paper's input budget (1,024 tokens), uncached (every
record read, parsed and tokenized). Baseline, measured in the same run: the
same kind of examples built one by one in plain Python
(`tasks.preprocessors.budgeted_prompt` plus the target's tokens).

  python -m benchmarks.input_pipeline
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

import seqio
import tensorflow as tf

from benchmarks import figures
from experiments import sample_data
from pipelines import cli
from pipelines import preprocess

from tasks import feature_converters
from tasks import mixtures
from tasks import preprocessors
from tasks import vocab

BATCH_SIZE = 64
LENGTHS = {"inputs": 1024, "targets": 128}


def _prepare_sample(folder: str, num_users: int) -> str:
  """The preprocessing output of a generated sample; returns its folder."""
  sample_data.generate(os.path.join(folder, "raw"), num_users=num_users)
  output = os.path.join(folder, "out")
  preprocess.run([f"--config={os.path.join(folder, 'raw', 'config.json')}",
                  f"--output_dir={output}"])
  return output


def _train_records(data_dir: str) -> list[list[str]]:
  """The item texts of every train record of every category."""
  files = tf.io.gfile.glob(os.path.join(data_dir, "*", "train-*.tfrecord"))
  records = []
  for raw in tf.data.TFRecordDataset(files).as_numpy_iterator():
    texts = tf.train.Example.FromString(raw).features.feature["item_texts"]
    records.append([text.decode() for text in texts.bytes_list.value])
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
  parser = argparse.ArgumentParser(
      allow_abbrev=False, prog="python -m benchmarks.input_pipeline",
      description=__doc__.splitlines()[0])
  parser.add_argument("--num_batches", type=cli.positive_int, default=200,
                      help="timed batches of 64")
  parser.add_argument("--num_users", type=cli.positive_int, default=4000,
                      help="users of the generated sample")
  parser.add_argument("--vocab_size", type=int, default=4000)
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    print("Generating and preprocessing the sample...", file=sys.stderr)
    data_dir = _prepare_sample(tmp, args.num_users)
    model = vocab.train_sentencepiece(vocab.read_corpus_texts(data_dir),
                                      os.path.join(tmp, "bench.model"),
                                      args.vocab_size)
    mixtures.register_mixtures(data_dir, model)
    print("Timing...", file=sys.stderr)
    mixture = _mixture_rate(args.num_batches)
    baseline = _python_rate(_train_records(data_dir),
                            vocab.get_vocabulary(model), 2000)
  figures.emit("stage1_mixture_feature_converter_batch64", mixture,
               "examples/s", baseline)


if __name__ == "__main__":
  main()
