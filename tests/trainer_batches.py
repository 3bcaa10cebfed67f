"""Tiny model-feature batches built directly in numpy (docs/contracts.md)."""

from __future__ import annotations

import numpy as np

EOS_ID = 1


def make_example(prompt: list[int], target: list[int], inputs_length: int,
                 targets_length: int) -> dict[str, np.ndarray]:
  """The features of one example; `target` excludes EOS (appended here)."""
  target = list(target) + [EOS_ID]
  length = inputs_length + targets_length
  m, k = len(prompt), len(target)
  assert m <= inputs_length and k <= targets_length
  features = {name: np.zeros(length, np.int32) for name in (
      "decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
      "decoder_causal_attention", "history_pool_weights",
      "target_pool_weights")}
  sequence = prompt + target
  features["decoder_target_tokens"][:m + k] = sequence
  features["decoder_input_tokens"][1:] = features["decoder_target_tokens"][:-1]
  features["decoder_loss_weights"][m:m + k] = 1
  features["decoder_causal_attention"][:m + 1] = 1
  features["history_pool_weights"][1:m + 1] = 1
  # Positions whose input is a target token, EOS included when it fits.
  features["target_pool_weights"][m + 1:m + k + 1] = 1
  features["item_input_tokens"] = np.zeros(targets_length, np.int32)
  features["item_input_tokens"][:k] = target
  features["item_pool_weights"] = np.zeros(targets_length, np.int32)
  features["item_pool_weights"][:k] = 1
  return features


def random_batch(seed: int, batch_size: int, vocab_size: int,
                 inputs_length: int = 24,
                 targets_length: int = 8) -> dict[str, np.ndarray]:
  """A batch of random prompts and targets of random lengths."""
  rng = np.random.RandomState(seed)
  examples = []
  for _ in range(batch_size):
    prompt = rng.randint(3, vocab_size, rng.randint(2, inputs_length + 1))
    target = rng.randint(3, vocab_size, rng.randint(1, targets_length))
    examples.append(make_example(list(prompt), list(target), inputs_length,
                                 targets_length))
  return {name: np.stack([e[name] for e in examples]) for name in examples[0]}
