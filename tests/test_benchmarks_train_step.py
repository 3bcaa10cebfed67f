"""The MFU numerator of benchmarks/train_step against XLA's own FLOP count."""

import jax
import numpy as np
import pytest

from benchmarks import train_step
from trainer import models
from trainer import network

CONFIG = network.TransformerConfig(vocab_size=1024, emb_dim=64, num_heads=4,
                                   num_kv_heads=1, head_dim=16, mlp_dim=256,
                                   num_layers=2)
BATCH, INPUTS, TARGETS = 4, 96, 32


@pytest.mark.parametrize("alpha,beta", [(0.125, -0.025), (0.0, 0.0)])
def test_model_flops_match_the_compiled_gradient_step(alpha, beta):
  """The formula counts matmuls only; XLA adds norms, softmax and the like.

  Counting the output projection at every position instead of the target span
  would overshoot XLA's count by about 20 % here.
  """
  model = models.CALRecModel(CONFIG, alpha=alpha, beta=beta)
  batch = train_step.random_batch(np.random.RandomState(0), BATCH,
                                  CONFIG.vocab_size, INPUTS, TARGETS)
  params = jax.eval_shape(lambda: models.unboxed_params(
      model.get_initial_variables(jax.random.PRNGKey(0),
                                  {"decoder_input_tokens": (1, 8)})))
  gradient_step = jax.jit(jax.value_and_grad(
      lambda p, b: model.loss_fn(p, b, None), has_aux=True))
  cost = gradient_step.lower(params, batch).compile().cost_analysis()
  xla_flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
  formula = train_step.model_flops_per_step(
      CONFIG, BATCH, INPUTS + TARGETS, TARGETS, item_tower=alpha != 0)
  assert 0.95 * xla_flops <= formula <= xla_flops
