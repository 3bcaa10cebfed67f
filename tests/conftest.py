"""Shared pytest fixtures and paths."""

import os
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# Real Amazon 2018 samples, present in CI beside the checkout; tests that use them
# skip with a reason when absent.
SHARED_DATA = pathlib.Path(
    os.environ.get("CALREC_SHARED_DATA",
                   REPO_ROOT.parent / "shared" / "data" / "amazon2018"))
