"""Examples/s of the Stage-I mixture through CALRecFeatureConverter.

Generates the sample of `experiments.sample_data`, preprocesses it
(`pipelines.preprocess`), trains a vocabulary on its corpora, and times
batches of 64 with the paper's input budget (1,024 tokens), uncached (every
record read, parsed and tokenized). Baseline, measured in the same run: the
same kind of examples built one by one in plain Python
(`tasks.preprocessors.budgeted_prompt` plus the target's tokens), from
records already in memory. The two alternate over --rounds rounds (the
pipeline's iterator lives on between them, warmed up first) and each figure
is the median of its rounds: on shared cores the speed of both moves by tens
of percent within a minute. A pipeline round lasts until its threads have
refilled the buffers it drained (thousands of examples: seqio's per-task
stages run ahead), so the loop runs alone and the pipeline gets no credit
for work done before the round. Also printed: the CPU time of each side per
example (the pipeline's threads included).

  python -m benchmarks.input_pipeline
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Callable, Iterator

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


def _busy_seconds(poll: float = 0.05, timeout: float = 60.0) -> float:
  """Waits until this process's threads are idle; returns how long they were
  still busy (to the start of the first idle poll).

  After a round the pipeline's background threads refill the buffers the
  round drained, work the round's examples needed.
  """
  start = time.perf_counter()
  while time.perf_counter() - start < timeout:
    polled, cpu = time.perf_counter(), time.process_time()
    time.sleep(poll)
    if time.process_time() - cpu < 0.05 * poll:
      return polled - start
  raise RuntimeError(f"The pipeline's threads were still busy {timeout} s "
                     "after a round.")


@dataclasses.dataclass
class _Timings:
  """Examples/s and CPU seconds per example of each round."""

  rates: list[float] = dataclasses.field(default_factory=list)
  cpu_per_example: list[float] = dataclasses.field(default_factory=list)

  def measure(self, run: Callable[[], int],
              refills: bool = False) -> None:
    """Times run(), which returns how many examples it made; with refills,
    until the threads have refilled what it drained (`_busy_seconds`)."""
    wall, cpu = time.perf_counter(), time.process_time()
    num_examples = run()
    wall = time.perf_counter() - wall + (_busy_seconds() if refills else 0)
    cpu = time.process_time() - cpu
    self.rates.append(num_examples / wall)
    self.cpu_per_example.append(cpu / num_examples)


def _mixture_batches() -> Iterator[dict]:
  ds = seqio.get_dataset(
      mixtures.STAGE1_MIXTURE, LENGTHS, dataset_split="train", shuffle=True,
      seed=0, num_epochs=None,
      feature_converter=feature_converters.CALRecFeatureConverter())
  batches = ds.batch(BATCH_SIZE).as_numpy_iterator()
  for _ in range(5):  # Warm-up: graph tracing, shuffle buffers.
    next(batches)
  return batches


def _python_examples(records: list, vocabulary: seqio.Vocabulary,
                     rng: random.Random, num_examples: int) -> int:
  for texts in rng.choices(records, k=num_examples):
    preprocessors.budgeted_prompt(texts[:-1], vocabulary, LENGTHS["inputs"])
    vocabulary.encode(texts[-1])
  return num_examples


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      allow_abbrev=False, prog="python -m benchmarks.input_pipeline",
      description=__doc__.splitlines()[0])
  parser.add_argument("--num_batches", type=cli.positive_int, default=100,
                      help="timed batches of 64 per round")
  parser.add_argument("--num_examples", type=cli.positive_int, default=2000,
                      help="timed plain-Python examples per round")
  parser.add_argument("--rounds", type=cli.positive_int, default=5)
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
    batches = _mixture_batches()
    records = _train_records(data_dir)
    vocabulary = vocab.get_vocabulary(model)
    rng = random.Random(0)
    pipeline, plain = _Timings(), _Timings()
    for _ in range(args.rounds):
      pipeline.measure(
          lambda: sum(len(next(batches)["decoder_input_tokens"])
                      for _ in range(args.num_batches)), refills=True)
      plain.measure(lambda: _python_examples(records, vocabulary, rng,
                                             args.num_examples))
  figures.emit("stage1_mixture_feature_converter_batch64",
               statistics.median(pipeline.rates), "examples/s",
               statistics.median(plain.rates))
  figures.emit("stage1_mixture_cpu_per_example",
               statistics.median(pipeline.cpu_per_example) * 1e6, "us",
               statistics.median(plain.cpu_per_example) * 1e6)


if __name__ == "__main__":
  main()
