"""Attention described for tests and sweeps: inputs, shapes drawn by hypothesis, FLOPs (from the visible pairs)
and bytes, tolerances, the sweep peers (SDPA, FlexAttention), bad inputs."""

from __future__ import annotations

import functools

import torch

from ... import _runtime as rt
from ... import peers
from ...spec import BadInput, Case, OpSpec, call
from .api import attention
from .kernel import attn_fwd
from .kernel_bwd import attn_bwd_dkdv, attn_bwd_dq
from .reference import attention_reference, visible_mask


def _make_case(dims, dtype, device, *, contiguous=True, requires_grad=False, seed=0):
    """dims: batch, q_heads, kv_heads, head_dim, q_len and kv_len (default: seqlen), causal (True), window (None).

    contiguous=False gives the layout a model's projections produce: q, k, v are transposed views of
    (batch, seq, heads, head_dim) buffers (dense, so the tests' dtype casts keep the strides).
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    batch, hq, hk, d = dims["batch"], dims["q_heads"], dims["kv_heads"], dims["head_dim"]
    q_len, kv_len = dims.get("q_len", dims.get("seqlen")), dims.get("kv_len", dims.get("seqlen"))
    shapes = [(batch, q_len, hq, d), (batch, kv_len, hk, d), (batch, kv_len, hk, d)]
    args = []
    for shape in shapes:
        t = torch.randn(*shape, generator=g).to(device=device, dtype=dtype).transpose(1, 2)
        args.append((t.contiguous() if contiguous else t).requires_grad_(requires_grad))
    return Case(tuple(args), {"causal": dims.get("causal", True), "window": dims.get("window")})


def _dims(big):
    from hypothesis import strategies as st  # test tooling: imported only when a test asks for the strategy

    @st.composite
    def draw_dims(draw):
        kv_heads = draw(st.integers(1, 4 if big else 2))
        group = draw(st.sampled_from([1, 2, 3]))
        small = st.integers(1, 48)
        kv_len = draw(st.one_of(small, st.sampled_from([64, 97, 130, 257] + ([700, 1500] if big else []))))
        q_len = draw(st.one_of(st.just(kv_len), st.just(1), st.integers(1, kv_len)))
        head_dim = draw(st.one_of(st.integers(1, 40), st.sampled_from([64, 80, 96, 128, 256])))
        causal = draw(st.booleans() | st.just(True))
        window = None
        if causal:
            window = draw(st.one_of(st.none(), st.just(1), st.integers(2, 40), st.just(kv_len + 7)))
        return {"batch": draw(st.integers(1, 2)), "q_heads": kv_heads * group, "kv_heads": kv_heads,
                "q_len": q_len, "kv_len": kv_len, "head_dim": head_dim, "causal": causal, "window": window}

    return draw_dims()


def _sweep_cases(gpu):
    if not gpu:
        return [{"batch": 1, "q_heads": 2, "kv_heads": 1, "seqlen": s, "head_dim": 16, "window": w}
                for w in (None, 16) for s in (16, 32, 64)]
    seqlens = [512 * 2**i for i in range(6)]
    return [{"batch": 2, "q_heads": 2048 // d, "kv_heads": 2048 // d, "seqlen": s, "head_dim": d, "window": w}
            for d in (64, 128) for w in (None, 256, 1024, 4096) for s in seqlens]


def visible_pairs(q_len, kv_len, causal=True, window=None):
    """Number of (query, key) pairs the mask keeps, per (batch, head)."""
    if not causal:
        return q_len * kv_len
    # row at position p (from kv_len - q_len to kv_len - 1) sees min(p + 1, W) keys; t = p + 1
    a, b = kv_len - q_len + 1, kv_len
    w = b if window is None else window

    def tri(n):
        return n * (n + 1) // 2

    cut = min(max(w, a - 1), b)  # t in [a, cut] sees t keys, t in (cut, b] sees w
    return (tri(cut) - tri(a - 1)) + w * (b - cut)


def _shape(dims):
    q_len = dims.get("q_len", dims.get("seqlen"))
    kv_len = dims.get("kv_len", dims.get("seqlen"))
    return q_len, kv_len


def _flops(dims, mode):
    q_len, kv_len = _shape(dims)
    pairs = visible_pairs(q_len, kv_len, dims.get("causal", True), dims.get("window"))
    fwd = 4 * dims["head_dim"] * pairs * dims["batch"] * dims["q_heads"]
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[mode]


def _bytes(dims, dtype, mode):
    size = torch.finfo(dtype).bits // 8
    q_len, kv_len = _shape(dims)
    qsize = dims["batch"] * dims["q_heads"] * q_len * dims["head_dim"] * size
    kvsize = dims["batch"] * dims["kv_heads"] * kv_len * dims["head_dim"] * size
    fwd = 2 * qsize + 2 * kvsize  # q, k, v in; o out
    bwd = 4 * qsize + 4 * kvsize  # q, o, dO, k, v in; dq, dk, dv out
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


# ------------------------------------------------------------------------------------------------ sweep peers


def _sdpa_peer():
    def sdpa(q, k, v, *, causal=True, window=None, scale=None):
        q_len, kv_len = q.shape[2], k.shape[2]
        gqa = q.shape[1] != k.shape[1]
        if not causal:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
        if window is None and q_len == kv_len:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                                    enable_gqa=gqa)
        # is_causal aligns the diagonal top-left; ours is bottom-right (queries are the last positions): a mask.
        mask = visible_mask(q_len, kv_len, causal, window, q.device)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)

    return sdpa


def _flex_peer():
    if not rt.GPU or rt.INTERPRET:
        return None  # compiled FlexAttention needs a GPU (its CPU path compiles C++ for minutes)
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    compiled = torch.compile(flex_attention)

    @functools.lru_cache(maxsize=32)
    def block_mask(q_len, kv_len, causal, window, device):
        offset = kv_len - q_len

        def mask_mod(b, h, q_idx, kv_idx):
            pos = q_idx + offset
            visible = kv_idx <= pos if causal else kv_idx >= 0
            if window is not None:  # W keys, itself included: FlexAttention's examples' "<= W" would keep W + 1
                visible = visible & (pos - kv_idx < window)
            return visible

        return create_block_mask(mask_mod, B=None, H=None, Q_LEN=q_len, KV_LEN=kv_len, device=device)

    def flex(q, k, v, *, causal=True, window=None, scale=None):
        mask = block_mask(q.shape[2], k.shape[2], causal, window, str(q.device))
        return compiled(q, k, v, block_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])

    return flex


# ------------------------------------------------------------------------------------------------ description


def _bad_inputs():
    x = torch.randn(1, 2, 5, 8)
    bad = [
        BadInput("rank", call(torch.randn(2, 5, 8), x, x), ValueError, "q must have rank 4"),
        BadInput("int q", call(x.int(), x, x), TypeError, "q must be float"),
        BadInput("not a tensor", call(x, [1.0], x), TypeError, "k must be a torch.Tensor"),
        BadInput("mixed dtypes", call(x, x.half(), x), TypeError, "k has dtype"),
        BadInput("head dims", call(x, torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)), ValueError,
                 "k must have q's head_dim"),
        BadInput("v shape", call(x, x, torch.randn(1, 2, 5, 4)), ValueError, "v must have k's shape"),
        BadInput("batch", call(x, torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)), ValueError,
                 "k must have q's batch"),
        BadInput("gqa ratio", call(torch.randn(1, 3, 5, 8), x, x), ValueError, "q_heads .* kv_heads"),
        BadInput("q_len > kv_len", call(torch.randn(1, 2, 6, 8), x, x), ValueError, "q_len .* kv_len"),
        BadInput("window 0", call(x, x, x, window=0), ValueError, "window must be >= 1"),
        BadInput("window float", call(x, x, x, window=2.5), TypeError, "window must be an int"),
        BadInput("window non-causal", call(x, x, x, causal=False, window=4), ValueError, "window needs causal"),
        BadInput("head_dim 257", call(*(torch.randn(1, 1, 2, 257),) * 3), ValueError, "head_dim"),
        BadInput("scale", call(x, x, x, scale="big"), TypeError, "scale must be"),
    ]
    if torch.cuda.is_available():
        bad.append(BadInput("devices", lambda: Case((x.cuda(), x, x)), ValueError, "k is on cpu"))
    return tuple(bad)


# fp32: ieee dots everywhere; the error is fp32 rounding grown over the reductions (~1e-6).
# fp16: p and dS are rounded to fp16 (2^-11 relative) before their matmuls, as in FlashAttention.
ATTENTION = OpSpec(
    name="attention",
    fn=attention,
    reference=attention_reference,
    make_case=_make_case,
    dims=_dims,
    # q_len 150 against kv_len 299 with a window of 250 and head dim 24: every config crosses the q_len and
    # kv_len tails, the diagonal, the window's edge, and (for all but the widest tiles) unmasked interior blocks.
    config_dims={"batch": 1, "q_heads": 2, "kv_heads": 1, "q_len": 150, "kv_len": 299, "head_dim": 24,
                 "causal": True, "window": 250},
    sweep_cases=_sweep_cases,
    flops=_flops,
    bytes_moved=_bytes,
    tolerance={torch.float32: 1e-4, torch.float16: 3e-3},
    grad_tolerance={torch.float32: 1e-4, torch.float16: 3e-3},
    kernels=(attn_fwd, attn_bwd_dkdv, attn_bwd_dq),
    peers={"sdpa": _sdpa_peer, "flex": _flex_peer, "fla": peers.fla_attention},
    bad_inputs=_bad_inputs(),
)

SPECS = (ATTENTION,)
