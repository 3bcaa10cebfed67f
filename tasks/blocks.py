"""Blocks of tf.data elements for the block preprocessors and converter.

The tasks' pipeline does its per-example work on blocks of elements (one
tf.data call per block, `tasks.preprocessors`). `Dataset.ragged_batch` runs a
map over every element to re-encode its dense features as ragged ones, a
call per element, with a thread hand-off when tf.data parallelises the map;
the helpers here batch without one where the elements allow it.
"""

from __future__ import annotations

import tensorflow as tf


def _has_variable_dense(dataset: tf.data.Dataset) -> bool:
  """Whether a dense feature of the elements has a dimension of no size."""
  return any(isinstance(spec, tf.TensorSpec) and
             not spec.shape.is_fully_defined()
             for spec in tf.nest.flatten(dataset.element_spec))


def ragged_blocks(dataset: tf.data.Dataset,
                  block_size: int) -> tf.data.Dataset:
  """Blocks of block_size elements, variable-length features as ragged rows.

  Elements whose variable-length features are ragged already (the tasks'
  source and block preprocessors yield such) are batched as they are;
  otherwise as by `ragged_batch`.
  """
  if _has_variable_dense(dataset):
    return dataset.ragged_batch(block_size)
  return dataset.batch(block_size)


def padded_blocks(dataset: tf.data.Dataset,
                  block_size: int) -> tf.data.Dataset:
  """Blocks of block_size elements, dense features padded with 0 at the end.

  Ragged features (which `padded_batch` refuses) make ragged blocks instead,
  as `ragged_blocks`.
  """
  if any(isinstance(spec, tf.RaggedTensorSpec)
         for spec in tf.nest.flatten(dataset.element_spec)):
    return ragged_blocks(dataset, block_size)
  return dataset.padded_batch(block_size)
