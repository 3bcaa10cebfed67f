"""Generation as seen by the evaluator: requests in, scored samples out.

Any text generator plugs into the Beam job through `GeneratorModelHandler`
(RunInference): the JAX CALRec model, or a fixed-output generator in tests.
Each request carries its own seed, derived from the user id, so a user's
samples do not depend on how users are batched (paper section 3.5: N_gen
samples at a temperature, each with its sequence log-prob).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence

from apache_beam.ml.inference import base

# Paper section 4, "Implementation Details".
NUM_GENERATIONS = 32
TEMPERATURE = 0.5
MAX_DECODE_LENGTH = 80
# The seeded streams of `trainer.decoding.SAMPLERS` (equal, tested), named
# here so that choosing one loads no JAX; "gumbel" is the published one.
SAMPLERS = ("gumbel", "inverse_cdf")
SAMPLER = "gumbel"
# Activation dtypes a run may be sampled in (`--dtype`; default the run's).
DTYPES = ("float32", "bfloat16")
# Generation batches' worth of requests a generator gets at once. The JAX
# generator splits them into batches of one prompt-length bucket and pads
# each bucket's last batch, so the more it gets, the fewer of its rows are
# padding. Real Gift_Cards test prompts of at most 512 Gemma tokens fall in
# two buckets (351 in 256, 107 in 512): at 4 users a batch that is 1.66 rows
# per user handed 4 requests at a time, 1.10 handed 32 (at 32 a batch: 2.09
# and 1.12); at most 256 tokens, all but 3 share one bucket.
BATCHES_PER_CALL = 8

Samples = list[tuple[str, float]]


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
  """One user's history (oldest first) and the seed of its samples."""

  history_texts: tuple[str, ...]
  seed: int


class TextGenerator(Protocol):
  """Generates samples, each (text, sequence log-prob), for each request."""

  def generate(self, requests: Sequence[GenerationRequest]) -> list[Samples]:
    ...


def user_seed(seed: int, user_id: str) -> int:
  """A 31-bit seed from the run seed and the user id (no global state)."""
  digest = hashlib.sha256(f"{seed}:{user_id}".encode("utf-8")).digest()
  return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class GeneratorModelHandler(base.ModelHandler[GenerationRequest, Samples,
                                              TextGenerator]):
  """RunInference handler: loads a generator once per worker, runs batches."""

  def __init__(self, load_generator: Callable[[], TextGenerator],
               max_batch_size: int = 32):
    super().__init__()
    if max_batch_size < 1:
      raise ValueError(
          f"max_batch_size must be positive, got {max_batch_size}.")
    self._load_generator = load_generator
    self._max_batch_size = max_batch_size

  def load_model(self) -> TextGenerator:
    return self._load_generator()

  def run_inference(self, batch: Sequence[GenerationRequest],
                    model: TextGenerator,
                    inference_args: Optional[dict[str, Any]] = None
                    ) -> Iterable[base.PredictionResult]:
    outputs = model.generate(list(batch))
    if len(outputs) != len(batch):
      raise RuntimeError(f"The generator answered {len(outputs)} of "
                         f"{len(batch)} requests.")
    return [base.PredictionResult(example=request, inference=samples)
            for request, samples in zip(batch, outputs)]

  def batch_elements_kwargs(self) -> dict[str, int]:
    """Batches of `max_batch_size` requests (a bundle's last may be smaller).

    Beam's adaptive batching starts at the minimum and grows with the
    measured time per element; a generator computes a whole batch of rows
    whatever the number of requests in it, so a small batch wastes the rest.
    """
    return {"min_batch_size": self._max_batch_size,
            "max_batch_size": self._max_batch_size}
