"""Plots of sweep CSVs: ``triton-playground plot CSV [CSV ...] [--out DIR_OR_PREFIX]`` (a PNG per op, a summary table)."""
