"""The Last Item Repeater baseline (paper section 4, "Baselines").

LIR recommends the last item of the input sequence: its text is the single
query, with log-prob 0, ranked against the corpus by the same retrieval as the
model's generations. It needs no model.
"""

from __future__ import annotations

from evaluator import data
from evaluator import generation


def last_item_samples(user: data.UserExample) -> generation.Samples:
  """The one sample of LIR: the last history item's text."""
  return [(user.history_texts[-1], 0.0)]
