"""Maps logical axis names onto a ('data', 'model') device mesh, t5x style.

Batches are split along 'data'; attention heads, MLP features and the
vocabulary along 'model'; everything else is replicated. Functions are
compiled with `jax.jit` under the mesh and the logical axis rules, so the
activation constraints of `trainer.network` apply.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

PyTree = Any
LogicalRules = Sequence[tuple[str, Optional[str]]]

DEFAULT_LOGICAL_AXIS_RULES: LogicalRules = (
    ("batch", "data"),
    ("vocab", "model"),
    ("heads", "model"),
    ("mlp", "model"),
    ("kv_heads", None),
    ("kv", None),
    ("embed", None),
    ("length", None),
)


def create_mesh(num_partitions: int = 1,
                devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A (data, model) mesh; 'model' has `num_partitions` devices.

  Axes are Auto (jax.make_mesh now defaults to Explicit, which logical
  sharding constraints do not use).
  """
  devices = list(jax.devices() if devices is None else devices)
  if num_partitions < 1 or len(devices) % num_partitions:
    raise ValueError(f"num_partitions={num_partitions} must divide the "
                     f"{len(devices)} available devices.")
  grid = np.asarray(devices).reshape(len(devices) // num_partitions,
                                     num_partitions)
  return Mesh(grid, ("data", "model"), axis_types=(AxisType.Auto,) * 2)


@gin.configurable
class Partitioner:
  """Holds the mesh and the logical axis rules; compiles sharded functions."""

  def __init__(self,
               num_partitions: int = 1,
               logical_axis_rules: LogicalRules = DEFAULT_LOGICAL_AXIS_RULES,
               devices: Optional[Sequence[jax.Device]] = None):
    self.mesh = create_mesh(num_partitions, devices)
    self.logical_axis_rules = tuple(logical_axis_rules)

  @property
  def data_partitions(self) -> int:
    return self.mesh.shape["data"]

  @contextlib.contextmanager
  def context(self):
    """The mesh and the logical rules, active while tracing and running."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(
        self.logical_axis_rules):
      yield

  def sharding_for(self, boxed_tree: PyTree) -> PyTree:
    """NamedShardings for a tree whose leaves may carry logical axis names.

    Leaves without names (e.g. optimizer counters) are replicated.
    """
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, self.mesh,
                                       self.logical_axis_rules)

  def data_sharding(self) -> NamedSharding:
    """Split the leading (batch) axis over 'data'."""
    return NamedSharding(self.mesh, PartitionSpec("data"))

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def shard_batch(self, batch: PyTree) -> PyTree:
    """Places a host batch on the mesh, batch axis over 'data'."""
    for name, value in batch.items():
      if np.shape(value)[0] % self.data_partitions:
        raise ValueError(
            f"Batch feature {name!r} has {np.shape(value)[0]} rows; the batch "
            f"size must be a multiple of the {self.data_partitions} data "
            "partitions.")
    return jax.device_put(batch, self.data_sharding())

  def partition(self, fn: Callable[..., Any], in_shardings: Any,
                out_shardings: Any,
                donate_argnums: Sequence[int] = ()) -> Callable[..., Any]:
    """jit-compiles fn with the given shardings, run under `context()`."""
    compiled = jax.jit(fn, in_shardings=in_shardings,
                       out_shardings=out_shardings,
                       donate_argnums=tuple(donate_argnums))

    @functools.wraps(fn)
    def run(*args):
      with self.context():
        return compiled(*args)

    return run
