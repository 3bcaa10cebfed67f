"""Training curves from a run's TensorBoard summaries (like paper Figure 2)."""

from __future__ import annotations

import pathlib
from typing import Mapping, Sequence

import matplotlib
matplotlib.use("Agg")
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.util import tensor_util

Curve = tuple[list[int], list[float]]


def read_scalars(summary_dir: str | pathlib.Path) -> dict[str, Curve]:
  """Every scalar series under `summary_dir`, by tag, sorted by step.

  Reads both classic scalar events and the scalar tensor summaries clu's
  writers emit; other summaries (the gin config's text) are left out. A step
  logged twice (a resumed run) keeps its last value.
  """
  accumulator = event_accumulator.EventAccumulator(
      str(summary_dir), size_guidance={event_accumulator.TENSORS: 0,
                                       event_accumulator.SCALARS: 0})
  accumulator.Reload()
  by_tag: dict[str, dict[int, float]] = {}
  tags = accumulator.Tags()
  for tag in tags.get(event_accumulator.SCALARS, []):
    for event in accumulator.Scalars(tag):
      by_tag.setdefault(tag, {})[event.step] = float(event.value)
  for tag in tags.get(event_accumulator.TENSORS, []):
    plugin = accumulator.SummaryMetadata(tag).plugin_data.plugin_name
    if plugin != scalar_metadata.PLUGIN_NAME:
      continue
    for event in accumulator.Tensors(tag):
      value = tensor_util.make_ndarray(event.tensor_proto)
      by_tag.setdefault(tag, {})[event.step] = float(value.reshape(()))
  return {tag: (sorted(points), [points[s] for s in sorted(points)])
          for tag, points in by_tag.items()}


def last_step(curves: Mapping[str, Curve]) -> int:
  return max((steps[-1] for steps, _ in curves.values() if steps), default=0)


def shifted(curves: Mapping[str, Curve], offset: int) -> dict[str, Curve]:
  """The curves with `offset` added to every step (Stage II after Stage I)."""
  return {tag: ([step + offset for step in steps], values)
          for tag, (steps, values) in curves.items()}


def plot_losses(runs: Mapping[str, Mapping[str, Curve]],
                tags: Sequence[str], output: str | pathlib.Path) -> None:
  """One panel per loss tag, one line per run, loss against training step."""
  figure, axes = plt.subplots(1, len(tags), figsize=(5 * len(tags), 3.6),
                              squeeze=False)
  for axis, tag in zip(axes[0], tags):
    for run_name, curves in runs.items():
      if tag in curves:
        steps, values = curves[tag]
        axis.plot(steps, values, label=run_name)
    axis.set_title(tag)
    axis.set_xlabel("step")
    axis.grid(alpha=0.3)
    axis.legend()
  figure.tight_layout()
  figure.savefig(output, dpi=110)
  plt.close(figure)
