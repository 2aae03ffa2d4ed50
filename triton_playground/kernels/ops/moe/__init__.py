"""The OLMoE mixture-of-experts layer, forward and backward: a fused router, an on-device dispatch, two grouped
GEMMs, a deterministic combine, and a backward whose weight gradients need no atomics. Read ``api.py``, then
``kernel.py``, ``reference.py``, ``spec.py`` (see ``kernels/ops/__init__.py``).

The Triton kernels are split by stage: ``kernel.py`` holds the router and the dispatch (stages 1-2: which rows
go to which expert), ``kernel_gemm.py`` the grouped gate/up and down GEMMs and the combine (stages 3-5), read
after ``kernel.py``, and ``kernel_bwd.py`` the backward's own two kernels (the rest of the backward reuses the
forward's). The router's softmax + top-k is topk_routing's, kept once in ``kernels/common/topk.py``."""

from .api import moe  # noqa: F401
