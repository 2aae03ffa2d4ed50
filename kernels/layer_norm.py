"""LayerNorm and RMSNorm over the last dimension: one Triton kernel pair serves both.

    layer_norm(x) = (x - mean(x)) * rstd * weight + bias,   rstd = 1 / sqrt(var(x) + eps)
    rms_norm(x)   = weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)       (HF OLMoE/Llama RMSNorm)

Shapes: ``x: (..., hidden)``, ``weight, bias: (hidden,)``; the result has x's shape and dtype.

Tiling. A program owns ``BLOCK_M`` rows. When the row fits one ``BLOCK_N``-wide tile (hidden <= 8192) the
whole ``(BLOCK_M, BLOCK_N)`` tile stays in registers: x is read once, the statistics are two-pass
(``var = mean((x - mean)^2)``, the mean summed relative to the row's first element, so rows with mean 1e4 keep
their precision), and y is written once. Wider rows
loop over column tiles: one pass for the mean, one for the variance, one to normalise (the row stays in L2).
Statistics are fp32 whatever x's dtype; per-row mean and rstd are saved for the backward.

Backward, with xhat = (x - mean) * rstd (LayerNorm) or xhat = x * rstd (RMSNorm), g = dy * weight:
    dx = rstd * (g - xhat * mean(g * xhat) - mean(g))      (the mean(g) term is LayerNorm's only)
    dweight = sum_rows dy * xhat,   dbias = sum_rows dy
The backward grid is persistent-ish: a fixed number of programs each walk a strided set of row tiles and keep
their dweight/dbias partial sums in registers, writing one partial row per program at the end; the partials
are summed afterwards (deterministic, no atomics).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from hypothesis import strategies as st

from . import _runtime as rt
from .spec import BadInput, Case, OpSpec, call

MAX_FUSED_N = 8192  # widest row kept whole in registers; wider rows loop over column tiles


def _norm_configs():
    return [triton.Config({"BLOCK_M": m}, num_warps=w) for m, w in [(1, 4), (1, 8), (4, 4), (8, 8), (16, 8)]]


def _fits(configs, nargs):
    """Keep configs whose (BLOCK_M, BLOCK_N) tile stays within 16K elements of registers."""
    fitting = [c for c in configs if c.kwargs["BLOCK_M"] * nargs["BLOCK_N"] <= 16384]
    return fitting or configs[:1]


@rt.autotune(_norm_configs(), key=["N", "RMS"], default=4, prune=_fits)
@triton.jit
def _norm_fwd(
    X, W, B, Y, Mean, Rstd,
    n_rows, N, stride_xm, stride_xn, stride_ym, stride_yn, eps,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, RMS: tl.constexpr,
    BLOCK_N: tl.constexpr, SINGLE_TILE: tl.constexpr, BLOCK_M: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    rows64 = rows.to(tl.int64)  # row * stride can pass 2^31 on big activations
    x_row = X + rows64[:, None] * stride_xm
    y_row = Y + rows64[:, None] * stride_ym
    cols0 = tl.arange(0, BLOCK_N)
    # The mean is kept relative to the row's first element (``pivot``): with mean 1e4, an fp32 mean is only
    # good to ~5e-4 (its ulp), an error every centred value inherits. x - pivot is exact, so the mean is kept
    # as pivot + mean, and Mean stores the small part (the backward reloads pivot).
    if RMS:
        pivot = tl.zeros([BLOCK_M], dtype=tl.float32)
    else:
        pivot = tl.load(X + rows64 * stride_xm, mask=row_ok, other=0.0).to(tl.float32)

    if SINGLE_TILE:  # the whole row in registers
        mask = row_ok[:, None] & (cols0[None, :] < N)
        x = tl.load(x_row + cols0[None, :] * stride_xn, mask=mask, other=0.0).to(tl.float32)
        if RMS:
            mean = tl.zeros([BLOCK_M], dtype=tl.float32)
            xc = x
        else:
            mean = tl.sum(tl.where(mask, x - pivot[:, None], 0.0), axis=1) / N
            xc = tl.where(mask, (x - pivot[:, None]) - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / N + eps)
    else:  # loop over column tiles: mean, then centred variance
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        if not RMS:
            for start in range(0, N, BLOCK_N):
                cols = start + cols0
                mask = row_ok[:, None] & (cols[None, :] < N)
                xt = tl.load(x_row + cols[None, :] * stride_xn, mask=mask, other=0.0).to(tl.float32)
                acc += tl.where(mask, xt - pivot[:, None], 0.0)
        mean = tl.sum(acc, axis=1) / N
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            cols = start + cols0
            mask = row_ok[:, None] & (cols[None, :] < N)
            xt = tl.load(x_row + cols[None, :] * stride_xn, mask=mask, other=0.0).to(tl.float32)
            xt = tl.where(mask, (xt - pivot[:, None]) - mean[:, None], 0.0)
            acc += xt * xt
        rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=1) / N + eps)

    if not RMS:
        tl.store(Mean + rows, mean, mask=row_ok)
    tl.store(Rstd + rows, rstd, mask=row_ok)

    for start in range(0, N, BLOCK_N):
        cols = start + cols0
        col_ok = cols < N
        mask = row_ok[:, None] & col_ok[None, :]
        if SINGLE_TILE:
            xhat = xc * rstd[:, None]
        else:
            xt = tl.load(x_row + cols[None, :] * stride_xn, mask=mask, other=0.0).to(tl.float32)
            xhat = ((xt - pivot[:, None]) - mean[:, None]) * rstd[:, None]
        if RMS:
            # HF rounds the normalised x to x's dtype before the weight multiplies it.
            xhat = xhat.to(Y.dtype.element_ty).to(tl.float32)
        if HAS_W:
            xhat *= tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if HAS_B:
            xhat += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(y_row + cols[None, :] * stride_yn, xhat.to(Y.dtype.element_ty), mask=mask)


@rt.autotune(_norm_configs(), key=["N", "RMS"], default=4, prune=_fits)
@triton.jit
def _norm_bwd(
    X, W, DY, DX, Mean, Rstd, DW_partial, DB_partial,
    n_rows, N, stride_xm, stride_xn, stride_dym, stride_dyn, stride_dxm, stride_dxn,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, RMS: tl.constexpr, OUT_DTYPE_ROUND: tl.constexpr,
    BLOCK_N: tl.constexpr, SINGLE_TILE: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    cols0 = tl.arange(0, BLOCK_N)
    # dweight/dbias partials of this program: in registers when a row fits one tile, else in its own
    # row of the partial buffers (no other program touches it, so plain load/add/store is race-free).
    dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for tile in range(pid, tl.cdiv(n_rows, BLOCK_M), n_progs):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        rows64 = rows.to(tl.int64)
        rstd = tl.load(Rstd + rows, mask=row_ok, other=0.0)
        if RMS:
            pivot = tl.zeros([BLOCK_M], dtype=tl.float32)
            mean = tl.zeros([BLOCK_M], dtype=tl.float32)
        else:  # the forward's split mean: pivot (the row's first element) + Mean
            pivot = tl.load(X + rows64 * stride_xm, mask=row_ok, other=0.0).to(tl.float32)
            mean = tl.load(Mean + rows, mask=row_ok, other=0.0)
        # pass 1: the two row sums mean(g * xhat) and mean(g)
        sum_gx = tl.zeros([BLOCK_M], dtype=tl.float32)
        sum_g = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            cols = start + cols0
            col_ok = cols < N
            mask = row_ok[:, None] & col_ok[None, :]
            x = tl.load(X + rows64[:, None] * stride_xm + cols[None, :] * stride_xn, mask=mask, other=0.0)
            dy = tl.load(DY + rows64[:, None] * stride_dym + cols[None, :] * stride_dyn, mask=mask, other=0.0)
            xhat = tl.where(mask, ((x.to(tl.float32) - pivot[:, None]) - mean[:, None]) * rstd[:, None], 0.0)
            g = dy.to(tl.float32)
            if HAS_W:
                g *= tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            sum_gx += tl.sum(g * xhat, axis=1)
            sum_g += tl.sum(g, axis=1)
        c1 = sum_gx / N
        c2 = sum_g / N
        # pass 2: dx, and the weight/bias partials
        for start in range(0, N, BLOCK_N):
            cols = start + cols0
            col_ok = cols < N
            mask = row_ok[:, None] & col_ok[None, :]
            x = tl.load(X + rows64[:, None] * stride_xm + cols[None, :] * stride_xn, mask=mask, other=0.0)
            dy = tl.load(DY + rows64[:, None] * stride_dym + cols[None, :] * stride_dyn, mask=mask, other=0.0)
            xhat = tl.where(mask, ((x.to(tl.float32) - pivot[:, None]) - mean[:, None]) * rstd[:, None], 0.0)
            dy = dy.to(tl.float32)
            g = dy
            if HAS_W:
                g *= tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            if RMS:
                dx = (g - xhat * c1[:, None]) * rstd[:, None]
            else:
                dx = (g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
            tl.store(DX + rows64[:, None] * stride_dxm + cols[None, :] * stride_dxn,
                     dx.to(DX.dtype.element_ty), mask=mask)
            if HAS_W:
                if OUT_DTYPE_ROUND:  # RMSNorm's weight multiplies the normalised x rounded to x's dtype
                    xhat = xhat.to(DX.dtype.element_ty).to(tl.float32)
                if SINGLE_TILE:
                    dw_acc += tl.sum(dy * xhat, axis=0)
                else:
                    p = DW_partial + pid * N + cols
                    tl.store(p, tl.load(p, mask=col_ok) + tl.sum(dy * xhat, axis=0), mask=col_ok)
            if HAS_B:
                if SINGLE_TILE:
                    db_acc += tl.sum(dy, axis=0)
                else:
                    p = DB_partial + pid * N + cols
                    tl.store(p, tl.load(p, mask=col_ok) + tl.sum(dy, axis=0), mask=col_ok)
    if SINGLE_TILE:
        if HAS_W:
            tl.store(DW_partial + pid * N + cols0, dw_acc, mask=cols0 < N)
        if HAS_B:
            tl.store(DB_partial + pid * N + cols0, db_acc, mask=cols0 < N)


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """(..., N) -> (rows, N), a view whenever the strides allow (any last-dim stride is fine)."""
    return t.reshape(-1, t.shape[-1])


def _block_n(n: int) -> int:
    return min(triton.next_power_of_2(n), MAX_FUSED_N)


def _num_bwd_programs(n_rows: int) -> int:
    return min(n_rows, 4 * rt.num_sms())


class _Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, rms):
        x2 = _as_rows(x)
        n_rows, n = x2.shape
        y = rt.empty(x.shape, x.dtype, x.device)
        y2 = y.view(-1, n)
        mean = rt.empty((n_rows,), torch.float32, x.device) if not rms else y2  # y2: unused placeholder
        rstd = rt.empty((n_rows,), torch.float32, x.device)
        block_n = _block_n(n)
        _norm_fwd[lambda meta: (triton.cdiv(n_rows, meta["BLOCK_M"]),)](
            x2, weight if weight is not None else x2, bias if bias is not None else x2, y2, mean, rstd,
            n_rows, n, x2.stride(0), x2.stride(1), y2.stride(0), y2.stride(1), eps,
            HAS_W=weight is not None, HAS_B=bias is not None, RMS=rms, BLOCK_N=block_n, SINGLE_TILE=block_n >= n,
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
        n_progs = max(_num_bwd_programs(n_rows), 1)
        # The partial buffers start at zero: the looped path accumulates into them.
        dw_partial = torch.zeros((n_progs, n), dtype=torch.float32, device=x.device) if weight is not None else rstd
        db_partial = torch.zeros((n_progs, n), dtype=torch.float32, device=x.device) if bias is not None else rstd
        _norm_bwd[(n_progs,)](
            x2, weight if weight is not None else x2, dy2, dx2, mean, rstd, dw_partial, db_partial,
            n_rows, n, x2.stride(0), x2.stride(1), dy2.stride(0), dy2.stride(1), dx2.stride(0), dx2.stride(1),
            HAS_W=weight is not None, HAS_B=bias is not None, RMS=ctx.rms, OUT_DTYPE_ROUND=ctx.rms,
            BLOCK_N=_block_n(n), SINGLE_TILE=_block_n(n) >= n,
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


# ------------------------------------------------------------------------------------------------ references


def layer_norm_reference(x, weight=None, bias=None, eps=1e-5):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, eps)


def rms_norm_reference(x, weight=None, eps=1e-6):
    xf = x.float() if x.dtype != torch.float64 else x
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return normed if weight is None else weight * normed


# ------------------------------------------------------------------------------------------------ description


def _make_case(dims, dtype, device, *, contiguous=True, requires_grad=False, seed=0, rms=False):
    """dims: rows (sweeps: seqlen), hidden, and optionally offset (added to x: rows with mean 1e4), affine."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    rows, hidden = dims.get("rows", dims.get("seqlen")), dims["hidden"]
    x = torch.randn(rows, hidden, generator=g) + dims.get("offset", 0.0)
    if not contiguous:  # every other column of a wider buffer, rows reversed: non-unit strides on both axes
        wide = torch.full((rows, 2 * hidden), float("nan"))
        wide[:, ::2] = x
        x = wide.flip(0)[:, ::2].flip(0)
    x = x.to(device=device, dtype=dtype)
    args = [x.requires_grad_(requires_grad)]
    if dims.get("affine", True):
        args.append((1 + 0.5 * torch.randn(hidden, generator=g)).to(device, dtype).requires_grad_(requires_grad))
        if not rms:
            args.append((0.5 * torch.randn(hidden, generator=g)).to(device, dtype).requires_grad_(requires_grad))
    return Case(tuple(args))


def _dims(big):
    hidden = st.one_of(st.integers(1, 64), st.sampled_from([127, 768, 1000, 4096, 9000 if big else 8193]))
    return st.fixed_dictionaries(
        {"rows": st.integers(1, 64 if big else 9), "hidden": hidden},
        optional={"offset": st.sampled_from([0.0, 1e4]), "affine": st.booleans()},
    )


def _sweep_cases(gpu):
    seqlens = [512 * 2**i for i in range(6)] if gpu else [8, 16, 32]
    hiddens = [1024, 4096, 8192] if gpu else [256]
    return [{"seqlen": s, "hidden": h} for h in hiddens for s in seqlens]


def _bytes(dims, dtype, mode, n_params):
    size = torch.finfo(dtype).bits // 8
    act = dims.get("rows", dims.get("seqlen")) * dims["hidden"] * size
    params = n_params * dims["hidden"] * size
    fwd = 2 * act + params  # read x, write y
    bwd = 3 * act + 2 * params  # read x, dy; write dx; weight in, grads out
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _flops(dims, mode):
    per = {"fwd": 8, "bwd": 14, "fwd+bwd": 22}[mode]
    return per * dims.get("rows", dims.get("seqlen")) * dims["hidden"]


def _bad_inputs(fn, rms):
    x = torch.randn(3, 8)
    bad = [
        BadInput("int x", call(torch.ones(3, 8, dtype=torch.int32)), TypeError, "x must be float"),
        BadInput("weight shape", call(x, torch.ones(7)), ValueError, "weight must have shape"),
        BadInput("weight dtype", call(x, torch.ones(8, dtype=torch.float16)), TypeError, "weight has dtype"),
        BadInput("not a tensor", call([1.0, 2.0]), TypeError, "x must be a torch.Tensor"),
        BadInput("eps zero", call(x, None, **({"eps": 0.0})), ValueError, "eps must be a positive"),
    ]
    if not rms:
        bad.append(BadInput("bias shape", call(x, torch.ones(8), torch.ones(3, 8)), ValueError, "bias must have"))
    if torch.cuda.is_available():
        bad.append(BadInput("devices", lambda: Case((x.cuda(), torch.ones(8))), ValueError, "weight is on cpu"))
    return tuple(bad)


# Rows wider than one tile (the looped path) with mean 1e4; one-wide and two-wide rows (a gradient that is zero
# up to rounding); many rows with the weight but no bias.
_EXAMPLES = (
    {"rows": 3, "hidden": 8193, "offset": 1e4},
    {"rows": 2, "hidden": 1},
    {"rows": 5, "hidden": 2},
    {"rows": 33, "hidden": 300, "offset": 1e4},
)
_TOL = {torch.float32: 1e-5, torch.float16: 2e-3}
_GRAD_TOL = {torch.float32: 1e-4, torch.float16: 3e-3}

LAYER_NORM = OpSpec(
    name="layer_norm",
    fn=layer_norm,
    reference=layer_norm_reference,
    make_case=_make_case,
    dims=_dims,
    config_dims={"rows": 19, "hidden": 37},
    sweep_cases=_sweep_cases,
    flops=_flops,
    bytes_moved=functools.partial(_bytes, n_params=2),
    tolerance=_TOL,
    grad_tolerance=_GRAD_TOL,
    kernels=(_norm_fwd, _norm_bwd),
    bad_inputs=_bad_inputs(layer_norm, rms=False),
    examples=_EXAMPLES,
)

RMS_NORM = OpSpec(
    name="rms_norm",
    fn=rms_norm,
    reference=rms_norm_reference,
    make_case=functools.partial(_make_case, rms=True),
    dims=_dims,
    config_dims={"rows": 19, "hidden": 37},
    sweep_cases=_sweep_cases,
    flops=_flops,
    bytes_moved=functools.partial(_bytes, n_params=1),
    tolerance=_TOL,
    grad_tolerance=_GRAD_TOL,
    kernels=(_norm_fwd, _norm_bwd),
    bad_inputs=_bad_inputs(rms_norm, rms=True),
    examples=_EXAMPLES,
)

SPECS = (LAYER_NORM, RMS_NORM)
