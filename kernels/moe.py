"""The OLMoE mixture-of-experts layer: fused router, on-device dispatch, two grouped GEMMs, deterministic combine.

    logits       = x @ router_weight.T                                   (tokens, E)
    w, ids       = topk_routing(logits, k, normalize)                    (tokens, k) each
    out[t]       = sum_j  w[t, j] * down[e] @ (silu(gate[e] @ x[t]) * (up[e] @ x[t])),   e = ids[t, j]

with ``gate_up[e] = [gate[e]; up[e]]`` (``(2*inner, hidden)``, gate rows first: HF transformers 5.x's in-memory
OLMoE layout, ``OlmoeExperts.gate_up_proj``) and ``down[e]: (hidden, inner)`` (``OlmoeExperts.down_proj``).
Shapes: ``x: (..., hidden)``, ``router_weight: (E, hidden)``; the result has x's shape and dtype.

The pipeline (7 launches, all on the device, no host synchronisation, no Python loop over experts):

1. ``_moe_router`` — one program per ``BLOCK_M`` tokens computes the ``(BLOCK_M, E)`` logits tile with
   ``tl.dot`` (the whole expert dimension, E <= 256, is one tile) and, without the logits ever leaving
   registers, the softmax + top-k of :func:`kernels.routing.softmax_topk`. Writes fp32 weights and int32 ids.
   Logits stay fp32 (HF rounds them to x's dtype first; we don't, so near-ties are decided on the better value).
2. Dispatch (:func:`moe_dispatch`): the ``tokens * k`` (token, slot) *pairs* (pair ``p = t*k + j``) are sorted
   by expert — stably, so within an expert in pair order — into a layout where each expert's rows start at a
   multiple of ``BLOCK_M``:

       rows  [offsets[e], offsets[e] + counts[e])       expert e's pairs, in pair order
       rows  [offsets[e] + counts[e], offsets[e+1])     padding (< BLOCK_M rows, marked -1)

   ``_dispatch_count`` (a program per tile of tokens: the tile's per-expert histogram, and each pair's rank
   among the tile's pairs of the same expert, from a cumsum over a one-hot tile), ``_dispatch_scan`` (one
   program: prefix sums of the histograms over tiles, counts, block-padded offsets, the padding marks) and
   ``_dispatch_scatter`` (row of each pair = offsets[e] + earlier tiles' count of e + rank in tile). Integer
   sums only, so the result is deterministic; no atomics.
3. ``_moe_gate_up`` — grouped GEMM #1. The grid covers every M-block the layout can possibly have,
   ``tokens*k // BLOCK_M + min(E, tokens*k)`` (each non-empty expert adds at most one partial block), times
   the N tiles of ``inner``; the grid never depends on the counts, which stay on the device. A program finds
   its expert by comparing its first row with the padded offsets (a vector compare over E), gathers its
   ``BLOCK_M`` token rows of x through the sorted pair indices, and runs *two* accumulators over ``hidden``,
   one against the gate rows and one against the up rows of its expert (the x tile is loaded once for both).
   The epilogue is SwiGLU, ``silu(gate) * up``, stored once in x's dtype: the ``(rows, inner)`` activation is
   the only intermediate of the expert MLP. Blocks past the last expert get a 0-trip loop and masked stores.
4. ``_moe_down`` — grouped GEMM #2, same block-to-expert mapping: the activation rows are contiguous in the
   sorted layout (no gather), ``down[e]`` is the B operand, and the epilogue multiplies by the pair's routing
   weight and *scatters* the row back to pair order: ``Y[t*k + j] = w[t, j] * down_e(h)``, in x's dtype.
5. ``_moe_combine`` — ``out[t] = sum_j Y[t*k + j]`` in fp32, slots in fixed order: deterministic, no atomics.

What is stored vs recomputed. The gate/up pre-activations are never stored (SwiGLU is fused); the activation
(``tokens*k x inner``) and the weighted per-pair rows (``tokens*k x hidden``) are, because each is produced by
one grouped GEMM and consumed by another launch whose programs are organised differently (by expert vs by
token); summing the k pairs of a token inside GEMM #2 would need atomics and lose determinism. The logits are
not stored (forward only).

NaN propagates, per token. A token whose x row has a NaN gets NaN logits; a token whose logits make the
softmax undefined (a NaN, a +inf, or all -inf: from a NaN in x or in the router weight, or an fp32 overflow)
gets NaN routing weights and the in-range experts ``0..k-1`` (:mod:`kernels.routing`'s contract). Either way
every one of its ``k`` pairs is dispatched and computed, and its output row is all NaN — never a silent 0.0
from pairs that went nowhere, and never an index past the expert tables. The other tokens' rows are
unaffected: every GEMM row, every routing row and every combine row belongs to one token. (NaN in an expert's
weights reaches, in the same way, exactly the tokens routed to that expert.)

Forward only: a backward (grouped GEMMs with the roles of the operands swapped, plus the router's gradient
from :mod:`kernels.routing`) is future work; until then calling it where a gradient is required raises
NotImplementedError.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from hypothesis import strategies as st

from . import _runtime as rt
from .routing import check_k, softmax_topk, topk_routing_reference
from .spec import BadInput, Case, OpSpec, call

MAX_EXPERTS = 256  # the router keeps a token's logits over all experts in one (BLOCK_M, E) register tile


def _precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: exact fp32 for fp32 inputs (TF32 would cost ~1e-3), the fast path otherwise."""
    return "ieee" if dtype == torch.float32 else "tf32"


# --------------------------------------------------------------------------------------------------------------
# 1. The router: GEMM + softmax + top-k in one program
# --------------------------------------------------------------------------------------------------------------


def _router_configs():
    # (BLOCK_M tokens, BLOCK_K of hidden, warps, stages). The B tile is (BLOCK_K, BLOCK_E <= 256): every config
    # stays under ~82 KB of shared memory in fp32 at E = 256. Last: the biggest, the interpreter's default.
    return [triton.Config({"BLOCK_M": m, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for m, bk, w, s in [(16, 64, 4, 2), (32, 32, 4, 3), (64, 32, 4, 3), (64, 64, 8, 2)]]


@rt.autotune(_router_configs(), key=["hidden", "n_experts", "top_k", "NORMALIZE"], default=3)
@triton.jit
def _moe_router(
    X, R, TopW, TopI,
    n_tokens, hidden, n_experts, top_k,
    stride_xm, stride_xk, stride_re, stride_rk,
    NORMALIZE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_TOPK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_tokens
    rows64 = rows.to(tl.int64)
    experts = tl.arange(0, BLOCK_E)
    e_ok = experts < n_experts
    # logits = x @ R^T: A is (BLOCK_M, BLOCK_K) of x, B is (BLOCK_K, BLOCK_E) of R read transposed in place
    acc = tl.zeros([BLOCK_M, BLOCK_E], dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < hidden
        a = tl.load(X + rows64[:, None] * stride_xm + kk[None, :] * stride_xk,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(R + experts[None, :] * stride_re + kk[:, None] * stride_rk,
                    mask=k_ok[:, None] & e_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    top_w, top_i = softmax_topk(acc, e_ok, top_k, NORMALIZE, BLOCK_E, BLOCK_TOPK)
    slots = tl.arange(0, BLOCK_TOPK)
    out = rows64[:, None] * top_k + slots[None, :]
    mask = row_ok[:, None] & (slots[None, :] < top_k)
    tl.store(TopW + out, top_w, mask=mask)
    tl.store(TopI + out, top_i, mask=mask)


# --------------------------------------------------------------------------------------------------------------
# 2. Dispatch: sort the (token, slot) pairs by expert into a block-padded layout
# --------------------------------------------------------------------------------------------------------------


# Single-config kernels (integer bookkeeping, nothing to tune); going through rt.autotune all the same puts
# them on the runtime's launch path (the interpreter, the compile-only check).
_ONE_CONFIG = [triton.Config({}, num_warps=4)]


@rt.autotune(_ONE_CONFIG, key=[])
@triton.jit
def _dispatch_count(
    Ids, Hist, Rank,
    n_tokens, n_experts, top_k, stride_it, stride_ik,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """Tile ``pid`` of BLOCK_T tokens: Hist[pid, e] = its pairs routed to e; Rank[p] = pair p's rank among them."""
    pid = tl.program_id(0)
    toks = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    tok_ok = toks < n_tokens
    toks64 = toks.to(tl.int64)
    experts = tl.arange(0, BLOCK_E)
    # pass 1: per_tok[t, e] = how many of token t's slots chose e (0 or 1 from the router; hand-made ids may
    # repeat an expert within a token, and stay correct)
    per_tok = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.int32)
    for j in range(0, top_k):
        e = tl.load(Ids + toks64 * stride_it + j * stride_ik, mask=tok_ok, other=-1)
        per_tok += (e[:, None] == experts[None, :]).to(tl.int32)
    tl.store(Hist + pid * n_experts + experts, tl.sum(per_tok, axis=0), mask=experts < n_experts)
    # pass 2: a pair's rank = same-expert pairs of earlier tokens in the tile + of earlier slots of its token
    earlier = tl.cumsum(per_tok, axis=0) - per_tok
    for j in range(0, top_k):
        e = tl.load(Ids + toks64 * stride_it + j * stride_ik, mask=tok_ok, other=-1)
        hit = e[:, None] == experts[None, :]
        rank = tl.sum(tl.where(hit, earlier, 0), axis=1)
        tl.store(Rank + toks64 * top_k + j, rank, mask=tok_ok)
        earlier += hit.to(tl.int32)


@rt.autotune(_ONE_CONFIG, key=[])
@triton.jit
def _dispatch_scan(
    Hist, Prefix, Counts, Offsets, SortedPairs,
    n_tiles, n_experts,
    BLOCK_M: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """One program: Prefix[tile, e] = pairs of e in earlier tiles; Counts; block-padded Offsets; padding marks."""
    experts = tl.arange(0, BLOCK_E)
    e_ok = experts < n_experts
    running = tl.zeros([BLOCK_E], dtype=tl.int32)
    for b0 in range(0, n_tiles, BLOCK_B):
        tiles = b0 + tl.arange(0, BLOCK_B)
        mask = (tiles < n_tiles)[:, None] & e_ok[None, :]
        ptrs = tiles[:, None] * n_experts + experts[None, :]
        h = tl.load(Hist + ptrs, mask=mask, other=0)
        tl.store(Prefix + ptrs, tl.cumsum(h, axis=0) - h + running[None, :], mask=mask)
        running += tl.sum(h, axis=0)
    tl.store(Counts + experts, running, mask=e_ok)
    padded = (running + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    starts = tl.cumsum(padded, axis=0) - padded
    tl.store(Offsets + experts, starts, mask=e_ok)
    tl.store(Offsets + n_experts, tl.sum(padded, axis=0))
    # the padding rows of each expert (fewer than BLOCK_M) are marked -1
    pad = tl.arange(0, BLOCK_M)
    tl.store(SortedPairs + (starts + running)[:, None] + pad[None, :], tl.full([BLOCK_E, BLOCK_M], -1, tl.int32),
             mask=e_ok[:, None] & (pad[None, :] < (padded - running)[:, None]))


@rt.autotune(_ONE_CONFIG, key=[])
@triton.jit
def _dispatch_scatter(
    Ids, Rank, Prefix, Offsets, SortedPairs, PairRows,
    n_tokens, n_experts, top_k, stride_it, stride_ik,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Row of pair p = t*k + j (expert e, tile pid): Offsets[e] + Prefix[pid, e] + Rank[p]; both directions."""
    pid = tl.program_id(0)
    toks = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    slots = tl.arange(0, BLOCK_K)
    mask = (toks < n_tokens)[:, None] & (slots < top_k)[None, :]
    toks64 = toks.to(tl.int64)
    e = tl.load(Ids + toks64[:, None] * stride_it + slots[None, :] * stride_ik, mask=mask, other=-1).to(tl.int32)
    ok = mask & (e >= 0) & (e < n_experts)  # out-of-range ids are dropped, never written out of bounds
    e = tl.where(ok, e, 0)
    pair = toks64[:, None] * top_k + slots[None, :]
    row = (tl.load(Offsets + e, mask=ok, other=0) + tl.load(Prefix + pid * n_experts + e, mask=ok, other=0)
           + tl.load(Rank + pair, mask=ok, other=0))
    tl.store(SortedPairs + row, pair.to(tl.int32), mask=ok)
    tl.store(PairRows + pair, tl.where(ok, row, -1), mask=mask)


class Dispatch(NamedTuple):
    """The expert-sorted, block-padded layout of the ``tokens * k`` pairs (pair ``p = t*k + j``), all int32.

    sorted_pairs: (num_blocks * block_m,) row -> pair; -1 on padding rows; rows >= offsets[E] are never
        written nor read.
    pair_rows: (tokens * k,) pair -> row, the inverse permutation.
    counts: (E,) pairs per expert.  offsets: (E + 1,) first row of each expert (multiples of block_m),
        offsets[E] = rows in use.
    block_m: the padding granularity.  num_blocks: the grid bound, tokens*k // block_m + min(E, tokens*k).
    """

    sorted_pairs: torch.Tensor
    pair_rows: torch.Tensor
    counts: torch.Tensor
    offsets: torch.Tensor
    block_m: int
    num_blocks: int


def _pow2_at_least(n: int, floor: int = 1) -> int:
    return max(triton.next_power_of_2(n), floor)


def moe_dispatch(expert_ids: torch.Tensor, num_experts: int, block_m: int) -> Dispatch:
    """Sort the pairs of ``expert_ids: (tokens, k)`` by expert (stable) into ``block_m``-padded expert segments.

    Three launches, no host synchronisation: the grid and every buffer size follow from the shapes alone.
    """
    if expert_ids.dim() != 2 or expert_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"expert_ids must be a (tokens, k) int32/int64 tensor, got {expert_ids.dtype} "
                         f"{tuple(expert_ids.shape)}")
    if not 1 <= num_experts <= MAX_EXPERTS:
        raise ValueError(f"num_experts must be in [1, {MAX_EXPERTS}], got {num_experts}")
    if block_m < 1 or block_m & (block_m - 1):
        raise ValueError(f"block_m must be a power of two, got {block_m}")
    n_tokens, top_k = expert_ids.shape
    n_pairs = n_tokens * top_k
    device = expert_ids.device
    num_blocks = n_pairs // block_m + min(num_experts, n_pairs)
    block_e = _pow2_at_least(num_experts, 16)
    block_t = min(max(8192 // block_e, 16), 128)  # tokens per count/scatter tile: a (BLOCK_T, BLOCK_E) one-hot
    n_tiles = triton.cdiv(n_tokens, block_t)

    sorted_pairs = rt.empty((num_blocks * block_m,), torch.int32, device)
    pair_rows = rt.empty((n_pairs,), torch.int32, device)
    counts = rt.empty((num_experts,), torch.int32, device)
    offsets = rt.empty((num_experts + 1,), torch.int32, device)
    hist = rt.empty((max(n_tiles, 1), num_experts), torch.int32, device)
    prefix = rt.empty((max(n_tiles, 1), num_experts), torch.int32, device)
    rank = rt.empty((n_pairs,), torch.int32, device)
    if n_tiles:
        _dispatch_count[(n_tiles,)](expert_ids, hist, rank, n_tokens, num_experts, top_k,
                                    expert_ids.stride(0), expert_ids.stride(1), BLOCK_T=block_t, BLOCK_E=block_e)
    _dispatch_scan[(1,)](hist, prefix, counts, offsets, sorted_pairs, n_tiles, num_experts,
                         BLOCK_M=block_m, BLOCK_B=max(8192 // block_e, 1), BLOCK_E=block_e)
    if n_tiles:
        _dispatch_scatter[(n_tiles,)](expert_ids, rank, prefix, offsets, sorted_pairs, pair_rows,
                                      n_tokens, num_experts, top_k, expert_ids.stride(0), expert_ids.stride(1),
                                      BLOCK_T=block_t, BLOCK_K=_pow2_at_least(top_k))
    return Dispatch(sorted_pairs, pair_rows, counts, offsets, block_m, num_blocks)


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
    in_group = GROUP_M * n_pid_n
    first_m = (pid // in_group) * GROUP_M
    group_m = tl.minimum(n_blocks - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_m
    pid_n = (pid % in_group) // group_m
    row0 = pid_m * BLOCK_M
    experts = tl.arange(0, BLOCK_E)
    ends = tl.load(Offsets + 1 + experts, mask=experts < n_experts, other=2147483647)
    e = tl.sum((ends <= row0).to(tl.int32), axis=0)
    has_work = e < n_experts
    e = tl.minimum(e, n_experts - 1)
    row_end = tl.where(has_work, tl.load(Offsets + e) + tl.load(Counts + e), 0)
    rows = row0 + tl.arange(0, BLOCK_M)
    return rows, rows < row_end, e, pid_n, has_work


def _gate_up_configs():
    # (BLOCK_N of inner, BLOCK_K of hidden, warps, stages); BLOCK_M is the dispatch's (64 or 128 on a GPU).
    # A stage holds BLOCK_M*BLOCK_K + 2*BLOCK_K*BLOCK_N elements (the x tile, the gate and up tiles) and Triton
    # keeps stages-1 of them in shared memory: every config stays <= 192 KB at BLOCK_M = 128 even in fp32
    # (tests/compile_check.py measures it). Last: the biggest, the interpreter's default.
    return [triton.Config({"BLOCK_N": n, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for n, bk, w, s in [(64, 32, 4, 5), (64, 64, 4, 4), (128, 32, 8, 5), (128, 64, 8, 3)]]


@rt.autotune(_gate_up_configs(), key=["hidden", "inner", "BLOCK_M"], default=3)
@triton.jit
def _moe_gate_up(
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


def _down_configs():
    # (BLOCK_N of hidden, BLOCK_K of inner, warps, stages); a stage is BLOCK_M*BLOCK_K + BLOCK_K*BLOCK_N
    # elements, stages-1 of them resident: <= 192 KB at BLOCK_M = 128 in fp32. First: the interpreter's default.
    return [triton.Config({"BLOCK_N": n, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for n, bk, w, s in [(128, 64, 8, 4), (256, 64, 8, 3), (128, 32, 4, 5), (64, 64, 4, 4)]]


@rt.autotune(_down_configs(), key=["hidden", "inner", "BLOCK_M"], default=0)
@triton.jit
def _moe_down(
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


def _combine_configs():
    return [triton.Config({"BLOCK_T": t, "BLOCK_H": h}, num_warps=w)
            for t, h, w in [(4, 512, 4), (8, 256, 4), (16, 128, 4), (32, 256, 8)]]


@rt.autotune(_combine_configs(), key=["hidden", "top_k"], default=3)
@triton.jit
def _moe_combine(
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


# --------------------------------------------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------------------------------------------


def _pick_block_m(n_pairs: int, n_experts: int) -> int:
    """The M tile of the grouped GEMMs, which is also the dispatch's padding. Small under the interpreter
    (programs are what costs there); on a GPU 128-row tiles once experts average >= 512 rows, else 64 (less
    padding; at most one partial block per expert either way)."""
    if rt.INTERPRET:
        return 16
    if rt.COMPILE_ONLY:
        return 128  # the shared-memory worst case, which is what the compile-only check is for
    return 128 if n_pairs >= 512 * n_experts else 64


def _check(x, router_weight, gate_up, down, k):
    rt.check_tensor("x", x, min_rank=1)
    hidden = x.shape[-1]
    if hidden == 0:
        raise ValueError(f"x must have a non-empty last dim, got shape {tuple(x.shape)}")
    rt.check_tensor("router_weight", router_weight, rank=2)
    n_experts = router_weight.shape[0]
    if not 1 <= n_experts <= MAX_EXPERTS:
        raise ValueError(f"router_weight must have 1..{MAX_EXPERTS} rows (experts), got {tuple(router_weight.shape)}")
    rt.check_like("router_weight", router_weight, "x", x, shape=(n_experts, hidden))
    rt.check_tensor("down", down, rank=3)
    inner = down.shape[2]
    if inner == 0:
        raise ValueError(f"down must have a non-empty inner (last) dim, got shape {tuple(down.shape)}")
    rt.check_like("down", down, "x", x, shape=(n_experts, hidden, inner))
    rt.check_tensor("gate_up", gate_up, rank=3)
    rt.check_like("gate_up", gate_up, "x", x, shape=(n_experts, 2 * inner, hidden))
    check_k(k, n_experts)


def _moe_forward(x, router_weight, gate_up, down, k, normalize, block_m=None):
    hidden = x.shape[-1]
    n_experts, inner = router_weight.shape[0], down.shape[2]
    out = rt.empty(x.shape, x.dtype, x.device)
    x2, out2 = x.reshape(-1, hidden), out.view(-1, hidden)  # x2: a view whenever x's strides allow
    n_tokens = x2.shape[0]
    if n_tokens == 0:
        return out
    n_pairs = n_tokens * k
    block_m = block_m or _pick_block_m(n_pairs, n_experts)
    precision = _precision(x.dtype)
    block_e = _pow2_at_least(n_experts, 16)

    # 1. router
    top_w = rt.empty((n_tokens, k), torch.float32, x.device)
    top_i = rt.empty((n_tokens, k), torch.int32, x.device)
    _moe_router[lambda meta: (triton.cdiv(n_tokens, meta["BLOCK_M"]),)](
        x2, router_weight, top_w, top_i, n_tokens, hidden, n_experts, k,
        x2.stride(0), x2.stride(1), router_weight.stride(0), router_weight.stride(1),
        NORMALIZE=bool(normalize), PRECISION=precision, BLOCK_E=block_e, BLOCK_TOPK=_pow2_at_least(k),
    )
    # 2. dispatch
    d = moe_dispatch(top_i, n_experts, block_m)
    # 3. gate/up grouped GEMM + SwiGLU
    h = rt.empty((d.num_blocks * block_m, inner), x.dtype, x.device)
    _moe_gate_up[lambda meta: (d.num_blocks * triton.cdiv(inner, meta["BLOCK_N"]),)](
        x2, gate_up, h, d.sorted_pairs, d.offsets, d.counts,
        n_experts, hidden, inner, k, d.num_blocks,
        x2.stride(0), x2.stride(1), gate_up.stride(0), gate_up.stride(1), gate_up.stride(2), h.stride(0),
        PRECISION=precision, BLOCK_E=block_e, BLOCK_M=block_m,
    )
    # 4. down grouped GEMM, routing weight, scatter to pair order
    y = rt.empty((n_pairs, hidden), x.dtype, x.device)
    _moe_down[lambda meta: (d.num_blocks * triton.cdiv(hidden, meta["BLOCK_N"]),)](
        h, down, y, d.sorted_pairs, d.offsets, d.counts, top_w,
        n_experts, hidden, inner, d.num_blocks,
        h.stride(0), down.stride(0), down.stride(1), down.stride(2), y.stride(0),
        PRECISION=precision, BLOCK_E=block_e, BLOCK_M=block_m,
    )
    # 5. combine
    _moe_combine[lambda meta: (triton.cdiv(n_tokens, meta["BLOCK_T"]), triton.cdiv(hidden, meta["BLOCK_H"]))](
        y, out2, n_tokens, hidden, k, y.stride(0), out2.stride(0), out2.stride(1),
    )
    return out


def moe(x, router_weight, gate_up, down, *, k=8, normalize=False):
    """HF OLMoE's sparse MoE block (``OlmoeSparseMoeBlock``) with the given weights; forward only.

    ``x: (..., hidden)``, ``router_weight: (E, hidden)``, ``gate_up: (E, 2*inner, hidden)`` (gate rows first),
    ``down: (E, hidden, inner)``; each token goes to its ``k`` most probable experts. A token with a NaN in x
    or an undefined router softmax (NaN / +inf logits, or all -inf) gets an all-NaN output row.
    """
    _check(x, router_weight, gate_up, down, k)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, router_weight, gate_up, down)):
        raise NotImplementedError(
            "moe has no backward yet: call it under torch.no_grad() / on tensors that do not require grad "
            "(or use moe_reference for a differentiable path)")
    return _moe_forward(x, router_weight, gate_up, down, k, normalize)


# ------------------------------------------------------------------------------------------------ references


def moe_reference(x, router_weight, gate_up, down, *, k=8, normalize=False):
    """HF transformers' OlmoeSparseMoeBlock, eager: router, then a Python loop over the experts that were hit
    (per expert: gather its tokens, gate/up GEMM, SwiGLU, down GEMM, weight, index_add_).

    The NaN contract follows from topk_routing_reference's: an undefined routing row goes to experts 0..k-1
    with NaN weights, and index_add_ carries the NaN into the token's output row."""
    shape, hidden = x.shape, x.shape[-1]
    n_experts = router_weight.shape[0]
    h = x.reshape(-1, hidden)
    logits = F.linear(h, router_weight)
    weights, ids = topk_routing_reference(logits, k, normalize=normalize)
    out = torch.zeros_like(h)
    with torch.no_grad():
        expert_mask = F.one_hot(ids, num_classes=n_experts).permute(2, 1, 0)  # (E, k, tokens)
        expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
    for expert_idx in expert_hit:
        e = expert_idx[0]
        slot, token_idx = torch.where(expert_mask[e])
        gate, up = F.linear(h[token_idx], gate_up[e]).chunk(2, dim=-1)
        current = F.linear(F.silu(gate) * up, down[e]) * weights[token_idx, slot, None]
        out.index_add_(0, token_idx, current.to(out.dtype))
    return out.reshape(shape)


def moe_grouped_mm(x, router_weight, gate_up, down, *, k=8, normalize=False):
    """The same layer with ``torch._grouped_mm`` for the expert GEMMs (a sweep peer): torch softmax+topk,
    a stable argsort for the dispatch, two grouped GEMMs, a gather-back and a sum over the k slots."""
    shape, hidden = x.shape, x.shape[-1]
    n_experts = router_weight.shape[0]
    h = x.reshape(-1, hidden)
    probs = torch.softmax(F.linear(h, router_weight), dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, k, dim=-1)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    offs = torch.cumsum(torch.bincount(flat, minlength=n_experts), 0).to(torch.int32)
    act = torch._grouped_mm(h[order // k], gate_up.transpose(1, 2), offs=offs)
    gate, up = act.chunk(2, dim=-1)
    y = torch._grouped_mm(F.silu(gate) * up, down.transpose(1, 2), offs=offs)
    y = y * weights.reshape(-1)[order, None].to(y.dtype)
    pairs = torch.empty_like(y)
    pairs[order] = y
    return pairs.view(-1, k, hidden).sum(dim=1, dtype=torch.float32).to(x.dtype).reshape(shape)


# ------------------------------------------------------------------------------------------------ description


def _separate_routing(x, router, k, shift, g, margin=1e-4):
    """Redraw the tokens whose k-th and (k+1)-th logits are within ``margin`` (relative) of each other.

    Which experts a token goes to is a discontinuous function of the logits: where the k-th and (k+1)-th are
    nearly equal, a rounding-level difference (fp32 accumulation here vs the float64 reference: ~1e-6) swaps an
    expert and moves that token's output by O(1). Both answers are right, and no norm-based tolerance can tell
    them apart, so test inputs keep every token at least ``margin`` (100x the accumulation error) from such a
    tie, in every dtype a test casts them to. (Exact ties and their rule are topk_routing's tests.)
    """
    if k == router.shape[0]:
        return x
    rows = x.view(-1, x.shape[-1])
    for _ in range(10):
        near = torch.zeros(rows.shape[0], dtype=torch.bool)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            z = rows.to(dtype).double() @ router.to(dtype).double().t()
            top = z.topk(k + 1, dim=-1).values
            near |= (top[:, k - 1] - top[:, k]) < margin * top[:, k - 1].abs().clamp(min=1)
        if not near.any():
            break
        rows[near] = torch.randn(int(near.sum()), rows.shape[1], generator=g, dtype=rows.dtype) + shift
    return x


def _make_case(dims, dtype, device, *, contiguous=True, requires_grad=False, seed=0):
    """dims: tokens (the sweeps give seqlen instead), hidden, inner, experts, k; optional batch (a leading dim),
    normalize, and hot: that many experts get a large router bias, so every token routes to them (hot >= k: the
    other experts stay empty)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    t, hd, inner, n_e, batch = _tokens(dims), dims["hidden"], dims["inner"], dims["experts"], dims.get("batch")
    x = torch.randn(*((batch, t) if batch else (t,)), hd, generator=g)
    router = torch.randn(n_e, hd, generator=g) / hd**0.5  # logits ~ N(0, 1)
    hot = dims.get("hot", 0)
    shift = 1.0 if hot else 0.0
    if hot:
        # x gets a common offset of 1 per feature and the hot experts' rows a bias of 12/hidden per feature:
        # their logits rise by ~12 (the logit noise is ~1.4), far above every cold expert.
        x = x + shift
        router[torch.randperm(n_e, generator=g)[:hot]] += 12.0 / hd
    if x.numel() <= 1 << 22:  # test sizes; a sweep's timing does not care which expert wins a near-tie
        x = _separate_routing(x, router, dims["k"], shift, g)
    gate_up = torch.randn(n_e, 2 * inner, hd, generator=g) / hd**0.5
    down = torch.randn(n_e, hd, inner, generator=g) / inner**0.5
    if not contiguous:
        # feature-major / transposed storage: dense permuted views, whose strides survive dtype casts
        x = x.movedim(-1, 0).contiguous().movedim(0, -1)
        router = router.t().contiguous().t()
        gate_up = gate_up.transpose(1, 2).contiguous().transpose(1, 2)
        down = down.transpose(1, 2).contiguous().transpose(1, 2)
    args = tuple(a.to(device=device, dtype=dtype).requires_grad_(requires_grad) for a in (x, router, gate_up, down))
    return Case(args, {"k": dims["k"], "normalize": dims.get("normalize", False)})


@st.composite
def _dims_strategy(draw, big):
    experts = draw(st.sampled_from([8, 13, 60, 64] + ([128, 256] if big else [])))
    k = draw(st.one_of(st.integers(1, min(experts, 8)), st.just(min(experts, 8))))
    dims = {
        "tokens": draw(st.one_of(st.integers(1, 2048 if big else 20), st.sampled_from([1, 7, 17]))),
        "hidden": draw(st.one_of(st.integers(1, 512 if big else 48), st.sampled_from([16, 37]))),
        "inner": draw(st.one_of(st.integers(1, 512 if big else 32), st.sampled_from([16, 23]))),
        "experts": experts,
        "k": k,
        "normalize": draw(st.booleans()),
        "hot": draw(st.sampled_from([0, 0, 1, k, min(2 * k, experts)])),
    }
    if draw(st.booleans()):
        dims["batch"] = draw(st.integers(1, 2))
    return dims


def _dims(big):
    return _dims_strategy(big)


_OLMOE = {"hidden": 2048, "inner": 1024, "experts": 64, "k": 8}


def _tokens(dims):
    return dims["tokens"] if "tokens" in dims else dims["seqlen"]


def _sweep_cases(gpu):
    if not gpu:
        return [{"seqlen": s, "hidden": 32, "inner": 16, "experts": 8, "k": 2, "hot": 0} for s in (8, 16)]
    seqlens = [512 * 2**i for i in range(7)]  # 512 .. 32768 tokens
    # hot=8: the skewed case, every token routed to the same 8 experts, 56 experts idle
    return [dict(_OLMOE, seqlen=s, hot=hot) for hot in (0, 8) for s in seqlens]


def _flops(dims, mode):
    t, hd, inner, n_e, k = _tokens(dims), dims["hidden"], dims["inner"], dims["experts"], dims["k"]
    return 2 * t * hd * n_e + 2 * t * k * 3 * inner * hd  # router + gate/up + down (forward only)


def _bytes(dims, dtype, mode):
    size = torch.finfo(dtype).bits // 8
    t, hd, inner, n_e, k = _tokens(dims), dims["hidden"], dims["inner"], dims["experts"], dims["k"]
    used = min(n_e, t * k) if not dims.get("hot") else min(n_e, max(dims["hot"], k))
    return size * (2 * t * hd + n_e * hd + used * 3 * inner * hd)  # x in, out, router, the used experts


def _peer_grouped_mm():
    return moe_grouped_mm if hasattr(torch, "_grouped_mm") else None


def _bad_inputs():
    x, r, gu, dn = torch.randn(5, 16), torch.randn(8, 16), torch.randn(8, 24, 16), torch.randn(8, 16, 12)
    bad = [
        BadInput("int x", call(x.int(), r, gu, dn, k=2), TypeError, "x must be float"),
        BadInput("router hidden", call(x, torch.randn(8, 15), gu, dn, k=2), ValueError, "router_weight must have shape"),
        BadInput("router rank", call(x, torch.randn(8), gu, dn, k=2), ValueError, "router_weight must have rank"),
        BadInput("gate_up experts", call(x, r, torch.randn(7, 24, 16), dn, k=2), ValueError, "gate_up must have shape"),
        BadInput("gate_up inner", call(x, r, torch.randn(8, 22, 16), dn, k=2), ValueError, "gate_up must have shape"),
        BadInput("gate_up hidden", call(x, r, torch.randn(8, 24, 15), dn, k=2), ValueError, "gate_up must have shape"),
        BadInput("down hidden", call(x, r, gu, torch.randn(8, 15, 12), k=2), ValueError, "down must have shape"),
        BadInput("down experts", call(x, r, gu, torch.randn(9, 16, 12), k=2), ValueError, "down must have shape"),
        BadInput("down dtype", call(x, r, gu, dn.half(), k=2), TypeError, "down has dtype"),
        BadInput("k zero", call(x, r, gu, dn, k=0), ValueError, "k must be"),
        BadInput("k > experts", call(x, r, gu, dn, k=9), ValueError, "k must be"),
        BadInput("too many experts", call(x, torch.randn(257, 16), torch.randn(257, 24, 16),
                                          torch.randn(257, 16, 12), k=2), ValueError, "router_weight must have 1.."),
        BadInput("requires grad", call(x.clone().requires_grad_(), r, gu, dn, k=2), NotImplementedError, "no backward"),
    ]
    if torch.cuda.is_available():
        bad.append(BadInput("devices", lambda: Case((x.detach().cuda(), r, gu, dn), {"k": 2}), ValueError,
                            "router_weight is on cpu"))
    return tuple(bad)


MOE = OpSpec(
    name="moe",
    fn=moe,
    reference=moe_reference,
    make_case=_make_case,
    dims=_dims,
    config_dims={"tokens": 19, "hidden": 40, "inner": 24, "experts": 12, "k": 4, "hot": 3, "normalize": True},
    sweep_cases=_sweep_cases,
    flops=_flops,
    bytes_moved=_bytes,
    tolerance={torch.float32: 1e-5, torch.float16: 2e-3},
    grad_tolerance={torch.float32: 1e-5, torch.float16: 2e-3},  # unused: forward only
    kernels=(_moe_router, _moe_gate_up, _moe_down, _moe_combine),
    examples=(
        {"tokens": 6, "hidden": 48, "inner": 32, "experts": 64, "k": 8},  # OLMoE's routing: top-8 of 64
        {"tokens": 17, "hidden": 24, "inner": 16, "experts": 64, "k": 8, "hot": 8},  # all to 8 experts, 56 idle
        {"tokens": 1, "hidden": 7, "inner": 5, "experts": 8, "k": 8, "normalize": True},  # one token, k = E
        {"tokens": 3, "hidden": 16, "inner": 16, "experts": 256, "k": 2, "batch": 2},  # MAX_EXPERTS
    ),
    peers={"grouped_mm": _peer_grouped_mm},
    bad_inputs=_bad_inputs(),
    modes=("fwd",),
    # The reference loops in Python over the experts that were hit, with data-dependent shapes (nonzero, where):
    # torch.compile graph-breaks and recompiles on it, so it is no meaningful baseline.
    compile_reference=False,
)

SPECS = (MOE,)
