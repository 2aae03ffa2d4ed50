"""Speed sweeps driven by the op registry: ``python -m sweeps OP|all [--out CSV]``. See ``sweeps/runner.py``."""

import kernels  # noqa: F401  (picks the backend, setting TRITON_INTERPRET before anything imports triton)
