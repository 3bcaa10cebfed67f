"""The one output format of every benchmark: a JSON line per figure."""

from __future__ import annotations

import json
from typing import Optional


def _significant(x: Optional[float]) -> Optional[float]:
  return None if x is None else float(f"{x:.4g}")


def emit(name: str, value: float, unit: str,
         baseline: Optional[float]) -> None:
  """Prints {"name", "value", "unit", "baseline", "ratio"} as one JSON line.

  The baseline is measured in the same run; ratio = value / baseline. Numbers
  keep 4 significant digits.
  """
  ratio = value / baseline if baseline else None
  print(json.dumps({"name": name, "value": _significant(value), "unit": unit,
                    "baseline": _significant(baseline),
                    "ratio": _significant(ratio)}), flush=True)
