"""The Triton kernels of top-k routing: one forward, one backward, each a single launch.

    probs            = softmax(logits, dim=-1)                       (in fp32, whatever the logits' dtype)
    weights, ids     = the k largest probs, sorted descending, ties to the lower expert index
    normalize=True:  weights = weights / weights.sum(-1)

Forward tiling. A program owns ``BLOCK_M`` rows and holds each whole row of ``num_experts <= 1024`` logits in
registers (a ``(BLOCK_M, BLOCK_E)`` tile, ``BLOCK_E`` the next power of two, the extra columns masked to -inf).
One launch does everything: the row max, ``p = exp(z - max) / sum``, and then ``k`` rounds of selection, each
a max-reduction and a min-reduction over the row (``softmax_topk``, ``kernels/common/topk.py``, which the fused
MoE router shares; why selecting on the logits gives the exact order is in its docstring). The ``k`` picks are
gathered in a ``(BLOCK_M, BLOCK_K)`` register tile (``BLOCK_K = next_pow2(k)``), normalised there if asked, and
stored once.

Backward (training routers). With ``p = softmax(z)``, ``S`` the selected set and ``g`` the gradient of the
weights scattered into expert space (``G_e = g_j`` if expert ``e`` is the ``j``-th pick, else 0):

    unnormalised:  dL/dz = p * (G - sum_e G_e p_e)
    normalize:     w' = p_S / s with s = sum_S p  =>  the gradient reaching p is G' = (G - sum_j g_j w'_j) / s on
                   S (0 elsewhere), then dL/dz = p * (G' - sum_e G'_e p_e)

All of it lives in expert space, so the backward kernel needs no gather: it recomputes ``p`` from the saved
logits (one tile, cheaper than storing ``p``), scatters ``g`` with ``k`` compare-selects, and writes dz.

Rows whose softmax is undefined (the NaN contract: ``api.py``) are detected explicitly by ``softmax_max`` in
both kernels: the forward gives them NaN weights and ids 0..k-1, the backward a NaN gradient row.
"""

import triton
import triton.language as tl

from ... import _runtime as rt
from ...common.topk import softmax_max, softmax_topk

MAX_EXPERTS = 1024  # a whole row of logits stays in registers

# (BLOCK_M rows, warps). Largest tiles first: under the interpreter the first config that fits (see fits) is the
# cheapest, and the default is the biggest tile.
CONFIGS = [triton.Config({"BLOCK_M": m}, num_warps=w) for m, w in [(64, 8), (32, 4), (16, 4), (4, 2)]]


def block_e(n_experts: int) -> int:
    """The expert tile (the launch's BLOCK_E): the next power of two, at least 16."""
    return max(triton.next_power_of_2(n_experts), 16)


def fits(configs, nargs):
    """The rule: keep configs whose (BLOCK_M, BLOCK_E) row tile stays within 8K fp32 registers per program.
    (BLOCK_E from the positional n_experts: Triton's autotuner hands its prune hook those, not the keywords.)"""
    fitting = [c for c in configs if c.kwargs["BLOCK_M"] * block_e(nargs["n_experts"]) <= 8192]
    return fitting or configs[-1:]


@rt.autotune(CONFIGS, key=["n_experts", "k", "NORMALIZE"], default={"BLOCK_M": 64}, prune=fits)
@triton.jit
def routing_fwd(
    Z, W, I,
    n_rows, n_experts, k,
    stride_zm, stride_ze, stride_wm, stride_wk, stride_im, stride_ik,
    NORMALIZE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    rows64 = rows.to(tl.int64)  # rows * stride can pass 2^31 at 65536 tokens x 256 experts x strides
    cols = tl.arange(0, BLOCK_E)
    col_ok = cols < n_experts
    z = tl.load(Z + rows64[:, None] * stride_zm + cols[None, :] * stride_ze,
                mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
    top_w, top_i = softmax_topk(z, col_ok, k, NORMALIZE, BLOCK_E, BLOCK_K)
    slots = tl.arange(0, BLOCK_K)
    mask = row_ok[:, None] & (slots[None, :] < k)
    tl.store(W + rows64[:, None] * stride_wm + slots[None, :] * stride_wk, top_w.to(W.dtype.element_ty), mask=mask)
    tl.store(I + rows64[:, None] * stride_im + slots[None, :] * stride_ik, top_i.to(I.dtype.element_ty), mask=mask)


@rt.autotune(CONFIGS, key=["n_experts", "k", "NORMALIZE"], default={"BLOCK_M": 64}, prune=fits)
@triton.jit
def routing_bwd(
    Z, I, DW, DZ,
    n_rows, n_experts, k,
    stride_zm, stride_ze, stride_im, stride_ik, stride_dwm, stride_dwk, stride_dzm, stride_dze,
    NORMALIZE: tl.constexpr, BLOCK_E: tl.constexpr, PICKS: tl.constexpr, BLOCK_M: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_E)
    col_ok = cols < n_experts
    mask = row_ok[:, None] & col_ok[None, :]
    # p recomputed exactly as the forward did; an undefined row (see api.py) gets p = NaN, hence a NaN
    # gradient, without computing inf - inf on the way
    z = tl.load(Z + rows64[:, None] * stride_zm + cols[None, :] * stride_ze, mask=mask, other=0.0).to(tl.float32)
    z = tl.where(col_ok[None, :], z, float("-inf"))
    row_max, undefined = softmax_max(z)
    z = tl.where(undefined[:, None] & col_ok[None, :], 0.0, z)
    e = tl.exp(z - tl.where(undefined, 0.0, row_max)[:, None])
    p = tl.where(undefined[:, None], float("nan"), e / tl.sum(e, axis=1)[:, None])
    # scatter the k weight gradients into expert space (G) and mark the selected set (sel), PICKS picks at a
    # time: their ids and weight gradients come as (BLOCK_M, PICKS) tiles, and pick j is taken out of them by a
    # row reduction, which leaves it laid out by row like the (BLOCK_M, BLOCK_E) tiles it meets. (Loaded pick by
    # pick as row vectors instead, they pull the whole computation into a layout with many rows per thread, each
    # row carrying its own pointers: 2.5x the registers.)
    G = tl.zeros([BLOCK_M, BLOCK_E], dtype=tl.float32)
    sel = tl.zeros([BLOCK_M, BLOCK_E], dtype=tl.float32)
    slots = tl.arange(0, PICKS)
    for k0 in range(0, k, PICKS):
        pick_ok = row_ok[:, None] & (k0 + slots < k)[None, :]
        ids = tl.load(I + rows64[:, None] * stride_im + (k0 + slots)[None, :] * stride_ik, mask=pick_ok, other=-1)
        ids = ids.to(tl.int32)  # expert ids < MAX_EXPERTS; -1 off the end matches no expert
        g = tl.load(DW + rows64[:, None] * stride_dwm + (k0 + slots)[None, :] * stride_dwk, mask=pick_ok,
                    other=0.0).to(tl.float32)
        for j in tl.static_range(PICKS):
            id_j = tl.max(tl.where(slots[None, :] == j, ids, -1), axis=1)
            g_j = tl.sum(tl.where(slots[None, :] == j, g, 0.0), axis=1)
            hit = cols[None, :] == id_j[:, None]
            G = tl.where(hit, g_j[:, None], G)
            if NORMALIZE:
                sel = tl.where(hit, 1.0, sel)
    if NORMALIZE:
        s = tl.sum(sel * p, axis=1)  # sum of the unnormalised picks: >= the top pick's p >= 1/num_experts
        s = tl.where(row_ok, s, 1.0)  # rows past the end select nothing: keep them finite (never stored)
        gw = tl.sum(G * p, axis=1) / s  # sum_j g_j w'_j
        G = sel * (G - gw[:, None]) / s[:, None]
    dz = p * (G - tl.sum(G * p, axis=1)[:, None])
    tl.store(DZ + rows64[:, None] * stride_dzm + cols[None, :] * stride_dze, dz.to(DZ.dtype.element_ty), mask=mask)
