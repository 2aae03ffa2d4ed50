"""Plots of sweep CSVs: ``python -m plots CSV [CSV ...] [--out DIR_OR_PREFIX]`` (a PNG per op, a summary table)."""
