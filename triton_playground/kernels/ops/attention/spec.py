"""Attention described for tests and sweeps: inputs, shapes drawn by hypothesis, FLOPs (from the visible pairs)
and bytes, tolerances, the sweep peers (SDPA, FlexAttention), bad inputs."""

from __future__ import annotations

import torch

from . import peers
from ...spec import BadInput, Case, OpSpec, call
from .api import attention
from .kernel import attn_fwd
from .kernel_bwd import attn_bwd_dkdv, attn_bwd_dq
from .reference import attention_reference, attention_varlen_reference, visible_mask  # noqa: F401
from .strata import COUNT_STRATA
from .torch_peers import (_flex_peer, _flex_varlen_peer, _sdpa_peer, _sdpa_varlen_peer,  # noqa: F401
                          document_mask_mod)
from .varlen import attention_varlen


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
    # from 4096 keys without a window the backward adds dq from the dK/dV pass (DQ_ADD): its fp32 variant
    compile_examples=({"batch": 1, "q_heads": 2, "kv_heads": 1, "q_len": 150, "kv_len": 4099, "head_dim": 24,
                       "causal": True, "window": None},),
    sweep_cases=_sweep_cases,
    quick_panels=({"head_dim": 128, "window": None}, {"head_dim": 128, "window": 1024}),
    flops=_flops,
    bytes_moved=_bytes,
    tolerance={torch.float32: 1e-4, torch.float16: 3e-3},
    grad_tolerance={torch.float32: 1e-4, torch.float16: 3e-3},
    kernels=(attn_fwd, attn_bwd_dkdv, attn_bwd_dq),
    peers={"sdpa": _sdpa_peer, "flex": _flex_peer, "fla": peers.fla_attention},
    count_strata=COUNT_STRATA,
    bad_inputs=_bad_inputs(),
)

# ================================================================================================================
# Packed variable-length attention (varlen.py)
# ================================================================================================================
#
# dims: q_heads, kv_heads, head_dim, causal (True), window (None), and the sequences' lengths: "q_lens" and
# "kv_lens" (tuples; kv_lens defaults to q_lens), or, for the sweeps, "seqlen" tokens packed as "docs" documents
# of equal length. Equal, not random: the modeled sweep counts a sample of each launch's programs, which is exact
# when programs do equal or smoothly varying work; with random cuts the programs past a short document's end
# return at once, and a sample misjudges the launch (0.77 to 10 times the real count; equal documents: within 8%
# of every program counted, at 512 and 1024 tokens). The property tests draw random splits, empty and one-token
# documents included.


def doc_lengths(total: int, docs: int) -> tuple[int, ...]:
    """``total`` tokens in ``docs`` documents of equal length (the first ``total % docs`` one token longer)."""
    return tuple(total // docs + (i < total % docs) for i in range(docs))


def varlen_lengths(dims) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(q_lens, kv_lens) of the dims' sequences."""
    if "q_lens" in dims:
        q_lens = tuple(dims["q_lens"])
        return q_lens, tuple(dims.get("kv_lens", q_lens))
    lens = doc_lengths(dims["seqlen"], dims["docs"])
    return lens, lens


def cu_seqlens(lengths, device) -> torch.Tensor:
    """(len(lengths) + 1,) int32 prefix sums, from 0."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    # real even while a fake-tensor mode is on: the static report (kernels/report/shapes.py) builds cases on fake
    # tensors and keeps real integer tensors as they are (the launch reads these values on the host)
    with unset_fake_temporarily():
        return torch.tensor(bounds, dtype=torch.int32, device=device)


def _make_varlen_case(dims, dtype, device, *, contiguous=True, requires_grad=False, seed=0):
    """contiguous=False gives what a model's fused projection produces: q, k, v are column slices of one packed
    (total, q_heads + 2 * kv_heads, head_dim) buffer (q_len == kv_len per sequence), or of two (q, then k and v)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    hq, hk, d = dims["q_heads"], dims["kv_heads"], dims["head_dim"]
    q_lens, kv_lens = varlen_lengths(dims)
    total_q, total_k = sum(q_lens), sum(kv_lens)

    def packed(rows, heads):
        return torch.randn(rows, heads, d, generator=g).to(device=device, dtype=dtype)

    if contiguous:
        q, k, v = packed(total_q, hq), packed(total_k, hk), packed(total_k, hk)
    elif q_lens == kv_lens:
        qkv = packed(total_q, hq + 2 * hk)
        q, k, v = qkv[:, :hq], qkv[:, hq:hq + hk], qkv[:, hq + hk:]
    else:
        kv = packed(total_k, 2 * hk + 1)
        q, k, v = packed(total_q, hq + 1)[:, 1:], kv[:, :hk], kv[:, hk + 1:]
    args = tuple(t.requires_grad_(requires_grad) for t in (q, k, v))
    return Case((*args, cu_seqlens(q_lens, device), cu_seqlens(kv_lens, device)),
                {"causal": dims.get("causal", True), "window": dims.get("window")})


def _varlen_dims(big):
    from hypothesis import strategies as st  # test tooling: imported only when a test asks for the strategy

    @st.composite
    def draw_dims(draw):
        kv_heads = draw(st.integers(1, 4 if big else 2))
        group = draw(st.sampled_from([1, 2, 3]))
        causal = draw(st.booleans() | st.just(True))
        length = st.one_of(st.just(0), st.just(1), st.integers(2, 48),
                           st.sampled_from([64, 97, 130] + ([700, 1500] if big else [])))
        kv_lens = draw(st.lists(length, min_size=0, max_size=8 if big else 5))
        q_lens = []
        for n in kv_lens:  # causal: a sequence's queries are its last positions (q_len <= kv_len)
            top = n if causal or n == 0 else 48
            q_lens.append(draw(st.one_of(st.just(n), st.just(min(n, 1)), st.integers(0, top))))
        head_dim = draw(st.one_of(st.integers(1, 40), st.sampled_from([64, 72, 96, 128, 256])))
        window = None
        if causal:
            window = draw(st.one_of(st.none(), st.just(1), st.integers(2, 40), st.just(max(kv_lens, default=0) + 7)))
        return {"q_heads": kv_heads * group, "kv_heads": kv_heads, "q_lens": tuple(q_lens),
                "kv_lens": tuple(kv_lens), "head_dim": head_dim, "causal": causal, "window": window}

    return draw_dims()


def _varlen_sweep_cases(gpu):
    if not gpu:
        return [{"docs": 3, "q_heads": 2, "kv_heads": 1, "seqlen": s, "head_dim": 16, "window": w}
                for w in (None, 16) for s in (32, 64, 128)]
    seqlens = [512 * 2**i for i in range(6)]
    return [{"docs": docs, "q_heads": 2048 // d, "kv_heads": 2048 // d, "seqlen": s, "head_dim": d, "window": w}
            for d in (64, 128) for docs in (4, 16) for w in (None, 256) for s in seqlens]


def _varlen_flops(dims, mode):
    """The least work: 4 * head_dim FLOPs per visible (query, key) pair and head forward (q k^T and p v), within
    each sequence only; the backward's five matmuls 2.5 times that (as for dense attention)."""
    causal, window = dims.get("causal", True), dims.get("window")
    pairs = sum(visible_pairs(m, n, causal, window) for m, n in zip(*varlen_lengths(dims)) if m > 0)
    fwd = 4 * dims["head_dim"] * pairs * dims["q_heads"]
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[mode]


def _varlen_bytes(dims, dtype, mode):
    """The least traffic: every packed row read or written once (q, k, v in, o out; backward: q, o, dO, k, v in,
    dq, dk, dv out) and the two int32 prefix sums; no padding."""
    size = torch.finfo(dtype).bits // 8
    q_lens, kv_lens = varlen_lengths(dims)
    qsize = sum(q_lens) * dims["q_heads"] * dims["head_dim"] * size
    kvsize = sum(kv_lens) * dims["kv_heads"] * dims["head_dim"] * size
    cu = 2 * 4 * (len(q_lens) + 1)
    fwd = 2 * qsize + 2 * kvsize + cu
    bwd = 4 * qsize + 4 * kvsize + cu
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _varlen_bad_inputs():
    q, kv = torch.randn(7, 2, 8), torch.randn(7, 1, 8)
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    cu_one_of_2 = torch.tensor([0, 2], dtype=torch.int32)

    def bad(label, error, match, *args, **kwargs):
        full = dict(zip(("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k"), (q, kv, kv, cu, cu))) | dict(
            zip(("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k"), args))
        return BadInput(label, call(*full.values(), **kwargs), error, match)

    return (
        bad("rank", ValueError, "q must have rank 3", q[None]),
        bad("int q", TypeError, "q must be float", q.int()),
        bad("mixed dtypes", TypeError, "k has dtype", q, kv.half()),
        bad("head dims", ValueError, "k must have q's head_dim", q, kv[..., :4], kv[..., :4]),
        bad("v shape", ValueError, "v must have k's shape", q, kv, kv[:6]),
        bad("gqa ratio", ValueError, "q_heads .* kv_heads", torch.randn(7, 3, 8), torch.randn(7, 2, 8),
            torch.randn(7, 2, 8)),
        bad("head_dim 257", ValueError, "head_dim", *(torch.randn(2, 1, 257),) * 3, cu_one_of_2, cu_one_of_2),
        bad("cu int64", TypeError, "cu_seqlens_q must be int32", q, kv, kv, cu.long()),
        bad("cu not a tensor", TypeError, "cu_seqlens_k must be a torch.Tensor", q, kv, kv, cu, [0, 3, 7]),
        bad("cu rank", ValueError, "cu_seqlens_q must have shape", q, kv, kv, cu[None]),
        bad("cu decreasing", ValueError, "cu_seqlens_k must start at 0 and never decrease", q, kv, kv, cu,
            torch.tensor([0, 8, 7], dtype=torch.int32)),
        bad("cu start", ValueError, "cu_seqlens_q must start at 0", q, kv, kv, cu + 1),
        bad("cu last", ValueError, r"cu_seqlens_q\[-1\] \(6\) must be the total length of q", q, kv, kv,
            torch.tensor([0, 3, 6], dtype=torch.int32)),
        bad("cu lengths differ", ValueError, "same length", q, kv, kv, cu, torch.tensor([0, 7], dtype=torch.int32)),
        bad("causal q_len > kv_len", ValueError, "sequence 0 .* 3 > 2", q, kv, kv, cu,
            torch.tensor([0, 2, 7], dtype=torch.int32)),
        bad("max_seqlen too small", ValueError, r"max_seqlen_q \(3\) is below", max_seqlen_q=3),
        bad("max_seqlen float", TypeError, "max_seqlen_k must be an int", max_seqlen_k=4.0),
        bad("window 0", ValueError, "window must be >= 1", window=0),
        bad("window float", TypeError, "window must be an int", window=2.5),
        bad("window non-causal", ValueError, "window needs causal", causal=False, window=4),
        bad("causal not bool", TypeError, "causal must be a bool", causal=1),
        bad("scale", TypeError, "scale must be", scale="big"),
    )


ATTENTION_VARLEN = OpSpec(
    name="attention_varlen",
    fn=attention_varlen,
    reference=attention_varlen_reference,
    make_case=_make_varlen_case,
    dims=_varlen_dims,
    # an empty sequence, a single token, 70 queries against 200 keys (the 64-row tiles cross the window's edge,
    # unmasked interior blocks and the diagonal; every tile crosses the q_len and kv_len tails: attention's own
    # config_dims cover the block walk at length), and a short sequence after it; GQA, head dim 24, window 150
    config_dims={"q_heads": 2, "kv_heads": 1, "q_lens": (0, 1, 70, 20), "kv_lens": (3, 1, 200, 20),
                 "head_dim": 24, "causal": True, "window": 150},
    # sequences of <= 128 keys: the backward holds each whole in one dK/dV program (WHOLE): its fp32 variant
    compile_examples=({"q_heads": 2, "kv_heads": 1, "q_lens": (0, 1, 70, 20), "kv_lens": (3, 1, 100, 20),
                       "head_dim": 24, "causal": True, "window": 150},),
    sweep_cases=_varlen_sweep_cases,
    quick_panels=({"docs": 4, "head_dim": 128, "window": None},),
    flops=_varlen_flops,
    bytes_moved=_varlen_bytes,
    tolerance={torch.float32: 1e-4, torch.float16: 3e-3},
    grad_tolerance={torch.float32: 1e-4, torch.float16: 3e-3},
    kernels=(attn_fwd, attn_bwd_dkdv, attn_bwd_dq),
    peers={"sdpa": _sdpa_varlen_peer, "flex": _flex_varlen_peer},
    bad_inputs=_varlen_bad_inputs(),
    examples=(
        # every sequence empty; only empty and single-token sequences; no sequence at all
        {"q_heads": 2, "kv_heads": 2, "q_lens": (0, 0), "kv_lens": (0, 0), "head_dim": 16},
        {"q_heads": 3, "kv_heads": 1, "q_lens": (1, 0, 1, 1), "kv_lens": (1, 0, 1, 1), "head_dim": 8, "window": 1},
        {"q_heads": 2, "kv_heads": 1, "q_lens": (), "kv_lens": (), "head_dim": 8},
        # queries without keys' ends: short q against long k (decode-like rows), non-causal with q_len > kv_len
        {"q_heads": 4, "kv_heads": 2, "q_lens": (1, 2, 0), "kv_lens": (130, 5, 40), "head_dim": 72, "window": 50},
        {"q_heads": 2, "kv_heads": 1, "q_lens": (9, 0, 3), "kv_lens": (4, 6, 3), "head_dim": 40, "causal": False},
    ),
)

SPECS = (ATTENTION, ATTENTION_VARLEN)
