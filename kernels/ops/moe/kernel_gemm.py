"""The MoE layer's Triton kernels, part 2: the two grouped GEMMs and the combine (stages 3 to 5 of ``api.py``'s
pipeline), on the expert-sorted, block-padded layout that ``kernel.py``'s dispatch builds.

3. ``moe_gate_up`` — grouped GEMM #1. The grid covers every M-block the layout can possibly have,
   ``tokens*k // BLOCK_M + min(E, tokens*k)`` (each non-empty expert adds at most one partial block), times
   the N tiles of ``inner``; the grid never depends on the counts, which stay on the device. A program finds
   its expert by comparing its first row with the padded offsets (a vector compare over E), gathers its
   ``BLOCK_M`` token rows of x through the sorted pair indices, and runs *two* accumulators over ``hidden``,
   one against the gate rows and one against the up rows of its expert (the x tile is loaded once for both).
   The epilogue is SwiGLU, ``silu(gate) * up``, stored once in x's dtype: the ``(rows, inner)`` activation is
   the only intermediate of the expert MLP. Blocks past the last expert get a 0-trip loop and masked stores.
4. ``moe_down`` — grouped GEMM #2, same block-to-expert mapping: the activation rows are contiguous in the
   sorted layout (no gather), ``down[e]`` is the B operand, and the epilogue multiplies by the pair's routing
   weight and *scatters* the row back to pair order: ``Y[t*k + j] = w[t, j] * down_e(h)``, in x's dtype.
5. ``moe_combine`` — ``out[t] = sum_j Y[t*k + j]`` in fp32, slots in fixed order: deterministic, no atomics.

Both GEMMs order their programs in groups of ``GROUP_M`` M-blocks (``kernels.common.tiling.grouped_tile``) and
accumulate ``tl.dot`` in fp32 with ``input_precision=PRECISION`` (``kernels/common/precision.py``).
"""

import triton
import triton.language as tl

from ... import _runtime as rt
from ...common.tiling import grouped_tile

# --------------------------------------------------------------------------------------------------------------
# 3./4. The grouped GEMMs
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _block_of_expert(pid, n_blocks, n_pid_n, Offsets, Counts, n_experts,
                     BLOCK_E: tl.constexpr, BLOCK_M: tl.constexpr, GROUP_M: tl.constexpr):
    """Program id -> (rows of its M-block, which rows are real, its expert, N-tile, whether it has work).

    The grid is n_blocks M-blocks x n_pid_n N-tiles.
    Grouped ordering (GROUP_M M-blocks sweep the N tiles together) keeps a group's x rows and its expert's
    weight tiles in L2. The expert of a block is the number of experts whose padded segment ends at or before
    the block's first row; past the last segment that is n_experts, and the block has no work.
    """
    pid_m, pid_n = grouped_tile(pid, n_blocks, n_pid_n, GROUP_M)
    row0 = pid_m * BLOCK_M
    experts = tl.arange(0, BLOCK_E)
    ends = tl.load(Offsets + 1 + experts, mask=experts < n_experts, other=2147483647)
    e = tl.sum((ends <= row0).to(tl.int32), axis=0)
    has_work = e < n_experts
    e = tl.minimum(e, n_experts - 1)
    row_end = tl.where(has_work, tl.load(Offsets + e) + tl.load(Counts + e), 0)
    rows = row0 + tl.arange(0, BLOCK_M)
    return rows, rows < row_end, e, pid_n, has_work


# (BLOCK_N of inner, BLOCK_K of hidden, warps, stages); BLOCK_M is the dispatch's (64 or 128 on a GPU).
# A stage holds BLOCK_M*BLOCK_K + 2*BLOCK_K*BLOCK_N elements (the x tile, the gate and up tiles) and Triton
# keeps stages-1 of them in shared memory: every config stays <= 192 KB at BLOCK_M = 128 even in fp32
# (tests/compile_check.py measures it). The default: the biggest, (128, 64).
GATE_UP_CONFIGS = [triton.Config({"BLOCK_N": n, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
                   for n, bk, w, s in [(64, 32, 4, 5), (64, 64, 4, 4), (128, 32, 8, 5), (128, 64, 8, 3)]]


@rt.autotune(GATE_UP_CONFIGS, key=["hidden", "inner", "BLOCK_M"], default={"BLOCK_N": 128, "BLOCK_K": 64})
@triton.jit
def moe_gate_up(
    X, W, H, SortedPairs, Offsets, Counts,
    n_experts, hidden, inner, top_k, n_blocks,
    stride_xm, stride_xk, stride_we, stride_wn, stride_wk, stride_hm,
    PRECISION: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    rows, row_ok, e, pid_n, has_work = _block_of_expert(
        tl.program_id(0), n_blocks, tl.cdiv(inner, BLOCK_N), Offsets, Counts, n_experts, BLOCK_E, BLOCK_M, GROUP_M)
    # gather: row r of the block is token pair // k of x
    pair = tl.load(SortedPairs + rows, mask=row_ok, other=0)
    tok64 = (pair // top_k).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < inner
    a_ptrs = X + tok64[:, None] * stride_xm
    g_ptrs = W + e.to(tl.int64) * stride_we + cols[None, :] * stride_wn  # gate rows: [0, inner)
    u_ptrs = g_ptrs + inner * stride_wn  # up rows: [inner, 2*inner)
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    k_end = tl.where(has_work, hidden, 0)  # blocks past the last expert: no iterations
    for k0 in range(0, k_end, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < hidden
        a = tl.load(a_ptrs + kk[None, :] * stride_xk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b_mask = k_ok[:, None] & col_ok[None, :]
        bg = tl.load(g_ptrs + kk[:, None] * stride_wk, mask=b_mask, other=0.0)
        bu = tl.load(u_ptrs + kk[:, None] * stride_wk, mask=b_mask, other=0.0)
        acc_g = tl.dot(a, bg, acc_g, input_precision=PRECISION)
        acc_u = tl.dot(a, bu, acc_u, input_precision=PRECISION)
    # SwiGLU epilogue: silu(g) * u = g * sigmoid(g) * u
    h = acc_g * tl.sigmoid(acc_g) * acc_u
    tl.store(H + rows.to(tl.int64)[:, None] * stride_hm + cols[None, :], h.to(H.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


# (BLOCK_N of hidden, BLOCK_K of inner, warps, stages); a stage is BLOCK_M*BLOCK_K + BLOCK_K*BLOCK_N
# elements, stages-1 of them resident: <= 192 KB at BLOCK_M = 128 in fp32. The default: (128, 64).
DOWN_CONFIGS = [triton.Config({"BLOCK_N": n, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
                for n, bk, w, s in [(128, 64, 8, 4), (256, 64, 8, 3), (128, 32, 4, 5), (64, 64, 4, 4)]]


@rt.autotune(DOWN_CONFIGS, key=["hidden", "inner", "BLOCK_M"], default={"BLOCK_N": 128, "BLOCK_K": 64})
@triton.jit
def moe_down(
    H, D, Y, SortedPairs, Offsets, Counts, RouteW,
    n_experts, hidden, inner, n_blocks,
    stride_hm, stride_de, stride_dn, stride_dk, stride_ym,
    PRECISION: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    rows, row_ok, e, pid_n, has_work = _block_of_expert(
        tl.program_id(0), n_blocks, tl.cdiv(hidden, BLOCK_N), Offsets, Counts, n_experts, BLOCK_E, BLOCK_M, GROUP_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < hidden
    a_ptrs = H + rows.to(tl.int64)[:, None] * stride_hm  # the activation rows are already in sorted order
    b_ptrs = D + e.to(tl.int64) * stride_de + cols[None, :] * stride_dn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    k_end = tl.where(has_work, inner, 0)
    for k0 in range(0, k_end, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < inner
        a = tl.load(a_ptrs + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs + kk[:, None] * stride_dk, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    # epilogue: scale by the pair's routing weight, scatter the row back to pair order
    pair = tl.load(SortedPairs + rows, mask=row_ok, other=0).to(tl.int64)
    w = tl.load(RouteW + pair, mask=row_ok, other=0.0)
    tl.store(Y + pair[:, None] * stride_ym + cols[None, :], (acc * w[:, None]).to(Y.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


# --------------------------------------------------------------------------------------------------------------
# 5. The combine
# --------------------------------------------------------------------------------------------------------------

# (BLOCK_T tokens, BLOCK_H of hidden, warps): 2K fp32 accumulators per program in three shapes (few tokens with
# wide rows .. many tokens with narrow ones) and one 8K tile. The default: the biggest, (32, 256).
COMBINE_CONFIGS = [triton.Config({"BLOCK_T": t, "BLOCK_H": h}, num_warps=w)
                   for t, h, w in [(4, 512, 4), (8, 256, 4), (16, 128, 4), (32, 256, 8)]]


@rt.autotune(COMBINE_CONFIGS, key=["hidden", "top_k"], default={"BLOCK_T": 32, "BLOCK_H": 256})
@triton.jit
def moe_combine(
    Y, Out, n_tokens, hidden, top_k, stride_ym, stride_om, stride_oh,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):
    toks = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (toks < n_tokens)[:, None] & (cols < hidden)[None, :]
    toks64 = toks.to(tl.int64)
    acc = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
    for j in range(0, top_k):  # fixed slot order: the sum is the same on every run
        acc += tl.load(Y + (toks64 * top_k + j)[:, None] * stride_ym + cols[None, :], mask=mask).to(tl.float32)
    tl.store(Out + toks64[:, None] * stride_om + cols[None, :] * stride_oh, acc.to(Out.dtype.element_ty), mask=mask)
