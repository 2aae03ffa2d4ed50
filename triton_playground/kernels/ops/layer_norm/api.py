"""LayerNorm and RMSNorm over the last dimension: the public functions, their checks, launches and custom ops
(``torch.ops.playground.layer_norm``, ``rms_norm``, ``norm_backward``: fake and autograd below).

    layer_norm(x) = (x - mean(x)) * rstd * weight + bias,   rstd = 1 / sqrt(var(x) + eps)
    rms_norm(x)   = weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)       (HF OLMoE/Llama RMSNorm)

Shapes: ``x: (..., hidden)``, ``weight, bias: (hidden,)``; the result has x's shape and dtype. The kernels and
their tiling: ``kernel.py``.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
from torch import Tensor

from ... import _runtime as rt
from ..._custom_op import custom_op, empty_if, extras_are_not_differentiable, or_placeholder
from .kernel import block_n, fwd_programs_per_sm, norm_bwd, norm_fwd


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """(..., N) -> (rows, N), a view whenever the strides allow (any last-dim stride is fine). A 2-D tensor is
    already its rows: no view op, whose dispatch the host would pay for before the launch."""
    return t if t.dim() == 2 else t.reshape(-1, t.shape[-1])


def _forward(x, weight, bias, eps, rms):
    """The forward launch: (y, mean, rstd); RMSNorm has no mean (a view of y stands for its pointer)."""
    x2 = _as_rows(x)
    n_rows, n = x2.shape
    y = rt.empty(x.shape, x.dtype, x.device)
    y2 = _as_rows(y)
    mean = rt.empty((n_rows,), torch.float32, x.device) if not rms else y2  # y2: unused placeholder
    rstd = rt.empty((n_rows,), torch.float32, x.device)
    tile_n = block_n(n)
    programs = fwd_programs_per_sm(n, x.element_size()) * rt.num_sms()
    norm_fwd[lambda meta: (min(triton.cdiv(n_rows, meta["BLOCK_M"]), programs),)](
        x2, weight if weight is not None else x2, bias if bias is not None else x2, y2, mean, rstd,
        n_rows, n, x2.stride(0), x2.stride(1), y2.stride(0), y2.stride(1), eps,
        HAS_W=weight is not None, HAS_B=bias is not None, RMS=rms, BLOCK_N=tile_n, SINGLE_TILE=tile_n >= n,
    )
    return y, mean, rstd


def _backward(dy, x, weight, bias, mean, rstd, rms, need_params):
    """(dx, dparams): dparams is (params, hidden) in x's dtype, dweight's row then dbias's (of those x has), or None
    unless ``need_params``. ``mean`` is None under RMSNorm: the kernel reads none, and dx stands for its pointer
    (x's dtype, as y does in the forward: the same compiled kernel as before custom ops)."""
    x2, dy2 = _as_rows(x), _as_rows(dy)
    n_rows, n = x2.shape
    dx = rt.empty(x.shape, x.dtype, x.device)
    dx2 = _as_rows(dx)
    mean = dx2 if rms else mean  # dx2: unused placeholder
    # One program per SM: each partial row costs a write and a read of n fp32, so fewer programs than the
    # forward's. A row that fits one tile has its partials stored whole (idle programs store zeros); the looped
    # path accumulates into its partial rows, which must then start at zero. dweight's and dbias's partials share
    # one (2, programs, n) buffer, so that one sum and one cast make both gradients: three launches, not five.
    n_progs = max(min(n_rows, rt.num_sms()), 1)
    single_tile = block_n(n) >= n
    params = int(weight is not None) + int(bias is not None)
    alloc = rt.empty if single_tile else torch.zeros
    partial = alloc((params, n_progs, n), dtype=torch.float32, device=x.device) if params else rstd
    norm_bwd[(n_progs,)](
        x2, weight if weight is not None else x2, dy2, dx2, mean, rstd, partial,
        n_rows, n, x2.stride(0), x2.stride(1), dy2.stride(0), dy2.stride(1), dx2.stride(0), dx2.stride(1),
        HAS_W=weight is not None, HAS_B=bias is not None, RMS=rms, OUT_DTYPE_ROUND=rms,
        BLOCK_N=block_n(n), SINGLE_TILE=single_tile,
    )
    return dx, (partial.sum(1).to(x.dtype) if params and need_params else None)


# ------------------------------------------------------------------------------------------------ the custom ops
#
#     torch.ops.playground.layer_norm(x, weight, bias, eps)                 -> (y, mean, rstd)
#     torch.ops.playground.rms_norm(x, weight, eps)                         -> (y, rstd)
#     torch.ops.playground.norm_backward(dy, x, weight, bias, mean, rstd, grads) -> (dx, dparams)
#
# The row statistics are what the backward reads; grads (three bools: x, weight, bias) says which gradients to
# make. dparams holds dweight's row, then dbias's, of the parameters there are (one tensor: a custom op's outputs
# may not alias one another, and the rows are split outside it), or is a placeholder when neither is asked for.


def _norm_fake(x, weight, bias, eps, rms=False):
    rows = x.numel() // x.shape[-1]
    return (x.new_empty(x.shape), *(x.new_empty(rows, dtype=torch.float32) for _ in range(1 if rms else 2)))


def _norm_setup(ctx, inputs, output):
    x, weight, bias = inputs[:3] if len(inputs) == 4 else (inputs[0], inputs[1], None)
    mean, rstd = output[1:] if len(output) == 3 else (None, output[1])
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    extras_are_not_differentiable(ctx, output[1:])


def _norm_backward(ctx, dy, *_dstats):
    if dy is None:
        return (None,) * len(ctx.needs_input_grad)
    x, weight, bias, mean, rstd = ctx.saved_tensors
    grads = list(ctx.needs_input_grad[:3]) if bias is not None else [*ctx.needs_input_grad[:2], False]
    dx, dparams = torch.ops.playground.norm_backward(dy, x, weight, bias, mean, rstd, grads)
    dw = dparams[0] if weight is not None and grads[1] else None
    db = dparams[-1] if bias is not None and grads[2] else None
    return (dx, dw, db, None) if len(ctx.needs_input_grad) == 4 else (dx, dw, None)


@custom_op("layer_norm", _norm_fake, _norm_setup, _norm_backward)
def _layer_norm_op(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float
                   ) -> tuple[Tensor, Tensor, Tensor]:
    return _forward(x, weight, bias, eps, rms=False)


@custom_op("rms_norm", lambda x, weight, eps: _norm_fake(x, weight, None, eps, rms=True), _norm_setup,
           _norm_backward)
def _rms_norm_op(x: Tensor, weight: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor]:
    y, _, rstd = _forward(x, weight, None, eps, rms=True)
    return y, rstd


def _norm_bwd_fake(dy, x, weight, bias, mean, rstd, grads):
    params = int(weight is not None) + int(bias is not None)
    return x.new_empty(x.shape), empty_if(_needs_params(weight, bias, grads), (params, x.shape[-1]), x)


def _needs_params(weight, bias, grads) -> bool:
    return (weight is not None and grads[1]) or (bias is not None and grads[2])


@custom_op("norm_backward", _norm_bwd_fake)
def _norm_backward_op(dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                      mean: Optional[Tensor], rstd: Tensor, grads: list[bool]) -> tuple[Tensor, Tensor]:
    """``mean`` None: RMSNorm (the kernel reads no mean then)."""
    dx, dparams = _backward(dy, x, weight, bias, mean, rstd, mean is None, _needs_params(weight, bias, grads))
    return dx, or_placeholder(dparams, x)


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
    return x.clone() if x.numel() == 0 else torch.ops.playground.layer_norm(x, weight, bias, float(eps))[0]


def rms_norm(x, weight=None, eps=1e-6):
    """RMSNorm over the last dim, as HF OLMoE: ``weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)``."""
    _check(x, weight, None, eps)
    return x.clone() if x.numel() == 0 else torch.ops.playground.rms_norm(x, weight, float(eps))[0]
