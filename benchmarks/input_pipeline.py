"""Examples/s of the Stage-I mixture through CALRecFeatureConverter.

Generates the sample of `experiments.sample_data`, preprocesses it
(`pipelines.preprocess`), trains a vocabulary on its corpora, and times
batches of 64 with the paper's input budget (1,024 tokens), uncached (every
record read, parsed and tokenized). Baselines, measured in the same run: the
same kind of examples built one by one in plain Python
(`tasks.preprocessors.budgeted_prompt` plus the target's tokens), from the
same TFRecord files read in plain Python and parsed record by record
(`tf.train.Example.FromString`; "files"), and from records parsed before
the clock starts ("memory"); and the pipeline with tf.data's default
options instead of the trainer's (`trainer.train_inputs.input_options`;
"tf_data_defaults"). The sides alternate over --rounds rounds (the
pipelines' iterators live on between them, warmed up first) and each figure
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
import itertools
import os
import random
import statistics
import struct
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
from trainer import train_inputs

BATCH_SIZE = 64
LENGTHS = {"inputs": 1024, "targets": 128}


def _prepare_sample(folder: str, num_users: int) -> str:
  """The preprocessing output of a generated sample; returns its folder."""
  sample_data.generate(os.path.join(folder, "raw"), num_users=num_users)
  output = os.path.join(folder, "out")
  preprocess.run([f"--config={os.path.join(folder, 'raw', 'config.json')}",
                  f"--output_dir={output}"])
  return output


def _train_files(data_dir: str) -> list[str]:
  return sorted(tf.io.gfile.glob(
      os.path.join(data_dir, "*", "train-*.tfrecord")))


def _item_texts(serialized: bytes) -> list[str]:
  """The item texts of one serialized record, parsed in plain Python."""
  texts = tf.train.Example.FromString(serialized).features.feature[
      "item_texts"]
  return [text.decode() for text in texts.bytes_list.value]


def _serialized_records(files: list[str]) -> Iterator[bytes]:
  """The serialized records of the files, read in plain Python: each record
  is its length (8 bytes, little-endian), the length's CRC (4), the data and
  the data's CRC (4); the CRCs are not checked."""
  for file in files:
    with open(file, "rb") as f:
      data = f.read()
    position = 0
    while position < len(data):
      (length,) = struct.unpack_from("<Q", data, position)
      position += 12
      yield data[position:position + length]
      position += length + 4


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


def _mixture_batches(options: tf.data.Options) -> Iterator[dict]:
  ds = seqio.get_dataset(
      mixtures.STAGE1_MIXTURE, LENGTHS, dataset_split="train", shuffle=True,
      seed=0, num_epochs=None,
      feature_converter=feature_converters.CALRecFeatureConverter())
  batches = ds.batch(BATCH_SIZE).with_options(options).as_numpy_iterator()
  for _ in range(5):  # Warm-up: graph tracing, shuffle buffers.
    next(batches)
  return batches


def _python_example(texts: list[str], vocabulary: seqio.Vocabulary) -> None:
  preprocessors.budgeted_prompt(texts[:-1], vocabulary, LENGTHS["inputs"])
  vocabulary.encode(texts[-1])


def _examples_from_memory(records: list[list[str]],
                          vocabulary: seqio.Vocabulary, rng: random.Random,
                          num_examples: int) -> int:
  for texts in rng.choices(records, k=num_examples):
    _python_example(texts, vocabulary)
  return num_examples


def _examples_from_files(serialized: Iterator[bytes],
                         vocabulary: seqio.Vocabulary,
                         num_examples: int) -> int:
  for raw in itertools.islice(serialized, num_examples):
    _python_example(_item_texts(raw), vocabulary)
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
    batches = _mixture_batches(train_inputs.input_options())
    default_batches = _mixture_batches(tf.data.Options())
    files = _train_files(data_dir)
    # The files read anew on every pass, for the loop that reads them.
    serialized = (raw for _ in itertools.count()
                  for raw in _serialized_records(files))
    records = [_item_texts(raw) for raw in _serialized_records(files)]
    vocabulary = vocab.get_vocabulary(model)
    rng = random.Random(0)
    pipeline, defaults = _Timings(), _Timings()
    from_files, from_memory = _Timings(), _Timings()
    for _ in range(args.rounds):
      for timings, iterator in ((pipeline, batches),
                                (defaults, default_batches)):
        timings.measure(
            lambda: sum(len(next(iterator)["decoder_input_tokens"])
                        for _ in range(args.num_batches)), refills=True)
      from_files.measure(lambda: _examples_from_files(
          serialized, vocabulary, args.num_examples))
      from_memory.measure(lambda: _examples_from_memory(
          records, vocabulary, rng, args.num_examples))
  for baseline, timings in (("plain_from_files", from_files),
                            ("plain_from_memory", from_memory),
                            ("tf_data_defaults", defaults)):
    figures.emit(f"stage1_mixture_batch64_vs_{baseline}",
                 statistics.median(pipeline.rates), "examples/s",
                 statistics.median(timings.rates))
    figures.emit(f"stage1_mixture_cpu_per_example_vs_{baseline}",
                 statistics.median(pipeline.cpu_per_example) * 1e6, "us",
                 statistics.median(timings.cpu_per_example) * 1e6)


if __name__ == "__main__":
  main()
