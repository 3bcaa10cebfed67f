"""The metrics and summaries of `train_loop.train`.

`split_metrics` gives the loss terms of a whole validation split, `Progress`
writes the train summaries and progress lines, `learning_rate` reads the
learning rate of the last update from the optimizer state, and
`write_gin_config` writes the gin config as a text summary.
"""

from __future__ import annotations

from typing import Any, ContextManager, Mapping, Optional, Sequence

from absl import logging
from clu import metric_writers
from etils import epath
import gin
import jax
import numpy as np
import optax

from pipelines import progress
from trainer import models


def _mean_metrics(metric_list: Sequence[Mapping[str, Any]]) -> dict[str,
                                                                     float]:
  return {k: float(np.mean([float(m[k]) for m in metric_list]))
          for k in metric_list[0]}


def _weighted_mean(batch_metrics: Sequence[Mapping[str, Any]], key: str,
                   weight_key: str) -> tuple[float, float]:
  """(mean of `key` weighted by `weight_key`, total weight) over batches."""
  values = np.array([float(m[key]) for m in batch_metrics])
  weights = np.array([float(m[weight_key]) for m in batch_metrics])
  return float(values @ weights / max(weights.sum(), 1.0)), float(
      weights.sum())


def split_metrics(model: models.CALRecModel,
                  batch_metrics: Sequence[Mapping[str, Any]]
                 ) -> dict[str, float]:
  """The loss terms of a whole split from its batches' `loss_fn` metrics.

  L_NIG is normalised per target token of the split and L_TT, L_UT are
  averaged per example, so a padded last batch weighs by what it holds. Its
  contrastive terms still have fewer in-batch negatives than a full batch's.
  The loss combines them by `CALRecModel.combined_loss`, as the model
  combines a batch's (equation 4).
  """
  # In the order the progress lines show them.
  split = dict.fromkeys(("loss", "nig_loss", "tt_loss", "ut_loss"), 0.0)
  split["nig_loss"], split["target_tokens"] = _weighted_mean(
      batch_metrics, "nig_loss", "target_tokens")
  if "contrastive_examples" in batch_metrics[0]:
    for term in ("tt_loss", "ut_loss"):
      split[term], split["contrastive_examples"] = _weighted_mean(
          batch_metrics, term, "contrastive_examples")
  split["loss"] = float(model.combined_loss(
      split["nig_loss"], split["tt_loss"], split["ut_loss"]))
  return split


class Progress:
  """Train summaries and a progress line per window of steps.

  steps/s, tokens/s and the ETA leave out the time spent `paused`
  (validation and saving).
  """

  def __init__(self, writer: metric_writers.MetricWriter, start_step: int,
               train_steps: int):
    self._writer = writer
    self._steps = progress.Progress("steps", train_steps, done=start_step,
                                    period=None)
    self._window: list[Mapping[str, Any]] = []

  def add(self, metrics: Mapping[str, Any]) -> None:
    self._window.append(metrics)
    self._steps.add()

  def paused(self) -> ContextManager[None]:
    return self._steps.paused()

  def report(self, step: int, learning_rate: Optional[float] = None) -> None:
    """Writes the window's mean metrics, speed and the learning rate (when
    known) at `step`; starts a new window."""
    steps_per_second = self._steps.lap()
    scalars = _mean_metrics(self._window)
    # input_tokens: non-padding positions of the joint and item passes.
    tokens_per_second = steps_per_second * scalars["input_tokens"]
    scalars["timing/steps_per_second"] = steps_per_second
    scalars["timing/tokens_per_second"] = tokens_per_second
    if learning_rate is not None:
      scalars["learning_rate"] = learning_rate
    self._writer.write_scalars(step, scalars)
    logging.info(
        "step %d/%d  loss %.4f  nig %.4f  tt %.4f  ut %.4f  |  %.2f steps/s"
        "  %.0f tokens/s  ETA %s", step, self._steps.total, scalars["loss"],
        scalars["nig_loss"], scalars["tt_loss"], scalars["ut_loss"],
        steps_per_second, tokens_per_second,
        progress.format_duration(self._steps.eta()))
    self._window = []


def learning_rate(opt_state: Any) -> Optional[float]:
  """The learning rate of the last update, if the optimizer state holds it.

  `train_lib.create_optimizer` keeps it there (`record_learning_rate`), as
  does an optimizer built with `optax.inject_hyperparams`; others give None.
  """
  value = optax.tree_utils.tree_get(
      opt_state, "learning_rate",
      filtering=lambda _, leaf: isinstance(leaf, jax.Array))
  return None if value is None else float(jax.device_get(value))


def write_gin_config(summary_dir: epath.Path, step: int) -> None:
  """The gin config as a TensorBoard text summary, as t5x writes it."""
  writer = metric_writers.SummaryWriter(str(summary_dir))
  writer.write_texts(step, {"config": gin.markdown(gin.config_str())})
  writer.close()
