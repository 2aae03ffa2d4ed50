"""The transformer MLP, ``act(x @ w_in.T + b_in) @ w_out.T + b_out``: the public functions, their checks, the
launches and the custom ops (``torch.ops.playground.mlp``, ``mlp_backward``: fake and autograd below).

    h = x @ w_in.T + b_in          (tokens, inner)     the up-projection; its epilogue adds b_in, applies act
    a = act(h)                                          and (training) also stores h for the backward
    y = a @ w_out.T + b_out        (tokens, hidden)    the down-projection; its epilogue adds b_out

Activations (``activation=``): ``"relu2"`` relu(h)^2 (Persimmon; ``squared_relu_mlp``), ``"relu"`` (OPT) and
``"gelu_tanh"`` (GPT-2's ``gelu_new``: 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3)))). Shapes follow nn.Linear:
``x: (..., hidden)``, ``w_in: (inner, hidden)``, ``w_out: (hidden, inner)``, biases ``(inner,)``, ``(hidden,)`` or
None; any strides. Every matmul, forward and backward, is one call of the GEMM kernel with its fused epilogue;
the kernels, their tiling and precision: ``kernel.py``.

Stored, not recomputed: the backward needs act'(h) and ``a``. ``a`` exists anyway (it is the down-projection's
input); ``h`` is one extra (tokens, inner) write in the forward's epilogue and one read in the dh epilogue, about
1/(BLOCK_K-fold reuse) of the GEMM's own traffic, ~5% of the up-projection's time at Persimmon-8B's shape.
Recomputing h instead would cost a whole extra (tokens x hidden x inner) GEMM in the backward (+33% FLOPs); and
deriving act' from ``a`` works for relu/relu2 (a > 0, 2 sqrt(a)) but not for gelu. h is kept only when x, w_in or
b_in needs a gradient; inference stores nothing extra.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
from torch import Tensor

from ... import _runtime as rt
from ..._custom_op import custom_op, empty_if, extras_are_not_differentiable, needs_grad, or_placeholder, placeholder
from ...common.precision import dot_precision
from .kernel import ACTIVATIONS, DB_ROWS, col_sum, gemm, tma_fits


def _matmul(a, b, c, *, bias=None, act=0, h=None, store_pre=False, dact=0, dbias=None):
    """c = epilogue(a @ b) for 2-D views a: (M, K), b: (K, N), c: (M, N) (any strides). Returns c."""
    (m, k), n = a.shape, b.shape[1]
    if m == 0 or n == 0:
        return c
    hh = h if h is not None else c
    if bias is not None:
        bias = bias.contiguous()  # the epilogue reads Bias[n] at unit stride; a (n,) copy costs nothing

    def grid(meta):  # a program per tile, or (persistent configs) at most one per SM, each walking several
        tiles = triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])
        return (min(tiles, rt.num_sms()) if meta["PERSISTENT"] else tiles,)

    gemm[grid](
        a, b, c, bias if bias is not None else c, hh, dbias if dbias is not None else c,
        m, n, k,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1), hh.stride(0), hh.stride(1),
        HAS_BIAS=bias is not None, ACT=act, STORE_PRE=store_pre, DACT=dact, BIAS_GRAD=dbias is not None,
        PRECISION=dot_precision(a.dtype),
        A_T=a.stride(1) != 1, B_T=b.stride(1) != 1, TMA_FITS=tma_fits(a, b, c, hh),  # see kernel.gemm
    )
    return c


def column_sums(x, dtype):
    """x.sum(0) for a 2-D x: (rows, n) (any strides), in ``dtype``, by ``col_sum`` (fp32 accumulation)."""
    r, n = x.shape
    block_r, block_n = 32, 128
    col_blocks = triton.cdiv(n, block_n)
    split = max(1, min(triton.cdiv(r, 4 * block_r), triton.cdiv(4 * rt.num_sms(), col_blocks)))
    rows_per_prog = block_r * triton.cdiv(triton.cdiv(max(r, 1), split), block_r)
    split = max(1, triton.cdiv(r, rows_per_prog))
    out = rt.empty((split, n), dtype if split == 1 else torch.float32, x.device)
    if n:
        col_sum[(col_blocks, split)](x, out, r, n, x.stride(0), x.stride(1), out.stride(0), rows_per_prog)
    return out[0] if split == 1 else column_sums(out, dtype)


def _forward(x, w_in, b_in, w_out, b_out, act, keep_h):
    """(y, a, h): the output and what the backward reads (``h`` only when ``keep_h``: x, w_in or b_in needs a
    gradient; else None)."""
    x2 = x.reshape(-1, x.shape[-1])  # a view whenever the strides allow; else a copy (glue)
    tokens, inner, hidden_out = x2.shape[0], w_in.shape[0], w_out.shape[0]
    a = rt.empty((tokens, inner), x.dtype, x.device)
    h = rt.empty((tokens, inner), x.dtype, x.device) if keep_h else None
    _matmul(x2, w_in.t(), a, bias=b_in, act=act, h=h, store_pre=keep_h)
    y = _matmul(a, w_out.t(), rt.empty((tokens, hidden_out), x.dtype, x.device), bias=b_out)
    return y.view(*x.shape[:-1], hidden_out), a, h


def _backward(dy, x, w_in, w_out, a, h, act, needs):
    """The five gradients (x, w_in, b_in, w_out, b_out), None where ``needs`` says none."""
    need_x, need_w_in, need_b_in, need_w_out, need_b_out = needs
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    tokens, inner = a.shape
    dt, dev = x.dtype, x.device
    dx = dw_in = db_in = dw_out = db_out = None
    if need_x or need_w_in or need_b_in:
        # dh = (dy @ w_out) * act'(h), with db_in's partial column sums from the same epilogue
        partial = rt.empty((triton.cdiv(tokens, DB_ROWS), inner), torch.float32, dev) if need_b_in else None
        dh = _matmul(dy2, w_out, rt.empty((tokens, inner), dt, dev), h=h, dact=act, dbias=partial)
        if need_b_in:
            db_in = column_sums(partial, dt)
        if need_x:
            dx = _matmul(dh, w_in, rt.empty(x2.shape, dt, dev)).view(x.shape)
        if need_w_in:
            dw_in = _matmul(dh.t(), x2, rt.empty(w_in.shape, dt, dev))
    if need_w_out:
        dw_out = _matmul(dy2.t(), a, rt.empty(w_out.shape, dt, dev))
    if need_b_out:
        db_out = column_sums(dy2, dt)
    return dx, dw_in, db_in, dw_out, db_out


# ------------------------------------------------------------------------------------------------ the custom ops
#
#     torch.ops.playground.mlp(x, w_in, b_in, w_out, b_out, activation, grads)   -> (y, a, h)
#     torch.ops.playground.mlp_backward(dy, x, w_in, w_out, a, h, has_b_in, has_b_out, activation, grads)
#                                                                                -> (dx, dw_in, db_in, dw_out, db_out)
#
# ``grads`` (five bools: x, w_in, b_in, w_out, b_out need a gradient) says what to keep: ``h`` only when x, w_in
# or b_in needs one, nothing when none does (a placeholder stands for it); in the backward, which gradients to
# make.


def _mlp_fake(x, w_in, b_in, w_out, b_out, activation, grads):
    tokens, inner = x.numel() // x.shape[-1], w_in.shape[0]
    return (x.new_empty((*x.shape[:-1], w_out.shape[0])), empty_if(any(grads), (tokens, inner), x),
            empty_if(any(grads[:3]), (tokens, inner), x))


def _mlp_setup(ctx, inputs, output):
    x, w_in, b_in, w_out, b_out, ctx.activation, _ = inputs
    ctx.save_for_backward(x, w_in, w_out, *output[1:])
    ctx.has_bias = (b_in is not None, b_out is not None)
    extras_are_not_differentiable(ctx, output[1:])


def _mlp_backward(ctx, dy, _da, _dh):
    if dy is None:
        return (None,) * 7
    grads = list(ctx.needs_input_grad[:5])
    out = torch.ops.playground.mlp_backward(dy, *ctx.saved_tensors, *ctx.has_bias, ctx.activation, grads)
    return (*(g if need else None for g, need in zip(out, grads)), None, None)


@custom_op("mlp", _mlp_fake, _mlp_setup, _mlp_backward)
def _mlp_op(x: Tensor, w_in: Tensor, b_in: Optional[Tensor], w_out: Tensor, b_out: Optional[Tensor],
            activation: str, grads: list[bool]) -> tuple[Tensor, Tensor, Tensor]:
    y, a, h = _forward(x, w_in, b_in, w_out, b_out, ACTIVATIONS[activation], keep_h=any(grads[:3]))
    if not any(grads):
        return y, placeholder(x), placeholder(x)
    return y, a, or_placeholder(h, x)


def _mlp_bwd_fake(dy, x, w_in, w_out, a, h, has_b_in, has_b_out, activation, grads):
    shapes = (x.shape, w_in.shape, w_in.shape[:1], w_out.shape, w_out.shape[:1])
    flags = (grads[0], grads[1], grads[2] and has_b_in, grads[3], grads[4] and has_b_out)
    return tuple(empty_if(flag, shape, x) for flag, shape in zip(flags, shapes))


@custom_op("mlp_backward", _mlp_bwd_fake)
def _mlp_backward_op(dy: Tensor, x: Tensor, w_in: Tensor, w_out: Tensor, a: Tensor, h: Tensor, has_b_in: bool,
                     has_b_out: bool, activation: str, grads: list[bool]
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    needs = (grads[0], grads[1], grads[2] and has_b_in, grads[3], grads[4] and has_b_out)
    out = _backward(dy, x, w_in, w_out, a, h if any(needs[:3]) else None, ACTIVATIONS[activation], needs)
    return tuple(or_placeholder(g, x) for g in out)


def _check(x, w_in, b_in, w_out, b_out, activation):
    rt.check_tensor("x", x, min_rank=1)
    rt.check_tensor("w_in", w_in, rank=2)
    rt.check_like("w_in", w_in, "x", x)
    hidden, inner = x.shape[-1], w_in.shape[0]
    if w_in.shape[1] != hidden:
        raise ValueError(f"w_in must have shape (inner, hidden) with hidden = x.shape[-1] = {hidden}, "
                         f"got {tuple(w_in.shape)}")
    rt.check_tensor("w_out", w_out, rank=2)
    rt.check_like("w_out", w_out, "x", x)
    if w_out.shape[1] != inner:
        raise ValueError(f"w_out must have shape (hidden, inner) with inner = w_in.shape[0] = {inner}, "
                         f"got {tuple(w_out.shape)}")
    if b_in is not None:
        rt.check_like("b_in", b_in, "x", x, shape=(inner,))
    if b_out is not None:
        rt.check_like("b_out", b_out, "x", x, shape=(w_out.shape[0],))
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")


def mlp(x, w_in, b_in, w_out, b_out, *, activation="relu2"):
    """``act(x @ w_in.T + b_in) @ w_out.T + b_out`` with ``activation`` in "relu2", "relu", "gelu_tanh".
    ``x: (..., hidden)``, ``w_in: (inner, hidden)``, ``w_out: (hidden, inner)``, ``b_in: (inner,)``,
    ``b_out: (hidden,)`` (biases may be None); returns ``(..., hidden)``."""
    _check(x, w_in, b_in, w_out, b_out, activation)
    grads = needs_grad(x, w_in, b_in, w_out, b_out)
    return torch.ops.playground.mlp(x, w_in, b_in, w_out, b_out, activation, grads)[0]


def squared_relu_mlp(x, w_in, b_in, w_out, b_out):
    """Persimmon's MLP: ``relu(x @ w_in.T + b_in) ** 2 @ w_out.T + b_out``, shapes as :func:`mlp`."""
    return mlp(x, w_in, b_in, w_out, b_out, activation="relu2")
