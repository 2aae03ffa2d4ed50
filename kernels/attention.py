"""Causal attention with an optional sliding window: a FlashAttention-2 style Triton kernel, forward and backward.

    attention(q, k, v) = softmax(scale * q @ k^T + mask) @ v

Shapes: ``q: (batch, q_heads, q_len, head_dim)``, ``k, v: (batch, kv_heads, kv_len, head_dim)`` with
``q_heads % kv_heads == 0``: query head ``h`` reads key/value head ``h // group``, ``group = q_heads // kv_heads``
(grouped-query attention; ``kv_heads == 1`` is multi-query). Any strides (the usual input is a transposed
``(batch, seq, heads, head_dim)`` view), any ``head_dim`` from 1 to 256, fp32 / fp16 / bf16.

Which keys a query sees. With ``causal=True`` the queries are the LAST ``q_len`` positions of the key sequence:
query row ``i`` sits at position ``p = kv_len - q_len + i`` (a decode step, ``q_len = 1``, is the newest token
against the whole cache) and sees keys ``j <= p``. A window ``W`` keeps only the last ``W`` of those, itself
included: ``p - W < j <= p``. That is Hugging Face transformers' ``sliding_window`` convention; FlashAttention
writes the same mask as ``window_size=(W - 1, 0)``, and FlexAttention's sliding-window examples
(``q_idx - kv_idx <= W``) keep ``W + 1`` keys — our ``window=W`` is their ``W - 1``. ``causal=False`` is full
bidirectional attention (no window). Every query sees at least itself, so no softmax row is empty.

Forward (FlashAttention-2). A program owns ``BLOCK_M`` query rows of one (batch, head) and walks the key/value
sequence in ``BLOCK_N``-wide blocks, keeping for each row a running max ``m``, a running sum ``l`` and an
unnormalised output ``acc`` (all fp32):

    s    = q @ k_blk^T * scale * log2(e)          (base 2: exp2 is the hardware's exponential)
    m'   = max(m, rowmax(s));   alpha = 2^(m - m');   p = 2^(s - m')
    l    = l * alpha + rowsum(p);   acc = acc * alpha + p @ v_blk;   m = m'

and at the end ``o = acc / l`` and ``lse = m + log2(l)`` (the log-sum-exp, base 2, saved for the backward).
Scores never touch memory: the kernel reads q once and k, v once per query block.

Block skipping. The key blocks a query block needs come from its rows' positions ``p_first .. p_last``:
``[lo, hi) = [p_first - W + 1, p_last + 1)`` (clamped to ``[0, kv_len)``, ``lo`` rounded down to a block). The
loop bounds ARE that range, so blocks outside it cost nothing and run time follows the number of visible pairs.
Inside it, a block visible to every row of the query block (``n + BLOCK_N - 1 <= p_first`` and
``n > p_last - W``, and inside ``kv_len``) needs no mask; only the blocks on the diagonal and on the window's
lower edge do. So the range splits into three loops: masked edge, unmasked interior, masked diagonal
(:func:`_key_range` computes the split; one ``MASK`` constexpr compiles each loop body twice).

Split-KV (decode). With few query rows (``q_len = 1`` against a long cache) there are only ``batch * heads``
programs — too few to fill the GPU. Then the key range of each query block is cut into ``num_splits`` chunks, one
program each, writing a partial output and its log-sum-exp (fp32); :func:`_attn_combine` merges them:
``lse = log2(sum_s 2^lse_s)``, ``o = sum_s 2^(lse_s - lse) * o_s``.

Backward (FlashAttention-2), with ``P = 2^(s - lse)`` recomputed from the saved lse (not stored: it is
``q_len x kv_len``), ``dO`` the output gradient and ``delta_i = rowsum(dO_i * O_i)``:

    dV = P^T @ dO;   dP = dO @ V^T;   dS = P * (dP - delta);   dQ = scale * dS @ K;   dK = scale * dS^T @ Q

Three kernels: :func:`_attn_bwd_delta` (delta, one pass over O and dO); :func:`_attn_bwd_dkdv` — a program owns
``BLOCK_N`` keys of one KV head, keeps k, v and the dk, dv accumulators in registers and walks the query blocks
that see those keys, for every query head of the group in turn (GQA sums dk, dv over the group right there, no
atomics); :func:`_attn_bwd_dq` — a program owns ``BLOCK_M`` queries and walks their visible key blocks, like the
forward. Both use the same three-loop block skipping, with the ranges seen from the other side.

Head dims that are not powers of two (1, 24, 80, 96, ...) are padded inside the kernel to ``BLOCK_D``, the next
power of two >= 16 (a ``tl.dot`` operand needs every dim >= 16): loads mask the missing columns to zero, which
adds nothing to ``q @ k^T`` and leaves padded output columns unwritten. No input is copied.

Precision: fp32 inputs use ``input_precision="ieee"`` dots (TF32 would cost fp32 its accuracy); fp16/bf16 use
the tensor cores with ``p`` and ``dS`` rounded to the input dtype for their matmuls (as FlashAttention does);
softmax statistics and every accumulator are fp32.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from hypothesis import strategies as st

from . import _runtime as rt
from .spec import BadInput, Case, OpSpec, call

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256
SPLIT_ALIGN = 128  # split-KV chunks are multiples of this (every BLOCK_N divides it)
MAX_BLOCK = 128  # the largest BLOCK_M / BLOCK_N of any config

# --------------------------------------------------------------------------------------------------------------
# Configs, chosen from compiling every candidate for sm_90 and reading ptxas' register and spill counts (head
# dims 64 and 128, bf16): a 128-row tile wants 8 warps (with 4 its fp32 accumulator alone is 128 registers a
# thread and it spills); the dK/dV kernel holds two fp32 accumulators (dk, dv) besides k and v, so it streams
# short query tiles (16-32 rows). Shared memory per program is about
#     elsize * BLOCK_D * (resident * resident rows + num_stages * 2 * streamed rows)
# (the forward keeps q resident, dQ keeps q and dO, dK/dV keeps k and v; two tiles stream per stage); ``_prune``
# drops configs over ~200 KB (head dim 256 or fp32 inputs need the small ones), and query tiles much taller than
# q_len (decode) when a shorter one exists.
# --------------------------------------------------------------------------------------------------------------

SMEM_BUDGET = 200 * 1024


def _cfg(bm, bn, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


def _fwd_configs():
    return [
        _cfg(128, 64, 8, 3),
        _cfg(128, 128, 8, 2),  # the interpreter's default: biggest tiles, fewest programs and loop trips
        _cfg(64, 64, 4, 3),
        _cfg(64, 32, 4, 2),  # head dim 256 / fp32
        _cfg(16, 128, 4, 3),  # decode: q_len <= 16
        _cfg(16, 64, 4, 2),  # decode, head dim 256
    ]


def _dkdv_configs():  # BLOCK_N keys resident, BLOCK_M query rows streamed
    return [
        _cfg(32, 128, 8, 2),  # interpreter default
        _cfg(32, 64, 8, 2),
        _cfg(16, 128, 8, 2),
        _cfg(16, 64, 4, 2),  # head dim 256 / fp32
    ]


def _dq_configs():  # BLOCK_M queries resident, BLOCK_N keys streamed
    return [
        _cfg(128, 64, 8, 3),
        _cfg(128, 128, 8, 2),  # interpreter default
        _cfg(64, 64, 4, 3),
        _cfg(64, 32, 4, 2),  # head dim 256 / fp32
    ]


def _prune(resident, streamed, n_resident, resident_is_query):
    def smem(c, block_d, esize):
        return (n_resident * c.kwargs[resident] + c.num_stages * 2 * c.kwargs[streamed]) * block_d * esize

    def prune(configs, nargs):
        block_d, esize = nargs["BLOCK_D"], nargs["Q"].element_size()
        fit = [c for c in configs if smem(c, block_d, esize) <= SMEM_BUDGET]
        fit = fit or [min(configs, key=lambda c: smem(c, block_d, esize))]
        if resident_is_query:  # short q: drop query tiles much taller than it
            short = [c for c in fit if c.kwargs["BLOCK_M"] <= max(16, triton.next_power_of_2(nargs["M"]))]
            fit = short or fit
        return fit

    return prune


_KEY = ["BLOCK_D", "M_BUCKET", "N_BUCKET", "W_BUCKET", "CAUSAL", "WINDOWED"]


# --------------------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _key_range(start_m, M, N, W, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key blocks for the query rows [start_m, start_m + BLOCK_M): ``lo <= full_lo <= full_hi <= hi``.

    [lo, full_lo) and [full_hi, hi) need the mask (window edge, diagonal, kv_len boundary); [full_lo, full_hi)
    is visible to every row. lo, full_lo and full_hi are multiples of BLOCK_N.
    """
    offset = N - M  # query row i sits at key position offset + i
    p_first = offset + start_m
    p_last = offset + tl.minimum(start_m + BLOCK_M, M) - 1
    lo = p_first * 0
    hi = lo + N
    full_lo = lo
    full_hi = lo + (N // BLOCK_N) * BLOCK_N
    if CAUSAL:
        hi = tl.minimum(p_last + 1, N)
        full_hi = (tl.minimum(p_first + 1, N) // BLOCK_N) * BLOCK_N
    if WINDOWED:
        lo = (tl.maximum(p_first - W + 1, 0) // BLOCK_N) * BLOCK_N
        full_lo = ((tl.maximum(p_last - W + 1, 0) + BLOCK_N - 1) // BLOCK_N) * BLOCK_N
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), hi)
    return lo, full_lo, full_hi, hi


@triton.jit
def _visible(offs_m, offs_n, M, N, W, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr):
    """(len(offs_m), len(offs_n)) mask: query row i sees key j (and both exist)."""
    pos = (N - M) + offs_m
    vis = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if CAUSAL:
        vis = vis & (offs_n[None, :] <= pos[:, None])
    if WINDOWED:
        vis = vis & (offs_n[None, :] > pos[:, None] - W)
    return vis


@triton.jit
def _d_mask(offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    # A constant-true mask when the head dim is a power of two >= 16: the compiler folds it away.
    if HEAD_DIM == BLOCK_D:
        ok = tl.full([BLOCK_D], 1, tl.int1)
    else:
        ok = offs_d < HEAD_DIM
    return ok


# --------------------------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _fwd_blocks(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                offs_m, offs_d, d_ok, start, end, M, N, W, qk_scale,
                MASK: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, PREC: tl.constexpr,
                BLOCK_N: tl.constexpr):
    """The online-softmax update over key blocks [start, end) (MASK: apply the visibility mask)."""
    arange_n = tl.arange(0, BLOCK_N)
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + arange_n
        rows = offs_n.to(tl.int64)
        if MASK:
            kt_mask = d_ok[:, None] & (offs_n < N)[None, :]
            v_mask = (offs_n < N)[:, None] & d_ok[None, :]
        else:  # interior block: only the head-dim padding (nothing, for a power-of-two head dim)
            kt_mask = d_ok[:, None]
            v_mask = d_ok[None, :]
        # k^T tile (BLOCK_D, BLOCK_N) straight from memory: the strides do the transpose.
        kt = tl.load(k_base + rows[None, :] * stride_kn + offs_d[:, None] * stride_kd, mask=kt_mask, other=0.0)
        s = tl.dot(q, kt, input_precision=PREC) * qk_scale
        if MASK:
            # -1e30, not -inf: a row with nothing visible yet keeps a finite max, so alpha below is never
            # inf - inf. Its garbage (p = 1 per masked key) is wiped by alpha = 2^(-1e30 - m) = 0 when its first
            # visible key arrives; every row sees at least its own position, within [lo, hi).
            s = tl.where(_visible(offs_m, offs_n, M, N, W, CAUSAL, WINDOWED), s, -1.0e30)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + rows[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=v_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    return acc, l_i, m_i


@rt.autotune(_fwd_configs(), key=_KEY + ["SPLIT"], default=1, prune=_prune("BLOCK_M", "BLOCK_N", 1, True))
@triton.jit
def _attn_fwd(
    Q, K, V, O, LSE, O_PART, LSE_PART,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, M, N, GROUP, W, qk_scale, split_len,
    M_BUCKET, N_BUCKET, W_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
    SPLIT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # grid: (query blocks, batch * q_heads, key splits)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = (h // GROUP).to(tl.int64)  # GQA: the KV head this query head reads
    h = h.to(tl.int64)

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = _d_mask(offs_d, HEAD_DIM, BLOCK_D)
    m_ok = offs_m < M
    rows_m = offs_m.to(tl.int64)

    q_ptrs = Q + b * stride_qb + h * stride_qh + rows_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh

    lo, full_lo, full_hi, hi = _key_range(start_m, M, N, W, CAUSAL, WINDOWED, BLOCK_M, BLOCK_N)
    # This program's share of [lo, hi): the whole range, or chunk pid_s of the split (split_len is a
    # multiple of BLOCK_N, so chunk edges stay block-aligned). The three loops are clipped to it.
    lo_s = tl.minimum(lo + pid_s * split_len, hi)
    hi_s = tl.minimum(lo_s + split_len, hi)
    full_lo_s = tl.minimum(tl.maximum(full_lo, lo_s), hi_s)
    full_hi_s = tl.minimum(tl.maximum(full_hi, full_lo_s), hi_s)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc, l_i, m_i = _fwd_blocks(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                                offs_m, offs_d, d_ok, lo_s, full_lo_s, M, N, W, qk_scale,
                                True, CAUSAL, WINDOWED, PREC, BLOCK_N)
    acc, l_i, m_i = _fwd_blocks(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                                offs_m, offs_d, d_ok, full_lo_s, full_hi_s, M, N, W, qk_scale,
                                False, CAUSAL, WINDOWED, PREC, BLOCK_N)
    acc, l_i, m_i = _fwd_blocks(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                                offs_m, offs_d, d_ok, full_hi_s, hi_s, M, N, W, qk_scale,
                                True, CAUSAL, WINDOWED, PREC, BLOCK_N)

    # An empty split chunk leaves l = 0, m = -inf: it writes o = 0 and lse = -inf, which the combine weighs 0.
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    o = acc / l_safe[:, None]
    lse = m_i + tl.log2(l_safe)
    out_mask = m_ok[:, None] & d_ok[None, :]
    if SPLIT:  # fp32 partials, (splits, batch * q_heads, q_len, head_dim) and (splits, batch * q_heads, q_len)
        part = (pid_s * tl.num_programs(1) + pid_bh).to(tl.int64) * M
        tl.store(O_PART + (part + rows_m[:, None]) * HEAD_DIM + offs_d[None, :], o, mask=out_mask)
        tl.store(LSE_PART + part + rows_m, lse, mask=m_ok)
    else:
        o_ptrs = O + b * stride_ob + h * stride_oh + rows_m[:, None] * stride_om + offs_d[None, :] * stride_od
        tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=out_mask)
        tl.store(LSE + pid_bh.to(tl.int64) * M + rows_m, lse, mask=m_ok)


@rt.autotune([triton.Config({"BLOCK_M": 16}, num_warps=4)], key=["BLOCK_D"])
@triton.jit
def _attn_combine(
    O_PART, LSE_PART, O, LSE,
    stride_ob, stride_oh, stride_om, stride_od,
    H, M, BH, SPLITS,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Merge the split-KV partials: lse = log2(sum_s 2^lse_s), o = sum_s 2^(lse_s - lse) o_s."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < M
    d_ok = offs_d < HEAD_DIM
    rows_m = offs_m.to(tl.int64)
    m_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for s in range(SPLITS):
        part = (s * BH + pid_bh).to(tl.int64) * M
        m_max = tl.maximum(m_max, tl.load(LSE_PART + part + rows_m, mask=m_ok, other=float("-inf")))
    m_max = tl.where(m_max > float("-inf"), m_max, 0.0)  # rows past q_len: anything finite
    total = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for s in range(SPLITS):
        part = (s * BH + pid_bh).to(tl.int64) * M
        w = tl.exp2(tl.load(LSE_PART + part + rows_m, mask=m_ok, other=float("-inf")) - m_max)
        o_s = tl.load(O_PART + (part + rows_m[:, None]) * HEAD_DIM + offs_d[None, :],
                      mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        total += w
        acc += w[:, None] * o_s
    total = tl.where(total > 0, total, 1.0)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    o_ptrs = O + b * stride_ob + h * stride_oh + rows_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, (acc / total[:, None]).to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(LSE + pid_bh.to(tl.int64) * M + rows_m, m_max + tl.log2(total), mask=m_ok)


# --------------------------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------------------------


@rt.autotune([triton.Config({"BLOCK_M": 64}, num_warps=4)], key=["BLOCK_D"])
@triton.jit
def _attn_bwd_delta(
    O, DO, DELTA,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    H, M,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta_i = sum_d dO[i, d] * O[i, d]   (= rowsum(P * dP), the softmax backward's row term)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    rows_m = offs_m.to(tl.int64)
    mask = (offs_m < M)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(O + b * stride_ob + h * stride_oh + rows_m[:, None] * stride_om + offs_d[None, :] * stride_od,
                mask=mask, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows_m[:, None] * stride_dom + offs_d[None, :] * stride_dod,
                 mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh.to(tl.int64) * M + rows_m, delta, mask=offs_m < M)


@triton.jit
def _dkdv_blocks(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                 stride_qm, stride_qd, stride_dom, stride_dod,
                 offs_n, offs_d, d_ok, start, end, M, N, W, qk_scale,
                 MASK: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, PREC: tl.constexpr,
                 BLOCK_M: tl.constexpr):
    """Accumulate dk, dv of one key block over query blocks [start, end), in the transposed (key-major) frame."""
    arange_m = tl.arange(0, BLOCK_M)
    for start_m in range(start, end, BLOCK_M):
        offs_m = start_m + arange_m
        rows = offs_m.to(tl.int64)
        if MASK:
            m_ok = offs_m < M
            qt = tl.load(q_base + rows[None, :] * stride_qm + offs_d[:, None] * stride_qd,
                         mask=d_ok[:, None] & m_ok[None, :], other=0.0)
            do = tl.load(do_base + rows[:, None] * stride_dom + offs_d[None, :] * stride_dod,
                         mask=m_ok[:, None] & d_ok[None, :], other=0.0)
            lse = tl.load(lse_base + rows, mask=m_ok, other=0.0)
            delta = tl.load(delta_base + rows, mask=m_ok, other=0.0)
        else:  # interior block: every row exists
            qt = tl.load(q_base + rows[None, :] * stride_qm + offs_d[:, None] * stride_qd, mask=d_ok[:, None],
                         other=0.0)
            do = tl.load(do_base + rows[:, None] * stride_dom + offs_d[None, :] * stride_dod, mask=d_ok[None, :],
                         other=0.0)
            lse = tl.load(lse_base + rows)
            delta = tl.load(delta_base + rows)
        # P^T (BLOCK_N, BLOCK_M), recomputed from the forward's log-sum-exp (base 2).
        pt = tl.exp2(tl.dot(k, qt, input_precision=PREC) * qk_scale - lse[None, :])
        if MASK:
            pt = tl.where(tl.trans(_visible(offs_m, offs_n, M, N, W, CAUSAL, WINDOWED)), pt, 0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PREC)
        dpt = tl.dot(v, tl.trans(do), input_precision=PREC)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(qt.dtype), tl.trans(qt), input_precision=PREC)
    return dk, dv


@rt.autotune(_dkdv_configs(), key=_KEY, default=0, prune=_prune("BLOCK_N", "BLOCK_M", 2, False))
@triton.jit
def _attn_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    H, M, N, GROUP, W, qk_scale, sm_scale,
    M_BUCKET, N_BUCKET, W_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # grid: (key blocks, batch * kv_heads)
    pid_n = tl.program_id(0)
    pid_bhk = tl.program_id(1)
    HK = H // GROUP
    b = (pid_bhk // HK).to(tl.int64)
    hk = (pid_bhk % HK).to(tl.int64)

    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = _d_mask(offs_d, HEAD_DIM, BLOCK_D)
    rows_n = offs_n.to(tl.int64)
    kv_mask = (offs_n < N)[:, None] & d_ok[None, :]
    k = tl.load(K + b * stride_kb + hk * stride_kh + rows_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                mask=kv_mask, other=0.0)
    v = tl.load(V + b * stride_vb + hk * stride_vh + rows_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                mask=kv_mask, other=0.0)

    # The query rows that see any key of [start_n, end_n), and those that see all of them (key rows past
    # kv_len need no care here: each key's dk, dv row depends on that key alone, and they are never stored).
    offset = N - M
    end_n = tl.minimum(start_n + BLOCK_N, N)
    m_lo = start_n * 0
    m_hi = m_lo + M
    full_lo = m_lo
    full_hi = m_lo + (M // BLOCK_M) * BLOCK_M
    if CAUSAL:  # row i sees key j iff i >= j - offset
        m_lo = (tl.maximum(start_n - offset, 0) // BLOCK_M) * BLOCK_M
        full_lo = ((tl.maximum(end_n - 1 - offset, 0) + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
    if WINDOWED:  # ... and i < j - offset + W
        m_hi = tl.maximum(tl.minimum(m_hi, end_n - 1 - offset + W), m_lo)
        full_hi = (tl.maximum(tl.minimum(M, start_n - offset + W), 0) // BLOCK_M) * BLOCK_M
    full_lo = tl.minimum(tl.maximum(full_lo, m_lo), m_hi)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), m_hi)

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for g in range(GROUP):  # every query head that reads this KV head
        h = hk * GROUP + g
        bh = b * H + h
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DO + b * stride_dob + h * stride_doh
        lse_base = LSE + bh * M
        delta_base = DELTA + bh * M
        dk, dv = _dkdv_blocks(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                              stride_qm, stride_qd, stride_dom, stride_dod,
                              offs_n, offs_d, d_ok, m_lo, full_lo, M, N, W, qk_scale,
                              True, CAUSAL, WINDOWED, PREC, BLOCK_M)
        dk, dv = _dkdv_blocks(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                              stride_qm, stride_qd, stride_dom, stride_dod,
                              offs_n, offs_d, d_ok, full_lo, full_hi, M, N, W, qk_scale,
                              False, CAUSAL, WINDOWED, PREC, BLOCK_M)
        dk, dv = _dkdv_blocks(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                              stride_qm, stride_qd, stride_dom, stride_dod,
                              offs_n, offs_d, d_ok, full_hi, m_hi, M, N, W, qk_scale,
                              True, CAUSAL, WINDOWED, PREC, BLOCK_M)

    dk = dk * sm_scale
    tl.store(DK + b * stride_dkb + hk * stride_dkh + rows_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
             dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + b * stride_dvb + hk * stride_dvh + rows_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd,
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_blocks(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
               offs_m, offs_d, d_ok, start, end, M, N, W, qk_scale,
               MASK: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, PREC: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """Accumulate dq of one query block over key blocks [start, end)."""
    arange_n = tl.arange(0, BLOCK_N)
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + arange_n
        rows = offs_n.to(tl.int64)
        if MASK:
            kv_mask = (offs_n < N)[None, :] & d_ok[:, None]
        else:
            kv_mask = d_ok[:, None]
        kt = tl.load(k_base + rows[None, :] * stride_kn + offs_d[:, None] * stride_kd, mask=kv_mask, other=0.0)
        vt = tl.load(v_base + rows[None, :] * stride_vn + offs_d[:, None] * stride_vd, mask=kv_mask, other=0.0)
        p = tl.exp2(tl.dot(q, kt, input_precision=PREC) * qk_scale - lse[:, None])
        if MASK:
            p = tl.where(_visible(offs_m, offs_n, M, N, W, CAUSAL, WINDOWED), p, 0.0)
        dp = tl.dot(do, vt, input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PREC)
    return dq


@rt.autotune(_dq_configs(), key=_KEY, default=1, prune=_prune("BLOCK_M", "BLOCK_N", 2, True))
@triton.jit
def _attn_bwd_dq(
    Q, K, V, DO, LSE, DELTA, DQ,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    H, M, N, GROUP, W, qk_scale, sm_scale,
    M_BUCKET, N_BUCKET, W_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # grid: (query blocks, batch * q_heads)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = _d_mask(offs_d, HEAD_DIM, BLOCK_D)
    m_ok = offs_m < M
    rows_m = offs_m.to(tl.int64)
    q_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * stride_qb + h * stride_qh + rows_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=q_mask, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows_m[:, None] * stride_dom + offs_d[None, :] * stride_dod,
                 mask=q_mask, other=0.0)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * M + rows_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * M + rows_m, mask=m_ok, other=0.0)
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh

    lo, full_lo, full_hi, hi = _key_range(start_m, M, N, W, CAUSAL, WINDOWED, BLOCK_M, BLOCK_N)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dq = _dq_blocks(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                    offs_m, offs_d, d_ok, lo, full_lo, M, N, W, qk_scale, True, CAUSAL, WINDOWED, PREC, BLOCK_N)
    dq = _dq_blocks(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                    offs_m, offs_d, d_ok, full_lo, full_hi, M, N, W, qk_scale, False, CAUSAL, WINDOWED, PREC,
                    BLOCK_N)
    dq = _dq_blocks(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                    offs_m, offs_d, d_ok, full_hi, hi, M, N, W, qk_scale, True, CAUSAL, WINDOWED, PREC, BLOCK_N)
    dq = dq * sm_scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + rows_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd,
             dq.to(DQ.dtype.element_ty), mask=q_mask)


# --------------------------------------------------------------------------------------------------------------
# Host side: launch planning, autograd wrapper, public function
# --------------------------------------------------------------------------------------------------------------


def _empty_like_layout(t: torch.Tensor, dtype=None) -> torch.Tensor:
    """An rt.empty output of t's shape whose memory order follows t's strides (a transposed (b, s, h, d) input
    gets a transposed (b, s, h, d) output, so the caller's reshape back to (b, s, h * d) is free)."""
    order = sorted(range(t.dim()), key=lambda i: (-t.stride(i), i))
    buf = rt.empty([t.shape[i] for i in order], dtype or t.dtype, t.device)
    inverse = [order.index(i) for i in range(t.dim())]
    return buf.permute(inverse)


def _bucket(x: int) -> int:
    return triton.next_power_of_2(max(int(x), 1))


def _split_plan(batch, heads, q_len, kv_len, window, num_splits=None):
    """Split-KV plan: (num_splits, split_len), split_len a multiple of SPLIT_ALIGN (so of every BLOCK_N).

    ``span`` bounds the key range [lo, hi) of any query block (the window, plus a query block, plus the
    rounding of lo down to a block), so ``num_splits * split_len >= span`` leaves no key out. Short queries
    split when ``batch * heads`` programs would leave multiprocessors idle: about two waves, each chunk at
    least ``min_len`` keys. ``num_splits`` forces a count (tests).
    """
    span = kv_len if window is None else min(kv_len, window + min(q_len, MAX_BLOCK) + MAX_BLOCK)
    if num_splits is None:
        sms = rt.num_sms()
        programs = batch * heads * triton.cdiv(q_len, 64)
        min_len = SPLIT_ALIGN if rt.INTERPRET else 512
        if q_len > 64 or programs >= sms or span < 2 * min_len:
            return 1, kv_len
        num_splits = min(triton.cdiv(2 * sms, programs), span // min_len)
    if num_splits <= 1:
        return 1, kv_len
    split_len = triton.cdiv(triton.cdiv(span, num_splits), SPLIT_ALIGN) * SPLIT_ALIGN
    return triton.cdiv(span, split_len), split_len


def _common_args(q, k, causal, window):
    batch, heads, q_len, head_dim = q.shape
    kv_len = k.shape[2]
    windowed = causal and window is not None and window < kv_len  # a window >= kv_len hides nothing
    block_d = max(16, triton.next_power_of_2(head_dim))
    prec = "ieee" if q.dtype == torch.float32 else "tf32"  # tf32 is ignored by fp16/bf16 dots
    return dict(batch=batch, heads=heads, q_len=q_len, kv_len=kv_len, head_dim=head_dim, group=heads // k.shape[1],
                windowed=windowed, W=int(window) if windowed else 0, block_d=block_d, prec=prec,
                buckets=(_bucket(q_len), _bucket(kv_len), _bucket(window) if windowed else 0))


def _forward(q, k, v, causal, window, scale, num_splits=None):
    a = _common_args(q, k, causal, window)
    B, H, M, N, D = a["batch"], a["heads"], a["q_len"], a["kv_len"], a["head_dim"]
    o = _empty_like_layout(q)
    lse = rt.empty((B, H, M), torch.float32, q.device)
    splits, split_len = _split_plan(B, H, M, N, a["W"] if a["windowed"] else None, num_splits)
    split = splits > 1
    if split:
        o_part = rt.empty((splits, B * H, M, D), torch.float32, q.device)
        lse_part = rt.empty((splits, B * H, M), torch.float32, q.device)
    else:
        o_part, lse_part = o, lse  # unused
    _attn_fwd[lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), B * H, splits)](
        q, k, v, o, lse, o_part, lse_part,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(),
        H, M, N, a["group"], a["W"], scale * LOG2E, split_len, *a["buckets"],
        D, a["block_d"], causal, a["windowed"], split, a["prec"],
    )
    if split:
        _attn_combine[lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), B * H)](
            o_part, lse_part, o, lse, *o.stride(), H, M, B * H, splits, D, a["block_d"],
        )
    return o, lse


def _backward(q, k, v, o, lse, do, causal, window, scale):
    a = _common_args(q, k, causal, window)
    B, H, M, N, D = a["batch"], a["heads"], a["q_len"], a["kv_len"], a["head_dim"]
    HK = k.shape[1]
    delta = rt.empty((B, H, M), torch.float32, q.device)
    _attn_bwd_delta[lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), B * H)](
        o, do, delta, *o.stride(), *do.stride(), H, M, D, a["block_d"],
    )
    dq, dk, dv = _empty_like_layout(q), _empty_like_layout(k), _empty_like_layout(v)
    tail = (a["group"], a["W"], scale * LOG2E, scale, *a["buckets"],
            D, a["block_d"], causal, a["windowed"], a["prec"])
    _attn_bwd_dkdv[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), B * HK)](
        q, k, v, do, lse, delta, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
        H, M, N, *tail,
    )
    _attn_bwd_dq[lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), B * H)](
        q, k, v, do, lse, delta, dq,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
        H, M, N, *tail,
    )
    return dq, dk, dv


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, window, scale, num_splits=None):
        o, lse = _forward(q, k, v, causal, window, scale, num_splits)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.window, ctx.scale = causal, window, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, o, lse, do, ctx.causal, ctx.window, ctx.scale)
        return dq, dk, dv, None, None, None, None


def _check(q, k, v, causal, window, scale, reference=False):
    for name, t in (("q", q), ("k", k), ("v", v)):
        rt.check_tensor(name, t, rank=4, float_only=not reference)  # the reference also takes float64
    if not reference:
        rt.check_like("k", k, "q", q)
        rt.check_like("v", v, "q", q)
    batch, heads, q_len, head_dim = q.shape
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"q's head_dim (last dim) must be in [1, {MAX_HEAD_DIM}], got {head_dim}")
    if k.shape[0] != batch:
        raise ValueError(f"k must have q's batch size {batch} (dim 0), got shape {tuple(k.shape)}")
    if k.shape[3] != head_dim:
        raise ValueError(f"k must have q's head_dim {head_dim} (last dim), got shape {tuple(k.shape)}")
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    kv_heads, kv_len = k.shape[1], k.shape[2]
    if kv_heads == 0 or heads % kv_heads != 0:
        raise ValueError(f"q_heads ({heads}) must be a multiple of kv_heads ({kv_heads}): k's dim 1")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if causal and q_len > kv_len:
        raise ValueError(f"with causal=True, q_len ({q_len}, q's dim 2) must be <= kv_len ({kv_len}, k's dim 2)")
    if kv_len == 0 and q_len > 0:
        raise ValueError(f"kv_len (k's dim 2) must be >= 1 when q_len > 0, got {kv_len}")
    if window is not None:
        if not causal:
            raise ValueError("window needs causal=True (a sliding window is causal); got causal=False")
        if isinstance(window, bool) or not isinstance(window, int):
            raise TypeError(f"window must be an int or None, got {type(window).__name__}")
        if window < 1:
            raise ValueError(f"window must be >= 1 (keys seen, the query's own included), got {window}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise TypeError(f"scale must be a finite number or None, got {scale!r}")


def attention(q, k, v, *, causal=True, window=None, scale=None):
    """Scaled dot-product attention, causal with an optional sliding window; see the module docstring.

    q: (batch, q_heads, q_len, head_dim); k, v: (batch, kv_heads, kv_len, head_dim), q_heads % kv_heads == 0.
    causal: the queries are the last q_len key positions (q_len <= kv_len); window=W: each query sees its W
    latest keys, itself included (HF ``sliding_window``; FlashAttention ``window_size=(W-1, 0)``). scale defaults
    to 1/sqrt(head_dim). Returns q's shape and dtype; differentiable in q, k and v.
    """
    _check(q, k, v, causal, window, scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if q.numel() == 0:
        return q.clone()
    return _Attention.apply(q, k, v, causal, window, scale)


# ------------------------------------------------------------------------------------------------ reference


def _mask(q_len, kv_len, causal, window, device):
    """(q_len, kv_len) bool, True where query row i sees key j (positions as in the module docstring)."""
    pos = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    j = torch.arange(kv_len, device=device)[None, :]
    visible = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    if causal:
        visible &= j <= pos
        if window is not None:
            visible &= j > pos - window
    return visible


def attention_reference(q, k, v, *, causal=True, window=None, scale=None):
    """Eager attention with an explicit mask, in the inputs' dtype (float64 in the tests; the softmax runs in
    float32 at least). GQA repeats each KV head over its query group, so its gradient sums over the group."""
    _check(q, k, v, causal, window, scale, reference=True)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~_mask(q.shape[2], k.shape[2], causal, window, q.device), float("-inf"))
    softmax_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return torch.softmax(scores, dim=-1, dtype=softmax_dtype).to(q.dtype) @ v


# ------------------------------------------------------------------------------------------------ sweep peers


def _sdpa_peer():
    def sdpa(q, k, v, *, causal=True, window=None, scale=None):
        q_len, kv_len = q.shape[2], k.shape[2]
        gqa = q.shape[1] != k.shape[1]
        if not causal:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
        if window is None and q_len == kv_len:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                                    enable_gqa=gqa)
        # is_causal aligns the diagonal top-left; ours is bottom-right (queries are the last positions): a mask.
        mask = _mask(q_len, kv_len, causal, window, q.device)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)

    return sdpa


def _flex_peer():
    if not rt.GPU or rt.INTERPRET:
        return None  # compiled FlexAttention needs a GPU (its CPU path compiles C++ for minutes)
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    compiled = torch.compile(flex_attention)

    @functools.lru_cache(maxsize=32)
    def block_mask(q_len, kv_len, causal, window, device):
        offset = kv_len - q_len

        def mask_mod(b, h, q_idx, kv_idx):
            pos = q_idx + offset
            visible = kv_idx <= pos if causal else kv_idx >= 0
            if window is not None:  # W keys, itself included: FlexAttention's examples' "<= W" would keep W + 1
                visible = visible & (pos - kv_idx < window)
            return visible

        return create_block_mask(mask_mod, B=None, H=None, Q_LEN=q_len, KV_LEN=kv_len, device=device)

    def flex(q, k, v, *, causal=True, window=None, scale=None):
        mask = block_mask(q.shape[2], k.shape[2], causal, window, str(q.device))
        return compiled(q, k, v, block_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])

    return flex


# ------------------------------------------------------------------------------------------------ description


def _make_case(dims, dtype, device, *, contiguous=True, requires_grad=False, seed=0):
    """dims: batch, q_heads, kv_heads, head_dim, q_len and kv_len (default: seqlen), causal (True), window (None).

    contiguous=False gives the layout a model's projections produce: q, k, v are transposed views of
    (batch, seq, heads, head_dim) buffers (dense, so the tests' dtype casts keep the strides).
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    batch, hq, hk, d = dims["batch"], dims["q_heads"], dims["kv_heads"], dims["head_dim"]
    q_len, kv_len = dims.get("q_len", dims.get("seqlen")), dims.get("kv_len", dims.get("seqlen"))
    shapes = [(batch, q_len, hq, d), (batch, kv_len, hk, d), (batch, kv_len, hk, d)]
    args = []
    for shape in shapes:
        t = torch.randn(*shape, generator=g).to(device=device, dtype=dtype).transpose(1, 2)
        args.append((t.contiguous() if contiguous else t).requires_grad_(requires_grad))
    return Case(tuple(args), {"causal": dims.get("causal", True), "window": dims.get("window")})


@st.composite
def _draw_dims(draw, big):
    kv_heads = draw(st.integers(1, 4 if big else 2))
    group = draw(st.sampled_from([1, 2, 3]))
    small = st.integers(1, 48)
    kv_len = draw(st.one_of(small, st.sampled_from([64, 97, 130, 257] + ([700, 1500] if big else []))))
    q_len = draw(st.one_of(st.just(kv_len), st.just(1), st.integers(1, kv_len)))
    head_dim = draw(st.one_of(st.integers(1, 40), st.sampled_from([64, 80, 96, 128, 256])))
    causal = draw(st.booleans() | st.just(True))
    window = None
    if causal:
        window = draw(st.one_of(st.none(), st.just(1), st.integers(2, 40), st.just(kv_len + 7)))
    return {"batch": draw(st.integers(1, 2)), "q_heads": kv_heads * group, "kv_heads": kv_heads,
            "q_len": q_len, "kv_len": kv_len, "head_dim": head_dim, "causal": causal, "window": window}


def _dims(big):
    return _draw_dims(big)


def _sweep_cases(gpu):
    if not gpu:
        return [{"batch": 1, "q_heads": 2, "kv_heads": 1, "seqlen": s, "head_dim": 16, "window": w}
                for w in (None, 16) for s in (16, 32, 64)]
    seqlens = [512 * 2**i for i in range(6)]
    return [{"batch": 2, "q_heads": 2048 // d, "kv_heads": 2048 // d, "seqlen": s, "head_dim": d, "window": w}
            for d in (64, 128) for w in (None, 256, 1024, 4096) for s in seqlens]


def visible_pairs(q_len, kv_len, causal=True, window=None):
    """Number of (query, key) pairs the mask keeps, per (batch, head)."""
    if not causal:
        return q_len * kv_len
    # row at position p (from kv_len - q_len to kv_len - 1) sees min(p + 1, W) keys; t = p + 1
    a, b = kv_len - q_len + 1, kv_len
    w = b if window is None else window

    def tri(n):
        return n * (n + 1) // 2

    cut = min(max(w, a - 1), b)  # t in [a, cut] sees t keys, t in (cut, b] sees w
    return (tri(cut) - tri(a - 1)) + w * (b - cut)


def _shape(dims):
    q_len = dims.get("q_len", dims.get("seqlen"))
    kv_len = dims.get("kv_len", dims.get("seqlen"))
    return q_len, kv_len


def _flops(dims, mode):
    q_len, kv_len = _shape(dims)
    pairs = visible_pairs(q_len, kv_len, dims.get("causal", True), dims.get("window"))
    fwd = 4 * dims["head_dim"] * pairs * dims["batch"] * dims["q_heads"]
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[mode]


def _bytes(dims, dtype, mode):
    size = torch.finfo(dtype).bits // 8
    q_len, kv_len = _shape(dims)
    qsize = dims["batch"] * dims["q_heads"] * q_len * dims["head_dim"] * size
    kvsize = dims["batch"] * dims["kv_heads"] * kv_len * dims["head_dim"] * size
    fwd = 2 * qsize + 2 * kvsize  # q, k, v in; o out
    bwd = 4 * qsize + 4 * kvsize  # q, o, dO, k, v in; dq, dk, dv out
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _bad_inputs():
    x = torch.randn(1, 2, 5, 8)
    bad = [
        BadInput("rank", call(torch.randn(2, 5, 8), x, x), ValueError, "q must have rank 4"),
        BadInput("int q", call(x.int(), x, x), TypeError, "q must be float"),
        BadInput("not a tensor", call(x, [1.0], x), TypeError, "k must be a torch.Tensor"),
        BadInput("mixed dtypes", call(x, x.half(), x), TypeError, "k has dtype"),
        BadInput("head dims", call(x, torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)), ValueError,
                 "k must have q's head_dim"),
        BadInput("v shape", call(x, x, torch.randn(1, 2, 5, 4)), ValueError, "v must have k's shape"),
        BadInput("batch", call(x, torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)), ValueError,
                 "k must have q's batch"),
        BadInput("gqa ratio", call(torch.randn(1, 3, 5, 8), x, x), ValueError, "q_heads .* kv_heads"),
        BadInput("q_len > kv_len", call(torch.randn(1, 2, 6, 8), x, x), ValueError, "q_len .* kv_len"),
        BadInput("window 0", call(x, x, x, window=0), ValueError, "window must be >= 1"),
        BadInput("window float", call(x, x, x, window=2.5), TypeError, "window must be an int"),
        BadInput("window non-causal", call(x, x, x, causal=False, window=4), ValueError, "window needs causal"),
        BadInput("head_dim 257", call(*(torch.randn(1, 1, 2, 257),) * 3), ValueError, "head_dim"),
        BadInput("scale", call(x, x, x, scale="big"), TypeError, "scale must be"),
    ]
    if torch.cuda.is_available():
        bad.append(BadInput("devices", lambda: Case((x.cuda(), x, x)), ValueError, "k is on cpu"))
    return tuple(bad)


# fp32: ieee dots everywhere; the error is fp32 rounding grown over the reductions (~1e-6).
# fp16: p and dS are rounded to fp16 (2^-11 relative) before their matmuls, as in FlashAttention.
ATTENTION = OpSpec(
    name="attention",
    fn=attention,
    reference=attention_reference,
    make_case=_make_case,
    dims=_dims,
    # q_len 150 against kv_len 299 with a window of 250 and head dim 24: every config crosses the q_len and
    # kv_len tails, the diagonal, the window's edge, and (for all but the widest tiles) unmasked interior blocks.
    config_dims={"batch": 1, "q_heads": 2, "kv_heads": 1, "q_len": 150, "kv_len": 299, "head_dim": 24,
                 "causal": True, "window": 250},
    sweep_cases=_sweep_cases,
    flops=_flops,
    bytes_moved=_bytes,
    tolerance={torch.float32: 1e-4, torch.float16: 3e-3},
    grad_tolerance={torch.float32: 1e-4, torch.float16: 3e-3},
    kernels=(_attn_fwd, _attn_bwd_dkdv, _attn_bwd_dq),
    peers={"sdpa": _sdpa_peer, "flex": _flex_peer},
    bad_inputs=_bad_inputs(),
)

SPECS = (ATTENTION,)
