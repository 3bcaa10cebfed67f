"""Model sizes: tiny (CPU), base (~110M), large (~1B)."""
