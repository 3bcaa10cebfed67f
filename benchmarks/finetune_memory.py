r"""Memory and speed of parameter-efficient fine-tuning of Gemma 3 270M.

One CALRec train step (`train_lib.Trainer`: value and gradient of the paper
section 3.4 loss, AdamW update) of a randomly initialised Gemma-3-270M-shaped
model (trainer/configs/models/gemma3_270m.gin, its first --num_layers layers)
in three modes:
  full              every parameter trained (the baseline),
  frozen_embedding  trainer/configs/peft/frozen_embedding.gin,
  lora              trainer/configs/peft/lora.gin (rank 16, all else frozen).
Per mode: XLA's memory analysis of the compiled step (peak = arguments +
outputs + temporaries - donated aliases), the bytes of the AdamW moments
(exact, from the state's shapes) and seconds per step (best of --rounds, one
mode after the other so that only one state is held). With frozen
parameters the step differentiates the trained ones only, so neither the
frozen parameters' gradients nor their temporaries exist. The defaults keep a
2-core CPU run to a few minutes; the output names give layers, sequence
length, batch and platform.

  python -m benchmarks.finetune_memory
  python -m benchmarks.finetune_memory --num_layers=18 --steps=0  # memory

Prints one JSON line per figure: {"name", "value", "unit", "baseline",
"ratio"}, the baseline being full fine-tuning measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import time
from typing import Optional, Sequence

import gin
import jax
import numpy as np

from benchmarks import figures
from benchmarks import train_step
from pipelines import cli
from trainer import models
from trainer import network
from trainer import partitioning
from trainer import train_lib

MODES = ("full", "frozen_embedding", "lora")
PEFT_GIN = "trainer/configs/peft/{}.gin"
MIB = 2**20


def peft_settings(mode: str) -> tuple[dict[str, object], tuple[str, ...]]:
  """(TransformerConfig overrides, frozen_params) of a mode's gin file."""
  if mode == "full":
    return {}, ()
  with gin.unlock_config():
    gin.clear_config()
    gin.parse_config_file(PEFT_GIN.format(mode))
    frozen = tuple(gin.query_parameter(
        "train_lib.create_optimizer.frozen_params"))
    overrides = {}
    for field in ("lora_rank", "lora_alpha", "lora_targets"):
      try:
        overrides[field] = gin.query_parameter(
            f"network.TransformerConfig.{field}")
      except ValueError:
        pass
    gin.clear_config()
  return overrides, frozen


def gemma_config(num_layers: int, dtype: str) -> network.TransformerConfig:
  """Gemma 3 270M's network, its first `num_layers` layers, remat on."""
  config = train_step.load_config("gemma3_270m")
  return dataclasses.replace(
      config, num_layers=num_layers,
      layer_types=config.layer_types[:num_layers], dtype=dtype, remat=True)


def _bytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


def measure(trainer: train_lib.Trainer, batch, steps: int,
            rounds: int) -> dict[str, float]:
  """Peak and moment bytes of the compiled step; seconds per step."""
  partitioner = trainer.partitioner
  # The step `Trainer.train_step` runs, compiled the same way.
  step = jax.jit(
      trainer._train_step_impl,  # pylint: disable=protected-access
      in_shardings=(trainer.state_shardings, partitioner.data_sharding()),
      out_shardings=(trainer.state_shardings, partitioner.replicated()),
      donate_argnums=(0,))
  with partitioner.context():
    compiled = step.lower(trainer.abstract_state, batch).compile()
  analysis = compiled.memory_analysis()
  peak = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes +
          analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
  moments = _bytes([x for x in jax.tree.leaves(trainer.abstract_state.opt_state)
                    if x.ndim > 0])
  trained = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      trainer.abstract_state.opt_state) if x.ndim > 0) // 2
  result = {"peak": peak, "temp": analysis.temp_size_in_bytes,
            "moments": moments, "trained": trained}
  if steps:
    result["seconds"] = train_step.seconds_per_step(
        {"mode": trainer}, batch, steps, rounds)["mode"]
  return result


def run(args: argparse.Namespace) -> None:
  base = gemma_config(args.num_layers, args.dtype)
  rng = np.random.RandomState(0)
  batch = train_step.random_batch(rng, args.batch_size, base.vocab_size,
                                  args.inputs_length, args.targets_length)
  shapes = {k: v.shape for k, v in batch.items()}
  length = args.inputs_length + args.targets_length
  results = {}
  for mode in MODES:
    overrides, frozen = peft_settings(mode)
    config = dataclasses.replace(base, **overrides)
    trainer = train_lib.Trainer(
        models.CALRecModel(config),
        train_lib.create_optimizer(1e-4, frozen_params=frozen),
        partitioning.Partitioner(), shapes, seed=0)
    started = time.perf_counter()
    results[mode] = measure(trainer, batch, args.steps, args.rounds)
    results[mode]["params"] = config.num_params()
    del trainer
    gc.collect()
    print(f"# {mode}: {time.perf_counter() - started:.0f} s", flush=True)
  prefix = (f"finetune_memory/gemma3_270m_{args.num_layers}layers_seq{length}"
            f"_batch{args.batch_size}_{args.dtype}/"
            f"{jax.devices()[0].platform}")
  full = results["full"]
  for mode in MODES:
    figures.emit(f"{prefix}/{mode}/peak_memory", results[mode]["peak"] / MIB,
                 "MiB", full["peak"] / MIB)
    figures.emit(f"{prefix}/{mode}/temp_memory", results[mode]["temp"] / MIB,
                 "MiB", full["temp"] / MIB)
    figures.emit(f"{prefix}/{mode}/adamw_moments",
                 results[mode]["moments"] / MIB, "MiB", full["moments"] / MIB)
    figures.emit(f"{prefix}/{mode}/trained_params", results[mode]["trained"],
                 "params", full["trained"])
    if args.steps:
      figures.emit(f"{prefix}/{mode}/seconds_per_step",
                   results[mode]["seconds"], "s", full["seconds"])


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      allow_abbrev=False, prog="python -m benchmarks.finetune_memory",
      description=__doc__.split("\n\n")[0])
  parser.add_argument("--num_layers", type=cli.positive_int, default=4,
                      help="Gemma 3 270M's first layers (it has 18).")
  parser.add_argument("--batch_size", type=cli.positive_int, default=2)
  parser.add_argument("--inputs_length", type=cli.positive_int, default=192)
  parser.add_argument("--targets_length", type=cli.positive_int, default=64)
  parser.add_argument("--dtype", choices=["float32", "bfloat16"],
                      default="bfloat16",
                      help="Activation dtype (the Stage II run's: bfloat16).")
  parser.add_argument("--steps", type=int, default=1,
                      help="Timed steps per mode and round (0: memory only).")
  parser.add_argument("--rounds", type=cli.positive_int, default=2,
                      help="Rounds of --steps; the best round counts.")
  args = parser.parse_args(argv)
  if args.num_layers > 18:
    parser.error("--num_layers: Gemma 3 270M has 18 layers.")
  if args.steps < 0:
    parser.error("--steps must be >= 0.")
  return args


if __name__ == "__main__":
  run(parse_args())
