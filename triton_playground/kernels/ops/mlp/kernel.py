"""The Triton kernels of the MLP: ONE GEMM with a fused epilogue does every matmul, forward and backward, and a
column sum finishes the bias gradients.

``gemm`` computes ``C = A @ B`` for ``A: (M, K)`` and ``B: (K, N)`` given by pointers and strides, so a transpose
is just swapped strides (``w.T`` is ``w`` read with ``(stride(1), stride(0))``), and a constexpr-selected
epilogue finishes the fp32 accumulator tile in registers (``api.py`` makes these calls):

    forward, up      C = a      = act(x @ w_in.T + b_in)   epilogue: + bias, store h (training only), act
    forward, down    C = y      = a @ w_out.T + b_out      epilogue: + bias
    backward         C = dh     = (dy @ w_out) * act'(h)   epilogue: load the h tile, multiply by act'(h);
                                                                     column sums of dh -> partial db_in
                     C = dx     = dh @ w_in
                     C = dw_in  = dh.T @ x
                     C = dw_out = dy.T @ a
    db_out = column sums of dy (a small Triton reduction, ``col_sum``; it also finishes db_in's partial sums).

Activations (the ``ACT``/``DACT`` codes of ``ACTIVATIONS``): relu, relu(h)^2, and GPT-2's gelu_new
``0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3)))``, all applied to the unrounded fp32 tile.

Tiling (the Triton matmul tutorial's): a program owns a ``BLOCK_M x BLOCK_N`` tile of C and walks K in
``BLOCK_K`` steps, accumulating ``tl.dot`` in fp32 (wgmma on Hopper). Tiles are numbered in groups of ``GROUP_M``
row-tiles (``kernels.common.tiling.grouped_tile``): consecutive programs share B column-tiles and A row-tiles
while they are still in L2. Two ways to feed the K loop, a config axis (``TMA``):

* pointers (any strides, any GPU): the pipeliner turns the loads into cp.async copies, ``num_stages`` deep. A's
  rows and B's columns past the edge are wrapped (``% M``, ``% N``) so the loads need only the K mask; the
  epilogue's stores are masked. Row offsets are int64.
* TMA (Hopper): device-side tensor descriptors (``kernels.common.operand_tma``) let the copy engine move whole
  boxes to shared memory: no address or mask tiles in registers, edges zero-filled on loads and clipped on
  stores (C and H also go out through descriptors). A transposed operand (``A_T``: dh.T, dy.T; ``B_T``: w.T) has
  its descriptor built on its real, row-major layout and each tile transposed in shared memory (wgmma reads
  either major order). Kept by the prune rule only where ``tma_fits``; a forced TMA config whose operands do not
  fit takes the pointer path (``TMA_FITS``), so every config runs on every input.

``PERSISTENT`` (TMA configs of the two big tiles): ``min(SMs, tiles)`` programs each walk every grid-th tile, the
tile loop flattened into the K loop so the next tile's loads overlap this one's epilogue (the price: the epilogue's
staging buffers no longer share shared memory with the pipeline's: +16 to +64 KB in bf16). Warp specialization
(``tl.range(..., warp_specialize=True)``) is not used: compiled for sm_90 by Triton 3.6 it is a no-op on the
8-warp K loops and on the persistent tile loop; on a 4-warp 128x128 K loop it does split producer and consumer
warpgroups (12 warps, setmaxnreg), but the pass aborts on the dh GEMM's epilogue (NVGPUWarpSpecialization).

The epilogue finishes the tile in ``EPI_N``-wide column slices (``_finish``): the 256-wide tile in four, so the
h tile and the activation's temporaries sit beside the rest of the accumulator without spilling (gelu's
derivative needs several fp32 temporaries per element).

Precision. fp16/bf16 inputs use the tensor cores with an fp32 accumulator; intermediates (a, h, dh) are stored in
the input dtype, as PyTorch's own eager MLP does (ours applies act to the unrounded fp32 h, a little more accurate).
fp32 inputs use ``input_precision="ieee"`` (``PRECISION``, from ``kernels.common.precision.dot_precision``): a
GPU's default for fp32 ``tl.dot`` is TF32 (10-bit mantissa, ~1e-3 relative error), which would break the fp32
contract (< 1e-4); IEEE fp32 is slow (CUDA cores) but fp32 here is for checking, bf16 is for speed. With
``PRECISION == "ieee"`` the kernel halves BLOCK_K so a pipeline stage takes the same shared memory as in 16 bits
(every config fits an H100 in either dtype).
"""

import triton
import triton.language as tl

from ... import _runtime as rt
from ...common.operand_tma import operand_descriptor, operand_tile
from ...common.tiling import grouped_tile

ACTIVATIONS = {"relu": 1, "relu2": 2, "gelu_tanh": 3}  # the ACT/DACT codes; 0: none (the down-projection)
DB_ROWS = 32  # the db_in partial sums are per 32-row band of dh (every BLOCK_M is a multiple)

# Tiles (BLOCK_M, BLOCK_N, BLOCK_K, EPI_N, num_stages, num_warps), H100 choices: the big 128x256 tile for
# prefill-sized GEMMs (Persimmon-8B's up-projection), two 128-row tiles and a 64-row one for mid sizes and skinny
# outputs, and a 32x64 tile for a few tokens (decode). Shared memory (16-bit): 144, 128, 96, 96, 24 KB.
GEMM_TILES = [(128, 256, 64, 64, 3, 8), (128, 128, 64, 128, 4, 8), (128, 64, 64, 64, 4, 4), (64, 128, 64, 128, 4, 4),
              (32, 64, 32, 64, 4, 4)]
# Each tile fed by pointers and by TMA; the tiles of 128 x 128 and more also by TMA with persistent programs.
GEMM_FEEDS = [(False, False), (True, False), (True, True)]  # (TMA, PERSISTENT)
GEMM_CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8, "EPI_N": e, "TMA": tma,
                               "PERSISTENT": persistent}, num_stages=s, num_warps=w)
                for m, n, k, e, s, w in GEMM_TILES for tma, persistent in GEMM_FEEDS
                if not persistent or m * n >= 128 * 128]


def _stored(t):
    """A 2-D operand as stored: itself, or the row-major array it is the transpose of (unit stride along dim 0)."""
    return t if t.stride(1) == 1 else t.t()


def tma_fits(a, b, c, h) -> bool:
    """Whether a gemm call may move its tiles by TMA: A and B as stored (``_stored``), the output C and H (the
    pre-activation, or C again when there is none) row-major, all as ``rt.tma_ok`` demands, and K > 0. fp32 only
    with untransposed A and B: the FMA dot (input_precision "ieee") reads a transposed descriptor tile through
    registers, and ptxas spills 8-22 KB a thread on it (the report), where the pointer path spills nothing."""
    transposed = a.stride(1) != 1 or b.stride(1) != 1
    return (a.shape[1] > 0 and c.stride(1) == 1 and h.stride(1) == 1 and not (a.element_size() == 4 and transposed)
            and rt.tma_ok(_stored(a), _stored(b), c, h))


# fp32 inputs (input_precision "ieee") run the dot on CUDA cores: each thread holds BLOCK_M * BLOCK_N / (32 *
# num_warps) fp32 accumulators plus its operand fragments in registers, and past 64 of them ptxas spills (the
# 128x256 tile: 128, 132-364 bytes of spills in the report).
FP32_ACCUMULATORS_PER_THREAD = 64


def _prune(configs, named):
    """The rule over the configs (data): TMA configs only where the operands fit descriptors; in fp32 only the
    tiles whose accumulators fit a thread's registers."""
    fits = tma_fits(named["A"], named["B"], named["C"], named["H"])
    fp32 = named["A"].element_size() == 4
    return [c for c in configs if (fits or not c.kwargs["TMA"]) and not (
        fp32 and c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] > FP32_ACCUMULATORS_PER_THREAD * 32 * c.num_warps)]


@triton.jit
def _activation(h, ACT: tl.constexpr):
    """act(h) in fp32; ACT: 0 none, 1 relu, 2 relu^2, 3 gelu_tanh."""
    if ACT == 1:
        out = tl.maximum(h, 0.0)
    elif ACT == 2:
        r = tl.maximum(h, 0.0)
        out = r * r
    elif ACT == 3:
        # 0.5 h (1 + tanh(u)) == h * sigmoid(2u): the same function, without tanh's cancellation near -1.
        u = 0.7978845608028654 * (h + 0.044715 * h * h * h)
        out = h / (1.0 + tl.exp(-2.0 * u))
    else:
        out = h
    return out


@triton.jit
def _activation_grad(h, ACT: tl.constexpr):
    """act'(h) in fp32 (relu' is 0 at h = 0, as torch's)."""
    if ACT == 1:
        out = tl.where(h > 0.0, 1.0, 0.0)
    elif ACT == 2:
        out = 2.0 * tl.maximum(h, 0.0)
    elif ACT == 3:
        # d/dh [h s], s = sigmoid(2u): s + h * 2 s (1 - s) * u'(h),  u' = sqrt(2/pi) (1 + 3 * 0.044715 h^2)
        u = 0.7978845608028654 * (h + 0.044715 * h * h * h)
        s = 1.0 / (1.0 + tl.exp(-2.0 * u))
        out = s + 2.0 * h * s * (1.0 - s) * (0.7978845608028654 * (1.0 + 0.134145 * h * h))
    else:
        out = tl.zeros_like(h) + 1.0
    return out




@rt.autotune(GEMM_CONFIGS, key=["M", "N", "K", "HAS_BIAS", "ACT", "STORE_PRE", "DACT", "BIAS_GRAD", "A_T", "B_T",
                              "TMA_FITS"], default={"BLOCK_M": 128, "BLOCK_N": 256, "TMA": True, "PERSISTENT": False},
             prune=_prune)
@triton.jit
def gemm(
    A, B, C, Bias, H, DBias,
    M, N, K,
    s_am, s_ak, s_bk, s_bn, s_cm, s_cn, s_hm, s_hn,
    HAS_BIAS: tl.constexpr,  # C += Bias[n]
    ACT: tl.constexpr,  # C = act(C) (after the bias)
    STORE_PRE: tl.constexpr,  # store the pre-activation (after the bias) to H
    DACT: tl.constexpr,  # C *= act'(H), act by DACT's code (backward)
    BIAS_GRAD: tl.constexpr,  # column sums of C per 32-row band into DBias (backward)
    PRECISION: tl.constexpr,  # tl.dot's input_precision; "ieee" (fp32 inputs) also takes half-depth K steps
    A_T: tl.constexpr,  # A is the transpose of a row-major (K, M) array (s_am == 1: dh.T, dy.T)
    B_T: tl.constexpr,  # B is the transpose of a row-major (N, K) array (s_bk == 1: w_in.T, w_out.T)
    TMA_FITS: tl.constexpr,  # the operands fit TMA descriptors (tma_fits): a TMA config may use them
    TMA: tl.constexpr,  # config: A and B tiles in by TMA, C (and H) tiles out through descriptors
    PERSISTENT: tl.constexpr,  # config: a program per SM walks the tiles (the grid is min(SMs, tiles))
    EPI_N: tl.constexpr,  # config: the epilogue's column slice (BLOCK_N, or a half or quarter of it)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    BK: tl.constexpr = BLOCK_K // 2 if PRECISION == "ieee" else BLOCK_K
    DESCRIBED: tl.constexpr = TMA and TMA_FITS  # this call moves its tiles through TMA descriptors
    if DESCRIBED:
        a_src = operand_descriptor(A, M, K, s_am, s_ak, BLOCK_M, BK, A_T)
        b_src = operand_descriptor(B, K, N, s_bk, s_bn, BK, BLOCK_N, B_T)
        c_out = tl.make_tensor_descriptor(C, shape=[M, N], strides=[s_cm, 1], block_shape=[BLOCK_M, EPI_N])
        if STORE_PRE or DACT != 0:
            h_io = tl.make_tensor_descriptor(H, shape=[M, N], strides=[s_hm, 1], block_shape=[BLOCK_M, EPI_N])
        else:
            h_io = H
    else:
        a_src, b_src, c_out, h_io = A, B, C, H

    # Which tiles: this program's, or (persistent) every num_programs-th from it, the tile loop flattened with
    # the K loop so that the next tile's first loads are in flight while this one's epilogue runs.
    if PERSISTENT:
        for tile in tl.range(tl.program_id(0), tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N), tl.num_programs(0),
                             flatten=True):
            _tile(tile, a_src, b_src, c_out, h_io, C, Bias, DBias, M, N, K, s_am, s_ak, s_bk, s_bn, s_cm, s_cn,
                  s_hm, s_hn, HAS_BIAS, ACT, STORE_PRE, DACT, BIAS_GRAD, PRECISION, A_T, B_T, DESCRIBED,
                  BLOCK_M, BLOCK_N, BK, EPI_N, GROUP_M)
    else:
        _tile(tl.program_id(0), a_src, b_src, c_out, h_io, C, Bias, DBias, M, N, K, s_am, s_ak, s_bk, s_bn, s_cm,
              s_cn, s_hm, s_hn, HAS_BIAS, ACT, STORE_PRE, DACT, BIAS_GRAD, PRECISION, A_T, B_T, DESCRIBED,
              BLOCK_M, BLOCK_N, BK, EPI_N, GROUP_M)


@triton.jit
def _tile(tile, a_src, b_src, c_out, h_io, C, Bias, DBias, M, N, K, s_am, s_ak, s_bk, s_bn, s_cm, s_cn, s_hm, s_hn,
          HAS_BIAS: tl.constexpr, ACT: tl.constexpr, STORE_PRE: tl.constexpr, DACT: tl.constexpr,
          BIAS_GRAD: tl.constexpr, PRECISION: tl.constexpr, A_T: tl.constexpr, B_T: tl.constexpr,
          DESCRIBED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BK: tl.constexpr,
          EPI_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Tile number ``tile`` of C (grouped ordering): the K loop, then the epilogue."""
    pid_m, pid_n = grouped_tile(tile, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    m0 = pid_m * BLOCK_M
    n0 = pid_n * BLOCK_N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if DESCRIBED:
        for k in range(0, tl.cdiv(K, BK)):
            a = operand_tile(a_src, m0, k * BK, A_T)
            b = operand_tile(b_src, k * BK, n0, B_T)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
    else:
        # Rows/columns past the edge wrap around (their results are never stored): the loads need only the K mask.
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BK)
        a_ptrs = a_src + ((offs_m % M).to(tl.int64)[:, None] * s_am + offs_k[None, :] * s_ak)
        b_ptrs = b_src + (offs_k[:, None] * s_bk + (offs_n % N).to(tl.int64)[None, :] * s_bn)
        for k in range(0, tl.cdiv(K, BK)):
            k_left = K - k * BK
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            a_ptrs += BK * s_ak
            b_ptrs += BK * s_bk
    _finish(acc, pid_m, m0, n0, M, N, C, c_out, Bias, h_io, DBias, s_cm, s_cn, s_hm, s_hn, HAS_BIAS, ACT, STORE_PRE,
            DACT, BIAS_GRAD, DESCRIBED, BLOCK_M, BLOCK_N, EPI_N)


@triton.jit
def _finish(acc, pid_m, m0, n0, M, N, C, c_out, Bias, h_io, DBias, s_cm, s_cn, s_hm, s_hn,
            HAS_BIAS: tl.constexpr, ACT: tl.constexpr, STORE_PRE: tl.constexpr, DACT: tl.constexpr,
            BIAS_GRAD: tl.constexpr, DESCRIBED: tl.constexpr, BLOCK_M: tl.constexpr, WIDTH: tl.constexpr,
            EPI_N: tl.constexpr):
    """The epilogue of the (BLOCK_M, WIDTH) fp32 tile ``acc`` at (m0, n0), in EPI_N-wide column slices: the tile
    is halved (a register relabelling of the wgmma accumulator) until the slices are EPI_N wide, and each slice
    is finished while the others wait, so the epilogue's temporaries cover one slice, not the whole tile."""
    if WIDTH == EPI_N:
        _epilogue(acc, pid_m, m0, n0, M, N, C, c_out, Bias, h_io, DBias, s_cm, s_cn, s_hm, s_hn,
                  HAS_BIAS, ACT, STORE_PRE, DACT, BIAS_GRAD, DESCRIBED, BLOCK_M, WIDTH)
    else:
        HALF: tl.constexpr = WIDTH // 2
        left, right = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, HALF)), (0, 2, 1)))
        _finish(left, pid_m, m0, n0, M, N, C, c_out, Bias, h_io, DBias, s_cm, s_cn, s_hm, s_hn,
                HAS_BIAS, ACT, STORE_PRE, DACT, BIAS_GRAD, DESCRIBED, BLOCK_M, HALF, EPI_N)
        _finish(right, pid_m, m0, n0 + HALF, M, N, C, c_out, Bias, h_io, DBias, s_cm, s_cn, s_hm, s_hn,
                HAS_BIAS, ACT, STORE_PRE, DACT, BIAS_GRAD, DESCRIBED, BLOCK_M, HALF, EPI_N)


@triton.jit
def _epilogue(acc, pid_m, m0, n0, M, N, C, c_out, Bias, h_io, DBias, s_cm, s_cn, s_hm, s_hn,
              HAS_BIAS: tl.constexpr, ACT: tl.constexpr, STORE_PRE: tl.constexpr, DACT: tl.constexpr,
              BIAS_GRAD: tl.constexpr, DESCRIBED: tl.constexpr, BLOCK_M: tl.constexpr, WIDTH: tl.constexpr):
    """Finish the (BLOCK_M, WIDTH) fp32 tile ``acc`` of C at (m0, n0); see gemm's flags. ``c_out`` and ``h_io``
    are C's and H's descriptors when DESCRIBED (stores clipped at the edges by the copy engine), else pointers."""
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = n0 + tl.arange(0, WIDTH)
    m_ok = offs_m < M
    n_ok = offs_n < N
    mask = m_ok[:, None] & n_ok[None, :]
    offs_m64 = offs_m.to(tl.int64)
    if HAS_BIAS:
        acc += tl.load(Bias + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if STORE_PRE:
        if DESCRIBED:
            h_io.store([m0, n0], acc.to(C.dtype.element_ty))  # H has C's dtype (the inputs')
        else:
            tl.store(h_io + offs_m64[:, None] * s_hm + offs_n[None, :] * s_hn, acc.to(h_io.dtype.element_ty),
                     mask=mask)
    if ACT != 0:
        acc = _activation(acc, ACT)
    if DACT != 0:
        if DESCRIBED:
            h = h_io.load([m0, n0])
        else:
            h = tl.load(h_io + offs_m64[:, None] * s_hm + offs_n[None, :] * s_hn, mask=mask, other=0.0)
        acc = acc * _activation_grad(h.to(tl.float32), DACT)
    if BIAS_GRAD:
        # The bias gradient is the column sum of this very tile. DBias has one row per 32-row band of C; this
        # program owns BLOCK_M / 32 of them: it writes its sum in the first and zeros in the rest, so every row
        # is written by exactly one program whatever BLOCK_M the autotuner picked.
        RATIO: tl.constexpr = BLOCK_M // 32
        tile_sum = tl.sum(tl.where(m_ok[:, None], acc, 0.0), axis=0)
        band = pid_m * RATIO + tl.arange(0, RATIO)
        part = tl.where(tl.arange(0, RATIO)[:, None] == 0, tile_sum[None, :], 0.0)
        tl.store(DBias + band.to(tl.int64)[:, None] * N + offs_n[None, :], part,
                 mask=(band < tl.cdiv(M, 32))[:, None] & n_ok[None, :])
    if DESCRIBED:
        c_out.store([m0, n0], acc.to(C.dtype.element_ty))
    else:
        tl.store(c_out + offs_m64[:, None] * s_cm + offs_n[None, :] * s_cn, acc.to(C.dtype.element_ty), mask=mask)


# A column sum: one (BLOCK_R, BLOCK_N) fp32 accumulator per program, walking its share of the rows. The grid
# splits the rows too (axis 1) so a few columns still fill the GPU; the split's partial rows are summed by a
# second, smaller call. One config (not autotuned): a bias gradient is a tiny part of an MLP's backward.
COL_SUM_CONFIGS = [triton.Config({"BLOCK_R": 32, "BLOCK_N": 128}, num_warps=4)]


@rt.autotune(COL_SUM_CONFIGS, key=["R", "N"])
@triton.jit
def col_sum(X, Out, R, N, s_xr, s_xn, s_or, rows_per_prog, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_r = tl.program_id(1)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    start = pid_r * rows_per_prog
    end = tl.minimum(start + rows_per_prog, R)
    acc = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
    for r0 in range(start, end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        mask = (rows < end)[:, None] & col_ok[None, :]
        acc += tl.load(X + rows.to(tl.int64)[:, None] * s_xr + cols[None, :] * s_xn, mask=mask, other=0.0).to(
            tl.float32)
    tl.store(Out + pid_r.to(tl.int64) * s_or + cols, tl.sum(acc, axis=0).to(Out.dtype.element_ty), mask=col_ok)
