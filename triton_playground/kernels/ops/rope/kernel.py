"""The Triton kernel of partial RoPE (GPT-NeoX "rotate half"): one kernel serves the forward and the backward.

For a head vector ``x`` of ``head_dim`` channels and its token's integer position ``p``, the first ``rotary_dim``
channels (``R``, even) are rotated pairwise and the rest pass through untouched::

    inv_freq[i] = theta ** (-2i / R)                    i = 0 .. R/2 - 1    (fp32, computed once, as HF does)
    angle[i]    = float32(p) * inv_freq[i]              (one fp32 product: the very angle HF computes)
    y[i]        = x[i]       * cos(angle[i]) - x[i + R/2] * sin(angle[i])
    y[i + R/2]  = x[i + R/2] * cos(angle[i]) + x[i]       * sin(angle[i])
    y[R:]       = x[R:]                                 (bit for bit)

The rotation is orthogonal, so the backward is the same kernel rotating by minus the angle (``sin -> -sin``)::

    dx[i]       = dy[i]       * cos + dy[i + R/2] * sin
    dx[i + R/2] = dy[i + R/2] * cos - dy[i]       * sin
    dx[R:]      = dy[R:]

Tiling. A program owns ``BLOCK_S`` positions of one batch row and a group of ``HEADS`` heads. It computes the
``(BLOCK_S, R/2)`` cos/sin tile once, in fp32 registers, and then walks its heads, each a ``(BLOCK_S, head_dim)``
tile read once and written once: that amortises the transcendentals over the heads, so the kernel is a
streaming copy with a few FMAs per element. q and k are handled in the SAME launch (how models call it): the
head groups run over q's heads followed by k's heads (GQA: k may have fewer), so one program may hold the last
heads of q and the first of k; it runs two head loops with bounds clipped to each tensor. A lone ``x`` is the q
half with zero k heads.

Registers. What a thread holds is the cos and sin tiles (kept across the head loop) and one head's x1, x2 halves
in flight: ``4 * BLOCK_S * BLOCK_R / threads`` fp32 values, plus the pass-through channels' raw copy. The prune
rule (``fits``) keeps configs under a budget for which the report (``triton-playground report partial_rope``)
shows no spill, and that give every thread whole 16-byte vectors (more warps than that duplicate loads).

Precision: the angle is the fp32 product HF computes (``inv_freq`` comes from the same torch expression, so the
two agree bit for bit); cos and sin of it are fp32, within about one fp32 ulp of the exact values at any angle
(angles reach 1e4+ radians at long contexts; checked against float64 up to 1e6 radians), and the rotation runs
in fp32 with one rounding to x's dtype at the store. (HF rounds cos/sin to x's dtype first; ours is the more
accurate.) cos and sin come from ``_sincos``, not from libdevice's ``__nv_cosf``/``__nv_sinf``: those reduce
the angle twice (once each), and their exact reduction for huge angles (Payne-Hanek, with a 28-byte local
array) is inlined for every element a thread owns; ``_sincos`` reduces once, exactly, in fp64 (an H100 runs
fp64 at half the fp32 rate, and this is per position and frequency, not per element of every head), then
evaluates two short polynomials. No local memory, and about a third of the instructions.
"""

import triton
import triton.language as tl

from ... import _runtime as rt

# (BLOCK_S positions, HEADS per program, num_warps). A head tile is BLOCK_S x head_dim: 32 x 128 bf16 = 8 KB.
# Few heads per program keep the grid wide for short sequences; more heads amortise cos/sin further.
CONFIGS = [triton.Config({"BLOCK_S": s, "HEADS": h}, num_warps=w)
           for s, h, w in [(16, 1, 4), (16, 4, 4), (32, 2, 4), (32, 8, 4), (64, 4, 4), (64, 4, 8), (128, 4, 8)]]
VALUES_PER_THREAD = 64  # cos, sin, x1, x2 (fp32) per thread: see Registers above


def fits(configs, nargs):
    """The rule: cos, sin, one head's rotated halves and its pass-through channels (raw, 32-bit registers' worth)
    within VALUES_PER_THREAD registers a thread, and every thread given at least one 16-byte vector of the
    rotated half (for head_dim 64 at half rotary, 16 channels: a few rows per thread)."""
    # From the positional arguments only (Triton's autotuner hands its prune hook those, not the keywords):
    # BLOCK_R and BLOCK_P as api.py derives them.
    half, n_pass, elem = nargs["HALF"], nargs["D"] - 2 * nargs["HALF"], nargs["X"].element_size()
    r = triton.next_power_of_2(half)
    passed = triton.next_power_of_2(n_pass) * elem / 4 if n_pass > 0 else 0

    def values(c):
        return c.kwargs["BLOCK_S"] * (4 * r + passed) / (32 * c.num_warps)

    def whole_vectors(c):
        return c.kwargs["BLOCK_S"] * r * elem >= 16 * 32 * c.num_warps

    fitting = [c for c in configs if values(c) <= VALUES_PER_THREAD]
    return [c for c in fitting if whole_vectors(c)] or fitting or [min(configs, key=values)]


@rt.autotune(CONFIGS, key=["S", "D", "HALF", "n_heads_x", "n_heads_k"], default={"BLOCK_S": 32, "HEADS": 8},
             prune=fits)
@triton.jit
def rope_kernel(
    X, Y, K, KY, Pos, InvFreq,
    n_heads_x, n_heads_k, S, D, HALF,
    s_xb, s_xh, s_xs, s_xd, s_yb, s_yh, s_ys, s_yd,
    s_kb, s_kh, s_ks, s_kd, s_kyb, s_kyh, s_kys, s_kyd,
    s_pb, s_ps,
    BACKWARD: tl.constexpr,  # rotate by -angle (the gradient)
    BLOCK_R: tl.constexpr,  # >= HALF = rotary_dim / 2, a power of two
    BLOCK_P: tl.constexpr,  # >= D - 2 * HALF (the pass-through channels), a power of two
    HAS_PASS: tl.constexpr,  # rotary_dim < head_dim
    BLOCK_S: tl.constexpr, HEADS: tl.constexpr,
):
    pid_s = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)  # batch * stride may pass 2^31 on big activations
    pid_g = tl.program_id(2)

    rows = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    row_ok = rows < S
    rows64 = rows.to(tl.int64)
    # cos/sin of this tile of positions: once, shared by every head the program walks.
    pos = tl.load(Pos + pid_b * s_pb + rows64 * s_ps, mask=row_ok, other=0).to(tl.float32)
    i = tl.arange(0, BLOCK_R)
    i_ok = i < HALF
    inv_freq = tl.load(InvFreq + i, mask=i_ok, other=0.0)
    cos, sin = _sincos(pos[:, None] * inv_freq[None, :])
    if BACKWARD:
        sin = -sin
    p = 2 * HALF + tl.arange(0, BLOCK_P)  # pass-through channels
    rot_mask = row_ok[:, None] & i_ok[None, :]
    pass_mask = row_ok[:, None] & (p < D)[None, :]

    # Heads [h0, h0 + HEADS) of the combined list (q's heads, then k's), clipped to each tensor. The head pointers
    # step by the head stride (64-bit pointer arithmetic: heads * stride may pass 2^31).
    h0 = pid_g * HEADS
    lo = tl.minimum(h0, n_heads_x)
    src = X + pid_b * s_xb + lo.to(tl.int64) * s_xh
    dst = Y + pid_b * s_yb + lo.to(tl.int64) * s_yh
    for _ in range(lo, tl.minimum(h0 + HEADS, n_heads_x)):
        _rotate_head(src, dst, rows64, i, p, rot_mask, pass_mask, cos, sin, HALF, s_xs, s_xd, s_ys, s_yd, HAS_PASS)
        src += s_xh
        dst += s_yh
    lo = tl.maximum(h0 - n_heads_x, 0)
    src = K + pid_b * s_kb + lo.to(tl.int64) * s_kh
    dst = KY + pid_b * s_kyb + lo.to(tl.int64) * s_kyh
    for _ in range(lo, tl.minimum(h0 + HEADS - n_heads_x, n_heads_k)):
        _rotate_head(src, dst, rows64, i, p, rot_mask, pass_mask, cos, sin, HALF, s_ks, s_kd, s_kys, s_kyd, HAS_PASS)
        src += s_kh
        dst += s_kyh


@triton.jit
def _rotate_head(src, dst, rows64, i, p, rot_mask, pass_mask, cos, sin, HALF,
                 s_src_s, s_src_d, s_dst_s, s_dst_d, HAS_PASS: tl.constexpr):
    """One (BLOCK_S, head_dim) tile: rotate the pairs (i, i + HALF), copy the pass-through channels as they are."""
    src_row = src + rows64[:, None] * s_src_s
    dst_row = dst + rows64[:, None] * s_dst_s
    x1 = tl.load(src_row + i[None, :] * s_src_d, mask=rot_mask, other=0.0).to(tl.float32)
    x2 = tl.load(src_row + (i[None, :] + HALF) * s_src_d, mask=rot_mask, other=0.0).to(tl.float32)
    y1 = x1 * cos - x2 * sin
    y2 = x2 * cos + x1 * sin
    tl.store(dst_row + i[None, :] * s_dst_d, y1.to(dst.dtype.element_ty), mask=rot_mask)
    tl.store(dst_row + (i[None, :] + HALF) * s_dst_d, y2.to(dst.dtype.element_ty), mask=rot_mask)
    if HAS_PASS:  # no arithmetic, no conversion: the untouched channels are copied bit for bit
        xp = tl.load(src_row + p[None, :] * s_src_d, mask=pass_mask, other=0.0)
        tl.store(dst_row + p[None, :] * s_dst_d, xp, mask=pass_mask)


# pi/2 in two parts (fdlibm's pio2_1, pio2_1t): the first 33 bits, so k * PIO2_HI is exact in fp64 for any
# quadrant count k < 2^20 (angles up to 1.6e6 radians), and the next 53.
PIO2_HI = tl.constexpr(1.5707963267341256)
PIO2_LO = tl.constexpr(6.077100506506192e-11)
TWO_OVER_PI = tl.constexpr(0.6366197723675814)


@triton.jit
def _sincos(angle):
    """cos and sin of an fp32 tile, sharing one range reduction.

    angle = k * pi/2 + r with k the nearest integer to angle * 2/pi and |r| <= pi/4 (a hair more when the fp32
    product rounds k the other way: the polynomials hold there too). r is exact to ~1e-19 absolute: angle and
    k are exact in fp64, k * PIO2_HI is exact, angle - k * PIO2_HI is exact (Sterbenz), only k * PIO2_LO rounds.
    Then Cephes' single-precision minimax polynomials on [-pi/4, pi/4] (relative error ~3e-8), and the quadrant
    k mod 4 picks and signs them: (sin, cos) = (s, c), (c, -s), (-s, -c), (-c, s).
    """
    k = tl.floor(angle * TWO_OVER_PI + 0.5)
    kd = k.to(tl.float64)
    r = ((angle.to(tl.float64) - kd * PIO2_HI) - kd * PIO2_LO).to(tl.float32)
    z = r * r
    s = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * r + r
    c = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z - 0.5 * z + 1.0
    q = k.to(tl.int32)
    odd = (q & 1) != 0
    sin = tl.where(odd, c, s)
    cos = tl.where(odd, s, c)
    sin = tl.where((q & 2) != 0, -sin, sin)
    cos = tl.where(((q + 1) & 2) != 0, -cos, cos)
    return cos, sin
