"""Parameterised building blocks of the decoder (trainer.network).

`DenseGeneral` is every projection, with optional LoRA adapters (Hu et al.
2021) for parameter-efficient fine-tuning; `RMSNorm` every norm, with Gemma's
(1 + w) convention as an option. Both keep their parameters in float32 and
compute in the activation dtype they are given. Parameters and activations
carry logical axis names that `trainer.partitioning` maps onto the mesh.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
# Names of the LoRA parameters (`DenseGeneral`); frozen_params patterns and
# checkpoint restoring recognise LoRA parameters by them.
LORA_PARAMS = ("lora_a", "lora_b")


def constrain(x: Array, names: Sequence[Optional[str]]) -> Array:
  """x with its axes constrained to the logical axes `names`."""
  return nn.with_logical_constraint(x, tuple(names))


class DenseGeneral(nn.Module):
  """Contracts the last `num_contracted` axes of x with a named kernel.

  The kernel has shape x.shape[-num_contracted:] + features, logical axes
  `kernel_axes`, and a truncated-normal init scaled by its fan-in. With
  `use_bias`, a zero-initialised 'bias' of shape `features` (logical axes the
  kernel's last ones) is added.

  With `lora_rank` r > 0, `lora_scale` * x A B is added (LoRA): 'lora_a' of
  shape contracted + (r,) (the kernel's input axes, then 'lora_rank'),
  initialised like the kernel, and 'lora_b' of shape (r,) + features
  ('lora_rank', then the kernel's output axes), initialised to zero.
  """

  features: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  num_contracted: int = 1
  dtype: Any = jnp.float32
  use_bias: bool = False
  lora_rank: int = 0
  lora_scale: float = 0.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    contracted = tuple(x.shape[-self.num_contracted:])
    shape = contracted + tuple(self.features)
    init = nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal",
        in_axis=tuple(range(self.num_contracted)),
        out_axis=tuple(range(self.num_contracted, len(shape))))
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(init, self.kernel_axes), shape,
        jnp.float32)
    x_axes = tuple(range(x.ndim - self.num_contracted, x.ndim))
    y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype),
                      axes=(x_axes, tuple(range(self.num_contracted))))
    if self.use_bias:
      bias = self.param(
          "bias",
          nn.with_logical_partitioning(
              nn.initializers.zeros,
              self.kernel_axes[self.num_contracted:]),
          tuple(self.features), jnp.float32)
      y = y + bias.astype(self.dtype)
    if self.lora_rank:
      y = y + self._lora(x, x_axes)
    return y

  def _lora(self, x: Array, x_axes: tuple[int, ...]) -> Array:
    """lora_scale * x A B, in the activation dtype."""
    contracted = tuple(x.shape[-self.num_contracted:])
    rank_axis = ("lora_rank",)
    a_init = nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal",
        in_axis=tuple(range(self.num_contracted)), out_axis=-1)
    lora_a = self.param(
        "lora_a", nn.with_logical_partitioning(
            a_init, self.kernel_axes[:self.num_contracted] + rank_axis),
        contracted + (self.lora_rank,), jnp.float32)
    lora_b = self.param(
        "lora_b", nn.with_logical_partitioning(
            nn.initializers.zeros,
            rank_axis + self.kernel_axes[self.num_contracted:]),
        (self.lora_rank,) + tuple(self.features), jnp.float32)
    low = jnp.tensordot(x.astype(self.dtype), lora_a.astype(self.dtype),
                        axes=(x_axes, tuple(range(self.num_contracted))))
    low = low * jnp.asarray(self.lora_scale, self.dtype)
    return jnp.tensordot(low, lora_b.astype(self.dtype), axes=((-1,), (0,)))


class RMSNorm(nn.Module):
  """Root-mean-square layer norm with a learned scale.

  The output is normalised x times (scale_offset + scale), computed in
  float32; Gemma's convention is scale_offset 1.0 with scale initialised to 0.
  """

  dtype: Any = jnp.float32
  epsilon: float = 1e-6
  scale_offset: float = 0.0
  axis_name: str = "embed"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param(
        "scale", nn.with_logical_partitioning(
            nn.initializers.constant(1.0 - self.scale_offset),
            (self.axis_name,)),
        (x.shape[-1],), jnp.float32)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) +
                          self.epsilon)
    if self.scale_offset:
      scale = self.scale_offset + scale
    return (x * scale).astype(self.dtype)
