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

The backward (``kernel_bwd.py``) reuses two of them: ``moe_down`` unweighted (``WEIGHTED=False``) with gate_up
read transposed computes each pair's input gradient, and ``moe_combine`` sums them per token with the router's
term added (``ADD_EXTRA``). In training ``moe_gate_up`` also stores the gate/up pre-activations (``STORE_PRE``).

Both GEMMs order their programs in groups of ``GROUP_M`` M-blocks (``kernels.common.tiling.grouped_tile``) and
accumulate ``tl.dot`` in fp32 with ``input_precision=PRECISION`` (``kernels/common/precision.py``).

How the tiles reach shared memory (bf16/fp16 on an H100, where the dots are wgmma). With ``TMA`` (a config
axis, pruned where ``rt.tma_ok`` fails), every weight tile is a TMA box of a device-side descriptor over the
dense ``(E, n, k)`` expert stack, and so is moe_down's A tile (a block's activation rows are one dense box of
h); without it, pointer loads that Triton pipelines as cp.async. The gathered x rows of moe_gate_up are never a
box: rows of x picked by token are a gather, which TMA does on Blackwell only, so they stay cp.async loads on
both paths. fp32 (IEEE, the checking dtype) has FMA dots and its own narrow tiles, without TMA (see
``_gemm_configs``).

Tried and left out (sm_90, Triton 3.6, compiled with ``triton-playground report``): a persistent grid (a
program loops over tiles) costs moe_gate_up registers (170 -> 255 at 128x128 tiles); warp specialization
(``tl.range(..., warp_specialize=True)``) compiles for moe_down (a TMA producer warp group, 12 warps) but fails
in Triton's pass pipeline for moe_gate_up, whose gather is no TMA load, and Triton documents it for Blackwell.
Neither can be timed without a GPU, so neither is a config yet.
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
    """Program id -> (first row of its M-block, its rows, which rows are real, its expert, N-tile, whether it
    has work).

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
    return row0, rows, rows < row_end, e, pid_n, has_work


@triton.jit
def _weight_desc(W, n_experts, n_rows, n_cols, stride_e, stride_n, stride_k,
                 K_MAJOR: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """A TMA descriptor over the experts' stacked weights ``W: (E, n_rows, n_cols)`` (``W[e]`` is the ``(n, k)``
    matrix whose transpose is the B operand), boxes of one expert. A descriptor's last dim must be the contiguous
    one: ``K_MAJOR`` (``stride_k == 1``, the HF layout) boxes ``(1, BLOCK_N, BLOCK_K)``; else (``stride_n == 1``,
    a transposed storage) ``(1, BLOCK_K, BLOCK_N)``. Three dims, not ``E * n_rows`` flattened rows, so a box
    never reads past its expert in k (zero-filled instead): a NaN in one expert's weights stays with its tokens."""
    if K_MAJOR:
        return tl.make_tensor_descriptor(W, shape=[n_experts, n_rows, n_cols], strides=[stride_e, stride_n, 1],
                                         block_shape=[1, BLOCK_N, BLOCK_K])
    else:
        return tl.make_tensor_descriptor(W, shape=[n_experts, n_cols, n_rows], strides=[stride_e, stride_k, 1],
                                         block_shape=[1, BLOCK_K, BLOCK_N])


@triton.jit
def _weight_tile(desc, e, n0, k0, K_MAJOR: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The ``(BLOCK_K, BLOCK_N)`` B tile ``W[e][n0:, k0:]^T`` through ``desc`` (:func:`_weight_desc`)."""
    if K_MAJOR:
        return desc.load([e, n0, k0]).reshape(BLOCK_N, BLOCK_K).T
    else:
        return desc.load([e, k0, n0]).reshape(BLOCK_K, BLOCK_N)


def tma_weights(w):
    """``w: (E, n, k)`` viewed with its contiguous dim last (what a descriptor needs), for ``rt.tma_ok``."""
    return w if w.stride(2) == 1 else w.transpose(1, 2)


def tma_gate_up(w):
    """The gate_up stack ``(E, 2*inner, hidden)`` for ``rt.tma_ok``: also its up half, whose boxes start at row
    ``inner``: a box's start in the contiguous dim (the transposed storage's) must be 16-byte aligned too."""
    return [tma_weights(w), tma_weights(w[:, w.shape[1] // 2:])]


def _gemm_configs(tensor_core_tiles, fma_tiles):
    """Configs from (BLOCK_N, BLOCK_K, warps, stages) tiles, and which of them are for the FMA units.

    bf16/fp16 dots run on the tensor cores (wgmma): those tiles come with pointer and with TMA loads of the
    weights. fp32's IEEE dots (``kernels/common/precision.py``) run on the FMA units with both operands' slices
    in registers: their tiles are narrow (the tensor-core ones spill up to 27 KB there) and load through
    pointers (the kernels take no TMA path in fp32: see ``USE_TMA`` in moe_gate_up).
    """
    tc = [triton.Config({"BLOCK_N": n, "BLOCK_K": bk, "GROUP_M": 8, "TMA": tma}, num_warps=w, num_stages=s)
          for tma in (False, True) for n, bk, w, s in tensor_core_tiles]
    fma = [triton.Config({"BLOCK_N": n, "BLOCK_K": bk, "GROUP_M": 8, "TMA": False}, num_warps=w, num_stages=s)
           for n, bk, w, s in fma_tiles]
    return tc + fma, fma


def _keeper(fma_configs, tma_tensors=None, max_acc_per_thread=None):
    """The prune rule of the MoE GEMMs (forward and backward): the FMA tiles for fp32 (IEEE) dots, the
    tensor-core tiles otherwise; with ``tma_tensors``, TMA configs only where ``rt.tma_ok`` says the tensors
    ``tma_tensors(named args)`` can be described; with ``max_acc_per_thread``, only tiles whose (BLOCK_M, BLOCK_N)
    fp32 tile spreads at most that many values over each thread (BLOCK_M is the launch's, the dispatch's)."""

    def keep(configs, named):
        fma = named["PRECISION"] == "ieee"
        tma = tma_tensors is None or rt.tma_ok(*tma_tensors(named))
        return [c for c in configs if any(c is f for f in fma_configs) == fma
                and (tma or not c.kwargs["TMA"])
                and (max_acc_per_thread is None
                     or named["BLOCK_M"] * c.kwargs["BLOCK_N"] <= max_acc_per_thread * 32 * c.num_warps)]

    return keep


# (BLOCK_N of inner, BLOCK_K of hidden, warps, stages); BLOCK_M is the dispatch's (64 or 128 on a GPU).
# A stage holds BLOCK_M*BLOCK_K + 2*BLOCK_K*BLOCK_N elements (the x tile, the gate and up tiles) and Triton
# keeps stages-1 of them in shared memory: every config stays <= 192 KB at BLOCK_M = 128 even in fp32
# (tests/compile_check.py measures it). Two (BLOCK_M, BLOCK_N) fp32 accumulators: at BLOCK_M = 128 and 8
# warps, 128 registers a thread for BLOCK_N = 128; (64, 64) takes 8 warps too (at 4 it sat at 255 registers).
# The default: the biggest, (128, 64), weights through TMA.
GATE_UP_CONFIGS, GATE_UP_FMA = _gemm_configs([(64, 32, 4, 5), (64, 64, 8, 4), (128, 32, 8, 5), (128, 64, 8, 3)],
                                             [(32, 16, 8, 3), (32, 32, 8, 3)])


@rt.autotune(GATE_UP_CONFIGS, key=["hidden", "inner", "BLOCK_M", "W_K_MAJOR", "TMA_FITS"],
             prune=_keeper(GATE_UP_FMA, lambda a: tma_gate_up(a["W"])),
             default={"BLOCK_N": 128, "BLOCK_K": 64, "TMA": True})
@triton.jit
def moe_gate_up(
    X, W, H, Pre, SortedPairs, Offsets, Counts,
    n_experts, hidden, inner, top_k, n_blocks,
    stride_xm, stride_xk, stride_we, stride_wn, stride_wk, stride_hm, stride_pm,
    W_K_MAJOR: tl.constexpr, TMA_FITS: tl.constexpr, STORE_PRE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, TMA: tl.constexpr,
):
    """H: (rows, inner) the SwiGLU activation; Pre (training only, ``STORE_PRE``): (rows, 2*inner) the gate and
    up pre-activations ``[g | u]`` in x's dtype, sorted rows like H, for the backward (``kernel_bwd.py``)."""
    row0, rows, row_ok, e, pid_n, has_work = _block_of_expert(
        tl.program_id(0), n_blocks, tl.cdiv(inner, BLOCK_N), Offsets, Counts, n_experts, BLOCK_E, BLOCK_M, GROUP_M)
    # fp32's IEEE dots run on the FMA units out of registers: a TMA box only adds a transposing trip through
    # shared memory (7-27 KB of spills at sm_90), so fp32 loads through pointers whatever the config says. So does
    # a call whose tensors no descriptor can describe (TMA_FITS, from rt.tma_ok at launch): a TMA config the tuner
    # cached for another call, or a test forced, stays correct.
    USE_TMA: tl.constexpr = TMA and TMA_FITS and PRECISION != "ieee"
    # gather: row r of the block is token pair // k of x. Rows of x scattered over the tensor are no TMA box
    # (a gather-TMA is Blackwell's): the A tile always comes through pointers (cp.async where aligned).
    pair = tl.load(SortedPairs + rows, mask=row_ok, other=0)
    tok64 = (pair // top_k).to(tl.int64)
    n0 = pid_n * BLOCK_N
    cols = n0 + tl.arange(0, BLOCK_N)
    col_ok = cols < inner
    a_ptrs = X + tok64[:, None] * stride_xm
    if USE_TMA:  # the expert's gate rows [0, inner) and up rows [inner, 2*inner) are two boxes of one descriptor
        w_desc = _weight_desc(W, n_experts, 2 * inner, hidden, stride_we, stride_wn, stride_wk,
                              W_K_MAJOR, BLOCK_N, BLOCK_K)
    else:
        g_ptrs = W + e.to(tl.int64) * stride_we + cols[None, :] * stride_wn  # gate rows: [0, inner)
        u_ptrs = g_ptrs + inner * stride_wn  # up rows: [inner, 2*inner)
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    k_end = tl.where(has_work, hidden, 0)  # blocks past the last expert: no iterations
    for k0 in range(0, k_end, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < hidden
        a = tl.load(a_ptrs + kk[None, :] * stride_xk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        if USE_TMA:  # a gate box past inner reads up rows: only columns the store masks off
            bg = _weight_tile(w_desc, e, n0, k0, W_K_MAJOR, BLOCK_N, BLOCK_K)
            bu = _weight_tile(w_desc, e, inner + n0, k0, W_K_MAJOR, BLOCK_N, BLOCK_K)
        else:
            b_mask = k_ok[:, None] & col_ok[None, :]
            bg = tl.load(g_ptrs + kk[:, None] * stride_wk, mask=b_mask, other=0.0)
            bu = tl.load(u_ptrs + kk[:, None] * stride_wk, mask=b_mask, other=0.0)
        acc_g = tl.dot(a, bg, acc_g, input_precision=PRECISION)
        acc_u = tl.dot(a, bu, acc_u, input_precision=PRECISION)
    # SwiGLU epilogue: silu(g) * u = g * sigmoid(g) * u
    h = acc_g * tl.sigmoid(acc_g) * acc_u
    rows64 = rows.to(tl.int64)
    if STORE_PRE:
        # training: whole tiles, padding rows and blocks past the last expert included (exact zeros there: their
        # x rows load as 0, or the K loop has no trip), so the tensors saved for the backward, which the library
        # op returns, hold no unwritten memory
        out_mask = (rows < n_blocks * BLOCK_M)[:, None] & col_ok[None, :]
    else:
        out_mask = row_ok[:, None] & col_ok[None, :]
    tl.store(H + rows64[:, None] * stride_hm + cols[None, :], h.to(H.dtype.element_ty), mask=out_mask)
    if STORE_PRE:
        pre = Pre + rows64[:, None] * stride_pm + cols[None, :]
        tl.store(pre, acc_g.to(Pre.dtype.element_ty), mask=out_mask)
        tl.store(pre + inner, acc_u.to(Pre.dtype.element_ty), mask=out_mask)


# (BLOCK_N of hidden, BLOCK_K of inner, warps, stages); a stage is BLOCK_M*BLOCK_K + BLOCK_K*BLOCK_N
# elements, stages-1 of them resident: <= 192 KB at BLOCK_M = 128 in fp32. The default: (128, 64), TMA.
# (256, 64) halves the re-reads of the activation rows (one per N tile) and the H100 model gives it less time
# (OLMoE, 16k tokens: forward 2.91 ms against 3.10), but more DRAM bytes (+400 MB): the model holds 8 such
# programs an SM in L2's working set, where shared memory admits one (the report); left to the tuner on a GPU.
DOWN_CONFIGS, DOWN_FMA = _gemm_configs([(128, 64, 8, 4), (256, 64, 8, 3), (128, 32, 4, 5), (64, 64, 4, 4)],
                                       [(32, 32, 8, 3), (64, 32, 8, 3)])


@rt.autotune(DOWN_CONFIGS, key=["hidden", "inner", "BLOCK_M", "D_K_MAJOR", "TMA_FITS", "WEIGHTED"],
             prune=_keeper(DOWN_FMA, lambda a: [a["H"], tma_weights(a["D"])]),
             default={"BLOCK_N": 128, "BLOCK_K": 64, "TMA": True})
@triton.jit
def moe_down(
    H, D, Y, SortedPairs, Offsets, Counts, RouteW,
    n_experts, hidden, inner, n_blocks,
    stride_hm, stride_de, stride_dn, stride_dk, stride_ym,
    D_K_MAJOR: tl.constexpr, TMA_FITS: tl.constexpr, WEIGHTED: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, TMA: tl.constexpr,
):
    """Y[pair] = w[pair] * (H[row] @ D[e]^T) (``WEIGHTED``; else without w), D: (E, hidden, inner) any strides.
    The backward reuses it for the experts' input gradient: H = d[g | u] (rows, 2*inner), D = gate_up read
    transposed (its strides swapped: (E, hidden, 2*inner)), unweighted."""
    row0, rows, row_ok, e, pid_n, has_work = _block_of_expert(
        tl.program_id(0), n_blocks, tl.cdiv(hidden, BLOCK_N), Offsets, Counts, n_experts, BLOCK_E, BLOCK_M, GROUP_M)
    n0 = pid_n * BLOCK_N
    cols = n0 + tl.arange(0, BLOCK_N)
    col_ok = cols < hidden
    USE_TMA: tl.constexpr = TMA and TMA_FITS and PRECISION != "ieee"  # pointers otherwise, as in moe_gate_up
    if USE_TMA:  # the block's activation rows are one dense box of h (the sorted layout); padding rows stay masked
        h_desc = tl.make_tensor_descriptor(H, shape=[n_blocks * BLOCK_M, inner], strides=[stride_hm, 1],
                                           block_shape=[BLOCK_M, BLOCK_K])
        d_desc = _weight_desc(D, n_experts, hidden, inner, stride_de, stride_dn, stride_dk,
                              D_K_MAJOR, BLOCK_N, BLOCK_K)
    else:
        a_ptrs = H + rows.to(tl.int64)[:, None] * stride_hm  # the activation rows are already in sorted order
        b_ptrs = D + e.to(tl.int64) * stride_de + cols[None, :] * stride_dn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    k_end = tl.where(has_work, inner, 0)
    for k0 in range(0, k_end, BLOCK_K):
        if USE_TMA:
            a = h_desc.load([row0, k0])
            b = _weight_tile(d_desc, e, n0, k0, D_K_MAJOR, BLOCK_N, BLOCK_K)
        else:
            kk = k0 + tl.arange(0, BLOCK_K)
            k_ok = kk < inner
            a = tl.load(a_ptrs + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs + kk[:, None] * stride_dk, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    # epilogue: scale by the pair's routing weight, scatter the row back to pair order
    pair = tl.load(SortedPairs + rows, mask=row_ok, other=0).to(tl.int64)
    if WEIGHTED:
        acc = acc * tl.load(RouteW + pair, mask=row_ok, other=0.0)[:, None]
    tl.store(Y + pair[:, None] * stride_ym + cols[None, :], acc.to(Y.dtype.element_ty),
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
    Y, Extra, Out, n_tokens, hidden, top_k, stride_ym, stride_om, stride_oh,
    ADD_EXTRA: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Out[t] = sum_j Y[t*k + j] (+ Extra[t], a contiguous fp32 (tokens, hidden): the backward's router term)."""
    toks = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (toks < n_tokens)[:, None] & (cols < hidden)[None, :]
    toks64 = toks.to(tl.int64)
    acc = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
    for j in range(0, top_k):  # fixed slot order: the sum is the same on every run
        acc += tl.load(Y + (toks64 * top_k + j)[:, None] * stride_ym + cols[None, :], mask=mask).to(tl.float32)
    if ADD_EXTRA:
        acc += tl.load(Extra + toks64[:, None] * hidden + cols[None, :], mask=mask)
    tl.store(Out + toks64[:, None] * stride_om + cols[None, :] * stride_oh, acc.to(Out.dtype.element_ty), mask=mask)
