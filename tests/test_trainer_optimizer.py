"""The optimizer's frozen-parameter switch (parameter-efficient fine-tuning)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trainer import train_lib
from trainer import train_loop


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
  assert train_loop._learning_rate(state) == np.float32(0.1)


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
