"""CALRec trainer package."""
