"""Causal attention with an optional sliding window and grouped-query heads (FlashAttention-2 style), forward and
backward. Read ``api.py``, then ``kernel.py``, ``reference.py``, ``spec.py`` (see ``kernels/ops/__init__.py``).

The Triton kernels are split by pass, as FLA does: ``kernel.py`` holds the forward, its configs and the
split-KV combine; ``kernel_bwd.py`` the backward (delta, dK/dV, dQ). Read it after ``kernel.py``; ``blocks.py``
holds what both share (the mask, the three-loop block walk, tile loads by TMA or pointers). ``varlen.py``: packed
variable-length sequences (FlashAttention's ``cu_seqlens`` layout) on the same kernels, ``VARLEN`` on."""

from .api import attention  # noqa: F401
from .varlen import attention_varlen  # noqa: F401
