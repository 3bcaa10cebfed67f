r"""Train-step throughput of CALRec models (paper section 3.4 objective).

Per configuration: steps/s and tokens/s of the full CALRec step (joint pass +
item-alone pass + contrastive losses) against the NIG-only step (alpha = beta
= 0, no item pass) of the same model, measured in the same run; and the model
FLOPs utilisation (PaLM appendix B convention: 6 N per token for the weights,
12 * layers * heads * head_dim * T per token for attention), against the
accelerator's peak given by --peak_tflops, or looked up for known GPUs.

  python -m benchmarks.train_step                      # tiny, CPU
  python -m benchmarks.train_step --model=base --batch_size=1 --steps=2 \
      --inputs_length=944 --targets_length=80
  # On a GPU: the ~110M model at sequence length 1,024 in bf16 (41.5 % MFU
  # on one H100 at batch 128; 38.6 % at batch 64).
  python -m benchmarks.train_step --model=base --inputs_length=944 \
      --targets_length=80 --batch_size=128 --attention=cudnn

Prints one JSON line per figure: {"name", "value", "unit", "baseline",
"ratio"}.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Optional, Sequence

import gin
import jax
import numpy as np

from benchmarks import figures
from pipelines import cli
from trainer import models
from trainer import network
from trainer import partitioning
from trainer import train_lib

MODELS = ("tiny", "base", "large")  # trainer/configs/models/{name}.gin
# Dense bf16 peak FLOP/s by device kind substring.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def random_batch(rng: np.random.RandomState, batch_size: int, vocab_size: int,
                 inputs_length: int, targets_length: int
                ) -> dict[str, np.ndarray]:
  """Full-length prompts and targets (the costliest, unpadded case)."""
  length = inputs_length + targets_length
  tokens = rng.randint(3, vocab_size, (batch_size, length)).astype(np.int32)
  position = np.arange(length)[None, :]
  prompt = position < inputs_length
  item = tokens[:, inputs_length:]

  def ones(mask):
    return np.broadcast_to(mask, (batch_size, length)).astype(np.int32)

  return {
      "decoder_target_tokens": tokens,
      "decoder_input_tokens": np.pad(tokens[:, :-1], ((0, 0), (1, 0))),
      "decoder_loss_weights": ones(~prompt),
      "decoder_causal_attention": ones(position <= inputs_length),
      "history_pool_weights": ones((position >= 1) & (position <=
                                                      inputs_length)),
      "target_pool_weights": ones(position > inputs_length),
      "item_input_tokens": item,
      "item_pool_weights": np.ones_like(item),
  }


def model_flops_per_step(config: network.TransformerConfig, batch_size: int,
                         length: int, item_length: int,
                         item_tower: bool) -> float:
  """Training FLOPs of one step (forward + backward = 3x forward).

  The output projection counts only where the step computes logits: the
  target span of the joint pass (item_length positions per row).
  """
  projection = 6.0 * config.vocab_size * config.emb_dim
  body = 6.0 * config.num_params() - projection
  attention = 12.0 * config.num_layers * config.num_heads * config.head_dim
  flops = batch_size * (length * (body + attention * length) +
                        item_length * projection)
  if item_tower:
    flops += batch_size * item_length * (body + attention * item_length)
  return flops


def load_config(name: str, **overrides) -> network.TransformerConfig:
  """The TransformerConfig bound by trainer/configs/models/{name}.gin."""
  with gin.unlock_config():
    gin.clear_config()
    gin.parse_config_file(f"trainer/configs/models/{name}.gin")
    config = network.TransformerConfig()
    gin.clear_config()
  return dataclasses.replace(config, **overrides)


def seconds_per_step(trainers: dict[str, train_lib.Trainer], batch,
                     steps: int, rounds: int) -> dict[str, float]:
  """Best-of-rounds seconds per step, variants interleaved round by round.

  Interleaving keeps load changes of a shared machine from favouring one.
  """
  states = {}
  for name, trainer in trainers.items():  # Compile and warm up.
    states[name], metrics = trainer.train_step(trainer.initial_state(), batch)
    jax.block_until_ready(metrics)
  best = {name: float("inf") for name in trainers}
  for _ in range(rounds):
    for name, trainer in trainers.items():
      start = time.perf_counter()
      for _ in range(steps):
        states[name], metrics = trainer.train_step(states[name], batch)
      jax.block_until_ready(metrics)
      best[name] = min(best[name], (time.perf_counter() - start) / steps)
  return best


def peak_flops(override_tflops: Optional[float]) -> Optional[float]:
  if override_tflops:
    return override_tflops * 1e12 * jax.device_count()
  kind = jax.devices()[0].device_kind
  for name, flops in PEAK_FLOPS.items():
    if name in kind:
      return flops * jax.device_count()
  return None


def run(args: argparse.Namespace) -> None:
  overrides = {"attention_implementation": args.attention}
  if args.dtype:
    overrides["dtype"] = args.dtype
  config = load_config(args.model, **overrides)
  rng = np.random.RandomState(0)
  batch = random_batch(rng, args.batch_size, config.vocab_size,
                       args.inputs_length, args.targets_length)
  shapes = {k: v.shape for k, v in batch.items()}
  length = args.inputs_length + args.targets_length
  partitioner = partitioning.Partitioner(num_partitions=args.num_partitions)
  trainers = {
      variant: train_lib.Trainer(
          models.CALRecModel(config, alpha=alpha, beta=beta),
          train_lib.create_optimizer(1e-4), partitioner, shapes, seed=0,
          num_microbatches=args.num_microbatches)
      for variant, (alpha, beta) in [("calrec", (0.125, -0.025)),
                                     ("nig_only", (0.0, 0.0))]}
  seconds = seconds_per_step(trainers, batch, args.steps, args.rounds)
  tokens = {"calrec": args.batch_size * (length + args.targets_length),
            "nig_only": args.batch_size * length}
  prefix = f"train_step/{args.model}/{jax.devices()[0].platform}"
  figures.emit(f"{prefix}/steps_per_second", 1 / seconds["calrec"],
               "steps/s", 1 / seconds["nig_only"])
  figures.emit(f"{prefix}/tokens_per_second",
               tokens["calrec"] / seconds["calrec"], "tokens/s",
               tokens["nig_only"] / seconds["nig_only"])
  peak = peak_flops(args.peak_tflops)
  if peak:
    used = model_flops_per_step(config, args.batch_size, length,
                                args.targets_length, True) / seconds["calrec"]
    figures.emit(f"{prefix}/model_flops_utilisation", 100 * used / peak, "%",
                 40.0)


def check_microbatches(parser: argparse.ArgumentParser, batch_size: int,
                       num_microbatches: int, data_partitions: int = 1) -> None:
  """A usage error unless each microbatch splits over the data partitions,
  as `train_lib.Trainer` needs."""
  if batch_size % (num_microbatches * data_partitions):
    over = f" over {data_partitions} data partitions" * (data_partitions > 1)
    parser.error(f"--batch_size {batch_size} does not split into "
                 f"{num_microbatches} microbatches{over}.")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      allow_abbrev=False, prog="python -m benchmarks.train_step",
      description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", choices=MODELS, default="tiny")
  parser.add_argument("--batch_size", type=cli.positive_int, default=16)
  parser.add_argument("--inputs_length", type=cli.positive_int, default=256)
  parser.add_argument("--targets_length", type=cli.positive_int, default=64)
  parser.add_argument("--steps", type=cli.positive_int, default=3,
                      help="Timed steps per variant and round.")
  parser.add_argument("--rounds", type=cli.positive_int, default=3,
                      help="Rounds; the best round counts.")
  parser.add_argument("--dtype", choices=["float32", "bfloat16"],
                      help="Activation dtype (default: the model's).")
  parser.add_argument("--attention", choices=["xla", "cudnn"],
                      help="jax.nn.dot_product_attention implementation.")
  parser.add_argument("--num_partitions", type=cli.positive_int, default=1,
                      help="Devices on the 'model' mesh axis; must divide the "
                      "device count and the model's sharded sizes.")
  parser.add_argument("--num_microbatches", type=cli.positive_int, default=1,
                      help="Gradient over this many microbatches (MFU counts "
                      "the model FLOPs of the batch, not the extra pass).")
  parser.add_argument("--peak_tflops", type=float,
                      help="Peak TFLOP/s per device for MFU (default: known "
                      "GPUs only).")
  args = parser.parse_args(argv)
  try:
    mesh_shape = dict(partitioning.create_mesh(args.num_partitions).shape)
    partitioning.check_shardable(load_config(args.model), mesh_shape,
                                 partitioning.DEFAULT_LOGICAL_AXIS_RULES)
  except ValueError as error:
    parser.error(str(error))
  check_microbatches(parser, args.batch_size, args.num_microbatches,
                     mesh_shape["data"])
  return args


if __name__ == "__main__":
  run(parse_args())
