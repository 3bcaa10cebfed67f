"""CALRec pipelines package."""
