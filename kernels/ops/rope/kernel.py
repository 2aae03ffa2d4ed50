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
tile read once and written once: that amortises the two transcendentals over the heads, so the kernel is a
streaming copy with a few FMAs per element. q and k are handled in the SAME launch (how models call it): the
head groups run over q's heads followed by k's heads (GQA: k may have fewer), so one program may hold the last
heads of q and the first of k; it runs two head loops with bounds clipped to each tensor. A lone ``x`` is the q
half with zero k heads.

Precision: the angle is the fp32 product HF computes (``inv_freq`` comes from the same torch expression, so the
two agree bit for bit), cos/sin are fp32 (``tl.cos``/``tl.sin`` lower to libdevice's accurate ``__nv_cosf``/
``__nv_sinf``, full range reduction: angles reach 1e4+ radians at long contexts), and the rotation runs in fp32
with one rounding to x's dtype at the store. (HF rounds cos/sin to x's dtype first; ours is the more accurate.)
"""

import triton
import triton.language as tl

from ... import _runtime as rt

# (BLOCK_S, HEADS per program, num_warps). A head tile is BLOCK_S x head_dim: 32 x 128 bf16 = 8 KB.
# Few heads per program keeps the grid wide for short sequences; more heads amortise cos/sin further.
CONFIGS = [triton.Config({"BLOCK_S": s, "HEADS": h}, num_warps=w)
           for s, h, w in [(16, 1, 4), (32, 2, 4), (32, 8, 4), (64, 4, 8), (128, 4, 8)]]


@rt.autotune(CONFIGS, key=["S", "D", "HALF", "n_heads_x", "n_heads_k"], default={"BLOCK_S": 128, "HEADS": 4})
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
    angle = pos[:, None] * inv_freq[None, :]
    cos = tl.cos(angle)
    sin = tl.sin(angle)
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
