"""Gin configurations of the trainer (t5x layout: runs/ and models/)."""
