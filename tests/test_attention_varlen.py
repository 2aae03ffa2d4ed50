"""Packed variable-length attention (``kernels.attention_varlen``): each sequence equals dense attention on it
alone, NaN stays in its sequence, empty sequences, the document mask, the sweep's cases and peers, torch.compile,
and only each sequence's tiles computed. (Split from tests/test_attention.py, which holds the dense op.)"""

import contextlib
import math

import pytest
import torch

from triton_playground.kernels.ops.attention.api import attention
from triton_playground.kernels.ops.attention.kernel_bwd import attn_bwd_dkdv, attn_bwd_dq
from triton_playground.kernels.ops.attention.reference import attention_varlen_reference, visible_mask
from triton_playground.kernels.ops.attention.varlen import attention_varlen
from tests.checks import rel_err
from tests.test_attention import DEV, TOL, _qkv, _ref64  # noqa: F401



def _packed(q_lens, kv_lens, hq, hk, d, dtype=torch.float32, seed=0):
    """Packed q (total_q, hq, d), k, v (total_k, hk, d) requiring grad, and the two int32 prefix sums."""
    from triton_playground.kernels.ops.attention.spec import cu_seqlens

    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(sum(n), h, d, generator=g).to(DEV, dtype).requires_grad_()
               for n, h in ((q_lens, hq), (kv_lens, hk), (kv_lens, hk)))
    return q, k, v, cu_seqlens(q_lens, DEV), cu_seqlens(kv_lens, DEV)


def _per_sequence(q, k, v, cu_q, cu_k, **kw):
    """kernels.attention run on each sequence alone (a (1, heads, len, d) batch), outputs packed back."""
    outs = [q[:0]]
    for q0, q1, k0, k1 in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(), cu_k[1:].tolist()):
        if q1 > q0:
            heads = [t.transpose(0, 1).unsqueeze(0) for t in (q[q0:q1], k[k0:k1], v[k0:k1])]
            outs.append(attention(*heads, **kw)[0].transpose(0, 1))
    return torch.cat(outs, 0)


@pytest.mark.parametrize("q_lens,kv_lens,hq,hk,d,kw,dtype", [
    ((5, 0, 1, 70, 12), None, 4, 2, 24, dict(window=9), torch.float32),
    ((3, 0, 40, 1), (3, 2, 90, 1), 3, 1, 16, dict(), torch.float16),  # q_len < kv_len: bottom-right diagonal
    ((6, 0, 17), (4, 3, 20), 2, 2, 72, dict(causal=False), torch.float32),
])
def test_varlen_equals_attention_per_sequence(q_lens, kv_lens, hq, hk, d, kw, dtype):
    """Forward and gradients equal kernels.attention on each sequence alone (the same kernels, dense), with empty and
    single-token sequences, GQA, a window, q_len < kv_len, and not causal."""
    q, k, v, cu_q, cu_k = _packed(q_lens, kv_lens or q_lens, hq, hk, d, dtype)
    out = attention_varlen(q, k, v, cu_q, cu_k, **kw)
    ref = _per_sequence(q, k, v, cu_q, cu_k, **kw)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(DEV, dtype)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref_grads = torch.autograd.grad(ref, (q, k, v), do, allow_unused=True)
    tol = 1e-6 if dtype == torch.float32 else 1e-3  # dense and packed may pick other tiles: rounding differs
    assert rel_err(out, ref) <= tol
    for name, gr, rg in zip("qkv", grads, ref_grads):
        rg = torch.zeros_like(gr) if rg is None else rg  # keys no query reads: zero gradients
        assert rel_err(gr, rg) <= tol, name


def test_varlen_max_seqlen_given_or_read():
    """max_seqlen_q / _k read from the prefix sums, given exactly, or given larger (a grid with idle programs): the
    same result; smaller is refused."""
    q, k, v, cu_q, cu_k = _packed((7, 0, 33), (7, 2, 40), 2, 1, 16)
    read = attention_varlen(q, k, v, cu_q, cu_k, window=11)
    exact = attention_varlen(q, k, v, cu_q, cu_k, max_seqlen_q=33, max_seqlen_k=40, window=11)
    larger = attention_varlen(q, k, v, cu_q, cu_k, max_seqlen_q=300, max_seqlen_k=500, window=11)
    assert torch.equal(read, exact)
    assert rel_err(larger, read) < 1e-6
    with pytest.raises(ValueError, match=r"max_seqlen_k \(39\) is below the longest sequence's length \(40\)"):
        attention_varlen(q, k, v, cu_q, cu_k, max_seqlen_k=39)


@pytest.mark.parametrize("tensor", ["q", "k", "v"])
def test_varlen_nan_stays_in_its_sequence(tensor):
    """A NaN in one token of sequence 1 makes NaN there (the outputs that read it) and nowhere else: no tile read
    past its sequence's end reaches into the next (forward and gradients)."""
    lens = (37, 20, 45)
    q, k, v, cu_q, cu_k = _packed(lens, lens, 2, 1, 16)
    with torch.no_grad():
        dict(q=q, k=k, v=v)[tensor][37 + 3] = float("nan")  # token 3 of sequence 1
    out = attention_varlen(q, k, v, cu_q, cu_k)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    seq1 = slice(37, 57)
    for t in (out, *grads):
        assert torch.isfinite(t[:37]).all() and torch.isfinite(t[57:]).all()
    # the output is NaN exactly where the reference's is: a NaN query its own row; a NaN key the rows that see it
    # (causal: from token 3 on); a NaN value every row of the sequence (a masked key's p = 0 times NaN, as in
    # the reference's p @ v)
    ref = attention_varlen_reference(*(t.detach().double() for t in (q, k, v)), cu_q, cu_k)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert torch.isnan(out[37 + 3]).all() and (tensor == "v") == bool(torch.isnan(out[37]).any())


def test_varlen_empty_and_keys_without_queries():
    """No query at all, every sequence empty, and sequences whose keys no query reads: zeros as gradients, written
    (the outputs are NaN-poisoned before the kernels run)."""
    q, k, v, cu_q, cu_k = _packed((0, 0), (0, 0), 2, 1, 8)
    out = attention_varlen(q, k, v, cu_q, cu_k)
    assert out.shape == (0, 2, 8)
    q, k, v, cu_q, cu_k = _packed((0, 4, 0), (5, 4, 3), 2, 1, 8)
    out = attention_varlen(q, k, v, cu_q, cu_k, causal=False)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    assert torch.equal(dk[:5], torch.zeros_like(dk[:5])) and torch.equal(dv[9:], torch.zeros_like(dv[9:]))
    assert torch.isfinite(dq).all() and dv[5:9].abs().sum() > 0
    q, k, v, cu_q, cu_k = _packed((0, 0), (3, 2), 2, 1, 8)  # keys only: the output is empty, dk and dv zero
    out = attention_varlen(q, k, v, cu_q, cu_k)
    assert out.shape == (0, 2, 8)


def test_varlen_document_mask_is_the_reference_mask():
    """The FlexAttention peer's document mask (built on the GPU only) is, on the packed rows, the block-diagonal of
    each sequence's own mask; the FLOPs count exactly its visible pairs."""
    from triton_playground.kernels.ops.attention.spec import ATTENTION_VARLEN, cu_seqlens, document_mask_mod

    q_lens, kv_lens = (3, 0, 1, 9, 0, 5), (3, 2, 4, 12, 0, 5)
    for causal, window in ((True, None), (True, 4), (False, None)):
        cu_q, cu_k = cu_seqlens(q_lens, "cpu"), cu_seqlens(kv_lens, "cpu")
        mod = document_mask_mod(cu_q, cu_k, causal, window)
        mask = mod(0, 0, torch.arange(sum(q_lens))[:, None], torch.arange(sum(kv_lens))[None, :])
        expected = torch.zeros(sum(q_lens), sum(kv_lens), dtype=torch.bool)
        for s, (m, n) in enumerate(zip(q_lens, kv_lens)):
            q0, k0 = sum(q_lens[:s]), sum(kv_lens[:s])
            expected[q0:q0 + m, k0:k0 + n] = visible_mask(m, n, causal, window, "cpu")
        assert torch.equal(mask, expected), (causal, window)
        dims = {"q_heads": 1, "kv_heads": 1, "head_dim": 1, "q_lens": q_lens, "kv_lens": kv_lens, "causal": causal,
                "window": window}
        assert ATTENTION_VARLEN.flops(dims, "fwd") == 4 * int(expected.sum())


def test_varlen_sweep_cases_and_peers():
    from triton_playground.kernels.ops.attention.spec import ATTENTION_VARLEN, _sdpa_varlen_peer, attention_varlen_reference

    spec = ATTENTION_VARLEN
    for dims in spec.sweep_cases(False)[::3]:
        case = spec.make_case(dims, torch.float32, DEV)
        assert case.args[0].shape[0] == dims["seqlen"] and case.args[3].numel() == dims["docs"] + 1
        ours = spec.fn(*case.args, **case.kwargs)
        assert rel_err(ours, _sdpa_varlen_peer()(*case.args, **case.kwargs)) < 1e-5
        assert rel_err(ours, attention_varlen_reference(*case.args, **case.kwargs)) < 1e-5
        # q, o: 2 heads, k, v: 1, of 16 fp32 each per token; two int32 prefix sums
        assert spec.bytes_moved(dims, torch.float32, "fwd") == (2 * 2 + 2 * 1) * 16 * 4 * dims["seqlen"] + 8 * (
            dims["docs"] + 1)
    for gpu in (True, False):  # panel params must not vary with seqlen
        cases = spec.sweep_cases(gpu)
        params = {tuple(sorted((k_, str(v_)) for k_, v_ in c.items() if k_ != "seqlen")) for c in cases}
        assert len(params) * len({c["seqlen"] for c in cases}) == len(cases)


def test_varlen_under_torch_compile():
    """torch.compile(fullgraph=True) traces through the custom op when max_seqlen_q / _k are given (the prefix sums
    are not read while tracing); without them it says so."""
    from triton_playground import kernels

    q, k, v, cu_q, cu_k = _packed((5, 0, 9), (5, 2, 12), 2, 1, 16)

    def step(q, k, v, cu_q, cu_k, max_q, max_k):
        return kernels.attention_varlen(q, k, v, cu_q, cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k, window=4)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v, cu_q, cu_k, 9, 12)
    dq, dk, dv = torch.autograd.grad(out.square().sum(), (q, k, v))
    eager = step(q, k, v, cu_q, cu_k, 9, 12)
    grads = torch.autograd.grad(eager.square().sum(), (q, k, v))
    assert torch.equal(out, eager) and all(torch.equal(a, b) for a, b in zip((dq, dk, dv), grads))
    with pytest.raises(Exception, match="pass max_seqlen_q and max_seqlen_k"):
        torch.compile(step, fullgraph=True, backend="aot_eager")(q, k, v, cu_q, cu_k, None, None)


@pytest.mark.parametrize("window", [None, 100])
def test_varlen_computes_only_tiles_of_each_sequence(window):
    """Counted (every program run): each kernel's executed pairs (dot FLOPs / FLOPs per pair) are at least the
    visible pairs within the sequences and at most those plus the tiles at each sequence's mask edges
    (tests/test_counters.py's bound, per sequence): no tile spans two sequences, none is padding."""
    from triton_playground import kernels
    from triton_playground.kernels.ops.attention.kernel import attn_fwd as fwd_kernel
    from triton_playground.kernels.ops.attention.spec import ATTENTION_VARLEN

    lens, d = (300, 0, 1, 517, 90), 16
    q, k, v, cu_q, cu_k = _packed(lens, lens, 1, 1, d, torch.float16)
    dims = {"q_heads": 1, "kv_heads": 1, "head_dim": d, "q_lens": lens, "window": window}
    visible = ATTENTION_VARLEN.flops(dims, "fwd") // (4 * d)
    with kernels.count() as fwd:
        out = attention_varlen(q, k, v, cu_q, cu_k, window=window)
    with kernels.count() as bwd:
        out.backward(torch.ones_like(out))
    dots = {"attn_fwd": 2, "attn_bwd_dkdv": 4, "attn_bwd_dq": 3}  # as in tests/test_counters.py
    tuned = {"attn_fwd": fwd_kernel, "attn_bwd_dkdv": attn_bwd_dkdv, "attn_bwd_dq": attn_bwd_dq}
    for counter in (fwd, bwd):
        for name, sub in counter.by_kernel().items():
            if name not in dots:
                continue
            assert all(r.programs_run == r.programs for r in sub.records)  # counted whole, not sampled
            config = tuned[name].last_config().kwargs
            resident, streamed = ((config["BLOCK_N"], config["BLOCK_M"]) if name == "attn_bwd_dkdv"
                                  else (config["BLOCK_M"], config["BLOCK_N"]))
            executed = sub.flops / (dots[name] * 2 * d)
            bound = visible + sum(math.ceil(n / resident) * resident * (resident + 2 * streamed) for n in lens)
            assert visible <= executed <= bound, (name, executed, visible, bound)


SHORT_CASES = [
    ((32, 32, 32, 32), None, 2, 1, 64, dict()),  # the sweep's short documents (16 of 32 tokens), GQA
    ((5, 0, 1, 30, 12), (5, 3, 1, 31, 12), 4, 2, 24, dict(window=9)),  # empty, one token, q_len < kv_len, window
    ((6, 0, 17), (4, 3, 20), 2, 2, 72, dict(causal=False)),  # not causal, q_len > kv_len
    ((40, 0, 7), (70, 3, 7), 3, 1, 40, dict(window=50)),  # over 64 keys: the 128-key tile
]


def _check_short(q_lens, kv_lens, hq, hk, d, kw, dtype, index=None):
    """One WHOLE-eligible call (under dK/dV config ``index`` forced, or the rule's pick) against the float64
    reference; returns whether the backward ran as the dK/dV launch alone."""
    from triton_playground import kernels
    from triton_playground.kernels import force_config

    kv_lens = kv_lens or q_lens
    q, k, v, cu_q, cu_k = _packed(q_lens, kv_lens, hq, hk, d, dtype, seed=index or 0)
    with contextlib.nullcontext() if index is None else force_config(attn_bwd_dkdv, index):
        out = attention_varlen(q, k, v, cu_q, cu_k, **kw)
        do = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(DEV, dtype)
        with kernels.count() as bwd:
            grads = torch.autograd.grad(out, (q, k, v), do)
        whole = attn_bwd_dkdv.last_config().kwargs["BLOCK_N"] >= max(kv_lens)
    launched = [r.kernel for r in bwd.records if r.source == "triton"]
    assert launched == (["attn_bwd_dkdv"] if whole else ["attn_bwd_delta", "attn_bwd_dkdv", "attn_bwd_dq"])
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = attention_varlen_reference(*leaves, cu_q, cu_k, **kw)
    ref_grads = torch.autograd.grad(ref, leaves, do.double())
    assert rel_err(out, ref) <= TOL[dtype], (index, dtype)
    for name, gr, rg in zip("qkv", grads, ref_grads):
        assert rel_err(gr, rg) <= TOL[dtype], (name, index, dtype)
    return whole


@pytest.mark.parametrize("q_lens,kv_lens,hq,hk,d,kw", SHORT_CASES)
def test_varlen_short_sequences_backward_in_one_launch(q_lens, kv_lens, hq, hk, d, kw):
    """Sequences of at most 128 keys (WHOLE): the rule picks a key tile that holds the longest, and the backward is
    the dK/dV launch alone (delta and dq computed in it), fp32 and fp16, against the float64 reference, outputs
    NaN-poisoned before the kernels run."""
    for dtype in (torch.float32, torch.float16):
        assert _check_short(q_lens, kv_lens, hq, hk, d, kw, dtype)


@pytest.mark.parametrize("index", range(len(attn_bwd_dkdv.configs)))
def test_varlen_short_sequences_every_dkdv_config(index):
    """Each dK/dV config forced on sequences of up to 70 keys: a tile that holds them runs WHOLE, a shorter one
    (32, 64 keys) the three launches, both right."""
    whole = _check_short(*SHORT_CASES[-1], torch.float32, index)
    assert whole == (attn_bwd_dkdv.configs[index].kwargs["BLOCK_N"] >= 70)


def test_varlen_short_sequences_compute_about_their_pairs():
    """16 documents of 32 tokens (the sweep's shortest): the forward's 32 x 32 tile and the one-launch backward's
    32-key tile execute under twice the visible pairs' least FLOPs (a 128 x 64 tile: 15.5 times)."""
    from triton_playground import kernels
    from triton_playground.kernels.ops.attention.spec import ATTENTION_VARLEN

    lens, d = (32,) * 16, 16
    q, k, v, cu_q, cu_k = _packed(lens, lens, 2, 2, d, torch.float16)
    dims = {"q_heads": 2, "kv_heads": 2, "head_dim": d, "q_lens": lens}
    with kernels.count() as fwd:
        out = attention_varlen(q, k, v, cu_q, cu_k)
    with kernels.count() as bwd:
        out.backward(torch.ones_like(out))
    for counter, mode in ((fwd, "fwd"), (bwd, "bwd")):
        assert all(r.programs_run == r.programs for r in counter.records)  # counted whole, not sampled
        assert ATTENTION_VARLEN.flops(dims, mode) <= counter.flops <= 2 * ATTENTION_VARLEN.flops(dims, mode), mode
