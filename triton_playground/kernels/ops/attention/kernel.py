"""The forward Triton kernels of attention (forward, split-KV combine) and their configs.

    attention(q, k, v) = softmax(scale * q @ k^T + mask) @ v

Positions and the mask (``api.py`` has the convention): query row ``i`` sits at key position
``p = kv_len - q_len + i`` (``N - M + i`` below, ``M = q_len``, ``N = kv_len``), sees keys ``j <= p`` when causal
and, with a window ``W``, only ``j > p - W``. ``blocks.visible`` is that mask on a tile.

Forward (FlashAttention-2). A program owns ``BLOCK_M`` query rows of one (batch, head) and walks the key/value
sequence in ``BLOCK_N``-wide blocks, keeping for each row a running max ``m``, a running sum ``l`` and an
unnormalised output ``acc`` (all fp32):

    s    = q @ k_blk^T * scale * log2(e)          (base 2: exp2 is the hardware's exponential)
    m'   = max(m, rowmax(s));   alpha = 2^(m - m');   p = 2^(s - m')
    l    = l * alpha + rowsum(p);   acc = acc * alpha + p @ v_blk;   m = m'

and at the end ``o = acc / l`` and ``lse = m + log2(l)`` (the log-sum-exp, base 2, saved for the backward).
Scores never touch memory: the kernel reads q once and k, v once per query block.

On Hopper (bf16/fp16) both products are warpgroup MMAs (wgmma): a 64-row slice of the tile per warpgroup of 4
warps, q and each k, v block read straight from shared memory, ``s`` and ``acc`` in registers. That fixes the
register budget of a 128-row tile at 8 warps: ``acc`` (128 x 128 fp32 at head dim 128) is 64 registers a thread,
``s`` another 32 (BLOCK_N 64) or 64 (BLOCK_N 128), ``p`` half that again.

Block skipping. The key blocks a query block needs come from its rows' positions ``p_first .. p_last``:
``[lo, hi) = [p_first - W + 1, p_last + 1)`` (clamped to ``[0, kv_len)``, ``lo`` rounded down to a block). The
loop bounds ARE that range, so blocks outside it cost nothing and run time follows the number of visible pairs.
Inside it, a block visible to every row of the query block (``n + BLOCK_N - 1 <= p_first`` and
``n > p_last - W``, and inside ``kv_len``) needs no mask; only the blocks on the diagonal and on the window's
lower edge do. So the range splits into three loops: masked edge, unmasked interior, masked diagonal
(``blocks.key_range`` computes the split, ``blocks.walk_blocks`` runs the three loops; one ``MASK`` constexpr compiles
each loop body twice). The backward's kernels walk their blocks the same way, with their own loop bodies.

Split-KV (decode). With few query rows (``q_len = 1`` against a long cache) there are only ``batch * heads``
programs — too few to fill the GPU. Then the key range of each query block is cut into ``num_splits`` chunks, one
program each, writing a partial output and its log-sum-exp (fp32); :func:`attn_combine` merges them:
``lse = log2(sum_s 2^lse_s)``, ``o = sum_s 2^(lse_s - lse) * o_s``. (The plan, how many chunks: ``api.py``.)

Loads (``blocks.py``): with ``TMA`` in the config, each tile is one TMA copy from a tensor descriptor of its head
(the copy engine writes shared memory; no address registers, which is what lets the 128 x 128 tile fit in 255
registers at head dim 128: 238, against 255 and a spill for the pointer path), else cp.async through pointers.
Either way Triton pipelines the streamed k, v blocks ``num_stages`` deep in shared memory.

Head dims that are not powers of two (1, 24, 80, 96, ...) are padded inside the kernel to ``BLOCK_D``, the next
power of two >= 16 (a ``tl.dot`` operand needs every dim >= 16): the padded columns load as zero (masked, or
outside the TMA box), which adds nothing to ``q @ k^T``, and are never written. No input is copied.

Precision: every ``tl.dot`` takes ``input_precision=PRECISION`` (``kernels/common/precision.py``: "tf32x3" for
fp32 — three TF32 tensor-core products, ~fp32 accuracy; plain TF32 would cost fp32 its accuracy, and "ieee" FMA
dots cannot hold a head-dim row per thread without spilling); fp16/bf16 use the tensor cores with ``p`` (and, in
the backward, ``dS``) rounded to the input dtype for their matmuls (as FlashAttention does); softmax statistics
and every accumulator are fp32.

Strides: each (batch, heads, seq, head_dim) tensor comes with its four strides as one tuple argument
(``strides_q = q.stride()``), so any layout is read in place (``blocks.head_rows``). ``blocks.query_block`` is
the program -> (batch, query head, KV head, query rows) setup the forward and the backward's dQ share.

Packed sequences (``VARLEN``, ``varlen.py``): the same kernels on FlashAttention's varlen layout. The batch
axis of the grid becomes the sequences; a program reads its sequence's first rows and lengths from
``cu_seqlens`` (``blocks.sequence``), returns if its query block lies past that sequence's end, and runs the code
above on the sequence alone (its rows as one head's matrix, its TMA descriptors sized to it).

The backward's kernels: ``kernel_bwd.py`` (split by pass, as FLA does: in one file they would pass 400 lines);
what both share (mask, block walk, tile loads): ``blocks.py``.
"""

import triton
import triton.language as tl

from ... import _runtime as rt
from .blocks import head_rows, key_range, load_rows, query_block, store_rows, visible, walk_blocks

# --------------------------------------------------------------------------------------------------------------
# Configs: tiles (data) times the TMA axis, a static rule (``keep``) and a per-call rule (``fits``). Chosen by
# compiling every candidate for sm_90 at head dims 64 and 128 in bf16 (``triton-playground report attention``)
# and reading registers, spills and occupancy: a 128-row tile takes 8 warps (two warpgroups, 64 rows each; with
# 4 its accumulators need over 255 registers and spill); num_stages is held where shared memory still leaves
# every config at least 8 resident warps per SM at head dim 128 (2 programs of 4 warps, or 1 of 8): the 64 x 64
# and decode tiles at 2 stages (3 would need 113 / 132 KB, one program an SM). The dK/dV kernel (kernel_bwd.py)
# holds two fp32 accumulators (dk, dv) besides k and v, so it streams short query tiles (16-32 rows).
# Shared memory per program is about
#     elsize * BLOCK_D * (resident * resident rows + num_stages * 2 * streamed rows)
# (the forward keeps q resident, dQ keeps q and dO, dK/dV keeps k and v; two tiles stream per stage); the rule
# ``fits`` drops configs over ~200 KB (head dim 256 or fp32 inputs need the small ones), TMA configs for
# tensors TMA cannot read (``rt.tma_ok``: a GPU before Hopper, a strided head dim, misaligned strides), and query
# tiles much taller than q_len (decode) when a shorter one exists.
# --------------------------------------------------------------------------------------------------------------

SMEM_BUDGET = 200 * 1024
# The autotuning key: the sizes in power-of-two buckets (so a new length does not retune) and the mask's kind.
TUNE_KEY = ["BLOCK_D", "M_BUCKET", "N_BUCKET", "W_BUCKET", "CAUSAL", "WINDOWED", "VARLEN", "TMA_FITS"]

# (BLOCK_M query rows resident, BLOCK_N keys streamed, num_warps, num_stages), each with TMA on and off
FWD_TILES = [
    (128, 64, 8, 3),
    (128, 128, 8, 2),
    (64, 64, 4, 2),
    (64, 32, 4, 2),  # head dim 256 / fp32
    (32, 32, 8, 2),  # short packed documents (<= 32 tokens): mma.sync, see fwd_fits
    (16, 128, 4, 2),  # decode: q_len <= 16
    (16, 64, 4, 2),  # decode, head dim 256
]


def keep(tile, tma):
    """A 128 x 128 tile only with TMA: the pointer path's tile addresses take it past 255 registers (it spills)."""
    return tma or tile[0] * tile[1] < 128 * 128


def tile_configs(tiles):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "TMA": tma}, num_warps=w, num_stages=s)
            for (m, n, w, s) in tiles for tma in (True, False) if keep((m, n), tma)]


FWD_CONFIGS = tile_configs(FWD_TILES)
FWD_DEFAULT = {"BLOCK_M": 128, "BLOCK_N": 64, "TMA": True}  # the interpreter's
MAX_BLOCK = max(max(m, n) for m, n, _, _ in FWD_TILES)  # the largest BLOCK_M / BLOCK_N (128)


def fits(configs, nargs, resident, streamed, n_resident, short_q, tensors):
    """The rule: keep the configs whose shared memory (above) is within SMEM_BUDGET, else the smallest one; drop
    the TMA configs unless TMA can read and write every tensor of ``tensors`` (names in ``nargs``); with
    ``short_q`` (the query tile is the resident one), then drop query tiles much taller than q_len (``M_BUCKET``:
    q_len, or packed the longest sequence's, up to a power of two) when a shorter one is left. ``resident`` /
    ``streamed`` name the resident and streamed tiles' block sizes."""

    def smem(c):
        return (n_resident * c.kwargs[resident] + c.num_stages * 2 * c.kwargs[streamed]) * block_d * esize

    block_d, esize = nargs["BLOCK_D"], nargs["Q"].element_size()
    if not rt.tma_ok(*(nargs[t] for t in tensors)):
        configs = [c for c in configs if not c.kwargs["TMA"]]
    fit = [c for c in configs if smem(c) <= SMEM_BUDGET]
    fit = fit or [min(configs, key=smem)]
    if short_q:  # short q: drop query tiles much taller than it
        short = [c for c in fit if c.kwargs["BLOCK_M"] <= max(16, nargs["M_BUCKET"])]
        fit = short or fit
    return fit


def fwd_fits(configs, nargs):
    """The forward's rule: q resident (BLOCK_M rows), k and v streamed (BLOCK_N rows). Packed sequences
    (``VARLEN``) keep the 16-row decode tiles only for a decode batch (every sequence <= 16 queries): on longer
    ones they are the slowest choice, and at head dim 128 the packed variant's few extra registers take them past
    the 128 that ptxas gives them (4-8 bytes of spill, ``triton-playground report attention_varlen``)."""
    if nargs.get("VARLEN") and nargs["M_BUCKET"] > 16:  # before the short-q rule, which would keep them
        configs = [c for c in configs if c.kwargs["BLOCK_M"] > 16] or configs
    fit = fits(configs, nargs, "BLOCK_M", "BLOCK_N", 1, short_q=True, tensors=("Q", "K", "V", "O"))
    # Short keys too (N_BUCKET: kv_len, or packed the longest sequence's, up to a power of two): drop key tiles
    # wider than them when a narrower one is left. A tile computes every pair of its block, so over 32-token
    # documents a 128 x 64 tile computes 15.5 times the visible pairs, a 64 x 64 one 7.8 times, the 32 x 32 one
    # 1.94 times (its 32 rows are under a warpgroup's 64: mma.sync, not wgmma, which the 64-row tile's doubled
    # work would not repay).
    narrow = [c for c in fit if c.kwargs["BLOCK_N"] <= max(32, nargs["N_BUCKET"])]
    return narrow or fit


# --------------------------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _fwd_block(state, ctx, start_n, M, N, W, qk_scale, MASK: tl.constexpr, CAUSAL: tl.constexpr,
               WINDOWED: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_N: tl.constexpr):
    """The online-softmax update by the key block [start_n, start_n + BLOCK_N) (MASK: apply the visibility
    mask); walk_blocks' body."""
    acc, l_i, m_i = state
    q, k_rows, v_rows, strides_k, strides_v, offs_m, offs_d, d_ok = ctx
    k = load_rows(k_rows, strides_k, start_n, N, offs_d, d_ok, BLOCK_N, MASK, TMA)
    # q @ k^T: the transpose is a view (wgmma reads k's shared-memory tile as K-major B operand).
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    if MASK:
        # -1e30, not -inf: a row with nothing visible yet keeps a finite max, so alpha below is never
        # inf - inf. Its garbage (p = 1 per masked key) is wiped by alpha = 2^(-1e30 - m) = 0 when its first
        # visible key arrives; every row sees at least its own position, within [lo, hi).
        s = tl.where(visible(offs_m, start_n + tl.arange(0, BLOCK_N), M, N, W, CAUSAL, WINDOWED), s, -1.0e30)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = load_rows(v_rows, strides_v, start_n, N, offs_d, d_ok, BLOCK_N, MASK, TMA)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return acc, l_i, m_new


@rt.autotune(FWD_CONFIGS, key=TUNE_KEY + ["SPLIT"], default=FWD_DEFAULT, prune=fwd_fits)
@triton.jit
def attn_fwd(
    Q, K, V, O, LSE, O_PART, LSE_PART, CU_SEQLENS_Q, CU_SEQLENS_K, strides_q, strides_k, strides_v, strides_o,
    H, M, N, GROUP, W, qk_scale, split_len,
    M_BUCKET, N_BUCKET, W_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
    SPLIT: tl.constexpr, VARLEN: tl.constexpr, PRECISION: tl.constexpr, TMA_FITS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr,
):
    # a TMA config runs TMA only where the launch found the tensors describable (rt.tma_ok): a TMA config
    # that the tuner cached for another call of this key, or that a test forced, stays correct
    DESCRIBED: tl.constexpr = TMA and TMA_FITS
    # grid: (query blocks, batch * q_heads, key splits); packed (VARLEN): (query blocks of the longest
    # sequence, sequences * q_heads, 1), and M, N are this program's sequence's lengths from here on
    pid_s = tl.program_id(2)
    pid_bh, q0, k0, M, N, stats, h, hk, start_m, offs_m, rows_m, m_ok, offs_d, d_ok = query_block(
        H, GROUP, M, N, CU_SEQLENS_Q, CU_SEQLENS_K, HEAD_DIM, BLOCK_D, BLOCK_M, VARLEN)
    if VARLEN:
        if start_m >= M:  # past this sequence's end (the grid covers the longest): nothing to do
            return
    q_rows = head_rows(Q, strides_q, q0, h, M, HEAD_DIM, BLOCK_M, BLOCK_D, DESCRIBED)
    q = load_rows(q_rows, strides_q, start_m, M, offs_d, d_ok, BLOCK_M, True, DESCRIBED)
    k_rows = head_rows(K, strides_k, k0, hk, N, HEAD_DIM, BLOCK_N, BLOCK_D, DESCRIBED)
    v_rows = head_rows(V, strides_v, k0, hk, N, HEAD_DIM, BLOCK_N, BLOCK_D, DESCRIBED)

    lo, full_lo, full_hi, hi = key_range(start_m, M, N, W, CAUSAL, WINDOWED, BLOCK_M, BLOCK_N)
    # This program's share of [lo, hi): the whole range, or chunk pid_s of the split (split_len is a
    # multiple of BLOCK_N, so chunk edges stay block-aligned). The three loops are clipped to it.
    lo_s = tl.minimum(lo + pid_s * split_len, hi)
    hi_s = tl.minimum(lo_s + split_len, hi)
    full_lo_s = tl.minimum(tl.maximum(full_lo, lo_s), hi_s)
    full_hi_s = tl.minimum(tl.maximum(full_hi, full_lo_s), hi_s)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    ctx = (q, k_rows, v_rows, strides_k, strides_v, offs_m, offs_d, d_ok)
    acc, l_i, m_i = walk_blocks(_fwd_block, (acc, l_i, m_i), ctx, (lo_s, full_lo_s, full_hi_s, hi_s),
                                M, N, W, qk_scale, CAUSAL, WINDOWED, PRECISION, DESCRIBED, BLOCK_N)

    # An empty split chunk leaves l = 0, m = -inf: it writes o = 0 and lse = -inf, which the combine weighs 0.
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    o = acc / l_safe[:, None]
    lse = m_i + tl.log2(l_safe)
    if SPLIT:  # fp32 partials, (splits, batch * q_heads, q_len, head_dim) and (splits, batch * q_heads, q_len);
        # dense inputs only (the launch never splits packed ones)
        part = (pid_s * tl.num_programs(1) + pid_bh).to(tl.int64) * M
        tl.store(O_PART + (part + rows_m[:, None]) * HEAD_DIM + offs_d[None, :], o,
                 mask=m_ok[:, None] & d_ok[None, :])
        tl.store(LSE_PART + part + rows_m, lse, mask=m_ok)
    else:
        o_rows = head_rows(O, strides_o, q0, h, M, HEAD_DIM, BLOCK_M, BLOCK_D, DESCRIBED)
        store_rows(o_rows, strides_o, start_m, M, offs_d, d_ok, o.to(O.dtype.element_ty), BLOCK_M, DESCRIBED)
        tl.store(LSE + stats + rows_m, lse, mask=m_ok)


# A single config, not tuned: a light pass over the fp32 partials.
@rt.autotune([triton.Config({"BLOCK_M": 16}, num_warps=4)], key=["BLOCK_D"])
@triton.jit
def attn_combine(
    O_PART, LSE_PART, O, LSE, strides_o,
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
    o_rows = head_rows(O, strides_o, b, h, M, HEAD_DIM, BLOCK_M, BLOCK_D, False)
    store_rows(o_rows, strides_o, pid_m * BLOCK_M, M, offs_d, d_ok, (acc / total[:, None]).to(O.dtype.element_ty),
               BLOCK_M, False)
    tl.store(LSE + pid_bh.to(tl.int64) * M + rows_m, m_max + tl.log2(total), mask=m_ok)
