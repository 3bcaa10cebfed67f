"""Helpers every command line of the project shares.

Free of Beam imports, so that trainer and benchmark commands run where only
the JAX stack is installed (a GPU or TPU host).
"""

from __future__ import annotations

import argparse
import logging


def positive_int(text: str) -> int:
  """argparse type: an integer >= 1."""
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
  return value


def configure_logging() -> None:
  """INFO progress lines with times; Beam's and JAX's own INFO lines (type
  hints, servers, backends not found) hidden, since they bury them, except
  the Dataflow runner's (job id, console URL, state changes and the
  service's job messages)."""
  # force: an import-time warning may already have configured the root logger.
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                      force=True)
  for library in ("apache_beam", "jax"):
    logging.getLogger(library).setLevel(logging.WARNING)
  logging.getLogger("apache_beam.runners.dataflow").setLevel(logging.INFO)
