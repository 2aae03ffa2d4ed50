"""LayerNorm and RMSNorm over the last dimension: the public functions, their checks, launch and autograd.

    layer_norm(x) = (x - mean(x)) * rstd * weight + bias,   rstd = 1 / sqrt(var(x) + eps)
    rms_norm(x)   = weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)       (HF OLMoE/Llama RMSNorm)

Shapes: ``x: (..., hidden)``, ``weight, bias: (hidden,)``; the result has x's shape and dtype. The kernels and
their tiling: ``kernel.py``.
"""

from __future__ import annotations

import torch
import triton

from ... import _runtime as rt
from .kernel import block_n, norm_bwd, norm_fwd


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """(..., N) -> (rows, N), a view whenever the strides allow (any last-dim stride is fine)."""
    return t.reshape(-1, t.shape[-1])


_PROGRAMS_PER_SM = 4  # persistent grids: enough programs per SM to hide memory latency



class _Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, rms):
        x2 = _as_rows(x)
        n_rows, n = x2.shape
        y = rt.empty(x.shape, x.dtype, x.device)
        y2 = y.view(-1, n)
        mean = rt.empty((n_rows,), torch.float32, x.device) if not rms else y2  # y2: unused placeholder
        rstd = rt.empty((n_rows,), torch.float32, x.device)
        tile_n = block_n(n)
        norm_fwd[lambda meta: (min(triton.cdiv(n_rows, meta["BLOCK_M"]), _PROGRAMS_PER_SM * rt.num_sms()),)](
            x2, weight if weight is not None else x2, bias if bias is not None else x2, y2, mean, rstd,
            n_rows, n, x2.stride(0), x2.stride(1), y2.stride(0), y2.stride(1), eps,
            HAS_W=weight is not None, HAS_B=bias is not None, RMS=rms, BLOCK_N=tile_n, SINGLE_TILE=tile_n >= n,
        )
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.rms = rms
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        x2, dy2 = _as_rows(x), _as_rows(dy)
        n_rows, n = x2.shape
        dx = rt.empty(x.shape, x.dtype, x.device)
        dx2 = dx.view(-1, n)
        # One program per SM: each partial row costs a write and a read of n fp32, so fewer programs than the
        # forward's. A row that fits one tile has its partials stored whole (idle programs store zeros); the looped
        # path accumulates into its partial rows, which must then start at zero.
        n_progs = max(min(n_rows, rt.num_sms()), 1)
        single_tile = block_n(n) >= n
        partial = rt.empty if single_tile else (lambda shape, dtype, device: torch.zeros(shape, dtype=dtype,
                                                                                          device=device))
        dw_partial = partial((n_progs, n), torch.float32, x.device) if weight is not None else rstd
        db_partial = partial((n_progs, n), torch.float32, x.device) if bias is not None else rstd
        norm_bwd[(n_progs,)](
            x2, weight if weight is not None else x2, dy2, dx2, mean, rstd, dw_partial, db_partial,
            n_rows, n, x2.stride(0), x2.stride(1), dy2.stride(0), dy2.stride(1), dx2.stride(0), dx2.stride(1),
            HAS_W=weight is not None, HAS_B=bias is not None, RMS=ctx.rms, OUT_DTYPE_ROUND=ctx.rms,
            BLOCK_N=block_n(n), SINGLE_TILE=single_tile,
        )
        dw = dw_partial.sum(0).to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = db_partial.sum(0).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None


def _check(x, weight, bias, eps):
    rt.check_tensor("x", x, min_rank=1)
    if x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last dim, got shape {tuple(x.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            rt.check_like(name, t, "x", x, shape=x.shape[-1:])
    rt.check_positive("eps", eps)


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """LayerNorm over the last dim. ``x: (..., hidden)``, ``weight, bias: (hidden,)`` or None."""
    _check(x, weight, bias, eps)
    if x.numel() == 0:
        return x.clone()
    return _Norm.apply(x, weight, bias, float(eps), False)


def rms_norm(x, weight=None, eps=1e-6):
    """RMSNorm over the last dim, as HF OLMoE: ``weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)``."""
    _check(x, weight, None, eps)
    if x.numel() == 0:
        return x.clone()
    return _Norm.apply(x, weight, None, float(eps), True)
