"""The frozen-parameter switch (parameter-efficient fine-tuning): the
optimizer and the train step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import trainer_batches

from trainer import microbatching
from trainer import models
from trainer import network
from trainer import partitioning
from trainer import train_lib
from trainer import train_metrics


def _params():
  return {"embedding": {"embedding": jnp.ones((6, 4))},
          "layers_0": {"mlp": {"wo": {"kernel": jnp.ones((4, 4))}}},
          "final_norm": {"scale": jnp.ones((4,))}}


def _run(optimizer, params, steps=3):
  state = optimizer.init(params)
  for step in range(steps):
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1 * (step + 1)), params)
    updates, state = optimizer.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_frozen_parameters_stay_and_the_others_train():
  initial = _params()
  optimizer = train_lib.create_optimizer(
      learning_rate=0.1, frozen_params=("embedding/.*",))
  params, state = _run(optimizer, initial)
  np.testing.assert_array_equal(params["embedding"]["embedding"],
                                initial["embedding"]["embedding"])
  assert not np.allclose(params["layers_0"]["mlp"]["wo"]["kernel"], 1.0)
  assert not np.allclose(params["final_norm"]["scale"], 1.0)
  # The learning rate the train loop logs is still found in the state.
  assert train_metrics.learning_rate(state) == np.float32(0.1)


def test_trained_parameters_update_as_without_freezing():
  # The trained part sees the same AdamW (clipping over its own gradients).
  initial = _params()
  frozen, _ = _run(train_lib.create_optimizer(
      learning_rate=0.1, clip_gradient_norm=None,
      frozen_params=("embedding/.*",)), initial)
  plain, _ = _run(train_lib.create_optimizer(
      learning_rate=0.1, clip_gradient_norm=None), initial)
  for path in (("layers_0", "mlp", "wo", "kernel"), ("final_norm", "scale")):
    a, b = frozen, plain
    for key in path:
      a, b = a[key], b[key]
    np.testing.assert_array_equal(a, b)


def test_frozen_parameters_hold_no_adam_moments():
  optimizer = train_lib.create_optimizer(frozen_params=("embedding/.*",))
  state = optimizer.init(_params())
  moment_sizes = [leaf.size for leaf in jax.tree.leaves(state)
                  if getattr(leaf, "ndim", 0) > 0]
  # mu and nu of the 4x4 kernel and the 4-vector; none of the 6x4 embedding.
  assert sorted(moment_sizes) == [4, 4, 16, 16]


def test_a_pattern_must_match_the_whole_path():
  optimizer = train_lib.create_optimizer(learning_rate=0.1,
                                         frozen_params=("embedding",))
  params, _ = _run(optimizer, _params())
  assert not np.allclose(params["embedding"]["embedding"], 1.0)


# The train step with frozen parameters: a tiny network whose embedding (and
# its gradient) dominates the step's memory.
CONFIG = network.TransformerConfig(vocab_size=2048, emb_dim=256, num_heads=2,
                                   num_kv_heads=1, head_dim=8, mlp_dim=16,
                                   num_layers=1)
FROZEN = ("embedding/.*",)


@pytest.fixture(scope="module")
def batch():
  return trainer_batches.random_batch(3, 4, CONFIG.vocab_size, 12, 4)


def _trainer(batch, frozen_params=(), clip=None, num_microbatches=1):
  """The trainer of these settings for `batch`'s shapes.

  One per settings and shapes: the tests share its compiled steps.
  """
  return _shared_trainer(tuple((k, v.shape) for k, v in batch.items()),
                         tuple(frozen_params), clip, num_microbatches)


@functools.cache
def _shared_trainer(shapes, frozen_params, clip, num_microbatches):
  return train_lib.Trainer(
      models.CALRecModel(CONFIG),
      train_lib.create_optimizer(1e-2, clip_gradient_norm=clip,
                                 frozen_params=frozen_params),
      partitioning.Partitioner(), dict(shapes), seed=0,
      num_microbatches=num_microbatches)


@pytest.fixture(scope="module")
def initial_params(batch):
  return jax.device_get(_trainer(batch).initial_state().params)


def _step(trainer, params, batch):
  state, metrics = trainer.train_step(trainer.state_from_params(params),
                                      batch)
  return jax.device_get(state.params), jax.device_get(metrics)


def _named(tree) -> dict[str, np.ndarray]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(str(k.key) for k in path): np.asarray(x)
          for path, x in leaves}


def test_create_optimizer_hands_its_labels_to_the_trainer():
  assert not isinstance(train_lib.create_optimizer(), train_lib.PartlyFrozen)
  optimizer = train_lib.create_optimizer(frozen_params=FROZEN)
  assert isinstance(optimizer, train_lib.PartlyFrozen)
  assert optimizer.labels(_params()) == {
      "embedding": {"embedding": "frozen"},
      "layers_0": {"mlp": {"wo": {"kernel": "trained"}}},
      "final_norm": {"scale": "trained"}}
  # Still an optax transformation where one is expected.
  params, _ = _run(optax.chain(optimizer), _params())
  np.testing.assert_array_equal(params["embedding"]["embedding"], 1.0)


class _StepBeforeFreezing(train_lib.Trainer):
  """`Trainer` with the train step as it was before it split off frozen
  parameters: the gradient of every parameter."""

  def _train_step_impl(self, state, batch):
    (_, metrics), grads = microbatching.value_and_grad(
        self.model, state.params, batch, None, self.num_microbatches)
    updates, opt_state = self.optimizer.update(grads, state.opt_state,
                                               state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                                for x in jax.tree.leaves(params)]))
    metrics = dict(metrics, gradient_norm=optax.tree.norm(grads),
                   parameters_finite=finite,
                   input_tokens=self.model.count_input_tokens(batch))
    return train_lib.TrainState(step=state.step + 1, params=params,
                                opt_state=opt_state), metrics


@pytest.mark.slow
def test_without_frozen_parameters_the_step_is_unchanged(batch,
                                                         initial_params):
  trainer = _trainer(batch, clip=1.0)
  before = _StepBeforeFreezing(
      trainer.model, trainer.optimizer, trainer.partitioner,
      {k: v.shape for k, v in batch.items()}, seed=0)
  params, metrics = _step(trainer, initial_params, batch)
  expected, expected_metrics = _step(before, initial_params, batch)
  assert metrics == expected_metrics
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_frozen_parameters_stay_and_the_others_step_as_unfrozen(
    batch, initial_params):
  # Without clipping: clipping sees the trained gradients only.
  params, metrics = _step(_trainer(batch, FROZEN), initial_params, batch)
  plain, plain_metrics = _step(_trainer(batch), initial_params, batch)
  before, after, unfrozen = (_named(initial_params), _named(params),
                             _named(plain))
  assert metrics["loss"] == plain_metrics["loss"]
  for name, value in after.items():
    if name == "embedding/embedding":
      np.testing.assert_array_equal(value, before[name])
      assert not np.array_equal(unfrozen[name], before[name])
    else:
      np.testing.assert_allclose(value, unfrozen[name], rtol=1e-6,
                                 atol=1e-7, err_msg=name)
      assert not np.array_equal(value, before[name]), name
  # gradient_norm: the norm of the trained parameters' gradients.
  grads = _named(jax.jit(jax.grad(
      lambda p: models.CALRecModel(CONFIG).loss_fn(p, batch, None)[0]))(
          initial_params))
  trained_norm = np.sqrt(sum(np.sum(np.square(g.astype(np.float64)))
                             for name, g in grads.items()
                             if name != "embedding/embedding"))
  np.testing.assert_allclose(metrics["gradient_norm"], trained_norm,
                             rtol=1e-5)
  assert metrics["gradient_norm"] < plain_metrics["gradient_norm"]


def _temp_bytes(trainer, batch) -> int:
  """Temporaries of the step, compiled as `Trainer` does (state donated)."""
  # pylint: disable-next=protected-access
  step = jax.jit(trainer._train_step_impl, donate_argnums=(0,))
  compiled = step.lower(trainer.abstract_state, batch).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_the_step_computes_no_gradient_of_a_frozen_embedding(batch):
  # The 2048 x 256 embedding's gradient and update: 2 MiB each (with its
  # gradient computed, a frozen embedding kept 75 % of the temporaries).
  full = _temp_bytes(_trainer(batch), batch)
  frozen = _temp_bytes(_trainer(batch, FROZEN), batch)
  assert frozen < 0.5 * full, (frozen, full)


@pytest.mark.slow
def test_microbatches_with_frozen_parameters_equal_one_batch(
    batch, initial_params):
  one, one_metrics = _step(_trainer(batch, FROZEN, clip=1.0), initial_params,
                           batch)
  two, two_metrics = _step(
      _trainer(batch, FROZEN, clip=1.0, num_microbatches=2), initial_params,
      batch)
  np.testing.assert_allclose(two_metrics["loss"], one_metrics["loss"],
                             rtol=1e-6)
  np.testing.assert_allclose(two_metrics["gradient_norm"],
                             one_metrics["gradient_norm"], rtol=2e-5)
  np.testing.assert_array_equal(two["embedding"]["embedding"],
                                initial_params["embedding"]["embedding"])
  # AdamW's first step is about lr * sign(gradient): gradients near 0 (the
  # microbatched one is exact to rounding) move within a fraction of lr.
  for x, y in zip(jax.tree.leaves(two), jax.tree.leaves(one)):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-4)
