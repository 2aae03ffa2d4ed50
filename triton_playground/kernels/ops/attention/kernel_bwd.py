"""The backward Triton kernels of attention (FlashAttention-2); the forward and its tiling are in ``kernel.py``,
the mask, the block walk and the tile loads (TMA or pointers) used here in ``blocks.py``.

With ``P = 2^(s - lse)`` recomputed from the forward's saved lse (not stored: it is ``q_len x kv_len``), ``dO``
the output gradient and ``delta_i = rowsum(dO_i * O_i)``:

    dV = P^T @ dO;   dP = dO @ V^T;   dS = P * (dP - delta);   dQ = scale * dS @ K;   dK = scale * dS^T @ Q

Three kernels: :func:`attn_bwd_delta` (delta, one pass over O and dO); :func:`attn_bwd_dkdv` — a program owns
``BLOCK_N`` keys of one KV head, keeps k, v and the dk, dv accumulators in registers and walks the query blocks
that see those keys, for every query head of the group in turn (GQA sums dk, dv over the group right there, no
atomics); :func:`attn_bwd_dq` — a program owns ``BLOCK_M`` queries and walks their visible key blocks, like the
forward. Both use the forward's three-loop block skipping (masked edge, unmasked interior, masked diagonal:
``walk_blocks``, with their own loop bodies), with the ranges seen from the other side. fp16/bf16: ``p`` and
``dS`` are rounded to the input dtype for their matmuls; every accumulator is fp32. With ``TMA`` the resident
and streamed tiles arrive by TMA and dq, dk, dv leave by TMA stores; lse and delta are rows of fp32 (pointers).

Which launches (the matmuls a visible tile costs: P^T, dV, dP^T and dK in dK/dV, P, dP and dQ in dQ; seven where
the math needs five, since dQ recomputes P and dP):

* dense attention (``api.py``) of 4096 keys or more, without a window or with one of 1024 keys or more: delta,
  then dK/dV with ``DQ_ADD``: each tile also forms its share of dq,
  ``scale * dS @ K`` (the fifth matmul), and adds it atomically into an fp32 accumulator that the host zeroed
  and then casts into dq (FlashAttention-3's backward). Five matmuls a tile, not seven: the backward is
  compute-bound at length, and this cuts its FLOPs by 2/7. The order of a row's atomic adds varies between runs
  on a GPU, so dq is not bit-for-bit reproducible there (as in FlashAttention's backward).
* packed sequences (``varlen.py``) of at most 128 keys (``WHOLE``): dK/dV alone; its one key tile is the
  sequence's every key, so each query block's dq is complete in the program that walks it (stored, no atomics)
  and its delta is formed there from o and dO.
* shorter sequences or windows, and longer packed sequences: delta, dK/dV, dQ (each row of dq written once, by
  its own program; a short window's band spans few key blocks, and there the atomic traffic costs more than the
  two matmuls it saves; a short sequence's dK/dV grid is under a wave, and dQ's own launch splits the work).
"""

import triton
import triton.language as tl

from ... import _runtime as rt
from .blocks import d_mask, head_rows, key_range, load_rows, query_block, sequence, store_rows, visible, walk_blocks
from .kernel import SMEM_BUDGET, TUNE_KEY, fits, tile_configs

# Configs: see kernel.py's note (tiles times the TMA axis, the rules keep and fits). dK/dV: (BLOCK_M query rows
# streamed, BLOCK_N keys resident, num_warps, num_stages); it holds two fp32 accumulators besides k and v, so it
# streams short query tiles. Its BLOCK_N rows are the wgmma's M: k @ q^T, v @ dO^T, dS^T @ q, P^T @ dO.
DKDV_TILES = [
    (32, 128, 8, 2),
    (32, 64, 8, 2),
    (16, 128, 8, 2),
    (16, 64, 4, 2),  # head dim 256 / fp32
    (32, 32, 8, 2),  # whole short sequences (WHOLE, <= 32 keys): mma.sync, see dkdv_fits
]
# dQ: (BLOCK_M queries resident, BLOCK_N keys streamed, num_warps, num_stages), like the forward.
DQ_TILES = [
    (128, 64, 8, 3),
    (128, 128, 8, 2),
    (64, 64, 4, 2),
    (64, 32, 4, 2),  # head dim 256 / fp32
]
DKDV_CONFIGS = tile_configs(DKDV_TILES)
DQ_CONFIGS = tile_configs(DQ_TILES)
DKDV_DEFAULT = {"BLOCK_M": 32, "BLOCK_N": 128, "TMA": True}  # the interpreter's
DQ_DEFAULT = {"BLOCK_M": 128, "BLOCK_N": 64, "TMA": True}


WHOLE_MAX = max(n for _, n, _, _ in DKDV_TILES)  # the longest sequence a dK/dV program can hold whole (128 keys)


def dkdv_fits(configs, nargs):
    """dK/dV's rule: k and v resident (BLOCK_N rows), q and dO streamed (BLOCK_M rows).

    ``WHOLE`` (packed sequences of at most WHOLE_MAX keys: each program holds its sequence's every key and
    computes delta and dq too, see :func:`attn_bwd_dkdv`): only key tiles that hold the longest sequence
    (``N_BUCKET``), and of those the shortest: over 32-key documents a 32-key tile computes 1.94 times the
    visible pairs, a 64-key one 3.9 times (the 32-key tile is under a warpgroup's 64 rows: mma.sync; its work is
    half the 64-row tile's). Otherwise the 32-key tile is dropped: on long sequences it only adds trips."""
    if nargs.get("WHOLE"):
        if nargs["BLOCK_D"] >= 128:
            # head dim 128: the o tile, delta and the dq tile on top of dk, dv leave room for at most 2048 pairs a
            # tile on 8 warps, and only on the pointer path (the TMA variants, eight descriptors a program, spill
            # 8-160 bytes; 32 x 128 tiles 20 without TMA, 4-warp ones 12: triton-playground report
            # attention_varlen)
            configs = [c for c in configs if not c.kwargs["TMA"] and c.num_warps == 8
                       and c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 2048]
        whole = [c for c in configs if c.kwargs["BLOCK_N"] >= nargs["N_BUCKET"]]
        shortest = min(c.kwargs["BLOCK_N"] for c in whole)
        configs = [c for c in whole if c.kwargs["BLOCK_N"] == shortest]
        tensors = ("Q", "K", "V", "DO", "DK", "DV", "O", "DQ")
    else:
        configs = [c for c in configs if c.kwargs["BLOCK_N"] > 32]
        tensors = ("Q", "K", "V", "DO", "DK", "DV")
    if nargs.get("DQ_ADD"):
        # the atomic dq traffic is per (query row, key block): only the widest key tile (128), which halves it;
        # and at head dim 128 only 16 query rows, since a 32-row tile's dq share (a third fp32 accumulator beside
        # dk and dv, and its atomic addresses) spills with TMA (84 bytes, triton-playground report attention)
        wide = [c for c in configs if c.kwargs["BLOCK_N"] == WHOLE_MAX]
        configs = [c for c in wide if nargs["BLOCK_D"] < 128 or c.kwargs["BLOCK_M"] == 16] or wide or configs
    return fits(configs, nargs, "BLOCK_N", "BLOCK_M", 2, short_q=False, tensors=tensors)


def whole_keys(block_d, esize):
    """The longest sequence (keys) a WHOLE dK/dV program can hold at this padded head dim and element size: the
    widest key tile of which some config fits SMEM_BUDGET (kernel.py's estimate, k and v resident, q and dO
    streamed), 0 if none. The launch goes WHOLE only up to it, so the rule above never has to keep a config over
    the budget. Past head dim 128, none: dk, dv, the o tile and the dq tile do not fit a tile's registers."""
    if block_d > 128:
        return 0
    return max((n for m, n, _, s in DKDV_TILES if (2 * n + s * 2 * m) * block_d * esize <= SMEM_BUDGET), default=0)


def dq_fits(configs, nargs):
    """dQ's rule: q and dO resident (BLOCK_M rows), k and v streamed (BLOCK_N rows)."""
    return fits(configs, nargs, "BLOCK_M", "BLOCK_N", 2, short_q=True, tensors=("Q", "K", "V", "DO", "DQ"))


@rt.autotune([triton.Config({"BLOCK_M": 64}, num_warps=4)], key=["BLOCK_D"])
@triton.jit
def attn_bwd_delta(
    O, DO, DELTA, strides_o, strides_do,
    H, M,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta_i = sum_d dO[i, d] * O[i, d]   (= rowsum(P * dP), the softmax backward's row term)."""
    # dense rows only: packed inputs come as one (1, heads, total_q, head_dim) batch (their delta rows are
    # per token, whatever the sequence)
    pid_bh, q0, k0, M, N, stats, h, hk, start_m, offs_m, rows_m, m_ok, offs_d, d_ok = query_block(
        H, 1, M, M, None, None, HEAD_DIM, BLOCK_D, BLOCK_M, False)
    o = load_rows(head_rows(O, strides_o, q0, h, M, HEAD_DIM, BLOCK_M, BLOCK_D, False), strides_o, start_m, M,
                  offs_d, d_ok, BLOCK_M, True, False)
    do = load_rows(head_rows(DO, strides_do, q0, h, M, HEAD_DIM, BLOCK_M, BLOCK_D, False), strides_do, start_m, M,
                   offs_d, d_ok, BLOCK_M, True, False)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + stats + rows_m, delta, mask=m_ok)


# --------------------------------------------------------------------------------------------------------------
# dK, dV: a program per key block of one KV head
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _dkdv_block(state, ctx, start_m, M, N, W, qk_scale, MASK: tl.constexpr, CAUSAL: tl.constexpr,
                WINDOWED: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr):
    """Accumulate dk, dv of one key block by the query block [start_m, start_m + BLOCK_M), in the transposed
    (key-major) frame; walk_blocks' body."""
    dk, dv = state
    k, v, q_rows, do_rows, lse_base, delta_base, strides_q, strides_do, offs_n, offs_d, d_ok = ctx
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = load_rows(q_rows, strides_q, start_m, M, offs_d, d_ok, BLOCK_M, MASK, TMA)
    do = load_rows(do_rows, strides_do, start_m, M, offs_d, d_ok, BLOCK_M, MASK, TMA)
    if MASK:
        lse = tl.load(lse_base + offs_m, mask=offs_m < M, other=0.0)
        delta = tl.load(delta_base + offs_m, mask=offs_m < M, other=0.0)
    else:  # interior block: every row exists
        lse = tl.load(lse_base + offs_m)
        delta = tl.load(delta_base + offs_m)
    dk, dv, _ = _dk_dv_of_block(dk, dv, k, v, q, do, lse, delta, offs_m, offs_n, M, N, W, qk_scale, MASK, CAUSAL,
                                WINDOWED, PRECISION)
    return dk, dv


@triton.jit
def _dk_dv_of_block(dk, dv, k, v, q, do, lse, delta, offs_m, offs_n, M, N, W, qk_scale, MASK: tl.constexpr,
                    CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, PRECISION: tl.constexpr):
    """The four matmuls of a key block against a query block, in the transposed (key-major) frame: P^T
    (BLOCK_N, BLOCK_M) recomputed from the forward's log-sum-exp (base 2), dV += P^T dO, dP^T = V dO^T,
    dS^T = P^T * (dP^T - delta), dK += dS^T Q. Returns (dk, dv, dS^T in q's dtype) for a caller that also forms
    dq from dS."""
    pt = tl.exp2(tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale - lse[None, :])
    if MASK:
        pt = tl.where(tl.trans(visible(offs_m, offs_n, M, N, W, CAUSAL, WINDOWED)), pt, 0.0)
    dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
    dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
    dst = (pt * (dpt - delta[None, :])).to(q.dtype)
    dk += tl.dot(dst, q, input_precision=PRECISION)
    return dk, dv, dst


@triton.jit
def _dkdv_dq_block(state, ctx, start_m, M, N, W, qk_scale, MASK: tl.constexpr, CAUSAL: tl.constexpr,
                   WINDOWED: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr,
                   WHOLE: tl.constexpr):
    """:func:`_dkdv_block` that also forms this key block's share of the query block's dq, ``scale * dS @ K``
    (the fifth matmul, in place of the dQ kernel's three), and writes it:

    * ``WHOLE`` (the program holds every key of its sequence): that share is the whole dq, stored right away; and
      the query block's delta is formed here from its o and dO rows (no delta launch).
    * else (``DQ_ADD``): added into the fp32 dq accumulator with an atomic add (the key blocks of a query block
      are different programs); delta comes from attn_bwd_delta.

    Key rows past kv_len (the tile is wider than the sequence) hold zeros (TMA's zero fill, or the masked load):
    their P^T row is not masked in an interior block, but multiplied by a zero k row it adds nothing to dq, and
    their dk, dv rows are never stored."""
    dk, dv = state
    (k, v, q_rows, do_rows, o_rows, dq_rows, lse_base, delta_base, strides_q, strides_do, strides_o, strides_dq,
     offs_n, offs_d, d_ok, sm_scale) = ctx
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = load_rows(q_rows, strides_q, start_m, M, offs_d, d_ok, BLOCK_M, MASK, TMA)
    do = load_rows(do_rows, strides_do, start_m, M, offs_d, d_ok, BLOCK_M, MASK, TMA)
    if WHOLE:  # attn_bwd_delta's row term; rows past q_len load as zeros
        o = load_rows(o_rows, strides_o, start_m, M, offs_d, d_ok, BLOCK_M, MASK, TMA)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    elif MASK:
        delta = tl.load(delta_base + offs_m, mask=offs_m < M, other=0.0)
    else:  # interior block: every row exists
        delta = tl.load(delta_base + offs_m)
    if MASK:
        lse = tl.load(lse_base + offs_m, mask=offs_m < M, other=0.0)
    else:
        lse = tl.load(lse_base + offs_m)
    dk, dv, dst = _dk_dv_of_block(dk, dv, k, v, q, do, lse, delta, offs_m, offs_n, M, N, W, qk_scale, MASK, CAUSAL,
                                  WINDOWED, PRECISION)
    dq = tl.dot(tl.trans(dst), k, input_precision=PRECISION) * sm_scale
    if WHOLE:
        store_rows(dq_rows, strides_dq, start_m, M, offs_d, d_ok, dq.to(q.dtype), BLOCK_M, TMA)
    else:  # dq_rows: the head's base pointer in the fp32 accumulator (atomics take pointers, never TMA)
        tl.atomic_add(dq_rows + offs_m.to(tl.int64)[:, None] * strides_dq[2] + offs_d[None, :] * strides_dq[3], dq,
                      mask=(offs_m < M)[:, None] & d_ok[None, :], sem="relaxed")
    return dk, dv


@triton.jit
def _whole_block(state, ctx, start_m, M, N, W, qk_scale, MASK: tl.constexpr, CAUSAL: tl.constexpr,
                 WINDOWED: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr):
    return _dkdv_dq_block(state, ctx, start_m, M, N, W, qk_scale, MASK, CAUSAL, WINDOWED, PRECISION, TMA, BLOCK_M,
                          True)


@triton.jit
def _dq_add_block(state, ctx, start_m, M, N, W, qk_scale, MASK: tl.constexpr, CAUSAL: tl.constexpr,
                  WINDOWED: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr):
    return _dkdv_dq_block(state, ctx, start_m, M, N, W, qk_scale, MASK, CAUSAL, WINDOWED, PRECISION, TMA, BLOCK_M,
                          False)


@rt.autotune(DKDV_CONFIGS, key=TUNE_KEY + ["WHOLE", "DQ_ADD"], default=DKDV_DEFAULT, prune=dkdv_fits,
             reset_to_zero=["DQ"])
@triton.jit
def attn_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV, O, DQ, CU_SEQLENS_Q, CU_SEQLENS_K,
    strides_q, strides_k, strides_v, strides_do, strides_dk, strides_dv, strides_o, strides_dq,
    H, M, N, GROUP, W, qk_scale, sm_scale,
    M_BUCKET, N_BUCKET, W_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
    VARLEN: tl.constexpr, PRECISION: tl.constexpr, TMA_FITS: tl.constexpr, WHOLE: tl.constexpr,
    DQ_ADD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr,
):
    # WHOLE (packed sequences, each at most BLOCK_N keys: the launch guarantees it, see varlen.py): the one key
    # block of a program is its sequence's every key, so each (query head, query block) of the sequence is walked
    # by this program alone, once: it computes that block's delta (rowsum(dO * O)) and its whole dq as well,
    # five matmuls a tile instead of this kernel's four plus dQ's three, and the delta and dQ launches are not
    # made. O and DQ (and their strides) are read only then.
    # DQ_ADD (dense attention, long bands: see api.py): the same fifth matmul on every tile, its dq share added
    # atomically into DQ, an fp32 accumulator zeroed by the launch (FlashAttention-3's backward): dQ's own launch,
    # which recomputed P and dP (three matmuls a tile where this adds one), is not made.
    # a TMA config runs TMA only where the launch found the tensors describable (rt.tma_ok): a TMA config
    # that the tuner cached for another call of this key, or that a test forced, stays correct
    DESCRIBED: tl.constexpr = TMA and TMA_FITS
    # grid: (key blocks, batch * kv_heads); packed (VARLEN): (key blocks of the longest sequence,
    # sequences * kv_heads), and M, N are this program's sequence's lengths from here on
    pid_n = tl.program_id(0)
    pid_bhk = tl.program_id(1)
    HK = H // GROUP
    seq = pid_bhk // HK
    hk = (pid_bhk % HK).to(tl.int64)
    stats_per_head = M  # the lse / delta rows of one query head: q_len, or packed, total_q
    q0, k0, M, N, stats = sequence(seq, hk * GROUP, M, N, H, CU_SEQLENS_Q, CU_SEQLENS_K, VARLEN)
    start_n = pid_n * BLOCK_N
    q_desc_rows = M  # a TMA descriptor's shape: at least one row (a packed sequence may have no query)
    if VARLEN:
        if start_n >= N:  # past this sequence's end (the grid covers the longest): nothing to do
            return
        q_desc_rows = tl.maximum(M, 1)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = d_mask(offs_d, HEAD_DIM, BLOCK_D)
    k = load_rows(head_rows(K, strides_k, k0, hk, N, HEAD_DIM, BLOCK_N, BLOCK_D, DESCRIBED), strides_k, start_n, N,
                  offs_d, d_ok, BLOCK_N, True, DESCRIBED)
    v = load_rows(head_rows(V, strides_v, k0, hk, N, HEAD_DIM, BLOCK_N, BLOCK_D, DESCRIBED), strides_v, start_n, N,
                  offs_d, d_ok, BLOCK_N, True, DESCRIBED)

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
        stats_h = stats + g * stats_per_head
        q_rows = head_rows(Q, strides_q, q0, h, q_desc_rows, HEAD_DIM, BLOCK_M, BLOCK_D, DESCRIBED)
        do_rows = head_rows(DO, strides_do, q0, h, q_desc_rows, HEAD_DIM, BLOCK_M, BLOCK_D, DESCRIBED)
        if WHOLE:  # [m_lo, m_hi) is then every query row: start_n = 0 and end_n = kv_len (see above)
            o_rows = head_rows(O, strides_o, q0, h, q_desc_rows, HEAD_DIM, BLOCK_M, BLOCK_D, DESCRIBED)
            dq_rows = head_rows(DQ, strides_dq, q0, h, q_desc_rows, HEAD_DIM, BLOCK_M, BLOCK_D, DESCRIBED)
            ctx = (k, v, q_rows, do_rows, o_rows, dq_rows, LSE + stats_h, DELTA, strides_q, strides_do, strides_o,
                   strides_dq, offs_n, offs_d, d_ok, sm_scale)
            dk, dv = walk_blocks(_whole_block, (dk, dv), ctx, (m_lo, full_lo, full_hi, m_hi), M, N, W, qk_scale,
                                 CAUSAL, WINDOWED, PRECISION, DESCRIBED, BLOCK_M)
        elif DQ_ADD:  # DQ: the fp32 accumulator, by pointers
            dq_rows = head_rows(DQ, strides_dq, q0, h, M, HEAD_DIM, BLOCK_M, BLOCK_D, False)
            ctx = (k, v, q_rows, do_rows, q_rows, dq_rows, LSE + stats_h, DELTA + stats_h, strides_q, strides_do,
                   strides_q, strides_dq, offs_n, offs_d, d_ok, sm_scale)
            dk, dv = walk_blocks(_dq_add_block, (dk, dv), ctx, (m_lo, full_lo, full_hi, m_hi), M, N, W, qk_scale,
                                 CAUSAL, WINDOWED, PRECISION, DESCRIBED, BLOCK_M)
        else:
            ctx = (k, v, q_rows, do_rows, LSE + stats_h, DELTA + stats_h, strides_q, strides_do, offs_n, offs_d,
                   d_ok)
            dk, dv = walk_blocks(_dkdv_block, (dk, dv), ctx, (m_lo, full_lo, full_hi, m_hi), M, N, W, qk_scale,
                                 CAUSAL, WINDOWED, PRECISION, DESCRIBED, BLOCK_M)

    dk = dk * sm_scale
    dk_rows = head_rows(DK, strides_dk, k0, hk, N, HEAD_DIM, BLOCK_N, BLOCK_D, DESCRIBED)
    store_rows(dk_rows, strides_dk, start_n, N, offs_d, d_ok, dk.to(DK.dtype.element_ty), BLOCK_N, DESCRIBED)
    dv_rows = head_rows(DV, strides_dv, k0, hk, N, HEAD_DIM, BLOCK_N, BLOCK_D, DESCRIBED)
    store_rows(dv_rows, strides_dv, start_n, N, offs_d, d_ok, dv.to(DV.dtype.element_ty), BLOCK_N, DESCRIBED)


# --------------------------------------------------------------------------------------------------------------
# dQ: a program per query block, like the forward
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _dq_block(state, ctx, start_n, M, N, W, qk_scale, MASK: tl.constexpr, CAUSAL: tl.constexpr,
              WINDOWED: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_N: tl.constexpr):
    """Accumulate dq of one query block by the key block [start_n, start_n + BLOCK_N); walk_blocks' body."""
    (dq,) = state
    q, do, lse, delta, k_rows, v_rows, strides_k, strides_v, offs_m, offs_d, d_ok = ctx
    k = load_rows(k_rows, strides_k, start_n, N, offs_d, d_ok, BLOCK_N, MASK, TMA)
    v = load_rows(v_rows, strides_v, start_n, N, offs_d, d_ok, BLOCK_N, MASK, TMA)
    p = tl.exp2(tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale - lse[:, None])
    if MASK:
        p = tl.where(visible(offs_m, start_n + tl.arange(0, BLOCK_N), M, N, W, CAUSAL, WINDOWED), p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return (dq,)


@rt.autotune(DQ_CONFIGS, key=TUNE_KEY, default=DQ_DEFAULT, prune=dq_fits)
@triton.jit
def attn_bwd_dq(
    Q, K, V, DO, LSE, DELTA, DQ, CU_SEQLENS_Q, CU_SEQLENS_K, strides_q, strides_k, strides_v, strides_do, strides_dq,
    H, M, N, GROUP, W, qk_scale, sm_scale,
    M_BUCKET, N_BUCKET, W_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
    VARLEN: tl.constexpr, PRECISION: tl.constexpr, TMA_FITS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr,
):
    # a TMA config runs TMA only where the launch found the tensors describable (rt.tma_ok): a TMA config
    # that the tuner cached for another call of this key, or that a test forced, stays correct
    DESCRIBED: tl.constexpr = TMA and TMA_FITS
    # grid: (query blocks, batch * q_heads); packed (VARLEN): (query blocks of the longest sequence,
    # sequences * q_heads), and M, N are this program's sequence's lengths from here on
    pid_bh, q0, k0, M, N, stats, h, hk, start_m, offs_m, rows_m, m_ok, offs_d, d_ok = query_block(
        H, GROUP, M, N, CU_SEQLENS_Q, CU_SEQLENS_K, HEAD_DIM, BLOCK_D, BLOCK_M, VARLEN)
    if VARLEN:
        if start_m >= M:  # past this sequence's end (the grid covers the longest): nothing to do
            return
    q = load_rows(head_rows(Q, strides_q, q0, h, M, HEAD_DIM, BLOCK_M, BLOCK_D, DESCRIBED), strides_q, start_m, M,
                  offs_d, d_ok, BLOCK_M, True, DESCRIBED)
    do = load_rows(head_rows(DO, strides_do, q0, h, M, HEAD_DIM, BLOCK_M, BLOCK_D, DESCRIBED), strides_do, start_m,
                   M, offs_d, d_ok, BLOCK_M, True, DESCRIBED)
    lse = tl.load(LSE + stats + rows_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + stats + rows_m, mask=m_ok, other=0.0)
    k_rows = head_rows(K, strides_k, k0, hk, N, HEAD_DIM, BLOCK_N, BLOCK_D, DESCRIBED)
    v_rows = head_rows(V, strides_v, k0, hk, N, HEAD_DIM, BLOCK_N, BLOCK_D, DESCRIBED)

    bounds = key_range(start_m, M, N, W, CAUSAL, WINDOWED, BLOCK_M, BLOCK_N)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    ctx = (q, do, lse, delta, k_rows, v_rows, strides_k, strides_v, offs_m, offs_d, d_ok)
    (dq,) = walk_blocks(_dq_block, (dq,), ctx, bounds, M, N, W, qk_scale, CAUSAL, WINDOWED, PRECISION, DESCRIBED,
                        BLOCK_N)
    dq = dq * sm_scale
    dq_rows = head_rows(DQ, strides_dq, q0, h, M, HEAD_DIM, BLOCK_M, BLOCK_D, DESCRIBED)
    store_rows(dq_rows, strides_dq, start_m, M, offs_d, d_ok, dq.to(DQ.dtype.element_ty), BLOCK_M, DESCRIBED)
