"""End-to-end runs that tie the stages together (sample run, ablations)."""
