"""Attention's Triton peer, for the sweeps (``spec.py``'s ``peers``; SDPA and FlexAttention, torch's, are in
``spec.py``): FLA's ``parallel_attn`` (causal softmax attention, GQA). fla-core 0.6.0 has a sliding window
(``window_size``: keys ``[i - W + 1, i]``, ours' definition), so windowed cases are compared too. It works in
(batch, seq, heads, head_dim) memory: our layout is copied in and out (counted). It is causal only and needs
q_len == kv_len: other cases raise :class:`kernels.spec.NotComparable` (no row). The shared import guard:
``kernels/peer_libs.py``.
"""

from __future__ import annotations

import contextlib

import torch

from ... import _runtime as rt
from ...peer_libs import module
from ...spec import NotComparable

DESCRIPTIONS = {
    "attention": {"fla": "FLA parallel_attn (fla-core 0.6.0), causal, GQA, window_size; copies into (b, s, h, d)"},
}


def _h100_shared_memory_check(arch: str = "none", tensor_idx: int = 0) -> bool:
    """FLA's ``check_shared_mem`` as an H100 answers it (fla/utils/hardware.py: the device's shared memory against
    the arch's), for when there is no GPU to ask."""
    from fla.utils.hardware import Backend

    return rt.H100_SHARED_MEMORY >= Backend.get_shared_memory(arch)


@contextlib.contextmanager
def _cuda_answers_as_h100():
    """In compile-only mode Triton's (stand-in) driver says "cuda", so FLA's import asks torch for the GPU's name
    and capability, which a CPU build of torch cannot answer: within the block it answers as the H100 compiled
    for."""
    if not rt.COMPILE_ONLY or torch.cuda.is_available():
        yield
        return
    saved = torch.cuda.get_device_name, torch.cuda.get_device_capability
    torch.cuda.get_device_name = lambda device=None: "NVIDIA H100 80GB HBM3"
    torch.cuda.get_device_capability = lambda device=None: (9, 0)
    try:
        yield
    finally:
        torch.cuda.get_device_name, torch.cuda.get_device_capability = saved


def fla_attention():
    with _cuda_answers_as_h100():
        mod = module("fla.ops.attn.parallel")
    if mod is None:
        return None
    if rt.INTERPRET or rt.COMPILE_ONLY:
        # FLA picks its tiles (BS 64, BK/BV up to 256, 8 warps on Hopper) by the device's shared memory; with no
        # GPU to ask it would take its smallest (pre-Ampere) ones. Counted and compiled as on the H100 modeled.
        mod.check_shared_mem = _h100_shared_memory_check

    def fla_attention(q, k, v, *, causal=True, window=None, scale=None):
        if not causal:
            raise NotComparable("FLA's parallel_attn is causal only")
        if q.shape[2] != k.shape[2]:
            raise NotComparable("FLA's parallel_attn needs q_len == kv_len")
        o = mod.parallel_attn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale,
                              window_size=window)
        return o.transpose(1, 2)

    return fla_attention
