"""The MoE layer's Triton kernels, part 3: the backward's two new kernels (``api.py``'s ``_moe_backward`` runs
them, with forward kernels reused where the math is the same). Read ``kernel.py`` and ``kernel_gemm.py`` first.

Per pair ``p = t*k + j`` (token t, slot j, expert e, routing weight w = w[t, j]) the forward computed

    [g | u]  = x_t @ gate_up[e]^T                        (2*inner)    stored in training (``Pre``, sorted rows)
    a        = silu(g) * u                               (inner)      stored anyway (``H``, the down GEMM's input)
    y_p      = a @ down[e]^T                             (hidden)
    out_t    = sum_j w[t, j] * y_p

so with ``dy = dout_t`` (the token's output gradient, the same for its k pairs):

    c_p        = dy @ down[e]                            (inner)     grouped GEMM, gathered A:    ``moe_down_bwd``
    dw[t, j]   = <dy, y_p> = <c_p, a>                                its epilogue (a from g, u)
    da         = w * c_p
    dg         = da * u * silu'(g),   silu'(g) = s + g s (1 - s),  s = sigmoid(g)      }  its epilogue, stored as
    du         = da * silu(g)                                                          }  ``dPre`` (sorted rows)
    ddown[e]   = sum_{p of e} (w dy)^T a                 (hidden, inner)   per-expert weight GEMM: ``moe_weight_grad``
    dgate_up[e]= sum_{p of e} [dg | du]^T x_t            (2*inner, hidden) per-expert weight GEMM: ``moe_weight_grad``
    dx_t      += sum_j [dg | du] @ gate_up[e]            (hidden)    ``moe_down`` (unweighted, gate_up read
                                                                     transposed), then ``moe_combine``

and the router's part (``api.py``): dw through ``kernels.ops.routing``'s ``routing_bwd`` (softmax, top-k and the
normalize renormalisation) into dlogits, then ``drouter = dlogits^T x`` and ``dx_t += dlogits @ router_weight``.

Stored, not recomputed (the choice the issue asks for): the backward needs g and u at every (pair, inner). They
are one extra ``(tokens*k, 2*inner)`` store in the forward's gate/up epilogue (training only) and one read here;
recomputing them would repeat the gate/up GEMM, ``4 * hidden * inner`` FLOPs a pair, a third more than the
backward's own ``12 * hidden * inner``. At OLMoE's shape (hidden 2048, inner 1024, bf16) the store is 4 KB a pair
written once and read once, against 8.4 MFLOP a pair of recomputation (which would also re-read the pair's
4 KB x row through the gather): on an H100 (~990 TFLOP/s, ~3.3 TB/s) 8 KB moves in the time of ~2.5 MFLOP, so
storing is the cheaper side by ~3x, for 4 KB a pair of activation memory (134 MB a layer at 4096 tokens). The
activation ``a`` itself is the down GEMM's input, kept from the forward (the epilogue here recomputes it from g, u
for dw, as the forward did, rather than reading a third array).

Determinism, no atomics anywhere:

* ``moe_weight_grad``: a program owns one ``(BLOCK_N, BLOCK_C)`` tile of one expert's weight gradient and loops
  over that expert's rows (its dispatch segment) in order, summing in its fp32 accumulator. Every element of
  dW is written by exactly one program; an expert with no token gets a 0-trip loop and writes zeros.
* dx: each pair's row is written once (scattered to pair order by ``moe_down``) and ``moe_combine`` sums a
  token's k rows in slot order, plus the router's term.
* dw: ``moe_down_bwd``'s N-tiles each hold part of the inner sum ``<c_p, a>``; each writes its partial sum into
  its own band of ``DWPart`` (bands of ``DW_BAND`` inner columns, as ``kernels/ops/mlp``'s bias gradient: a
  program with a wider tile writes zeros in its other bands), and ``api.py`` sums the bands in a fixed order.

Tiling. ``moe_down_bwd`` is ``moe_gate_up``'s grouped GEMM (same program -> (expert, M-block, N-tile) mapping,
``_block_of_expert``; x's gather becomes dout's gather) with one accumulator. ``moe_weight_grad`` computes
``dW[e] = L_e^T R_e`` with the reduction over the expert's rows: the A operand is a loaded ``(BLOCK_M, BLOCK_N)``
tile transposed in registers/shared memory (wgmma reads a transposed 16-bit operand), B a ``(BLOCK_M, BLOCK_C)``
tile; either may be gathered by token (``L_BY_TOKEN``: dout rows, scaled by the routing weight; ``R_BY_TOKEN``: x
rows) or read from the sorted layout (a, ``[dg | du]``). Both load through pointers (cp.async); TMA is left for
later (the gathered operands could not use it on Hopper anyway, see ``kernel_gemm.py``). fp32 (IEEE dots, the
checking dtype) has its own narrow tiles, as the forward's GEMMs.
"""

import triton
import triton.language as tl

from ... import _runtime as rt
from .kernel_gemm import _block_of_expert, _keeper

DW_BAND = 32  # DWPart's bands of inner columns: every moe_down_bwd BLOCK_N is a multiple
_DW_BAND = tl.constexpr(DW_BAND)  # the same, as the kernel reads it


def _configs(tensor_core_tiles, fma_tiles, names):
    """Configs from tiles (values for ``names``, then warps, stages), and which of them are for fp32's FMA dots."""
    def make(tiles):
        return [triton.Config(dict(zip(names, t[:-2]), GROUP_M=8), num_warps=t[-2], num_stages=t[-1])
                for t in tiles]

    fma = make(fma_tiles)
    return make(tensor_core_tiles) + fma, fma


# --------------------------------------------------------------------------------------------------------------
# The gradient of the activation: c = dout @ down[e] per expert block, the SwiGLU backward and dw in its epilogue
# --------------------------------------------------------------------------------------------------------------

# (BLOCK_N of inner, BLOCK_K of hidden, warps, stages); BLOCK_M is the dispatch's. The epilogue holds the
# accumulator and the g and u tiles (three (BLOCK_M, BLOCK_N) fp32 tiles): the rule keeps the tiles with at most
# 32 accumulator values a thread (the report: (BLOCK_M, BLOCK_N) = (128, 64) at 4 warps, 64 a thread, sits at
# 255 registers and spills 292 bytes; every tile at <= 32 stays under 185, spill-free). A stage is
# BLOCK_M*BLOCK_K + BLOCK_K*BLOCK_N elements.
DOWN_BWD_CONFIGS, DOWN_BWD_FMA = _configs([(64, 64, 8, 3), (64, 32, 8, 4), (32, 64, 4, 4), (64, 64, 4, 4)],
                                          [(32, 16, 8, 3), (32, 32, 8, 3)], ("BLOCK_N", "BLOCK_K"))


@rt.autotune(DOWN_BWD_CONFIGS, key=["hidden", "inner", "BLOCK_M"],
             prune=_keeper(DOWN_BWD_FMA, max_acc_per_thread=32),
             default={"BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 8})
@triton.jit
def moe_down_bwd(
    DOut, D, Pre, DPre, RouteW, DWPart, SortedPairs, Offsets, Counts,
    n_experts, hidden, inner, top_k, n_pairs, n_blocks,
    stride_om, stride_oh, stride_de, stride_dn, stride_dk, stride_pm, stride_qm,
    PRECISION: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """DOut: (tokens, hidden), D: (E, hidden, inner), Pre: (rows, 2*inner) [g | u]; writes DPre: (rows, 2*inner)
    [dg | du] and DWPart: (cdiv(inner, DW_BAND), tokens*k) fp32, band b holding its columns' share of dw."""
    row0, rows, row_ok, e, pid_n, has_work = _block_of_expert(
        tl.program_id(0), n_blocks, tl.cdiv(inner, BLOCK_N), Offsets, Counts, n_experts, BLOCK_E, BLOCK_M, GROUP_M)
    # gather: row r of the block is pair p, token p // k of dout
    pair = tl.load(SortedPairs + rows, mask=row_ok, other=0)
    tok64 = (pair // top_k).to(tl.int64)
    n0 = pid_n * BLOCK_N
    cols = n0 + tl.arange(0, BLOCK_N)
    col_ok = cols < inner
    a_ptrs = DOut + tok64[:, None] * stride_om
    # B = down[e] as (hidden, inner): the k axis is down's rows
    b_ptrs = D + e.to(tl.int64) * stride_de + cols[None, :] * stride_dk
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    k_end = tl.where(has_work, hidden, 0)  # blocks past the last expert: no iterations
    for k0 in range(0, k_end, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < hidden
        a = tl.load(a_ptrs + kk[None, :] * stride_oh, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs + kk[:, None] * stride_dn, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    # epilogue: acc = c = dout @ down[e] on (rows, cols). g, u as the forward stored them; a = silu(g) * u.
    rows64 = rows.to(tl.int64)
    mask = row_ok[:, None] & col_ok[None, :]
    pre = Pre + rows64[:, None] * stride_pm + cols[None, :]
    g = tl.load(pre, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(pre + inner, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    silu = g * s
    # dw partial: <c, a> over this tile's columns, into band pid_n * RATIO (its other bands get zeros)
    RATIO: tl.constexpr = BLOCK_N // _DW_BAND
    dw = tl.sum(tl.where(mask, acc * silu * u, 0.0), axis=1)
    band = pid_n * RATIO + tl.arange(0, RATIO)
    part = tl.where(tl.arange(0, RATIO)[None, :] == 0, dw[:, None], 0.0)
    tl.store(DWPart + band.to(tl.int64)[None, :] * n_pairs + pair.to(tl.int64)[:, None], part,
             mask=row_ok[:, None] & (band < tl.cdiv(inner, _DW_BAND))[None, :])
    # SwiGLU backward on da = w * c
    w = tl.load(RouteW + pair, mask=row_ok, other=0.0)
    da = acc * w[:, None]
    dg = da * u * (s + silu * (1.0 - s))  # silu'(g) = s + g s (1 - s)
    du = da * silu
    dpre = DPre + rows64[:, None] * stride_qm + cols[None, :]
    tl.store(dpre, dg.to(DPre.dtype.element_ty), mask=mask)
    tl.store(dpre + inner, du.to(DPre.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------------------------
# The experts' weight gradients: dW[e] = L_e^T R_e, one program per tile of dW, reducing over the expert's rows
# --------------------------------------------------------------------------------------------------------------

# (BLOCK_N rows of dW, BLOCK_C columns of dW, BLOCK_M rows of the reduction, warps, stages). A stage holds
# BLOCK_M * (BLOCK_N + BLOCK_C) elements: <= 32 KB in 16 bits. The default: the biggest tile, (128, 128).
WEIGHT_GRAD_CONFIGS, WEIGHT_GRAD_FMA = _configs(
    [(128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 32, 4, 4)],
    [(32, 32, 16, 4, 3), (64, 32, 16, 8, 3)], ("BLOCK_N", "BLOCK_C", "BLOCK_M"))


@rt.autotune(WEIGHT_GRAD_CONFIGS, key=["n_dim", "c_dim", "L_BY_TOKEN", "R_BY_TOKEN"],
             prune=_keeper(WEIGHT_GRAD_FMA), default={"BLOCK_N": 128, "BLOCK_C": 128})
@triton.jit
def moe_weight_grad(
    L, R, DW, SortedPairs, Offsets, Counts, RouteW,
    n_experts, n_dim, c_dim, top_k, experts_per_program,
    stride_lm, stride_ln, stride_rm, stride_rc, stride_we, stride_wn, stride_wc,
    L_BY_TOKEN: tl.constexpr, R_BY_TOKEN: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, GROUP_M: tl.constexpr,
):
    """DW: (E, n_dim, c_dim), DW[e] = sum over expert e's rows r of L[r]^T R[r] (fp32 sums, stored in DW's dtype).

    A row r of the sorted layout is pair p = SortedPairs[r], token p // k. ``L_BY_TOKEN``: L is token-major
    (tokens, n_dim) and row r reads L[token] * RouteW[p] (dout, for ddown); else L is (rows, n_dim) in sorted
    order. ``R_BY_TOKEN`` likewise for R (x, for dgate_up; never scaled). With neither, SortedPairs and RouteW are
    not read, and a "group" need not be an expert: ``api.py``'s router gradient sums chunks of tokens this way
    (DW: (chunks, E, hidden) partial sums of dlogits^T x).

    Grid: cdiv(E, experts_per_program) * tiles of (n_dim, c_dim); a program does its tile for
    ``experts_per_program`` consecutive experts in turn (1 on a GPU, where programs are cheap and parallel; a
    few experts a program under the interpreter, where every program, empty experts' too, costs a Python run).
    """
    n_tiles_n = tl.cdiv(n_dim, BLOCK_N)
    n_tiles_c = tl.cdiv(c_dim, BLOCK_C)
    per_group = n_tiles_n * n_tiles_c
    pid = tl.program_id(0)
    e0 = (pid // per_group) * experts_per_program  # consecutive programs share experts: their rows stay in L2
    tile = pid % per_group
    pid_n = tile % n_tiles_n  # n fastest: programs in flight share the R (BLOCK_M, BLOCK_C) tiles
    pid_c = tile // n_tiles_n
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cs = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    n_ok = ns < n_dim
    c_ok = cs < c_dim
    for e in range(e0, tl.minimum(e0 + experts_per_program, n_experts)):
        start = tl.load(Offsets + e)
        count = tl.load(Counts + e)
        acc = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
        for m0 in range(0, count, BLOCK_M):  # the expert's rows in order: a fixed summation order
            ms = m0 + tl.arange(0, BLOCK_M)
            m_ok = ms < count
            rows = start + ms
            if L_BY_TOKEN or R_BY_TOKEN:  # (else SortedPairs is never read: the router's gradient passes none)
                pair = tl.load(SortedPairs + rows, mask=m_ok, other=0)
                tok64 = (pair // top_k).to(tl.int64)
            l_rows = tok64 if L_BY_TOKEN else rows.to(tl.int64)
            r_rows = tok64 if R_BY_TOKEN else rows.to(tl.int64)
            lt = tl.load(L + l_rows[:, None] * stride_lm + ns[None, :] * stride_ln,
                         mask=m_ok[:, None] & n_ok[None, :], other=0.0)
            if L_BY_TOKEN:
                w = tl.load(RouteW + pair, mask=m_ok, other=0.0)
                lt = (lt.to(tl.float32) * w[:, None]).to(L.dtype.element_ty)
            rt_ = tl.load(R + r_rows[:, None] * stride_rm + cs[None, :] * stride_rc,
                          mask=m_ok[:, None] & c_ok[None, :], other=0.0)
            acc = tl.dot(tl.trans(lt), rt_, acc, input_precision=PRECISION)
        e64 = e0.to(tl.int64) + (e - e0)  # (under the interpreter the loop variable is a Python int)
        tl.store(DW + e64 * stride_we + ns[:, None] * stride_wn + cs[None, :] * stride_wc,
                 acc.to(DW.dtype.element_ty), mask=n_ok[:, None] & c_ok[None, :])
