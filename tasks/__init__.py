"""CALRec tasks package."""
