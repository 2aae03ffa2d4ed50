"""The H100 model held against published H100 measurements: ``triton-playground validate``.

``data/``: the measurements (Liger-Kernel's published H100 benchmark rows, with their source and licence) and the
counts of every measured program; ``programs.py``: what each measurement ran, rebuilt to be counted; ``run.py``:
counting, modeling, the fit / held-out halves and the error summary; ``fit.py``: the model's fitted constants;
``__main__.py``: the command.
"""
