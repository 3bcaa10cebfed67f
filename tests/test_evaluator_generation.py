"""RunInference over a text generator: whole batches, every request answered."""

import apache_beam as beam
from apache_beam.ml.inference import base
from apache_beam.testing import test_pipeline
from apache_beam.testing import util
import pytest

from evaluator import generation

# One Beam pipeline on the in-process runner.
pytestmark = pytest.mark.slow


class _RecordingGenerator:
  """Answers each request with its seed; counts the batch sizes it saw."""

  def generate(self, requests):
    _BATCH_SIZES.append(len(requests))
    return [[(f"text {r.seed}", -1.0)] for r in requests]


_BATCH_SIZES: list[int] = []


def test_runinference_hands_the_generator_whole_batches():
  _BATCH_SIZES.clear()
  requests = [generation.GenerationRequest(("item",), seed)
              for seed in range(10)]
  handler = generation.GeneratorModelHandler(_RecordingGenerator,
                                             max_batch_size=4)
  with test_pipeline.TestPipeline(
      runner="FnApiRunner",
      options=beam.options.pipeline_options.PipelineOptions(
          ["--direct_num_workers=1"])) as p:
    texts = (p | beam.Create(requests, reshuffle=False)
             | base.RunInference(handler)
             | beam.Map(lambda result: result.inference[0][0]))
    util.assert_that(texts, util.equal_to([f"text {s}" for s in range(10)]))
  assert sorted(_BATCH_SIZES, reverse=True) == [4, 4, 2]
