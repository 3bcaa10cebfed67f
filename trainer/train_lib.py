"""The train step: its state, the optimizer and the compiled, sharded steps.

`Trainer` compiles one train step and one eval step for a model, an optax
optimizer and a `Partitioner`. The step's dropout key is derived from the seed
and the step number, so a resumed run draws exactly the same keys.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from trainer import microbatching
from trainer import models
from trainer import partitioning

Array = jax.Array
PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: Array
  params: PyTree
  opt_state: PyTree


class LearningRateState(NamedTuple):
  count: Array          # updates applied
  learning_rate: Array  # the schedule's value at the last update


def record_learning_rate(schedule: optax.Schedule
                        ) -> optax.GradientTransformation:
  """Keeps the rate of the last update in the optimizer state for logging.

  The updates pass through unchanged; the train loop logs the state's
  `learning_rate`, as t5x logs its learning rate function at each step.
  """

  def init(params: PyTree) -> LearningRateState:
    del params
    return LearningRateState(jnp.zeros([], jnp.int32),
                             jnp.asarray(schedule(0), jnp.float32))

  def update(updates: PyTree, state: LearningRateState,
             params: Optional[PyTree] = None
            ) -> tuple[PyTree, LearningRateState]:
    del params
    return updates, LearningRateState(
        state.count + 1, jnp.asarray(schedule(state.count), jnp.float32))

  return optax.GradientTransformation(init, update)


class PartlyFrozen(NamedTuple):
  """An optax transformation that leaves the parameters labelled 'frozen'.

  `create_optimizer(frozen_params=...)` returns it: `init` and `update` are
  those of the optimizer (no update and no state for frozen parameters), and
  `labels` maps a parameter tree to 'frozen' or 'trained' per parameter.
  `Trainer` reads `labels` to differentiate only the trained parameters.
  """
  init: optax.TransformInitFn
  update: optax.TransformUpdateFn
  labels: Callable[[PyTree], PyTree]


def _frozen_labels(frozen: Sequence[str]) -> Callable[[PyTree], PyTree]:
  """Labels each parameter 'frozen' or 'trained' by its '/'-joined path.

  A parameter is frozen when a pattern of `frozen` matches its path with
  `re.fullmatch`, e.g. 'embedding/.*' for the token embedding. A parameter
  boxed with its logical axes (`Trainer`'s initialisation) is one leaf of
  the same path, so the boxed and the plain trees get the same labels.
  """
  patterns = [re.compile(pattern) for pattern in frozen]

  def labels(params: PyTree) -> PyTree:
    def label(path, _):
      name = "/".join(str(getattr(key, "key", key)) for key in path)
      return ("frozen" if any(p.fullmatch(name) for p in patterns)
              else "trained")
    return jax.tree_util.tree_map_with_path(
        label, params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))

  return labels


@gin.configurable
def create_optimizer(learning_rate: float = 1e-4,
                     warmup_steps: int = 0,
                     weight_decay: float = 0.0,
                     clip_gradient_norm: Optional[float] = 1.0,
                     b2: float = 0.99,
                     frozen_params: Sequence[str] = ()
                    ) -> optax.GradientTransformation | PartlyFrozen:
  """AdamW at a constant rate after a linear warmup (paper section 4: lr 1e-4).

  `frozen_params`: regular expressions over parameter paths ('/'-joined,
  e.g. 'embedding/embedding') of parameters kept as they are. They get no
  update and no AdamW moments (parameter-efficient fine-tuning of a
  pretrained model: Gemma 3 270M's embedding is 63 % of its parameters).
  Gradient clipping sees only the trained parameters' gradients. With frozen
  parameters the result is a `PartlyFrozen`, from which `Trainer` learns to
  leave their gradients uncomputed.
  """
  if warmup_steps:
    schedule = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    schedule = optax.join_schedules(
        [schedule, optax.constant_schedule(learning_rate)], [warmup_steps])
  else:
    schedule = optax.constant_schedule(learning_rate)
  parts = []
  if clip_gradient_norm:
    parts.append(optax.clip_by_global_norm(clip_gradient_norm))
  parts.append(optax.adamw(schedule, b2=b2, weight_decay=weight_decay))
  parts.append(record_learning_rate(schedule))
  optimizer = optax.chain(*parts)
  if not frozen_params:
    return optimizer
  labels = _frozen_labels(frozen_params)
  optimizer = optax.multi_transform(
      {"trained": optimizer, "frozen": optax.set_to_zero()}, labels)
  return PartlyFrozen(optimizer.init, optimizer.update, labels)


def all_finite(tree: PyTree) -> Array:
  """Whether every element of every leaf is finite (a boolean scalar)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                            for x in jax.tree.leaves(tree)]))


class _Split(NamedTuple):
  """A parameter tree's leaves split into trained and frozen ones."""
  treedef: Any
  frozen: tuple[bool, ...]  # per leaf, in tree order

  @classmethod
  def of(cls, params: PyTree,
         labels: Callable[[PyTree], PyTree]) -> _Split:
    return cls(jax.tree.structure(params),
               tuple(label == "frozen"
                     for label in jax.tree.leaves(labels(params))))

  def parts(self, tree: PyTree) -> tuple[list[Array], list[Array]]:
    """(trained leaves, frozen leaves) of a tree of the parameters' shape."""
    leaves = self.treedef.flatten_up_to(tree)
    return ([x for x, f in zip(leaves, self.frozen) if not f],
            [x for x, f in zip(leaves, self.frozen) if f])

  def merge(self, trained: Sequence[Array],
            frozen: Sequence[Array]) -> PyTree:
    """The inverse of `parts`."""
    trained, frozen = iter(trained), iter(frozen)
    return self.treedef.unflatten(
        [next(frozen) if f else next(trained) for f in self.frozen])


class Trainer:
  """Sharded initialisation, train step and eval step of one model."""

  def __init__(self, model: models.CALRecModel,
               optimizer: optax.GradientTransformation | PartlyFrozen,
               partitioner: partitioning.Partitioner,
               input_shapes: Mapping[str, Sequence[int]], seed: int,
               num_microbatches: int = 1):
    """Compiles the steps.

    Args:
      model: the model object.
      optimizer: optax transformation of the gradients. For a `PartlyFrozen`
        one (`create_optimizer(frozen_params=...)`) the train step computes
        the gradients of the trained parameters only.
      partitioner: mesh and logical axis rules.
      input_shapes: global batch shapes of the training features.
      seed: seeds initialisation and the per-step dropout keys.
      num_microbatches: the train step computes the gradient over this many
        microbatches, one at a time, with the whole batch's loss (see
        `trainer.microbatching`); each must split over the data partitions.
    """
    batch_size = next(iter(input_shapes.values()))[0]
    if num_microbatches < 1 or batch_size % (
        num_microbatches * partitioner.data_partitions):
      raise ValueError(
          f"num_microbatches={num_microbatches} must be positive and the "
          f"batch size {batch_size} a multiple of num_microbatches times the "
          f"{partitioner.data_partitions} data partitions.")
    self.model = model
    self.optimizer = optimizer
    self._labels = (optimizer.labels if isinstance(optimizer, PartlyFrozen)
                    else None)
    self.partitioner = partitioner
    self.seed = seed
    self.num_microbatches = num_microbatches
    self._input_shapes = dict(input_shapes)

    boxed = jax.eval_shape(self._boxed_initial_state, jax.random.PRNGKey(0))
    self.state_shardings = partitioner.sharding_for(boxed)
    self.abstract_state = jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                 sharding=sharding),
        nn.meta.unbox(boxed), self.state_shardings)
    replicated = partitioner.replicated()
    data = partitioner.data_sharding()
    self._init = partitioner.partition(
        lambda rng: nn.meta.unbox(self._boxed_initial_state(rng)),
        in_shardings=replicated, out_shardings=self.state_shardings)
    self._from_params = partitioner.partition(
        self._state_from_params, in_shardings=(self.state_shardings.params,),
        out_shardings=self.state_shardings)
    self._train_step = partitioner.partition(
        self._train_step_impl, in_shardings=(self.state_shardings, data),
        out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))
    self._eval_step = partitioner.partition(
        self._eval_step_impl, in_shardings=(self.state_shardings.params, data),
        out_shardings=replicated)

  @property
  def abstract_params(self) -> PyTree:
    return self.abstract_state.params

  def _boxed_initial_state(self, rng: Array) -> TrainState:
    return self._state_from_params(
        self.model.get_initial_variables(rng, self._input_shapes)["params"])

  def _state_from_params(self, params: PyTree) -> TrainState:
    return TrainState(step=jnp.int32(0), params=params,
                      opt_state=self.optimizer.init(params))

  def initial_state(self) -> TrainState:
    """Fresh parameters from the seed, step 0."""
    return self._init(jax.random.PRNGKey(self.seed))

  def state_from_params(self, params: PyTree) -> TrainState:
    """Step 0 with given parameters and a fresh optimizer (Stage II init)."""
    return self._from_params(params)

  def _train_step_impl(self, state: TrainState, batch: Mapping[str, Array]):
    dropout_rng = None
    if self.model.config.dropout_rate > 0:
      dropout_rng = jax.random.fold_in(jax.random.PRNGKey(self.seed),
                                       state.step)
    if self._labels is None:
      (_, metrics), grads = microbatching.value_and_grad(
          self.model, state.params, batch, dropout_rng,
          self.num_microbatches)
      updates, opt_state = self.optimizer.update(grads, state.opt_state,
                                                 state.params)
      params = optax.apply_updates(state.params, updates)
      gradient_norm = optax.tree.norm(grads)
    else:
      # Differentiate the trained leaves only; the frozen ones are closed
      # over, so XLA neither computes nor keeps their gradients.
      split = _Split.of(state.params, self._labels)
      trained, frozen = split.parts(state.params)
      (_, metrics), trained_grads = microbatching.value_and_grad(
          self.model, trained, batch, dropout_rng, self.num_microbatches,
          to_params=lambda t: split.merge(t, frozen))
      # The optimizer ignores the frozen leaves' gradients (zeros here).
      grads = split.merge(trained_grads, [jnp.zeros_like(x) for x in frozen])
      updates, opt_state = self.optimizer.update(grads, state.opt_state,
                                                 state.params)
      trained_updates, _ = split.parts(updates)
      params = split.merge(optax.apply_updates(trained, trained_updates),
                           frozen)
      gradient_norm = optax.tree.norm(trained_grads)
    metrics = dict(metrics, gradient_norm=gradient_norm,
                   parameters_finite=all_finite(params),
                   input_tokens=self.model.count_input_tokens(batch))
    return TrainState(step=state.step + 1, params=params,
                      opt_state=opt_state), metrics

  def _eval_step_impl(self, params: PyTree, batch: Mapping[str, Array]):
    return self.model.loss_fn(params, batch, dropout_rng=None)[1]

  def train_step(self, state: TrainState, batch: Mapping[str, Any]
                ) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step; the metrics of its batch.

    Metrics: the loss terms of `model.loss_fn`, `gradient_norm` (the global
    norm of the trained parameters' gradients, before clipping: frozen
    parameters have none), `parameters_finite` and `input_tokens`.
    """
    return self._train_step(state, self.partitioner.shard_batch(batch))

  def eval_step(self, params: PyTree,
                batch: Mapping[str, Any]) -> dict[str, Array]:
    return self._eval_step(params, self.partitioner.shard_batch(batch))

