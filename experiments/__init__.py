"""End-to-end runs that tie the stages together (sample run, ablations)."""

import os

# TensorFlow's C++ start-up INFO lines say nothing about a run's progress; the
# stages inherit this too. Set it yourself to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
