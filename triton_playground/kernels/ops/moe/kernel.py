"""The MoE layer's Triton kernels, part 1: the fused router and the dispatch (stages 1 and 2 of ``api.py``'s
pipeline). The grouped GEMMs and the combine (stages 3 to 5) are ``kernel_gemm.py``; read it next.

1. ``moe_router`` — one program per ``BLOCK_M`` tokens computes the ``(BLOCK_M, E)`` logits tile with
   ``tl.dot`` (the whole expert dimension, E <= 256, is one tile) and, without the logits ever leaving
   registers, the softmax + top-k of :func:`kernels.common.topk.softmax_topk` (topk_routing's, NaN contract
   included). Writes fp32 weights and int32 ids, and in training the fp32 logits (the backward's input).
   Logits stay fp32 (HF rounds them to x's dtype first; we don't,
   so near-ties are decided on the better value).
2. Dispatch (``api.py``'s ``moe_dispatch``): the ``tokens * k`` (token, slot) *pairs* (pair ``p = t*k + j``) are
   sorted by expert — stably, so within an expert in pair order — into a layout where each expert's rows start
   at a multiple of ``BLOCK_M``:

       rows  [offsets[e], offsets[e] + counts[e])       expert e's pairs, in pair order
       rows  [offsets[e] + counts[e], offsets[e+1])     padding (< BLOCK_M rows, marked -1)

   ``dispatch_count`` (a program per tile of tokens: the tile's per-expert histogram, and each pair's rank
   among the tile's pairs of the same expert, from a cumsum over a one-hot tile), ``dispatch_scan`` (one
   program: prefix sums of the histograms over tiles, counts, block-padded offsets, the padding marks) and
   ``dispatch_scatter`` (row of each pair = offsets[e] + earlier tiles' count of e + rank in tile). Integer
   sums only, so the result is deterministic; no atomics.

Precision: the router's ``tl.dot`` takes ``input_precision=PRECISION`` (``kernels/common/precision.py``: "ieee"
for fp32, whose contract TF32 would break).
"""

import triton
import triton.language as tl

from ... import _runtime as rt
from ...common.topk import softmax_topk

MAX_EXPERTS = 256  # the router keeps a token's logits over all experts in one (BLOCK_M, E) register tile

# --------------------------------------------------------------------------------------------------------------
# 1. The router: GEMM + softmax + top-k in one program
# --------------------------------------------------------------------------------------------------------------

# (BLOCK_M tokens, BLOCK_K of hidden, warps, stages). The B tile is (BLOCK_K, BLOCK_E <= 256): every config
# stays under ~82 KB of shared memory in fp32 at E = 256. (64, 32) takes 8 warps: at 4 its fp32 (FMA) dot
# spilled. The default: the biggest, (64, 64).
ROUTER_CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_K": bk}, num_warps=w, num_stages=s)
                  for m, bk, w, s in [(16, 64, 4, 2), (32, 32, 4, 3), (64, 32, 8, 3), (64, 64, 8, 2)]]


@rt.autotune(ROUTER_CONFIGS, key=["hidden", "n_experts", "top_k", "NORMALIZE"],
             default={"BLOCK_M": 64, "BLOCK_K": 64})
@triton.jit
def moe_router(
    X, R, TopW, TopI, Logits,
    n_tokens, hidden, n_experts, top_k,
    stride_xm, stride_xk, stride_re, stride_rk,
    NORMALIZE: tl.constexpr, STORE_LOGITS: tl.constexpr, PRECISION: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_TOPK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Logits (training only, ``STORE_LOGITS``): the fp32 ``(tokens, E)`` logits, contiguous, for the router's
    backward (``kernels.ops.routing``'s ``routing_bwd`` recomputes the softmax from them)."""
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
    if STORE_LOGITS:
        tl.store(Logits + rows64[:, None] * n_experts + experts[None, :], acc, mask=row_ok[:, None] & e_ok[None, :])
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
DISPATCH_CONFIGS = [triton.Config({}, num_warps=4)]


@rt.autotune(DISPATCH_CONFIGS, key=[])
@triton.jit
def dispatch_count(
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


# The scan is a single program: 8 warps, and (BLOCK_B, BLOCK_E) / (BLOCK_E, BLOCK_P) tiles of <= 4K elements
# (the wrapper sizes them), so the integer tiles and their 64-bit addresses fit in registers (8K-element tiles
# at 4 warps spilled).
SCAN_CONFIGS = [triton.Config({}, num_warps=8)]


@rt.autotune(SCAN_CONFIGS, key=[])
@triton.jit
def dispatch_scan(
    Hist, Prefix, Counts, Offsets, SortedPairs,
    n_tiles, n_experts,
    BLOCK_M: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_P: tl.constexpr,
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
    # the padding rows of each expert (fewer than BLOCK_M) are marked -1, BLOCK_P of them per expert at a time
    n_pad = padded - running
    for p0 in range(0, BLOCK_M, BLOCK_P):
        pad = p0 + tl.arange(0, BLOCK_P)
        tl.store(SortedPairs + (starts + running)[:, None] + pad[None, :], tl.full([BLOCK_E, BLOCK_P], -1, tl.int32),
                 mask=e_ok[:, None] & (pad[None, :] < n_pad[:, None]))


@rt.autotune(DISPATCH_CONFIGS, key=[])
@triton.jit
def dispatch_scatter(
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
