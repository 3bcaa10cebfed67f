r"""Sampling speed and memory with the key/value cache (paper section 3.5).

Figures, each against a baseline measured in the same run:
- sampled tokens/s of `CALRecModel.predict_batch_with_aux` (prefill once, one
  token per step from the cache) against re-running the full prefix at every
  step (same model, same sampling, same compiled-loop structure); skipped with
  --no-full_prefix;
- shared-prefix sampling (one prompt cache read by all N_gen samples, the
  default) against copying the prompt cache per sample
  (`CALRecModel(shared_prefix=False)`): sampled tokens/s, and the compiled
  sampler's peak memory (XLA's memory analysis: arguments + temporaries) and
  temporaries alone. Both draw the same tokens;
- the "inverse_cdf" sampler (one random number per sampled token, chunked
  inverse CDF) against the default "gumbel" one (one per vocabulary entry):
  sampled tokens/s, both with the shared prefix; and the draw alone, rows of
  [num_prompts x num_decodes, vocabulary] logits drawn per second.

  python -m benchmarks.decode
  python -m benchmarks.decode --num_prompts=1 --num_decodes=32 \
      --prompt_length=1024 --no-full_prefix
  python -m benchmarks.decode --model=gemma3_270m --num_prompts=1 \
      --num_decodes=32 --prompt_length=1024 --max_decode_length=8 \
      --no-full_prefix

Prints one JSON line per figure: {"name", "value", "unit", "baseline",
"ratio"}.
"""

from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import figures
from benchmarks import train_step
from pipelines import cli
from trainer import decoding
from trainer import models


def full_prefix_sampler(model: models.CALRecModel, num_decodes: int,
                        max_decode_length: int):
  """Temperature sampling that re-runs the whole sequence for every token."""

  def sample(params, tokens, causal_attention, rng, temperature):
    prompt_lengths = jnp.sum(causal_attention, axis=-1).astype(jnp.int32)
    sequences = jnp.pad(jnp.repeat(tokens, num_decodes, axis=0),
                        ((0, 0), (0, max_decode_length)))
    lengths = jnp.repeat(prompt_lengths, num_decodes)
    rows = jnp.arange(sequences.shape[0])

    def step(index, carry):
      sequences, key = carry
      key, sample_key = jax.random.split(key)
      logits, _, _ = model.module.apply(
          {"params": params}, sequences,
          logits_at=(lengths + index - 1)[:, None])
      token = jax.random.categorical(sample_key, logits[:, 0] / temperature)
      return sequences.at[rows, lengths + index].set(token), key

    sequences, _ = jax.lax.fori_loop(0, max_decode_length, step,
                                     (sequences, rng))
    return sequences

  return jax.jit(sample)


def best_seconds(fn, rounds: int) -> float:
  jax.block_until_ready(fn())  # Compile and warm up.
  best = float("inf")
  for _ in range(rounds):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


# train_step's models and the pretrained shapes of trainer/configs/models.
MODELS = train_step.MODELS + ("gemma3_270m",)


def compiled_bytes(model: models.CALRecModel, params, batch, key, args
                  ) -> tuple[int, int]:
  """(arguments + temporaries, temporaries) of the compiled sampler, bytes."""
  analysis = model._predict.lower(  # pylint: disable=protected-access
      params, batch["decoder_input_tokens"], batch["decoder_causal_attention"],
      key, jnp.float32(args.temperature), num_decodes=args.num_decodes,
      max_decode_length=args.max_decode_length).compile().memory_analysis()
  temp = int(analysis.temp_size_in_bytes)
  return int(analysis.argument_size_in_bytes) + temp, temp


def run(args: argparse.Namespace) -> None:
  config = train_step.load_config(args.model)
  model = models.CALRecModel(config)
  copying = models.CALRecModel(config, shared_prefix=False)
  inverse_cdf = models.CALRecModel(config, sampler="inverse_cdf")
  params = models.unboxed_params(model.get_initial_variables(
      jax.random.PRNGKey(0), {"decoder_input_tokens": (1, 8)}))
  rng = np.random.RandomState(0)
  prompts = [rng.randint(3, config.vocab_size, args.prompt_length).tolist()
             for _ in range(args.num_prompts)]
  batch = models.prompt_batch(prompts, args.num_prompts,
                              args.prompt_length + 1)
  key = jax.random.PRNGKey(1)

  def cached(sampler=model):
    return sampler.predict_batch_with_aux(
        params, batch, key, num_decodes=args.num_decodes,
        temperature=args.temperature,
        max_decode_length=args.max_decode_length)[0]

  prefix = f"decode/{args.model}/{jax.devices()[0].platform}/"
  tokens = args.num_prompts * args.num_decodes * args.max_decode_length
  cached_rate = tokens / best_seconds(cached, args.rounds)
  if args.full_prefix:
    naive = full_prefix_sampler(model, args.num_decodes,
                                args.max_decode_length)
    naive_rate = tokens / best_seconds(
        lambda: naive(params, batch["decoder_input_tokens"],
                      batch["decoder_causal_attention"], key,
                      args.temperature), args.rounds)
    figures.emit(prefix + "sampled_tokens_per_second", cached_rate,
                 "tokens/s", naive_rate)
  copying_rate = tokens / best_seconds(lambda: cached(copying), args.rounds)
  figures.emit(prefix + "shared_prefix_sampled_tokens_per_second",
               cached_rate, "tokens/s", copying_rate)
  figures.emit(prefix + "inverse_cdf_sampled_tokens_per_second",
               tokens / best_seconds(lambda: cached(inverse_cdf),
                                     args.rounds), "tokens/s", cached_rate)
  logits = jax.random.normal(key, (args.num_prompts * args.num_decodes,
                                   config.vocab_size))
  rows = logits.shape[0]
  draw_rates = [rows / best_seconds(
      lambda draw=draw: draw(logits, key, jnp.float32(args.temperature)),
      args.rounds) for draw in (jax.jit(decoding.inverse_cdf_sample),
                                jax.jit(decoding.gumbel_sample))]
  figures.emit(prefix + "inverse_cdf_draws_per_second", draw_rates[0],
               "rows/s", draw_rates[1])
  shared_peak, shared_temp = compiled_bytes(model, params, batch, key, args)
  copying_peak, copying_temp = compiled_bytes(copying, params, batch, key,
                                              args)
  figures.emit(prefix + "shared_prefix_peak_bytes", shared_peak, "bytes",
               copying_peak)
  figures.emit(prefix + "shared_prefix_temp_bytes", shared_temp, "bytes",
               copying_temp)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      allow_abbrev=False, prog="python -m benchmarks.decode",
      description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", choices=MODELS, default="tiny")
  parser.add_argument("--num_prompts", type=cli.positive_int, default=4)
  parser.add_argument("--num_decodes", type=cli.positive_int, default=8)
  parser.add_argument("--prompt_length", type=cli.positive_int, default=256,
                      help="Prompt tokens (all prompts full length).")
  parser.add_argument("--max_decode_length", type=cli.positive_int,
                      default=64)
  parser.add_argument("--temperature", type=float, default=0.5)
  parser.add_argument("--rounds", type=cli.positive_int, default=3)
  parser.add_argument("--full_prefix", action=argparse.BooleanOptionalAction,
                      default=True,
                      help="Also time re-running the full prefix per token.")
  args = parser.parse_args(argv)
  if args.temperature <= 0:
    parser.error("--temperature must be > 0.")
  return args


if __name__ == "__main__":
  run(parse_args())
