"""The forward Triton kernels of attention (forward, split-KV combine) and the masks the backward shares.

    attention(q, k, v) = softmax(scale * q @ k^T + mask) @ v

Positions and the mask (``api.py`` has the convention): query row ``i`` sits at key position
``p = kv_len - q_len + i`` (``N - M + i`` below, ``M = q_len``, ``N = kv_len``), sees keys ``j <= p`` when causal
and, with a window ``W``, only ``j > p - W``. :func:`visible` is that mask on a tile.

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
(:func:`key_range` computes the split, :func:`walk_blocks` runs the three loops; one ``MASK`` constexpr compiles
each loop body twice). The backward's kernels walk their blocks the same way, with their own loop bodies.

Split-KV (decode). With few query rows (``q_len = 1`` against a long cache) there are only ``batch * heads``
programs — too few to fill the GPU. Then the key range of each query block is cut into ``num_splits`` chunks, one
program each, writing a partial output and its log-sum-exp (fp32); :func:`attn_combine` merges them:
``lse = log2(sum_s 2^lse_s)``, ``o = sum_s 2^(lse_s - lse) * o_s``. (The plan, how many chunks: ``api.py``.)

Head dims that are not powers of two (1, 24, 80, 96, ...) are padded inside the kernel to ``BLOCK_D``, the next
power of two >= 16 (a ``tl.dot`` operand needs every dim >= 16): loads mask the missing columns to zero, which
adds nothing to ``q @ k^T`` and leaves padded output columns unwritten. No input is copied.

Precision: every ``tl.dot`` takes ``input_precision=PRECISION`` (``kernels/common/precision.py``: "ieee" for
fp32, TF32 would cost fp32 its accuracy); fp16/bf16 use the tensor cores with ``p`` (and, in the backward,
``dS``) rounded to the input dtype for their matmuls (as FlashAttention does); softmax statistics and every
accumulator are fp32.

Strides: each (batch, heads, seq, head_dim) tensor comes with its four strides as one tuple argument
(``strides_q = q.stride()``, read as ``strides_q[0]`` .. ``strides_q[3]``), so any layout is read in place;
:func:`head_base` and :func:`tile_ptrs` turn them into pointers. :func:`query_block` is the program -> (batch,
query head, KV head, query rows) setup the forward and the backward's dQ share.

The backward's kernels: ``kernel_bwd.py`` (split by pass, as FLA does: in one file they would pass 400 lines).
"""

import triton
import triton.language as tl

from ... import _runtime as rt

# --------------------------------------------------------------------------------------------------------------
# Configs, chosen from compiling every candidate for sm_90 and reading ptxas' register and spill counts (head
# dims 64 and 128, bf16): a 128-row tile wants 8 warps (with 4 its fp32 accumulator alone is 128 registers a
# thread and it spills); the dK/dV kernel (kernel_bwd.py) holds two fp32 accumulators (dk, dv) besides k and v,
# so it streams short query tiles (16-32 rows). Shared memory per program is about
#     elsize * BLOCK_D * (resident * resident rows + num_stages * 2 * streamed rows)
# (the forward keeps q resident, dQ keeps q and dO, dK/dV keeps k and v; two tiles stream per stage); the rule
# ``fits_smem`` drops configs over ~200 KB (head dim 256 or fp32 inputs need the small ones), and query tiles much
# taller than q_len (decode) when a shorter one exists.
# --------------------------------------------------------------------------------------------------------------

SMEM_BUDGET = 200 * 1024
# The autotuning key: the sizes in power-of-two buckets (so a new length does not retune) and the mask's kind.
TUNE_KEY = ["BLOCK_D", "M_BUCKET", "N_BUCKET", "W_BUCKET", "CAUSAL", "WINDOWED"]

# (BLOCK_M query rows resident, BLOCK_N keys streamed, num_warps, num_stages)
FWD_CONFIGS = [
    triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in [
        (128, 64, 8, 3),
        (128, 128, 8, 2),  # the interpreter's default: biggest tiles, fewest programs and loop trips
        (64, 64, 4, 3),
        (64, 32, 4, 2),  # head dim 256 / fp32
        (16, 128, 4, 3),  # decode: q_len <= 16
        (16, 64, 4, 2),  # decode, head dim 256
    ]
]
MAX_BLOCK = max(max(c.kwargs.values()) for c in FWD_CONFIGS)  # the largest BLOCK_M / BLOCK_N (128)


def fits_smem(configs, nargs, resident, streamed, n_resident, short_q):
    """The rule: keep the configs whose shared memory (above) is within SMEM_BUDGET, else the smallest one; with
    ``short_q`` (the query tile is the resident one), then drop query tiles much taller than q_len (``M``) when a
    shorter one is left. ``resident`` / ``streamed`` name the resident and streamed tiles' block sizes."""

    def smem(c):
        return (n_resident * c.kwargs[resident] + c.num_stages * 2 * c.kwargs[streamed]) * block_d * esize

    block_d, esize = nargs["BLOCK_D"], nargs["Q"].element_size()
    fit = [c for c in configs if smem(c) <= SMEM_BUDGET]
    fit = fit or [min(configs, key=smem)]
    if short_q:  # short q: drop query tiles much taller than it
        short = [c for c in fit if c.kwargs["BLOCK_M"] <= max(16, triton.next_power_of_2(nargs["M"]))]
        fit = short or fit
    return fit


def fwd_fits(configs, nargs):
    """The forward's rule: q resident (BLOCK_M rows), k and v streamed (BLOCK_N rows)."""
    return fits_smem(configs, nargs, "BLOCK_M", "BLOCK_N", 1, short_q=True)


# --------------------------------------------------------------------------------------------------------------
# The masks, shared with the backward
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def key_range(start_m, M, N, W, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
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
def walk_blocks(BODY: tl.constexpr, state, ctx, bounds, M, N, W, qk_scale,
                CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, PRECISION: tl.constexpr, BLOCK: tl.constexpr):
    """The three loops over the streamed blocks of ``bounds = (lo, full_lo, full_hi, hi)`` (:func:`key_range`, or
    the dK/dV kernel's query-side twin), ``BLOCK`` rows each: for each block's rows ``offs``,
    ``state = BODY(state, ctx, offs, M, N, W, qk_scale, MASK, CAUSAL, WINDOWED, PRECISION)`` with ``MASK`` on
    [lo, full_lo) and [full_hi, hi), not on [full_lo, full_hi). ``state``: the tuple of accumulators it returns;
    ``ctx``: the tuple of what the body reads."""
    lo, full_lo, full_hi, hi = bounds
    arange = tl.arange(0, BLOCK)
    for start in range(lo, full_lo, BLOCK):
        state = BODY(state, ctx, start + arange, M, N, W, qk_scale, True, CAUSAL, WINDOWED, PRECISION)
    for start in range(full_lo, full_hi, BLOCK):
        state = BODY(state, ctx, start + arange, M, N, W, qk_scale, False, CAUSAL, WINDOWED, PRECISION)
    for start in range(full_hi, hi, BLOCK):
        state = BODY(state, ctx, start + arange, M, N, W, qk_scale, True, CAUSAL, WINDOWED, PRECISION)
    return state


@triton.jit
def visible(offs_m, offs_n, M, N, W, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr):
    """(len(offs_m), len(offs_n)) mask: query row i sees key j (and both exist)."""
    pos = (N - M) + offs_m
    vis = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if CAUSAL:
        vis = vis & (offs_n[None, :] <= pos[:, None])
    if WINDOWED:
        vis = vis & (offs_n[None, :] > pos[:, None] - W)
    return vis


@triton.jit
def d_mask(offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    # A constant-true mask when the head dim is a power of two >= 16: the compiler folds it away.
    if HEAD_DIM == BLOCK_D:
        ok = tl.full([BLOCK_D], 1, tl.int1)
    else:
        ok = offs_d < HEAD_DIM
    return ok


# --------------------------------------------------------------------------------------------------------------
# Addressing and the program's query block, shared with the backward
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def head_base(X, strides, b, h):
    """The start of head ``h`` of batch ``b`` in a (batch, heads, seq, head_dim) tensor of strides ``strides``."""
    return X + b * strides[0] + h * strides[1]


@triton.jit
def tile_ptrs(X, strides, b, h, rows, offs_d):
    """(len(rows), len(offs_d)) pointers: those rows and head-dim columns of head ``h`` of batch ``b``."""
    return head_base(X, strides, b, h) + rows[:, None] * strides[2] + offs_d[None, :] * strides[3]


@triton.jit
def query_block(H, GROUP, M, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """The query block of a program on the grid (query blocks, batch * q_heads, ...): its batch ``b``, query head
    ``h``, the KV head ``hk`` that head reads, its first row ``start_m``, rows ``offs_m`` (``rows_m`` in int64, for
    addresses; ``m_ok``: inside q_len) and head-dim columns ``offs_d`` (``d_ok``: inside the head dim)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    hk = (h // GROUP).to(tl.int64)  # GQA: the KV head this query head reads
    h = h.to(tl.int64)

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = d_mask(offs_d, HEAD_DIM, BLOCK_D)
    m_ok = offs_m < M
    rows_m = offs_m.to(tl.int64)
    return pid_bh, b, h, hk, start_m, offs_m, rows_m, m_ok, offs_d, d_ok


# --------------------------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _fwd_block(state, ctx, offs_n, M, N, W, qk_scale,
               MASK: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, PRECISION: tl.constexpr):
    """The online-softmax update by the key block offs_n (MASK: apply the visibility mask); walk_blocks' body."""
    acc, l_i, m_i = state
    q, k_base, v_base, strides_k, strides_v, offs_m, offs_d, d_ok = ctx
    rows = offs_n.to(tl.int64)
    if MASK:
        kt_mask = d_ok[:, None] & (offs_n < N)[None, :]
        v_mask = (offs_n < N)[:, None] & d_ok[None, :]
    else:  # interior block: only the head-dim padding (nothing, for a power-of-two head dim)
        kt_mask = d_ok[:, None]
        v_mask = d_ok[None, :]
    # k^T tile (BLOCK_D, BLOCK_N) straight from memory: the strides do the transpose.
    kt = tl.load(k_base + rows[None, :] * strides_k[2] + offs_d[:, None] * strides_k[3], mask=kt_mask, other=0.0)
    s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
    if MASK:
        # -1e30, not -inf: a row with nothing visible yet keeps a finite max, so alpha below is never
        # inf - inf. Its garbage (p = 1 per masked key) is wiped by alpha = 2^(-1e30 - m) = 0 when its first
        # visible key arrives; every row sees at least its own position, within [lo, hi).
        s = tl.where(visible(offs_m, offs_n, M, N, W, CAUSAL, WINDOWED), s, -1.0e30)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_base + rows[:, None] * strides_v[2] + offs_d[None, :] * strides_v[3], mask=v_mask, other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, l_i, m_new


@rt.autotune(FWD_CONFIGS, key=TUNE_KEY + ["SPLIT"], default={"BLOCK_M": 128, "BLOCK_N": 128}, prune=fwd_fits)
@triton.jit
def attn_fwd(
    Q, K, V, O, LSE, O_PART, LSE_PART, strides_q, strides_k, strides_v, strides_o,
    H, M, N, GROUP, W, qk_scale, split_len,
    M_BUCKET, N_BUCKET, W_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
    SPLIT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # grid: (query blocks, batch * q_heads, key splits)
    pid_s = tl.program_id(2)
    pid_bh, b, h, hk, start_m, offs_m, rows_m, m_ok, offs_d, d_ok = query_block(
        H, GROUP, M, HEAD_DIM, BLOCK_D, BLOCK_M)
    q = tl.load(tile_ptrs(Q, strides_q, b, h, rows_m, offs_d), mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = head_base(K, strides_k, b, hk)
    v_base = head_base(V, strides_v, b, hk)

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
    ctx = (q, k_base, v_base, strides_k, strides_v, offs_m, offs_d, d_ok)
    acc, l_i, m_i = walk_blocks(_fwd_block, (acc, l_i, m_i), ctx, (lo_s, full_lo_s, full_hi_s, hi_s),
                                M, N, W, qk_scale, CAUSAL, WINDOWED, PRECISION, BLOCK_N)

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
        tl.store(tile_ptrs(O, strides_o, b, h, rows_m, offs_d), o.to(O.dtype.element_ty), mask=out_mask)
        tl.store(LSE + pid_bh.to(tl.int64) * M + rows_m, lse, mask=m_ok)


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
    tl.store(tile_ptrs(O, strides_o, b, h, rows_m, offs_d), (acc / total[:, None]).to(O.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])
    tl.store(LSE + pid_bh.to(tl.int64) * M + rows_m, m_max + tl.log2(total), mask=m_ok)
