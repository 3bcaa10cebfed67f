"""Maps logical axis names onto a ('data', 'model') device mesh, t5x style.

Batches are split along 'data'; attention heads, MLP features and the
vocabulary along 'model' (so its size must divide theirs:
`check_shardable`); everything else is replicated. Functions are
compiled with `jax.jit` under the mesh and the logical axis rules, so the
activation constraints of `trainer.network` apply.

Across several processes (hosts), each process feeds only the rows of the
global batch that its own devices hold: `Partitioner.data_layout` says which
part of the data that is, and `shard_batch` assembles the global arrays from
the processes' local batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from trainer import network

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

# The `network.TransformerConfig` field that sizes each logical axis of the
# parameters.
AXIS_SIZE_FIELDS = {
    "vocab": "vocab_size",
    "embed": "emb_dim",
    "heads": "num_heads",
    "kv_heads": "num_kv_heads",
    "kv": "head_dim",
    "mlp": "mlp_dim",
}


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


def check_shardable(config: network.TransformerConfig,
                    mesh_shape: Mapping[str, int],
                    logical_axis_rules: LogicalRules) -> None:
  """Raises ValueError if the rules split a parameter axis unevenly.

  jax would only fail when placing the parameters, naming an array shape.

  Args:
    config: the decoder's sizes.
    mesh_shape: devices per mesh axis, e.g. {'data': 1, 'model': 8}.
    logical_axis_rules: (logical axis, mesh axis or axes or None) pairs; the
      first rule of a logical axis applies, as in flax.
  """
  mesh_axes_of = {}
  for logical, mesh_axes in logical_axis_rules:
    mesh_axes_of.setdefault(logical, mesh_axes)
  fields_by_mesh_axes = {}
  for logical, field in AXIS_SIZE_FIELDS.items():
    mesh_axes = mesh_axes_of.get(logical)
    if mesh_axes is not None:
      mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(
          mesh_axes)
      fields_by_mesh_axes.setdefault(mesh_axes, []).append(field)
  problems = []
  for mesh_axes, fields in fields_by_mesh_axes.items():
    devices = math.prod(mesh_shape[axis] for axis in mesh_axes)
    indivisible = [f"network.TransformerConfig.{field}={getattr(config, field)}"
                   for field in fields if getattr(config, field) % devices]
    if indivisible:
      problems.append(
          f"{', '.join(indivisible)} cannot be split over the {devices} "
          f"devices of mesh axis {'x'.join(mesh_axes)!r}, which must divide "
          f"{', '.join(fields)}")
  if problems:
    raise ValueError("; ".join(problems) + " (set by "
                     "partitioning.Partitioner.num_partitions).")


@dataclasses.dataclass(frozen=True)
class DataLayout:
  """This process's part of the input data.

  Attributes:
    shard_id: which of the `num_shards` data shards this process reads.
    num_shards: distinct data shards; processes whose devices hold the same
      rows of the batch (model parallelism across hosts) read the same shard.
  """

  shard_id: int
  num_shards: int

  def local_batch_size(self, batch_size: int) -> int:
    """Rows of a global batch of `batch_size` that this process feeds."""
    if batch_size % self.num_shards:
      raise ValueError(f"batch_size {batch_size} must be a multiple of the "
                       f"{self.num_shards} data shards (processes feeding "
                       "distinct data).")
    return batch_size // self.num_shards


def data_layout(device_grid: np.ndarray, process_index: int) -> DataLayout:
  """The `DataLayout` of a process on a (data, model) grid of devices.

  Each process must hold a contiguous block of the 'data' rows, all blocks of
  one size, so that its local batch is one slice of the global batch.
  """
  rows_by_process: dict[int, set[int]] = {}
  for (row, _), device in np.ndenumerate(device_grid):
    rows_by_process.setdefault(device.process_index, set()).add(row)
  if process_index not in rows_by_process:
    raise ValueError(f"Process {process_index} has no device in the mesh.")
  blocks = sorted({tuple(sorted(rows)) for rows in rows_by_process.values()})
  sizes = {len(block) for block in blocks}
  rows = [row for block in blocks for row in block]
  if (rows != list(range(device_grid.shape[0])) or len(sizes) != 1 or any(
      block[-1] - block[0] + 1 != len(block) for block in blocks)):
    raise ValueError(
        "Every process must hold an equal, contiguous block of the mesh's "
        f"'data' rows; got rows {sorted(rows_by_process.items())} by process.")
  own = tuple(sorted(rows_by_process[process_index]))
  return DataLayout(shard_id=blocks.index(own), num_shards=len(blocks))


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

  def check_shardable(self, config: network.TransformerConfig) -> None:
    """Raises ValueError if the mesh cannot split `config`'s parameters."""
    check_shardable(config, dict(self.mesh.shape), self.logical_axis_rules)

  @functools.cached_property
  def data_layout(self) -> DataLayout:
    """The data shard this process reads (one shard on one process)."""
    return data_layout(self.mesh.devices, jax.process_index())

  @contextlib.contextmanager
  def context(self) -> Iterator[None]:
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
    """The global batch, batch axis over 'data', from this process's rows.

    `batch` holds this process's `data_layout` shard: all of the batch on
    one process, 1/num_shards of it on each of several.
    """
    num_shards = self.data_layout.num_shards
    sharding = self.data_sharding()
    arrays = {}
    for name, value in batch.items():
      value = np.asarray(value)
      global_shape = (value.shape[0] * num_shards,) + value.shape[1:]
      if global_shape[0] % self.data_partitions:
        raise ValueError(
            f"Batch feature {name!r} has {global_shape[0]} rows; the batch "
            f"size must be a multiple of the {self.data_partitions} data "
            "partitions.")
      arrays[name] = jax.make_array_from_process_local_data(
          sharding, value, global_shape)
    return arrays

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
