"""CALRec evaluator package."""
