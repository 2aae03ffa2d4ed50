"""The backward Triton kernels of attention (FlashAttention-2); the forward, its tiling and the masks used here
are in ``kernel.py``.

With ``P = 2^(s - lse)`` recomputed from the forward's saved lse (not stored: it is ``q_len x kv_len``), ``dO``
the output gradient and ``delta_i = rowsum(dO_i * O_i)``:

    dV = P^T @ dO;   dP = dO @ V^T;   dS = P * (dP - delta);   dQ = scale * dS @ K;   dK = scale * dS^T @ Q

Three kernels: :func:`attn_bwd_delta` (delta, one pass over O and dO); :func:`attn_bwd_dkdv` — a program owns
``BLOCK_N`` keys of one KV head, keeps k, v and the dk, dv accumulators in registers and walks the query blocks
that see those keys, for every query head of the group in turn (GQA sums dk, dv over the group right there, no
atomics); :func:`attn_bwd_dq` — a program owns ``BLOCK_M`` queries and walks their visible key blocks, like the
forward. Both use the forward's three-loop block skipping (masked edge, unmasked interior, masked diagonal:
``walk_blocks``, with their own loop bodies), with the ranges seen from the other side. fp16/bf16: ``p`` and
``dS`` are rounded to the input dtype for their matmuls; every accumulator is fp32.
"""

import triton
import triton.language as tl

from ... import _runtime as rt
from .kernel import TUNE_KEY, d_mask, fits_smem, head_base, key_range, query_block, tile_ptrs, visible, walk_blocks

# Configs: see kernel.py's note (ptxas register counts, the shared-memory estimate and the rule fits_smem).
# (BLOCK_M query rows streamed, BLOCK_N keys resident, num_warps, num_stages): dK/dV holds two fp32
# accumulators besides k and v, so it streams short query tiles.
DKDV_CONFIGS = [
    triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in [
        (32, 128, 8, 2),  # interpreter default
        (32, 64, 8, 2),
        (16, 128, 8, 2),
        (16, 64, 4, 2),  # head dim 256 / fp32
    ]
]
# (BLOCK_M queries resident, BLOCK_N keys streamed, num_warps, num_stages)
DQ_CONFIGS = [
    triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in [
        (128, 64, 8, 3),
        (128, 128, 8, 2),  # interpreter default
        (64, 64, 4, 3),
        (64, 32, 4, 2),  # head dim 256 / fp32
    ]
]


def dkdv_fits(configs, nargs):
    """dK/dV's rule: k and v resident (BLOCK_N rows), q and dO streamed (BLOCK_M rows)."""
    return fits_smem(configs, nargs, "BLOCK_N", "BLOCK_M", 2, short_q=False)


def dq_fits(configs, nargs):
    """dQ's rule: q and dO resident (BLOCK_M rows), k and v streamed (BLOCK_N rows)."""
    return fits_smem(configs, nargs, "BLOCK_M", "BLOCK_N", 2, short_q=True)


@rt.autotune([triton.Config({"BLOCK_M": 64}, num_warps=4)], key=["BLOCK_D"])
@triton.jit
def attn_bwd_delta(
    O, DO, DELTA, strides_o, strides_do,
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
    o = tl.load(tile_ptrs(O, strides_o, b, h, rows_m, offs_d), mask=mask, other=0.0)
    do = tl.load(tile_ptrs(DO, strides_do, b, h, rows_m, offs_d), mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh.to(tl.int64) * M + rows_m, delta, mask=offs_m < M)


# --------------------------------------------------------------------------------------------------------------
# dK, dV: a program per key block of one KV head
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _dkdv_block(state, ctx, offs_m, M, N, W, qk_scale,
                MASK: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, PRECISION: tl.constexpr):
    """Accumulate dk, dv of one key block by the query block offs_m, in the transposed (key-major) frame;
    walk_blocks' body."""
    dk, dv = state
    k, v, q_base, do_base, lse_base, delta_base, strides_q, strides_do, offs_n, offs_d, d_ok = ctx
    rows = offs_m.to(tl.int64)
    if MASK:
        m_ok = offs_m < M
        qt = tl.load(q_base + rows[None, :] * strides_q[2] + offs_d[:, None] * strides_q[3],
                     mask=d_ok[:, None] & m_ok[None, :], other=0.0)
        do = tl.load(do_base + rows[:, None] * strides_do[2] + offs_d[None, :] * strides_do[3],
                     mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        lse = tl.load(lse_base + rows, mask=m_ok, other=0.0)
        delta = tl.load(delta_base + rows, mask=m_ok, other=0.0)
    else:  # interior block: every row exists
        qt = tl.load(q_base + rows[None, :] * strides_q[2] + offs_d[:, None] * strides_q[3], mask=d_ok[:, None],
                     other=0.0)
        do = tl.load(do_base + rows[:, None] * strides_do[2] + offs_d[None, :] * strides_do[3], mask=d_ok[None, :],
                     other=0.0)
        lse = tl.load(lse_base + rows)
        delta = tl.load(delta_base + rows)
    # P^T (BLOCK_N, BLOCK_M), recomputed from the forward's log-sum-exp (base 2).
    pt = tl.exp2(tl.dot(k, qt, input_precision=PRECISION) * qk_scale - lse[None, :])
    if MASK:
        pt = tl.where(tl.trans(visible(offs_m, offs_n, M, N, W, CAUSAL, WINDOWED)), pt, 0.0)
    dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
    dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
    dst = pt * (dpt - delta[None, :])
    dk += tl.dot(dst.to(qt.dtype), tl.trans(qt), input_precision=PRECISION)
    return dk, dv


@rt.autotune(DKDV_CONFIGS, key=TUNE_KEY, default={"BLOCK_M": 32, "BLOCK_N": 128}, prune=dkdv_fits)
@triton.jit
def attn_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV, strides_q, strides_k, strides_v, strides_do, strides_dk, strides_dv,
    H, M, N, GROUP, W, qk_scale, sm_scale,
    M_BUCKET, N_BUCKET, W_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
    PRECISION: tl.constexpr,
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
    d_ok = d_mask(offs_d, HEAD_DIM, BLOCK_D)
    rows_n = offs_n.to(tl.int64)
    kv_mask = (offs_n < N)[:, None] & d_ok[None, :]
    k = tl.load(tile_ptrs(K, strides_k, b, hk, rows_n, offs_d), mask=kv_mask, other=0.0)
    v = tl.load(tile_ptrs(V, strides_v, b, hk, rows_n, offs_d), mask=kv_mask, other=0.0)

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
        q_base = head_base(Q, strides_q, b, h)
        do_base = head_base(DO, strides_do, b, h)
        lse_base = LSE + bh * M
        delta_base = DELTA + bh * M
        ctx = (k, v, q_base, do_base, lse_base, delta_base, strides_q, strides_do, offs_n, offs_d, d_ok)
        dk, dv = walk_blocks(_dkdv_block, (dk, dv), ctx, (m_lo, full_lo, full_hi, m_hi), M, N, W, qk_scale,
                             CAUSAL, WINDOWED, PRECISION, BLOCK_M)

    dk = dk * sm_scale
    tl.store(tile_ptrs(DK, strides_dk, b, hk, rows_n, offs_d), dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(tile_ptrs(DV, strides_dv, b, hk, rows_n, offs_d), dv.to(DV.dtype.element_ty), mask=kv_mask)


# --------------------------------------------------------------------------------------------------------------
# dQ: a program per query block, like the forward
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _dq_block(state, ctx, offs_n, M, N, W, qk_scale,
              MASK: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, PRECISION: tl.constexpr):
    """Accumulate dq of one query block by the key block offs_n; walk_blocks' body."""
    (dq,) = state
    q, do, lse, delta, k_base, v_base, strides_k, strides_v, offs_m, offs_d, d_ok = ctx
    rows = offs_n.to(tl.int64)
    if MASK:
        kv_mask = (offs_n < N)[None, :] & d_ok[:, None]
    else:
        kv_mask = d_ok[:, None]
    kt = tl.load(k_base + rows[None, :] * strides_k[2] + offs_d[:, None] * strides_k[3], mask=kv_mask, other=0.0)
    vt = tl.load(v_base + rows[None, :] * strides_v[2] + offs_d[:, None] * strides_v[3], mask=kv_mask, other=0.0)
    p = tl.exp2(tl.dot(q, kt, input_precision=PRECISION) * qk_scale - lse[:, None])
    if MASK:
        p = tl.where(visible(offs_m, offs_n, M, N, W, CAUSAL, WINDOWED), p, 0.0)
    dp = tl.dot(do, vt, input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PRECISION)
    return (dq,)


@rt.autotune(DQ_CONFIGS, key=TUNE_KEY, default={"BLOCK_M": 128, "BLOCK_N": 128}, prune=dq_fits)
@triton.jit
def attn_bwd_dq(
    Q, K, V, DO, LSE, DELTA, DQ, strides_q, strides_k, strides_v, strides_do, strides_dq,
    H, M, N, GROUP, W, qk_scale, sm_scale,
    M_BUCKET, N_BUCKET, W_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # grid: (query blocks, batch * q_heads)
    pid_bh, b, h, hk, start_m, offs_m, rows_m, m_ok, offs_d, d_ok = query_block(
        H, GROUP, M, HEAD_DIM, BLOCK_D, BLOCK_M)
    q_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(tile_ptrs(Q, strides_q, b, h, rows_m, offs_d), mask=q_mask, other=0.0)
    do = tl.load(tile_ptrs(DO, strides_do, b, h, rows_m, offs_d), mask=q_mask, other=0.0)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * M + rows_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * M + rows_m, mask=m_ok, other=0.0)
    k_base = head_base(K, strides_k, b, hk)
    v_base = head_base(V, strides_v, b, hk)

    bounds = key_range(start_m, M, N, W, CAUSAL, WINDOWED, BLOCK_M, BLOCK_N)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    ctx = (q, do, lse, delta, k_base, v_base, strides_k, strides_v, offs_m, offs_d, d_ok)
    (dq,) = walk_blocks(_dq_block, (dq,), ctx, bounds, M, N, W, qk_scale, CAUSAL, WINDOWED, PRECISION, BLOCK_N)
    dq = dq * sm_scale
    tl.store(tile_ptrs(DQ, strides_dq, b, h, rows_m, offs_d), dq.to(DQ.dtype.element_ty), mask=q_mask)
