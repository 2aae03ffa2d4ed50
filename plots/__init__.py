"""Plots of sweep CSVs: ``python -m plots CSV [--out FILE.png]``."""
