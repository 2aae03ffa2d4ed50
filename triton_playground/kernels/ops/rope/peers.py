"""Partial RoPE's peer, for the sweeps (``spec.py``'s ``peers``): Liger-Kernel's ``LigerRopeFunction`` with
``rotary_dim`` (Liger 0.8.5 rotates the leading ``rotary_dim`` channels, as ours), at both rotary fractions of the
sweep. Liger takes cos/sin tables (a model computes them once per forward for all layers), so the adapter builds
them outside the count; ours computes them in the kernel from the positions. Liger rotates a q and a k in one
launch and cannot be given no k: the adapter passes a one-head k, 1/heads extra work in Liger's rows. Liger works
in (batch, seq, heads, head_dim) memory: our (batch, heads, seq, head_dim) input is copied into that layout by its
wrapper (counted, its traffic). The shared import guard: ``kernels/peer_libs.py``.
"""

from __future__ import annotations

import torch

from ... import _runtime as rt
from ...peer_libs import module
from .reference import inv_freq

DESCRIPTIONS = {
    "partial_rope": {"liger": "Liger LigerRopeFunction with rotary_dim; cos/sin tables made outside the count "
                              "(ours computes them in-kernel); a one-head dummy k; copies into (b, s, h, d)"},
}


def _rope_tables(positions, rotary_dim, theta, dtype, device):
    """cos/sin as a model hands them to Liger: (seq, rotary_dim) or (batch, seq, rotary_dim), the angles
    duplicated, from the same fp32 ``inv_freq`` as our kernel and reference; outside the count."""
    with rt.uncounted():
        angle = positions.float()[..., None] * inv_freq(rotary_dim, float(theta), device)
        emb = torch.cat((angle, angle), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def liger_rope():
    mod = module("liger_kernel.ops.rope")
    if mod is None:
        return None
    cache = {}

    def liger_rope(x, positions, *, rotary_dim=None, theta=10000.0):
        rotary_dim = x.shape[-1] if rotary_dim is None else rotary_dim
        key = (positions.data_ptr(), tuple(positions.shape), rotary_dim, float(theta), x.dtype, str(x.device))
        if key not in cache:  # one table per positions, as a model makes once per forward
            cache.clear()
            cache[key] = _rope_tables(positions, rotary_dim, theta, x.dtype, x.device)
        cos, sin = cache[key]
        # Liger rotates q and k together and needs at least one k head (a zero-head k makes an empty tl.arange)
        k = torch.zeros(x.shape[0], 1, x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
        q_out, _ = mod.LigerRopeFunction.apply(x, k, cos, sin, None, 1, rotary_dim)
        return q_out

    return liger_rope
