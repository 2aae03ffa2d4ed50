"""What the forward (``kernel.py``) and the backward (``kernel_bwd.py``) share: the mask, the walk over the
visible blocks, and how a tile of one head is read and written (TMA or pointers). Read ``kernel.py`` first: its
docstring has the math, the positions convention and why the walk has three loops.

Tiles of one head. Every (batch, heads, seq, head_dim) tensor is read one head at a time, as a ``(rows,
head_dim)`` matrix at ``X + b * stride_b + h * stride_h`` with row stride ``stride_seq``: any layout (the usual
input is a transposed ``(batch, seq, heads, head_dim)`` view) is read in place. Two ways, chosen by the ``TMA``
constexpr of the config:

* ``TMA``: :func:`head_rows` builds a tensor descriptor of that matrix on the device
  (``tl.make_tensor_descriptor``) whose box is one ``(BLOCK_ROWS, BLOCK_D)`` tile; a load is one TMA copy
  global -> shared memory by the copy engine, no address registers, and the box parts outside the matrix (rows
  past the sequence, padded head-dim columns) arrive as zeros; a store writes only the part inside. It needs the
  last dim contiguous and 16-byte aligned strides and start (``kernels._runtime.tma_ok``; the configs' rule drops
  TMA configs for inputs that fail it) and Hopper (sm_90+).
* pointers: :func:`head_rows` is the head's base pointer; loads and stores build the tile's addresses from the
  strides and mask rows past the sequence (only where ``MASK``: interior blocks need no row mask) and the padded
  head-dim columns (a constant-true mask for power-of-two head dims, folded away). Any strides, any GPU.

Not warp-specialized: with Triton 3.6 on sm_90, ``tl.range(..., warp_specialize=True)`` on the walk's loops
changes nothing at 8 warps, and at 4 warps the compiler's NVGPUWarpSpecialization pass fails on a kernel with
several loops (this walk's three; Triton's own tutorial fails the same way when causal, with two).
"""

import triton
import triton.language as tl

# --------------------------------------------------------------------------------------------------------------
# The mask and the walk over the visible blocks
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
                CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr,
                BLOCK: tl.constexpr):
    """The three loops over the streamed blocks of ``bounds = (lo, full_lo, full_hi, hi)`` (:func:`key_range`, or
    the dK/dV kernel's query-side twin), ``BLOCK`` rows each: for the block of rows ``start + arange(BLOCK)``,
    ``state = BODY(state, ctx, start, M, N, W, qk_scale, MASK, CAUSAL, WINDOWED, PRECISION, TMA, BLOCK)`` with ``MASK``
    on [lo, full_lo) and [full_hi, hi), not on [full_lo, full_hi). ``state``: the tuple of accumulators it
    returns; ``ctx``: the tuple of what the body reads. Triton pipelines each loop's loads ``num_stages`` deep."""
    lo, full_lo, full_hi, hi = bounds
    for start in range(lo, full_lo, BLOCK):
        state = BODY(state, ctx, start, M, N, W, qk_scale, True, CAUSAL, WINDOWED, PRECISION, TMA, BLOCK)
    for start in range(full_lo, full_hi, BLOCK):
        state = BODY(state, ctx, start, M, N, W, qk_scale, False, CAUSAL, WINDOWED, PRECISION, TMA, BLOCK)
    for start in range(full_hi, hi, BLOCK):
        state = BODY(state, ctx, start, M, N, W, qk_scale, True, CAUSAL, WINDOWED, PRECISION, TMA, BLOCK)
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
# Tiles of one head: TMA descriptors or pointers
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def head_rows(X, strides, b, h, n_rows, HEAD_DIM: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
              TMA: tl.constexpr):
    """Head ``h`` of batch ``b`` of ``X`` (strides ``strides``) as an ``(n_rows, HEAD_DIM)`` matrix: a TMA
    descriptor with ``(BLOCK_ROWS, BLOCK_D)`` boxes, or the head's base pointer."""
    base = X + b * strides[0] + h * strides[1]
    if TMA:
        rows = tl.make_tensor_descriptor(base, shape=[n_rows, HEAD_DIM], strides=[strides[2], 1],
                                         block_shape=[BLOCK_ROWS, BLOCK_D])
    else:
        rows = base
    return rows


@triton.jit
def load_rows(src, strides, start, n_rows, offs_d, d_ok, BLOCK_ROWS: tl.constexpr, MASK: tl.constexpr,
              TMA: tl.constexpr):
    """Rows [start, start + BLOCK_ROWS) of a head (``src``: :func:`head_rows`), every head-dim column:
    ``(BLOCK_ROWS, BLOCK_D)``, zeros past ``n_rows`` (pointers: where ``MASK``) and past the head dim."""
    if TMA:
        tile = src.load([start, 0])
    else:
        rows = start + tl.arange(0, BLOCK_ROWS)
        mask = d_ok[None, :]
        if MASK:
            mask = mask & (rows < n_rows)[:, None]
        tile = tl.load(src + rows.to(tl.int64)[:, None] * strides[2] + offs_d[None, :] * strides[3], mask=mask,
                       other=0.0)
    return tile


@triton.jit
def store_rows(dst, strides, start, n_rows, offs_d, d_ok, tile, BLOCK_ROWS: tl.constexpr, TMA: tl.constexpr):
    """Write ``tile`` to rows [start, start + BLOCK_ROWS) of a head, the rows below ``n_rows`` and the columns
    inside the head dim only."""
    if TMA:
        dst.store([start, 0], tile)
    else:
        rows = start + tl.arange(0, BLOCK_ROWS)
        tl.store(dst + rows.to(tl.int64)[:, None] * strides[2] + offs_d[None, :] * strides[3], tile,
                 mask=(rows < n_rows)[:, None] & d_ok[None, :])


@triton.jit
def sequence(seq, h, M, N, H, CU_SEQLENS_Q, CU_SEQLENS_K, VARLEN: tl.constexpr):
    """Where sequence ``seq`` lies in the inputs, and its lengths: ``(q0, k0, M, N, stats)``.

    Dense ``(batch, heads, seq_len, head_dim)`` tensors (``VARLEN`` off): sequence ``seq`` is batch ``seq``;
    ``q0 = k0 = seq`` is what :func:`head_rows` multiplies by the batch stride, ``M, N`` (q_len, kv_len) pass
    through, and ``stats = (seq * H + h) * M`` is the first row of head ``h`` in the ``(batch, heads, q_len)``
    log-sum-exp (and delta) buffers.

    Packed ``(total, heads, head_dim)`` tensors (``VARLEN`` on: FlashAttention's varlen layout): sequence
    ``seq`` is rows ``[cu_q[seq], cu_q[seq + 1])`` of q and ``[cu_k[seq], cu_k[seq + 1])`` of k, v; the caller
    passes the token stride as the "batch stride", so ``q0 = cu_q[seq]``, ``k0 = cu_k[seq]`` land
    :func:`head_rows` on the sequence's first row. ``M, N`` come in as the totals (total_q, total_k) and leave as
    this sequence's lengths; the statistics are ``(heads, total_q)``: ``stats = h * total_q + q0``.
    """
    if VARLEN:
        q0 = tl.load(CU_SEQLENS_Q + seq).to(tl.int64)
        k0 = tl.load(CU_SEQLENS_K + seq).to(tl.int64)
        stats = h.to(tl.int64) * M + q0
        M = (tl.load(CU_SEQLENS_Q + seq + 1) - q0).to(tl.int32)
        N = (tl.load(CU_SEQLENS_K + seq + 1) - k0).to(tl.int32)
    else:
        q0 = seq.to(tl.int64)
        k0 = q0
        stats = (q0 * H + h) * M
    return q0, k0, M, N, stats


@triton.jit
def query_block(H, GROUP, M, N, CU_SEQLENS_Q, CU_SEQLENS_K, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_M: tl.constexpr, VARLEN: tl.constexpr):
    """The query block of a program on the grid (query blocks, sequences * q_heads, ...): where its sequence
    lies (``q0, k0, M, N, stats``: :func:`sequence`), its query head ``h``, the KV head ``hk`` that head reads,
    its first row ``start_m`` (within the sequence), rows ``offs_m`` (``rows_m`` in int64, for addresses;
    ``m_ok``: inside the sequence's q_len) and head-dim columns ``offs_d`` (``d_ok``: inside the head dim).
    Packed inputs: the grid covers the longest sequence, so ``start_m >= M`` happens (the caller returns)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    seq = pid_bh // H
    h = pid_bh % H
    q0, k0, M, N, stats = sequence(seq, h, M, N, H, CU_SEQLENS_Q, CU_SEQLENS_K, VARLEN)
    hk = (h // GROUP).to(tl.int64)  # GQA: the KV head this query head reads
    h = h.to(tl.int64)

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = d_mask(offs_d, HEAD_DIM, BLOCK_D)
    m_ok = offs_m < M
    rows_m = offs_m.to(tl.int64)
    return pid_bh, q0, k0, M, N, stats, h, hk, start_m, offs_m, rows_m, m_ok, offs_d, d_ok
