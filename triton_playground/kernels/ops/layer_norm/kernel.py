"""The Triton kernels of LayerNorm and RMSNorm: one kernel pair serves both.

    layer_norm(x) = (x - mean(x)) * rstd * weight + bias,   rstd = 1 / sqrt(var(x) + eps)
    rms_norm(x)   = weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)       (HF OLMoE/Llama RMSNorm)

Tiling. A program owns ``BLOCK_M`` rows. When the row fits one ``BLOCK_N``-wide tile (hidden <= 8192) the
whole ``(BLOCK_M, BLOCK_N)`` tile stays in registers: x is read once, the statistics are two-pass
(``var = mean((x - mean)^2)``, the mean summed relative to the row's first element, so rows with mean 1e4 keep
their precision), and y is written once. Wider rows
loop over column tiles: one pass for the mean, one for the variance, one to normalise (the row stays in L2).
Statistics are fp32 whatever x's dtype; per-row mean and rstd are saved for the backward.

Backward, with xhat = (x - mean) * rstd (LayerNorm) or xhat = x * rstd (RMSNorm), g = dy * weight:
    dx = rstd * (g - xhat * mean(g * xhat) - mean(g))      (the mean(g) term is LayerNorm's only)
    dweight = sum_rows dy * xhat,   dbias = sum_rows dy
Both grids are persistent: a fixed number of programs (a few per SM forward, one backward) each walk a strided
set of row tiles, their loads pipelined (below). The forward loads weight and bias where each tile's output needs
them (from L2), so that they hold no registers across its reductions; the backward keeps the weight and each
program's dweight/dbias partial sums in registers, writing one partial row per program at the end;
the partials (dweight's and dbias's in one buffer) are summed afterwards by one torch sum and one cast
(deterministic, no atomics). What the registers hold, and so which tiles a row width allows, is set out above the
configs.
"""

import functools

import triton
import triton.language as tl

from ... import _runtime as rt

MAX_FUSED_N = 8192  # widest row kept whole in registers; wider rows loop over column tiles


def block_n(n: int) -> int:
    """The column tile of an n-wide row (the launch's BLOCK_N)."""
    return min(triton.next_power_of_2(n), MAX_FUSED_N)


# Registers decide the tiling: the row tile lives in them, and a spill would send it through local memory.
# A thread holds ``BLOCK_M * BLOCK_N / threads`` values of every (BLOCK_M, BLOCK_N) fp32 tile and
# ``BLOCK_N / threads`` of every row vector. What stays live across a row tile's reductions, and the budget:
#   forward:  the centred x tile                                    1 tile, <= 4 values: weight and bias are
#             loaded at the output, and 4 values keep a program at 32 registers at 1024 and 4096 columns, so
#             that an SM holds as many warps of them as of Liger's one-row programs (the sm_90 report: 64, where
#             Liger's hold 64 and 40-48; at 8192 no config holds 4, and one row of 32 warps holds 8: 32 warps an
#             SM for LayerNorm, as Liger's, 64 for RMSNorm, where Liger's hold 48)
#   backward: xhat and dy tiles; weight, dweight, dbias partials   2 tiles, 3 vectors, <= 112 values: one
#             program an SM, so only the register file bounds it (g = dy * weight is formed again for dx, not
#             kept)
# and, either way, at most 5/8 of the registers a thread of that many warps may have (65536 an SM; ptxas needs
# the rest for addresses, masks and row statistics). Within them the report (``triton-playground report
# layer_norm rms_norm``) shows no spill at the sweep's widths (1024 to 8192), bf16 and fp32.
#
# Both persistent loops are pipelined where a row fits one tile (``tl.range(..., num_stages=2)``: the next row
# tile's loads are in flight, by cp.async into shared memory, while this one is reduced; the report's LDGSTS),
# so a program does not wait on each tile's loads, and the H100 model counts no trip's wait for them
# (``kernels/perf/attribution.py``). A pipelined loop must be innermost: no loop runs inside a one-tile row's
# body. Wider rows loop over column tiles inside, and walk their row tiles unpipelined.
# (tiles, vectors, values a thread; least bytes of the tile a thread: the forward's 4 because cp.async copies no
# less, and Triton leaves a loop whose loads are narrower unpipelined: no LDGSTS in one row of 1024 bf16 columns
# over 32 warps; the backward's a 16-byte vector)
FWD_LIVE, BWD_LIVE = (1, 0, 4, 4), (2, 3, 112, 16)

# (BLOCK_M rows per program, warps). Forward: one row a tile, with the warps that leave each thread at most 4
# values of it (8 warps at 1024 columns, 32 at 4096 and 8192); several rows only for narrow rows, so that every
# thread still holds a value. Backward: the single program an SM makes its programs the wider ones, and its
# configs are listed most rows a trip first. 32 warps hold 64 registers a thread, the whole register file for
# the one program: the rule's budget (40 values) then keeps 8 rows at 1024 columns, 2 at 4096 and 1 at 8192,
# where the sm_90 report shows 64 registers and no spill (4 rows at 4096, 44 values, spill). Under the
# interpreter the default, or where the rule drops it the first config that fits, is the one run and modeled:
# at 16384 x 4096 the backward's kernel models at 139 us (HBM's rate for its 407 MB, 136 us, and a kernel's
# fixed cost), 223 us before its loop was pipelined (62 trips of 2 rows, each waiting 2.2 us on its loads).
FWD_CONFIGS = [triton.Config({"BLOCK_M": m}, num_warps=w)
               for m, w in [(1, 8), (1, 4), (1, 16), (1, 32), (2, 4), (4, 4), (8, 4)]]
BWD_CONFIGS = [triton.Config({"BLOCK_M": m}, num_warps=w)
               for m, w in [(8, 32), (4, 32), (2, 32), (1, 32), (4, 16), (2, 16), (4, 8), (1, 16), (2, 8), (1, 8),
                            (1, 4)]]


def _fitting(configs, n, elem, live):
    """The rule: configs whose live values fit the budget (above), and that give every thread at least the least
    bytes of the tile ``live`` names (more warps than that load less than a vector a thread, or nothing). ``n``:
    the row's width, ``elem``: x's element size."""
    tiles, vectors, budget, least_bytes = live
    n = block_n(n)

    def values(c):
        return (tiles * c.kwargs["BLOCK_M"] + vectors) * n / (32 * c.num_warps)

    def in_budget(c):
        return values(c) <= min(budget, 65536 / (32 * c.num_warps) * 5 / 8)

    def enough_bytes(c):
        return c.kwargs["BLOCK_M"] * n * elem >= max(least_bytes, elem) * 32 * c.num_warps

    fitting = [c for c in configs if in_budget(c)]
    # Narrow rows (a few dozen columns) leave threads idle under every config: then any config in the budget.
    return [c for c in fitting if enough_bytes(c)] or fitting or [min(configs, key=values)]


# Both from the positional arguments only: Triton's autotuner hands its prune hook those, not the keywords.
def fits_fwd(configs, nargs):
    return _fitting(configs, nargs["N"], nargs["X"].element_size(), FWD_LIVE)


def fits_bwd(configs, nargs):
    return _fitting(configs, nargs["N"], nargs["X"].element_size(), BWD_LIVE)


@functools.cache
def fwd_programs_per_sm(n: int, elem: int) -> int:
    """The forward's persistent programs an SM: its 64 warp slots over the fewest warps of a config the rule lets
    run at this width (8 programs of 8 warps at 1024 columns, 2 of 32 at 4096), so that the narrowest config fills
    the SM and a wider one runs its programs in a second wave rather than idling warp slots. (A grid function is
    not told the config's warps: the rule's choices stand for them.)"""
    return max(1, 64 // min(c.num_warps for c in _fitting(FWD_CONFIGS, n, elem, FWD_LIVE)))


@rt.autotune(FWD_CONFIGS, key=["N", "RMS"], default={"BLOCK_M": 1, "num_warps": 8}, prune=fits_fwd)
@triton.jit
def norm_fwd(
    X, W, B, Y, Mean, Rstd,
    n_rows, N, stride_xm, stride_xn, stride_ym, stride_yn, eps,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, RMS: tl.constexpr,
    BLOCK_N: tl.constexpr, SINGLE_TILE: tl.constexpr, BLOCK_M: tl.constexpr,
):
    # A persistent grid: program pid takes row tiles pid, pid + n_progs, ... Where a row fits one tile the loop is
    # pipelined (the next tile's x, weight and bias are in flight while this one is normalised): see the top.
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    for tile in tl.range(pid, tl.cdiv(n_rows, BLOCK_M), n_progs, num_stages=2 if SINGLE_TILE else 1):
        _norm_fwd_rows(tile, X, W, B, Y, Mean, Rstd, n_rows, N, stride_xm, stride_xn, stride_ym, stride_yn,
                       eps, HAS_W, HAS_B, RMS, BLOCK_N, SINGLE_TILE, BLOCK_M)


@triton.jit
def _norm_fwd_rows(tile, X, W, B, Y, Mean, Rstd, n_rows, N, stride_xm, stride_xn, stride_ym, stride_yn, eps,
                   HAS_W: tl.constexpr, HAS_B: tl.constexpr, RMS: tl.constexpr,
                   BLOCK_N: tl.constexpr, SINGLE_TILE: tl.constexpr, BLOCK_M: tl.constexpr):
    """Normalise one tile of BLOCK_M rows."""
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    rows64 = rows.to(tl.int64)  # row * stride can pass 2^31 on big activations
    x_row = X + rows64[:, None] * stride_xm
    y_row = Y + rows64[:, None] * stride_ym
    cols0 = tl.arange(0, BLOCK_N)
    # The mean is kept relative to the row's first element (``pivot``): with mean 1e4, an fp32 mean is only
    # good to ~5e-4 (its ulp), an error every centred value inherits. x - pivot is exact, so the mean is kept
    # as pivot + mean, and Mean stores the small part (the backward reloads pivot).
    if RMS:
        pivot = tl.zeros([BLOCK_M], dtype=tl.float32)
    else:
        pivot = tl.load(X + rows64 * stride_xm, mask=row_ok, other=0.0).to(tl.float32)

    if SINGLE_TILE:  # the whole row in registers
        mask = row_ok[:, None] & (cols0[None, :] < N)
        x = tl.load(x_row + cols0[None, :] * stride_xn, mask=mask, other=0.0).to(tl.float32)
        if RMS:
            mean = tl.zeros([BLOCK_M], dtype=tl.float32)
            xc = x
        else:
            mean = tl.sum(tl.where(mask, x - pivot[:, None], 0.0), axis=1) / N
            xc = tl.where(mask, (x - pivot[:, None]) - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / N + eps)
    else:  # loop over column tiles: mean, then centred variance
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        if not RMS:
            for start in range(0, N, BLOCK_N):
                cols = start + cols0
                mask = row_ok[:, None] & (cols[None, :] < N)
                xt = tl.load(x_row + cols[None, :] * stride_xn, mask=mask, other=0.0).to(tl.float32)
                acc += tl.where(mask, xt - pivot[:, None], 0.0)
        mean = tl.sum(acc, axis=1) / N
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            cols = start + cols0
            mask = row_ok[:, None] & (cols[None, :] < N)
            xt = tl.load(x_row + cols[None, :] * stride_xn, mask=mask, other=0.0).to(tl.float32)
            xt = tl.where(mask, (xt - pivot[:, None]) - mean[:, None], 0.0)
            acc += xt * xt
        rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=1) / N + eps)

    if not RMS:
        tl.store(Mean + rows, mean, mask=row_ok)
    tl.store(Rstd + rows, rstd, mask=row_ok)

    if SINGLE_TILE:  # no loop here, so that the caller's loop over row tiles is innermost: Triton pipelines it
        _norm_fwd_store(Y, W, B, y_row, xc * rstd[:, None], mask, cols0, N, stride_yn, HAS_W, HAS_B, RMS)
    else:
        for start in range(0, N, BLOCK_N):
            cols = start + cols0
            mask = row_ok[:, None] & (cols[None, :] < N)
            xt = tl.load(x_row + cols[None, :] * stride_xn, mask=mask, other=0.0).to(tl.float32)
            _norm_fwd_store(Y, W, B, y_row, ((xt - pivot[:, None]) - mean[:, None]) * rstd[:, None], mask, cols, N,
                            stride_yn, HAS_W, HAS_B, RMS)


@triton.jit
def _norm_fwd_store(Y, W, B, y_row, xhat, mask, cols, N, stride_yn, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                    RMS: tl.constexpr):
    """y = xhat * weight + bias for one (rows, cols) tile, in Y's dtype. The weight and bias are loaded here, where
    they are used (L2 serves them to every tile), so that no copy of them occupies registers across the tile's
    reductions."""
    if RMS:
        # HF rounds the normalised x to x's dtype before the weight multiplies it.
        xhat = xhat.to(Y.dtype.element_ty).to(tl.float32)
    if HAS_W:
        xhat *= tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        xhat += tl.load(B + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    tl.store(y_row + cols[None, :] * stride_yn, xhat.to(Y.dtype.element_ty), mask=mask)


@rt.autotune(BWD_CONFIGS, key=["N", "RMS"], default={"BLOCK_M": 8, "num_warps": 32}, prune=fits_bwd)
@triton.jit
def norm_bwd(
    X, W, DY, DX, Mean, Rstd, Partial,
    n_rows, N, stride_xm, stride_xn, stride_dym, stride_dyn, stride_dxm, stride_dxn,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, RMS: tl.constexpr, OUT_DTYPE_ROUND: tl.constexpr,
    BLOCK_N: tl.constexpr, SINGLE_TILE: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    cols0 = tl.arange(0, BLOCK_N)
    # Partial is (grads, n_progs, N) fp32: dweight's partial rows first when there is a weight, then dbias's.
    DW_partial = Partial
    DB_partial = Partial + n_progs * N if HAS_W else Partial
    # dweight/dbias partials of this program: in registers when a row fits one tile, else in its own
    # row of the partial buffers (no other program touches it, so plain load/add/store is race-free).
    dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    w = tl.full([BLOCK_N], 1.0, tl.float32)  # the weight, loaded once per program when a row fits one tile
    if SINGLE_TILE and HAS_W:
        w = tl.load(W + cols0, mask=cols0 < N, other=0.0).to(tl.float32)
    for tile in tl.range(pid, tl.cdiv(n_rows, BLOCK_M), n_progs, num_stages=2 if SINGLE_TILE else 1):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        rows64 = rows.to(tl.int64)
        rstd = tl.load(Rstd + rows, mask=row_ok, other=0.0)
        if RMS:
            pivot = tl.zeros([BLOCK_M], dtype=tl.float32)
            mean = tl.zeros([BLOCK_M], dtype=tl.float32)
        else:  # the forward's split mean: pivot (the row's first element) + Mean
            pivot = tl.load(X + rows64 * stride_xm, mask=row_ok, other=0.0).to(tl.float32)
            mean = tl.load(Mean + rows, mask=row_ok, other=0.0)
        if SINGLE_TILE:  # the row tile is loaded once and kept in registers for both the sums and dx
            xhat, dy, w_row, col_ok = _bwd_tile(X, DY, W, w, rows64, row_ok, cols0, pivot, mean, rstd, N, stride_xm,
                                                stride_xn, stride_dym, stride_dyn, HAS_W, True)
            c1 = tl.sum(dy * w_row * xhat, axis=1) / N
            c2 = tl.sum(dy * w_row, axis=1) / N
            dw, db = _bwd_dx(DX, xhat, dy, w_row, c1, c2, rstd, rows64, row_ok, cols0, col_ok, stride_dxm,
                             stride_dxn, RMS, OUT_DTYPE_ROUND)
            dw_acc += dw
            db_acc += db
        else:
            # pass 1: the two row sums mean(g * xhat) and mean(g)
            sum_gx = tl.zeros([BLOCK_M], dtype=tl.float32)
            sum_g = tl.zeros([BLOCK_M], dtype=tl.float32)
            for start in range(0, N, BLOCK_N):
                xhat, dy, w_row, col_ok = _bwd_tile(X, DY, W, w, rows64, row_ok, start + cols0, pivot, mean, rstd,
                                                    N, stride_xm, stride_xn, stride_dym, stride_dyn, HAS_W, False)
                sum_gx += tl.sum(dy * w_row * xhat, axis=1)
                sum_g += tl.sum(dy * w_row, axis=1)
            c1 = sum_gx / N
            c2 = sum_g / N
            # pass 2: dx, and the weight/bias partials, accumulated in this program's own partial rows
            for start in range(0, N, BLOCK_N):
                cols = start + cols0
                xhat, dy, w_row, col_ok = _bwd_tile(X, DY, W, w, rows64, row_ok, cols, pivot, mean, rstd, N,
                                                    stride_xm, stride_xn, stride_dym, stride_dyn, HAS_W, False)
                dw, db = _bwd_dx(DX, xhat, dy, w_row, c1, c2, rstd, rows64, row_ok, cols, col_ok, stride_dxm,
                                 stride_dxn, RMS, OUT_DTYPE_ROUND)
                if HAS_W:
                    p = DW_partial + pid * N + cols
                    tl.store(p, tl.load(p, mask=col_ok) + dw, mask=col_ok)
                if HAS_B:
                    p = DB_partial + pid * N + cols
                    tl.store(p, tl.load(p, mask=col_ok) + db, mask=col_ok)
    if SINGLE_TILE:
        if HAS_W:
            tl.store(DW_partial + pid * N + cols0, dw_acc, mask=cols0 < N)
        if HAS_B:
            tl.store(DB_partial + pid * N + cols0, db_acc, mask=cols0 < N)


@triton.jit
def _bwd_tile(X, DY, W, w, rows64, row_ok, cols, pivot, mean, rstd, N, stride_xm, stride_xn, stride_dym, stride_dyn,
              HAS_W: tl.constexpr, W_LOADED: tl.constexpr):
    """One (rows, cols) tile of the backward's inputs: xhat and dy in fp32 (zero off the edge), and the weight of
    these columns as a (1, cols) row (ones without a weight): ``w`` when it is already in registers (W_LOADED),
    else loaded here. g = dy * weight is left to the caller, so that no g tile outlives the row sums."""
    col_ok = cols < N
    mask = row_ok[:, None] & col_ok[None, :]
    x = tl.load(X + rows64[:, None] * stride_xm + cols[None, :] * stride_xn, mask=mask, other=0.0)
    dy = tl.load(DY + rows64[:, None] * stride_dym + cols[None, :] * stride_dyn, mask=mask, other=0.0)
    xhat = tl.where(mask, ((x.to(tl.float32) - pivot[:, None]) - mean[:, None]) * rstd[:, None], 0.0)
    if HAS_W and not W_LOADED:
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    return xhat, dy.to(tl.float32), w[None, :], col_ok


@triton.jit
def _bwd_dx(DX, xhat, dy, w_row, c1, c2, rstd, rows64, row_ok, cols, col_ok, stride_dxm, stride_dxn,
            RMS: tl.constexpr, OUT_DTYPE_ROUND: tl.constexpr):
    """Store dx for one tile; return its column sums for dweight (dy * xhat) and dbias (dy). g = dy * weight is
    formed again here, inside one fma, rather than kept from the row sums: one tile fewer in registers."""
    if RMS:
        dx = tl.fma(dy, w_row, -(xhat * c1[:, None])) * rstd[:, None]
    else:
        dx = tl.fma(dy, w_row, -(xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
    tl.store(DX + rows64[:, None] * stride_dxm + cols[None, :] * stride_dxn, dx.to(DX.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])
    if OUT_DTYPE_ROUND:  # RMSNorm's weight multiplies the normalised x rounded to x's dtype
        xhat = xhat.to(DX.dtype.element_ty).to(tl.float32)
    return tl.sum(dy * xhat, axis=0), tl.sum(dy, axis=0)
