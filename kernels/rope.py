"""Partial rotary position embedding (RoPE), GPT-NeoX "rotate half" convention, as HF Persimmon and OLMoE use it.

For a head vector ``x`` of ``head_dim`` channels and its token's integer position ``p``, the first ``rotary_dim``
channels (``R``, even) are rotated pairwise and the rest pass through untouched::

    inv_freq[i] = theta ** (-2i / R)                    i = 0 .. R/2 - 1    (fp32, computed once, as HF does)
    angle[i]    = float32(p) * inv_freq[i]              (one fp32 product: the very angle HF computes)
    y[i]        = x[i]       * cos(angle[i]) - x[i + R/2] * sin(angle[i])
    y[i + R/2]  = x[i + R/2] * cos(angle[i]) + x[i]       * sin(angle[i])
    y[R:]       = x[R:]                                 (bit for bit)

Persimmon rotates ``R = head_dim * partial_rotary_factor`` (0.5) channels; OLMoE rotates all of them (``R = head_dim``).

The rotation is orthogonal, so the backward is the same kernel rotating by minus the angle (``sin -> -sin``)::

    dx[i]       = dy[i]       * cos + dy[i + R/2] * sin
    dx[i + R/2] = dy[i + R/2] * cos - dy[i]       * sin
    dx[R:]      = dy[R:]

Shapes: ``x: (batch, heads, seq, head_dim)`` with any strides (HF's q is a transposed view of the projection);
``positions: (seq,)`` or ``(batch, seq)``, any integer dtype, any strides (an ``expand``-ed row has stride 0).

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

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from hypothesis import strategies as st

from . import _runtime as rt
from .spec import BadInput, Case, OpSpec, call


def _rope_configs():
    # (BLOCK_S, HEADS per program, num_warps). A head tile is BLOCK_S x head_dim: 32 x 128 bf16 = 8 KB.
    # Few heads per program keeps the grid wide for short sequences; more heads amortise cos/sin further.
    return [triton.Config({"BLOCK_S": s, "HEADS": h}, num_warps=w)
            for s, h, w in [(16, 1, 4), (32, 2, 4), (32, 8, 4), (64, 4, 8), (128, 4, 8)]]


@rt.autotune(_rope_configs(), key=["S", "D", "HALF", "n_heads_x", "n_heads_k"], default=4)
@triton.jit
def _rope_kernel(
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


# ------------------------------------------------------------------------------------------------ wrapper


@functools.lru_cache(maxsize=64)
def _inv_freq(rotary_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """HF's ``inv_freq`` (fp32, computed on the CPU as HF's __init__ does): the kernel and the reference share it."""
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    return (1.0 / (theta ** exponent)).to(device)


def _launch(x, k, positions, rotary_dim, theta, backward):
    """One launch over x (and k, when given). Returns the new tensor(s), contiguous, in x's dtype."""
    b, hx, s, d = x.shape
    hk = k.shape[1] if k is not None else 0
    y = rt.empty(x.shape, x.dtype, x.device)
    ky = rt.empty(k.shape, k.dtype, k.device) if k is not None else None
    k_, ky_ = (k, ky) if k is not None else (x, y)  # placeholders: the k loop runs zero times
    pos = positions if positions.dim() == 2 else positions[None, :]  # (1, seq): batch stride 0 below
    s_pb = pos.stride(0) if pos.shape[0] > 1 else 0
    half = rotary_dim // 2
    n_pass = d - rotary_dim
    if b == 0 or s == 0 or hx + hk == 0:
        return y, ky
    _rope_kernel[lambda meta: (triton.cdiv(s, meta["BLOCK_S"]), b, triton.cdiv(hx + hk, meta["HEADS"]))](
        x, y, k_, ky_, pos, _inv_freq(rotary_dim, float(theta), x.device),
        hx, hk, s, d, half,
        *x.stride(), *y.stride(), *k_.stride(), *ky_.stride(),
        s_pb, pos.stride(1),
        BACKWARD=backward, BLOCK_R=triton.next_power_of_2(half), BLOCK_P=triton.next_power_of_2(max(n_pass, 1)),
        HAS_PASS=n_pass > 0,
    )
    return y, ky


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k, positions, rotary_dim, theta):
        y, ky = _launch(x, k, positions, rotary_dim, theta, backward=False)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: its rotation is skipped
        ctx.save_for_backward(positions)
        ctx.rotary_dim, ctx.theta = rotary_dim, theta
        return (y, ky) if k is not None else y

    @staticmethod
    def backward(ctx, dy, dky=None):
        (positions,) = ctx.saved_tensors
        # The gradient of an output nobody used is None (zero): nothing to rotate.
        if dy is None and dky is None:
            return None, None, None, None, None
        if dy is None:  # only k's rotation is live: run k in the x slot
            dk, _ = _launch(dky, None, positions, ctx.rotary_dim, ctx.theta, backward=True)
            return None, dk, None, None, None
        dx, dk = _launch(dy, dky, positions, ctx.rotary_dim, ctx.theta, backward=True)
        return dx, dk, None, None, None


def _check(x, positions, rotary_dim, theta, name="x"):
    rt.check_tensor(name, x, rank=4)
    d = x.shape[-1]
    if rotary_dim is None:
        rotary_dim = d
    if not isinstance(rotary_dim, int) or isinstance(rotary_dim, bool):
        raise TypeError(f"rotary_dim must be an int or None, got {type(rotary_dim).__name__}")
    if rotary_dim % 2:
        raise ValueError(f"rotary_dim must be even (channels rotate in pairs), got {rotary_dim}")
    if not 2 <= rotary_dim <= d:
        raise ValueError(f"rotary_dim must be in [2, head_dim={d}], got {rotary_dim}")
    rt.check_positive("theta", theta)
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions must be a torch.Tensor, got {type(positions).__name__}")
    if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
        raise TypeError(f"positions must be an integer tensor, got {positions.dtype}")
    b, _, s, _ = x.shape
    if tuple(positions.shape) not in ((s,), (b, s)):
        raise ValueError(f"positions must have shape (seq,) = ({s},) or (batch, seq) = ({b}, {s}), "
                         f"got {tuple(positions.shape)}")
    if positions.device != x.device:
        raise ValueError(f"positions is on {positions.device} but {name} is on {x.device}")
    return rotary_dim


def partial_rope(x, positions, *, rotary_dim=None, theta=10000.0):
    """Rotate the first ``rotary_dim`` channels of ``x: (batch, heads, seq, head_dim)`` (GPT-NeoX rotate-half);
    the rest pass through. ``positions``: integer ``(seq,)`` or ``(batch, seq)``. Returns a new contiguous tensor."""
    rotary_dim = _check(x, positions, rotary_dim, theta)
    return _Rope.apply(x, None, positions, rotary_dim, float(theta))


def partial_rope_qk(q, k, positions, *, rotary_dim=None, theta=10000.0):
    """``(partial_rope(q, ...), partial_rope(k, ...))`` in one launch. ``k`` may have fewer heads than ``q`` (GQA);
    batch, seq and head_dim must match."""
    rotary_dim = _check(q, positions, rotary_dim, theta, name="q")
    rt.check_like("k", k, "q", q)
    if k.dim() != 4 or (k.shape[0], k.shape[2], k.shape[3]) != (q.shape[0], q.shape[2], q.shape[3]):
        raise ValueError(f"k must have shape (batch, kv_heads, seq, head_dim) = ({q.shape[0]}, *, {q.shape[2]}, "
                         f"{q.shape[3]}) like q, got {tuple(k.shape)}")
    return _Rope.apply(q, k, positions, rotary_dim, float(theta))


# ------------------------------------------------------------------------------------------------ reference


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def partial_rope_reference(x, positions, *, rotary_dim=None, theta=10000.0):
    """HF Persimmon's path: cos/sin from the fp32 angle (float64 for a float64 x), cast to x's dtype, then
    ``x_rot * cos + rotate_half(x_rot) * sin`` on the first ``rotary_dim`` channels, the rest concatenated back."""
    rotary_dim = x.shape[-1] if rotary_dim is None else rotary_dim
    angle = positions.float()[..., None] * _inv_freq(rotary_dim, float(theta), x.device)  # (b?, seq, R/2)
    emb = torch.cat((angle, angle), dim=-1).to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    cos, sin = (cos[None, None], sin[None, None]) if positions.dim() == 1 else (cos[:, None], sin[:, None])
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)


def _hf_apply_factory():
    """HF's eager ``apply_rotary_pos_emb`` path with cos/sin computed ahead (as a model does, once per forward):
    transformers' own ``rotate_half`` on the rotary slice, the pass-through concatenated back."""
    try:
        import transformers.models.persimmon.modeling_persimmon as hf
    except Exception:  # noqa: BLE001  (transformers missing or incompatible: the peer is unavailable)
        return None
    cache = {}

    def call(x, positions, *, rotary_dim=None, theta=10000.0):
        rotary_dim = x.shape[-1] if rotary_dim is None else rotary_dim
        key = (positions.data_ptr(), tuple(positions.shape), rotary_dim, theta, x.dtype)
        if key not in cache:
            angle = positions.float()[..., None] * _inv_freq(rotary_dim, float(theta), x.device)
            emb = torch.cat((angle, angle), dim=-1)
            cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
            cache.clear()
            cache[key] = (cos[None], sin[None]) if positions.dim() == 1 else (cos, sin)
        cos, sin = cache[key]
        x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
        q_rot, _ = hf.apply_rotary_pos_emb(x_rot, x_rot[:, :0], cos, sin)  # k: an empty slice, no work
        return torch.cat((q_rot, x_pass), dim=-1)

    return call


# ------------------------------------------------------------------------------------------------ description


def _make_case(dims, dtype, device, *, contiguous=True, requires_grad=False, seed=0):
    """dims: batch, heads, seqlen, head_dim, and rotary_dim or rotary_fraction (neither, or rotary_dim None: the
    default, full rotary); optional pos_2d (positions (batch, seq)), max_pos (positions drawn from [0, max_pos))."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    b, h, s, d = dims["batch"], dims["heads"], dims["seqlen"], dims["head_dim"]
    kwargs = {"rotary_dim": _rotary_dim(dims)} if dims.get("rotary_dim") or "rotary_fraction" in dims else {}
    x = torch.randn(b, h, s, d, generator=g)
    pos_shape = (b, s) if dims.get("pos_2d") else (s,)
    pos = torch.randint(0, dims.get("max_pos", 8192), pos_shape, generator=g)
    if not contiguous:
        # HF's layout: q a transposed view of (batch, seq, heads, head_dim), here also every other channel of a
        # wider buffer; positions every other element of a wider buffer.
        wide = torch.full((b, s, h, 2 * d), float("nan"))
        wide[..., ::2] = x.transpose(1, 2)
        x = wide[..., ::2].transpose(1, 2)
        wide_pos = torch.full(pos_shape[:-1] + (2 * s,), -1, dtype=torch.int64)
        wide_pos[..., ::2] = pos
        pos = wide_pos[..., ::2]
    x = x.to(device=device, dtype=dtype).requires_grad_(requires_grad)
    return Case((x, pos.to(device)), kwargs)


@st.composite
def _dims_strategy(draw, big):
    head_dim = draw(st.one_of(st.sampled_from([2, 4, 6, 16, 64, 80, 128]), st.integers(2, 40)))
    widths = st.integers(1, head_dim // 2).map(lambda r: 2 * r)  # any even width that fits
    return {
        "batch": draw(st.integers(1, 3)),
        "heads": draw(st.integers(1, 8 if big else 3)),
        "seqlen": draw(st.one_of(st.integers(1, 40), st.sampled_from([127, 1000 if big else 67]))),
        "head_dim": head_dim,
        # None: the default (full rotary), which needs an even head_dim
        "rotary_dim": draw(widths if head_dim % 2 else st.one_of(st.none(), widths)),
        "pos_2d": draw(st.booleans()),
        "max_pos": draw(st.sampled_from([1, 64, 8192, 40000])),
    }


def _dims(big):
    return _dims_strategy(big)


def _sweep_cases(gpu):
    seqlens = [512 * 2**i for i in range(6)] if gpu else [8, 16, 32]
    head_dims = [64, 128]
    # hidden 4096 at both head dims: 64 heads of 64 (Persimmon-8B), 32 heads of 128 (Llama/OLMoE-like)
    return [{"batch": 1, "heads": (4096 if gpu else 256) // d, "seqlen": s, "head_dim": d, "rotary_fraction": f}
            for d in head_dims for f in (0.5, 1.0) for s in seqlens]


def _rotary_dim(dims):
    d = dims["head_dim"]
    return dims.get("rotary_dim") or 2 * max(1, int(d * dims.get("rotary_fraction", 1.0)) // 2)


def _flops(dims, mode):
    # 6 flops per rotated pair (4 mul, 2 add) = 3 per rotated channel; cos/sin not counted.
    per = 3 * dims["batch"] * dims["heads"] * dims["seqlen"] * _rotary_dim(dims)
    return {"fwd": per, "bwd": per, "fwd+bwd": 2 * per}[mode]


def _bytes(dims, dtype, mode):
    size = torch.finfo(dtype).bits // 8
    x = dims["batch"] * dims["heads"] * dims["seqlen"] * dims["head_dim"] * size
    pos = dims["seqlen"] * 8
    one = 2 * x + pos  # read x (dy), write y (dx)
    return {"fwd": one, "bwd": one, "fwd+bwd": 2 * one}[mode]


def _bad_inputs():
    x = torch.randn(2, 3, 5, 8)
    pos = torch.arange(5)
    return (
        BadInput("odd rotary_dim", call(x, pos, rotary_dim=3), ValueError, "rotary_dim must be even"),
        BadInput("rotary_dim > head_dim", call(x, pos, rotary_dim=10), ValueError, r"rotary_dim must be in \[2"),
        BadInput("rotary_dim 0", call(x, pos, rotary_dim=0), ValueError, r"rotary_dim must be in \[2"),
        BadInput("rotary_dim float", call(x, pos, rotary_dim=4.0), TypeError, "rotary_dim must be an int"),
        BadInput("float positions", call(x, pos.float()), TypeError, "positions must be an integer tensor"),
        BadInput("bool positions", call(x, pos > 2), TypeError, "positions must be an integer tensor"),
        BadInput("positions length", call(x, torch.arange(4)), ValueError, "positions must have shape"),
        BadInput("positions batch", call(x, torch.zeros(3, 5, dtype=torch.int64)), ValueError,
                 "positions must have shape"),
        BadInput("positions list", call(x, [0, 1, 2, 3, 4]), TypeError, "positions must be a torch.Tensor"),
        BadInput("x rank 3", call(torch.randn(3, 5, 8), pos), ValueError, "x must have rank 4"),
        BadInput("int x", call(torch.ones(2, 3, 5, 8, dtype=torch.int32), pos), TypeError, "x must be float"),
        BadInput("theta", call(x, pos, theta=0.0), ValueError, "theta must be a positive"),
    )


ROPE = OpSpec(
    name="partial_rope",
    fn=partial_rope,
    reference=partial_rope_reference,
    make_case=_make_case,
    dims=_dims,
    config_dims={"batch": 2, "heads": 5, "seqlen": 37, "head_dim": 80, "rotary_dim": 40, "pos_2d": True},
    sweep_cases=_sweep_cases,
    flops=_flops,
    bytes_moved=_bytes,
    tolerance={torch.float32: 1e-5, torch.float16: 1e-3},
    grad_tolerance={torch.float32: 1e-5, torch.float16: 1e-3},
    kernels=(_rope_kernel,),
    peers={"hf_apply": _hf_apply_factory},
    bad_inputs=_bad_inputs(),
    examples=(
        # Persimmon-like: half of 64 channels rotate, (batch, seq) positions, long-context angles
        {"batch": 2, "heads": 3, "seqlen": 33, "head_dim": 64, "rotary_dim": 32, "pos_2d": True, "max_pos": 40000},
        # full rotary at head_dim 128 (OLMoE), one token
        {"batch": 1, "heads": 2, "seqlen": 1, "head_dim": 128},
        # the narrowest rotation: one pair, the rest passes through
        {"batch": 1, "heads": 1, "seqlen": 19, "head_dim": 6, "rotary_dim": 2},
    ),
)

SPECS = (ROPE,)
