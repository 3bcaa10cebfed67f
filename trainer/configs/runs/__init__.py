"""Run configurations: both training stages and the tiny CPU runs."""
