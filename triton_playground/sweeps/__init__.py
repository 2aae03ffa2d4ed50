"""Speed sweeps driven by the op registry: ``triton-playground sweep OP|all [--out CSV]``. See ``sweeps/runner.py``."""

from triton_playground import kernels  # noqa: F401  (picks the backend, setting TRITON_INTERPRET before anything imports triton)
