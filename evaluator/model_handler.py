"""The JAX CALRec model as a `generation.TextGenerator` (paper section 3.5).

`JaxGenerator` turns requests into N_gen temperature samples per user with
their sequence log-probs, through `CALRecModel.predict_batch_with_aux`:

- prompts are budgeted exactly as in training (`tasks.preprocessors.
  budgeted_prompt`: the oldest history items dropped whole);
- prompts are padded to a power-of-two length bucket of their own (at most
  the model's prompt length), so the sampler compiles once per bucket and
  short prompts do not pay for the longest;
- prompts start with the decoder start token the model trained with, the
  vocabulary's BOS if it has one (`tasks.vocab.decoder_start_id`);
- a sample's text ends where its log-prob does: at EOS, or within the
  newline piece that ends a pretrained LM's item (`CALRecModel.stop_ids`);
- users are vmapped one per row, each with the PRNG key of its own seed, so a
  user's samples are the same whatever the batch it lands in.

`GeneratorLoader` loads a trained model directory on each Beam worker
(`GeneratorModelHandler.load_model`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Optional, Sequence

import jax
import numpy as np
import seqio

from evaluator import generation
from pipelines import progress
from tasks import preprocessors
from tasks import vocab
from trainer import models

PyTree = Any
# The shortest padded prompt length (`JaxGenerator._bucket`).
_MIN_BUCKET = 64


class JaxGenerator:
  """Samples item texts for user histories with a CALRec model."""

  def __init__(self, model: models.CALRecModel, params: PyTree,
               vocabulary: seqio.Vocabulary, prompt_length: int,
               num_generations: int = generation.NUM_GENERATIONS,
               temperature: float = generation.TEMPERATURE,
               max_decode_length: int = generation.MAX_DECODE_LENGTH,
               batch_size: int = 8, expected_users: Optional[int] = None):
    """`expected_users`: about how many users this worker will generate for
    (its share of the split), the total of its progress line's ETA."""
    if prompt_length < 2 or batch_size < 1:
      raise ValueError("prompt_length must be >= 2 and batch_size >= 1, got "
                       f"{prompt_length} and {batch_size}.")
    self._params = params
    self._vocabulary = vocabulary
    self._prompt_length = prompt_length
    self._batch_size = batch_size
    self._eos_id = model.eos_id
    self._stop_ids = frozenset(model.stop_ids)
    self._start_token = vocab.decoder_start_id(vocabulary)
    # Users generated on this worker, logged every 30 s.
    self.progress = progress.Progress(
        "users", expected_users, label="Generated on this worker: ")

    def sample_one_user(params, tokens, causal_attention, key):
      decodes, aux = model.predict_batch_with_aux(
          params, {"decoder_input_tokens": tokens[None],
                   "decoder_causal_attention": causal_attention[None]},
          key, num_decodes=num_generations, temperature=temperature,
          max_decode_length=max_decode_length)
      return decodes[0], aux["scores"][0]

    self._sample = jax.jit(jax.vmap(sample_one_user, in_axes=(None, 0, 0, 0)))

  def _prompt_tokens(self, request: generation.GenerationRequest
                     ) -> Optional[tuple[int, ...]]:
    try:
      return preprocessors.budgeted_prompt(
          request.history_texts, self._vocabulary,
          self._prompt_length - 1).token_ids
    except ValueError as error:
      logging.warning("No samples for a request: %s", error)
      return None

  def _text(self, tokens: np.ndarray) -> str:
    """The sample's text: its tokens up to its stop token (paper 3.5).

    EOS and padding are left out; a newline stop piece (a pretrained LM's
    item end, scored in the sample's log-prob) is decoded and its text cut
    at the newline, so the item text holds no newline.
    """
    ids = []
    for token in tokens.tolist():
      if token in (self._eos_id, 0):
        break
      ids.append(token)
      if token in self._stop_ids:
        return self._vocabulary.decode(ids).split("\n", 1)[0]
    return self._vocabulary.decode(ids)

  def _bucket(self, prompt: Optional[tuple[int, ...]]) -> int:
    """The padded prompt length of one prompt: the smallest power of two
    (at least `_MIN_BUCKET`) that holds it and the start token, at most the
    model's prompt length. It depends on the prompt alone, so a user's
    samples do not depend on the other users of its batch."""
    needed = len(prompt or ()) + 1
    bucket = max(_MIN_BUCKET, 1 << (needed - 1).bit_length())
    return min(bucket, self._prompt_length)

  def generate(self, requests: Sequence[generation.GenerationRequest]
               ) -> list[generation.Samples]:
    """N_gen (text, log-prob) samples per request; none when it cannot fit.

    Requests run in batches of prompts of one length bucket (`_bucket`),
    which bounds the compilations to a handful of shapes while short
    prompts skip the padding up to the model's prompt length. A batch that
    is not full repeats its first request in the free rows: their samples
    stop with that request's, so the sampler's loop ends as soon as the real
    rows' samples have, and their outputs are dropped. The evaluator hands
    over several batches' worth of requests at once
    (`generation.BATCHES_PER_CALL`), so that few batches are not full.
    """
    prompts = [self._prompt_tokens(request) for request in requests]
    by_bucket: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
      if prompt is not None:
        by_bucket.setdefault(self._bucket(prompt), []).append(index)
    outputs: list[generation.Samples] = [[] for _ in requests]
    for bucket, indices in sorted(by_bucket.items()):
      for start in range(0, len(indices), self._batch_size):
        rows = indices[start:start + self._batch_size]
        filled = rows + [rows[0]] * (self._batch_size - len(rows))
        batch = models.prompt_batch([prompts[i] for i in filled],
                                    self._batch_size, bucket,
                                    start_token=self._start_token)
        keys = jax.vmap(jax.random.PRNGKey)(
            np.array([requests[i].seed for i in filled], np.uint32))
        decodes, scores = jax.device_get(self._sample(
            self._params, batch["decoder_input_tokens"],
            batch["decoder_causal_attention"], keys))
        for row, index in enumerate(rows):
          outputs[index] = [(self._text(tokens), float(score))
                            for tokens, score in zip(decodes[row],
                                                     scores[row])]
        self.progress.add(len(rows))
    self.progress.add(len(requests) - sum(map(len, by_bucket.values())))
    return outputs


@dataclasses.dataclass(frozen=True)
class GeneratorLoader:
  """Loads `JaxGenerator` from a model directory (picklable for Beam)."""

  model_dir: str
  num_generations: int = generation.NUM_GENERATIONS
  temperature: float = generation.TEMPERATURE
  sampler: str = generation.SAMPLER
  # None: the run's activation dtype.
  dtype: Optional[str] = None
  max_decode_length: int = generation.MAX_DECODE_LENGTH
  batch_size: int = 8
  step: Optional[int] = None
  compilation_cache_dir: Optional[str] = None
  # This worker's share of the users, for its ETA (`JaxGenerator`).
  expected_users: Optional[int] = None

  @property
  def vocabulary_path(self) -> str:
    """The vocabulary the run trained with, which decodes its samples."""
    from trainer import model_dir  # pylint: disable=g-import-not-at-top
    return os.fspath(model_dir.vocabulary_file(self.model_dir))

  def __call__(self) -> JaxGenerator:
    from trainer import checkpoints  # pylint: disable=g-import-not-at-top
    from trainer import model_dir  # pylint: disable=g-import-not-at-top
    checkpoints.hide_orbax_info_logs()
    if self.compilation_cache_dir:
      # JAX's persistent cache: a later job (or worker) with the same
      # shapes loads the compiled sampler instead of compiling it again.
      jax.config.update("jax_compilation_cache_dir",
                        self.compilation_cache_dir)
    loaded = model_dir.load_for_inference(self.model_dir, step=self.step,
                                          sampler=self.sampler,
                                          dtype=self.dtype)
    logging.info("Loaded %s at step %d.", self.model_dir, loaded.step)
    return JaxGenerator(
        loaded.model, loaded.params, loaded.vocabulary, loaded.prompt_length,
        num_generations=self.num_generations, temperature=self.temperature,
        max_decode_length=self.max_decode_length, batch_size=self.batch_size,
        expected_users=self.expected_users)
