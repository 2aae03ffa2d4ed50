"""The transformer MLP, ``act(x @ w_in.T + b_in) @ w_out.T + b_out``: one Triton GEMM with a fused epilogue.

    h = x @ w_in.T + b_in          (tokens, inner)     the up-projection; its epilogue adds b_in, applies act
    a = act(h)                                          and (training) also stores h for the backward
    y = a @ w_out.T + b_out        (tokens, hidden)    the down-projection; its epilogue adds b_out

Activations (``activation=``): ``"relu2"`` relu(h)^2 (Persimmon; ``squared_relu_mlp``), ``"relu"`` (OPT) and
``"gelu_tanh"`` (GPT-2's ``gelu_new``: 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3)))). Shapes follow nn.Linear:
``x: (..., hidden)``, ``w_in: (inner, hidden)``, ``w_out: (hidden, inner)``, biases ``(inner,)``, ``(hidden,)`` or
None; any strides.

ONE GEMM kernel does every matmul, forward and backward. It computes ``C = A @ B`` for ``A: (M, K)`` and
``B: (K, N)`` given by pointers and strides, so a transpose is just swapped strides (``w.T`` is ``w`` read with
``(stride(1), stride(0))``), and a constexpr-selected epilogue finishes the fp32 accumulator tile in registers:

    forward, up      C = a      = act(x @ w_in.T + b_in)   epilogue: + bias, store h (training only), act
    forward, down    C = y      = a @ w_out.T + b_out      epilogue: + bias
    backward         C = dh     = (dy @ w_out) * act'(h)   epilogue: load the h tile, multiply by act'(h);
                                                                     column sums of dh -> partial db_in
                     C = dx     = dh @ w_in
                     C = dw_in  = dh.T @ x
                     C = dw_out = dy.T @ a
    db_out = column sums of dy (a small Triton reduction, ``_col_sum``; it also finishes db_in's partial sums).

Stored, not recomputed: the backward needs act'(h) and ``a``. ``a`` exists anyway (it is the down-projection's
input); ``h`` is one extra (tokens, inner) write in the forward's epilogue and one read in the dh epilogue, about
1/(BLOCK_K-fold reuse) of the GEMM's own traffic, ~5% of the up-projection's time at Persimmon-8B's shape.
Recomputing h instead would cost a whole extra (tokens x hidden x inner) GEMM in the backward (+33% FLOPs); and
deriving act' from ``a`` works for relu/relu2 (a > 0, 2 sqrt(a)) but not for gelu. h is kept only when x, w_in or
b_in needs a gradient; inference stores nothing extra.

Tiling (the Triton matmul tutorial's): a program owns a ``BLOCK_M x BLOCK_N`` tile of C and walks K in
``BLOCK_K`` steps, accumulating ``tl.dot`` in fp32. Program ids are ordered in groups of ``GROUP_M`` row-tiles
("grouped ordering"): consecutive programs share B column-tiles and A row-tiles while they are still in L2.
A's rows and B's columns past the edge are wrapped (``% M``, ``% N``) so the inner loop loads need only the K mask;
the epilogue's stores are masked. Pointers step by ``BLOCK_K * stride`` (64-bit), row offsets are int64.

Precision. fp16/bf16 inputs use the tensor cores with an fp32 accumulator; intermediates (a, h, dh) are stored in
the input dtype, as PyTorch's own eager MLP does (ours applies act to the unrounded fp32 h, a little more accurate).
fp32 inputs use ``input_precision="ieee"``: a GPU's default for fp32 ``tl.dot`` is TF32 (10-bit mantissa, ~1e-3
relative error), which would break the fp32 contract (< 1e-4); IEEE fp32 is slow (CUDA cores) but fp32 here is
for checking, bf16 is for speed. For fp32 the kernel halves BLOCK_K so a pipeline stage takes the same shared
memory as in 16 bits (every config fits an H100 in either dtype).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from hypothesis import strategies as st

from . import _runtime as rt
from .spec import BadInput, Case, OpSpec, call

ACTIVATIONS = {"relu": 1, "relu2": 2, "gelu_tanh": 3}  # 0: none (the down-projection)
DB_ROWS = 32  # the db_in partial sums are per 32-row band of dh (every BLOCK_M is a multiple)


def _gemm_configs():
    # (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps), H100 choices: the big 128x256 tile for prefill-sized
    # GEMMs (Persimmon-8B's up-projection), two 128-row tiles and a 64-row one for mid sizes and skinny
    # outputs, and a 32x64 tile for a few tokens (decode). Shared memory (16-bit): 144, 128, 96, 96, 24 KB.
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8, "EPI_SPLIT": n >= 256},
                          num_stages=s, num_warps=w)
            for m, n, k, s, w in [(128, 256, 64, 3, 8), (128, 128, 64, 4, 8), (128, 64, 64, 4, 4),
                                  (64, 128, 64, 4, 4), (32, 64, 32, 4, 4)]]


@triton.jit
def _activation(h, ACT: tl.constexpr):
    """act(h) in fp32; ACT: 0 none, 1 relu, 2 relu^2, 3 gelu_tanh."""
    if ACT == 1:
        out = tl.maximum(h, 0.0)
    elif ACT == 2:
        r = tl.maximum(h, 0.0)
        out = r * r
    elif ACT == 3:
        # 0.5 h (1 + tanh(u)) == h * sigmoid(2u): the same function, without tanh's cancellation near -1.
        u = 0.7978845608028654 * (h + 0.044715 * h * h * h)
        out = h / (1.0 + tl.exp(-2.0 * u))
    else:
        out = h
    return out


@triton.jit
def _activation_grad(h, ACT: tl.constexpr):
    """act'(h) in fp32 (relu' is 0 at h = 0, as torch's)."""
    if ACT == 1:
        out = tl.where(h > 0.0, 1.0, 0.0)
    elif ACT == 2:
        out = 2.0 * tl.maximum(h, 0.0)
    elif ACT == 3:
        # d/dh [h s], s = sigmoid(2u): s + h * 2 s (1 - s) * u'(h),  u' = sqrt(2/pi) (1 + 3 * 0.044715 h^2)
        u = 0.7978845608028654 * (h + 0.044715 * h * h * h)
        s = 1.0 / (1.0 + tl.exp(-2.0 * u))
        out = s + 2.0 * h * s * (1.0 - s) * (0.7978845608028654 * (1.0 + 0.134145 * h * h))
    else:
        out = tl.zeros_like(h) + 1.0
    return out


@rt.autotune(_gemm_configs(), key=["M", "N", "K", "HAS_BIAS", "ACT", "STORE_PRE", "DACT", "BIAS_GRAD"], default=0)
@triton.jit
def _gemm(
    A, B, C, Bias, H, DBias,
    M, N, K,
    s_am, s_ak, s_bk, s_bn, s_cm, s_cn, s_hm, s_hn,
    HAS_BIAS: tl.constexpr,  # C += Bias[n]
    ACT: tl.constexpr,  # C = act(C) (after the bias)
    STORE_PRE: tl.constexpr,  # store the pre-activation (after the bias) to H
    DACT: tl.constexpr,  # C *= act'(H), act by DACT's code (backward)
    BIAS_GRAD: tl.constexpr,  # column sums of C per 32-row band into DBias (backward)
    IEEE: tl.constexpr,  # fp32 inputs: exact fp32 dot, half-depth K steps
    EPI_SPLIT: tl.constexpr,  # finish the tile in two column halves (config choice: wide tiles)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # ---- which tile: grouped ordering. Programs pid = 0, 1, ... walk GROUP_M row-tiles down one column-tile,
    # then the next column-tile: a wave of programs touches GROUP_M rows of A and few columns of B (L2 reuse).
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    # ---- the K loop. Rows/columns past the edge wrap around (their results are never stored).
    BK: tl.constexpr = BLOCK_K // 2 if IEEE else BLOCK_K
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BK)
    a_ptrs = A + ((offs_m % M).to(tl.int64)[:, None] * s_am + offs_k[None, :] * s_ak)
    b_ptrs = B + (offs_k[:, None] * s_bk + (offs_n % N).to(tl.int64)[None, :] * s_bn)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BK)):
        k_left = K - k * BK
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BK * s_ak
        b_ptrs += BK * s_bk

    # ---- the epilogue, on the fp32 tile in registers. A 256-wide tile is finished in two 128-wide halves, so
    # the epilogue's temporaries (h tile, activation) fit beside the accumulator without spilling.
    if EPI_SPLIT:
        halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
        acc0, acc1 = tl.split(halves)
        offs_n0 = pid_n * BLOCK_N + tl.arange(0, BLOCK_N // 2)
        _epilogue(acc0, pid_m, offs_m, offs_n0, M, N, C, Bias, H, DBias, s_cm, s_cn, s_hm, s_hn,
                  HAS_BIAS, ACT, STORE_PRE, DACT, BIAS_GRAD, BLOCK_M)
        _epilogue(acc1, pid_m, offs_m, offs_n0 + BLOCK_N // 2, M, N, C, Bias, H, DBias, s_cm, s_cn, s_hm, s_hn,
                  HAS_BIAS, ACT, STORE_PRE, DACT, BIAS_GRAD, BLOCK_M)
    else:
        _epilogue(acc, pid_m, offs_m, offs_n, M, N, C, Bias, H, DBias, s_cm, s_cn, s_hm, s_hn,
                  HAS_BIAS, ACT, STORE_PRE, DACT, BIAS_GRAD, BLOCK_M)


@triton.jit
def _epilogue(acc, pid_m, offs_m, offs_n, M, N, C, Bias, H, DBias, s_cm, s_cn, s_hm, s_hn,
              HAS_BIAS: tl.constexpr, ACT: tl.constexpr, STORE_PRE: tl.constexpr, DACT: tl.constexpr,
              BIAS_GRAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """Finish the (BLOCK_M, width) fp32 tile ``acc`` of C at rows offs_m, columns offs_n; see _gemm's flags."""
    m_ok = offs_m < M
    n_ok = offs_n < N
    mask = m_ok[:, None] & n_ok[None, :]
    offs_m64 = offs_m.to(tl.int64)
    if HAS_BIAS:
        acc += tl.load(Bias + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if STORE_PRE:
        tl.store(H + offs_m64[:, None] * s_hm + offs_n[None, :] * s_hn, acc.to(H.dtype.element_ty), mask=mask)
    if ACT != 0:
        acc = _activation(acc, ACT)
    if DACT != 0:
        h = tl.load(H + offs_m64[:, None] * s_hm + offs_n[None, :] * s_hn, mask=mask, other=0.0)
        acc = acc * _activation_grad(h.to(tl.float32), DACT)
    if BIAS_GRAD:
        # The bias gradient is the column sum of this very tile. DBias has one row per 32-row band of C; this
        # program owns BLOCK_M / 32 of them: it writes its sum in the first and zeros in the rest, so every row
        # is written by exactly one program whatever BLOCK_M the autotuner picked.
        RATIO: tl.constexpr = BLOCK_M // 32
        col_sum = tl.sum(tl.where(m_ok[:, None], acc, 0.0), axis=0)
        band = pid_m * RATIO + tl.arange(0, RATIO)
        part = tl.where(tl.arange(0, RATIO)[:, None] == 0, col_sum[None, :], 0.0)
        tl.store(DBias + band.to(tl.int64)[:, None] * N + offs_n[None, :], part,
                 mask=(band < tl.cdiv(M, 32))[:, None] & n_ok[None, :])
    tl.store(C + offs_m64[:, None] * s_cm + offs_n[None, :] * s_cn, acc.to(C.dtype.element_ty), mask=mask)


# A column sum: one (BLOCK_R, BLOCK_N) fp32 accumulator per program, walking its share of the rows. The grid
# splits the rows too (axis 1) so a few columns still fill the GPU; the split's partial rows are summed by a
# second, smaller call. One config (not autotuned): a bias gradient is a tiny part of an MLP's backward.
@rt.autotune([triton.Config({"BLOCK_R": 32, "BLOCK_N": 128}, num_warps=4)], key=["R", "N"])
@triton.jit
def _col_sum(X, Out, R, N, s_xr, s_xn, s_or, rows_per_prog, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_r = tl.program_id(1)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    start = pid_r * rows_per_prog
    end = tl.minimum(start + rows_per_prog, R)
    acc = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
    for r0 in range(start, end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        mask = (rows < end)[:, None] & col_ok[None, :]
        acc += tl.load(X + rows.to(tl.int64)[:, None] * s_xr + cols[None, :] * s_xn, mask=mask, other=0.0).to(
            tl.float32)
    tl.store(Out + pid_r.to(tl.int64) * s_or + cols, tl.sum(acc, axis=0).to(Out.dtype.element_ty), mask=col_ok)


# ------------------------------------------------------------------------------------------------ wrapper


def _matmul(a, b, c, *, bias=None, act=0, h=None, store_pre=False, dact=0, dbias=None):
    """c = epilogue(a @ b) for 2-D views a: (M, K), b: (K, N), c: (M, N) (any strides). Returns c."""
    (m, k), n = a.shape, b.shape[1]
    if m == 0 or n == 0:
        return c
    hh = h if h is not None else c
    _gemm[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)](
        a, b, c, bias if bias is not None else c, hh, dbias if dbias is not None else c,
        m, n, k,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1), hh.stride(0), hh.stride(1),
        HAS_BIAS=bias is not None, ACT=act, STORE_PRE=store_pre, DACT=dact, BIAS_GRAD=dbias is not None,
        IEEE=a.dtype == torch.float32,
    )
    return c


def _column_sums(x, dtype):
    """x.sum(0) for a 2-D x (any strides), in ``dtype``, by ``_col_sum`` (fp32 accumulation)."""
    r, n = x.shape
    block_r, block_n = 32, 128
    col_blocks = triton.cdiv(n, block_n)
    split = max(1, min(triton.cdiv(r, 4 * block_r), triton.cdiv(4 * rt.num_sms(), col_blocks)))
    rows_per_prog = block_r * triton.cdiv(triton.cdiv(max(r, 1), split), block_r)
    split = max(1, triton.cdiv(r, rows_per_prog))
    out = rt.empty((split, n), dtype if split == 1 else torch.float32, x.device)
    if n:
        _col_sum[(col_blocks, split)](x, out, r, n, x.stride(0), x.stride(1), out.stride(0), rows_per_prog)
    return out[0] if split == 1 else _column_sums(out, dtype)


class _MLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_in, b_in, w_out, b_out, act):
        x2 = x.reshape(-1, x.shape[-1])  # a view whenever the strides allow; else a copy (glue)
        tokens, inner, hidden_out = x2.shape[0], w_in.shape[0], w_out.shape[0]
        keep_h = any(ctx.needs_input_grad[:3])  # dh (hence h) is needed for x, w_in and b_in's gradients
        a = rt.empty((tokens, inner), x.dtype, x.device)
        h = rt.empty((tokens, inner), x.dtype, x.device) if keep_h else None
        _matmul(x2, w_in.t(), a, bias=b_in, act=act, h=h, store_pre=keep_h)
        y = _matmul(a, w_out.t(), rt.empty((tokens, hidden_out), x.dtype, x.device), bias=b_out)
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(x, w_in, w_out, a, h)
        ctx.act, ctx.has_b_in, ctx.has_b_out = act, b_in is not None, b_out is not None
        return y.view(*x.shape[:-1], hidden_out)

    @staticmethod
    def backward(ctx, dy):
        x, w_in, w_out, a, h = ctx.saved_tensors
        need_x, need_w_in, need_b_in, need_w_out, need_b_out = ctx.needs_input_grad[:5]
        x2 = x.reshape(-1, x.shape[-1])
        dy2 = dy.reshape(-1, dy.shape[-1])
        tokens, inner = a.shape
        dt, dev = x.dtype, x.device
        dx = dw_in = db_in = dw_out = db_out = None
        if need_x or need_w_in or need_b_in:
            # dh = (dy @ w_out) * act'(h), with db_in's partial column sums from the same epilogue
            partial = rt.empty((triton.cdiv(tokens, DB_ROWS), inner), torch.float32, dev) if need_b_in else None
            dh = _matmul(dy2, w_out, rt.empty((tokens, inner), dt, dev), h=h, dact=ctx.act, dbias=partial)
            if need_b_in:
                db_in = _column_sums(partial, dt)
            if need_x:
                dx = _matmul(dh, w_in, rt.empty(x2.shape, dt, dev)).view(x.shape)
            if need_w_in:
                dw_in = _matmul(dh.t(), x2, rt.empty(w_in.shape, dt, dev))
        if need_w_out:
            dw_out = _matmul(dy2.t(), a, rt.empty(w_out.shape, dt, dev))
        if need_b_out:
            db_out = _column_sums(dy2, dt)
        return dx, dw_in, db_in, dw_out, db_out, None


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
    ``x: (..., hidden)``, ``w_in: (inner, hidden)``, ``w_out: (hidden, inner)``; biases may be None."""
    _check(x, w_in, b_in, w_out, b_out, activation)
    return _MLP.apply(x, w_in, b_in, w_out, b_out, ACTIVATIONS[activation])


def squared_relu_mlp(x, w_in, b_in, w_out, b_out):
    """Persimmon's MLP: ``relu(x @ w_in.T + b_in) ** 2 @ w_out.T + b_out``."""
    return mlp(x, w_in, b_in, w_out, b_out, activation="relu2")


# ------------------------------------------------------------------------------------------------ reference


def _reference_activation(h, activation):
    if activation == "relu":
        return torch.relu(h)
    if activation == "relu2":  # transformers' ReLUSquaredActivation
        return torch.square(torch.relu(h))
    if activation == "gelu_tanh":  # transformers' NewGELUActivation (GPT-2's gelu_new)
        return 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))
    raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")


def mlp_reference(x, w_in, b_in, w_out, b_out, *, activation="relu2"):
    """Eager PyTorch: linear, activation (relu, square, ...), linear."""
    h = torch.nn.functional.linear(x, w_in, b_in)
    return torch.nn.functional.linear(_reference_activation(h, activation), w_out, b_out)


# ------------------------------------------------------------------------------------------------ description


def _make_case(dims, dtype, device, *, contiguous=True, requires_grad=False, seed=0):
    """dims: seqlen (tokens per sequence), hidden, inner, activation; optional batch (a leading dim), bias (bool).

    Weights are scaled as a trained layer's (unit-variance pre-activations). contiguous=False: x every other
    column of a wider buffer, w_in a transposed view (unit stride along inner), w_out and the biases every other
    row/element of wider buffers.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    lead = ((dims["batch"],) if dims.get("batch") else ()) + (dims["seqlen"],)
    hidden, inner = dims["hidden"], dims["inner"]
    x = torch.randn(*lead, hidden, generator=g)
    w_in = torch.randn(inner, hidden, generator=g) / math.sqrt(hidden)
    w_out = torch.randn(hidden, inner, generator=g) / math.sqrt(inner)
    b_in = 0.5 * torch.randn(inner, generator=g)
    b_out = 0.5 * torch.randn(hidden, generator=g)
    if not contiguous:
        wide = torch.full((*lead, 2 * hidden), float("nan"))
        wide[..., ::2] = x
        x = wide[..., ::2]
        w_in = w_in.t().contiguous().t()
        w_out = torch.stack((w_out, torch.full_like(w_out, float("nan"))), dim=1).view(2 * hidden, inner)[::2]
        b_in = torch.stack((b_in, torch.full_like(b_in, float("nan"))), dim=1).view(-1)[::2]
        b_out = torch.stack((b_out, torch.full_like(b_out, float("nan"))), dim=1).view(-1)[::2]

    def prep(t):
        return t.to(device=device, dtype=dtype).requires_grad_(requires_grad)

    bias = dims.get("bias", True)
    args = (prep(x), prep(w_in), prep(b_in) if bias else None, prep(w_out), prep(b_out) if bias else None)
    return Case(args, {"activation": dims.get("activation", "relu2")})


def _dims(big):
    tokens = st.one_of(st.integers(1, 40), st.sampled_from([67, 130, 1000] if big else [47, 67]))
    width = st.one_of(st.integers(1, 48), st.sampled_from([97, 300, 1000] if big else [65, 97, 100]))
    return st.fixed_dictionaries(
        {"seqlen": tokens, "hidden": width, "inner": width, "activation": st.sampled_from(sorted(ACTIVATIONS))},
        optional={"batch": st.integers(1, 3), "bias": st.booleans()},
    )


def _sweep_cases(gpu):
    # tokens = seqlen (batch 1); Persimmon-8B's MLP and GPT-2 small's (hidden 768, inner 3072)
    if not gpu:
        return [{"seqlen": s, "hidden": 32, "inner": 96, "activation": "relu2"} for s in (8, 16, 32)]
    seqlens = [512 * 2**i for i in range(5)]
    shapes = [(4096, 16384), (768, 3072)]
    return [{"seqlen": s, "hidden": h, "inner": i, "activation": "relu2"} for h, i in shapes for s in seqlens]


def _tokens(dims):
    return dims.get("batch", 1) * dims["seqlen"]


def _flops(dims, mode):
    one_gemm = 2 * _tokens(dims) * dims["hidden"] * dims["inner"]
    return {"fwd": 2 * one_gemm, "bwd": 4 * one_gemm, "fwd+bwd": 6 * one_gemm}[mode]


def _bytes(dims, dtype, mode):
    # the least traffic: activations in and out, both weight matrices (the intermediate could stay on chip)
    size = torch.finfo(dtype).bits // 8
    act = _tokens(dims) * dims["hidden"] * size
    weights = 2 * dims["hidden"] * dims["inner"] * size
    fwd = 2 * act + weights  # x in, y out, weights in
    bwd = 3 * act + 2 * weights  # x, dy in, dx out; weights in, their grads out
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _bad_inputs():
    x, w_in, b_in, w_out, b_out = torch.randn(5, 8), torch.randn(12, 8), torch.randn(12), torch.randn(8, 12), \
        torch.randn(8)
    return (
        BadInput("int x", call(x.int(), w_in, b_in, w_out, b_out), TypeError, "x must be float"),
        BadInput("x not a tensor", call([1.0], w_in, b_in, w_out, b_out), TypeError, "x must be a torch.Tensor"),
        BadInput("w_in hidden", call(x, torch.randn(12, 7), b_in, w_out, b_out), ValueError,
                 r"w_in must have shape \(inner, hidden\)"),
        BadInput("w_in rank", call(x, torch.randn(12), b_in, w_out, b_out), ValueError, "w_in must have rank 2"),
        BadInput("w_in dtype", call(x, w_in.half(), b_in, w_out, b_out), TypeError, "w_in has dtype"),
        BadInput("w_out inner", call(x, w_in, b_in, torch.randn(8, 11), b_out), ValueError,
                 r"w_out must have shape \(hidden, inner\)"),
        BadInput("w_out int", call(x, w_in, b_in, w_out.long(), b_out), TypeError, "w_out must be float"),
        BadInput("b_in length", call(x, w_in, torch.randn(11), w_out, b_out), ValueError, "b_in must have shape"),
        BadInput("b_out length", call(x, w_in, b_in, w_out, torch.randn(12)), ValueError, "b_out must have shape"),
        BadInput("b_out dtype", call(x, w_in, b_in, w_out, b_out.double()), TypeError, "b_out must be float"),
        BadInput("activation", call(x, w_in, b_in, w_out, b_out, activation="swish"), ValueError,
                 "activation must be one of"),
    )


MLP = OpSpec(
    name="mlp",
    fn=mlp,
    reference=mlp_reference,
    make_case=_make_case,
    dims=_dims,
    config_dims={"seqlen": 67, "hidden": 71, "inner": 97, "activation": "relu2"},
    sweep_cases=_sweep_cases,
    flops=_flops,
    bytes_moved=_bytes,
    tolerance={torch.float32: 1e-5, torch.float16: 3e-3},
    grad_tolerance={torch.float32: 1e-5, torch.float16: 3e-3},
    kernels=(_gemm,),
    bad_inputs=_bad_inputs(),
    examples=(
        {"seqlen": 1, "hidden": 33, "inner": 70, "activation": "gelu_tanh", "bias": False},  # one token
        {"batch": 3, "seqlen": 7, "hidden": 100, "inner": 65, "activation": "relu"},  # leading dims
        {"seqlen": 70, "hidden": 97, "inner": 100, "activation": "relu2"},  # 3 K steps of 32 in fp32
    ),
)

SPECS = (MLP,)
