"""Attention cases the generated tests (tests/test_ops.py) do not reach on purpose.

The window convention against transformers' own mask functions, GQA/MQA gradients against an explicit sum over
each query group, decode rows (q_len = 1) against a long cache with and without the split-KV path, the head dims
real models use, strides the generated cases lose in their dtype casts, numerically hard inputs, and the error
messages. Sizes are small: everything runs under the interpreter.
"""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from triton_playground.kernels import _runtime as rt
from triton_playground.kernels import force_config
from triton_playground.kernels.ops.attention.api import SPLIT_ALIGN, _forward, _split_plan, attention
from triton_playground.kernels.ops.attention.kernel import MAX_BLOCK, attn_fwd
from triton_playground.kernels.ops.attention.kernel_bwd import attn_bwd_dkdv, attn_bwd_dq
from triton_playground.kernels.ops.attention.reference import attention_reference, visible_mask
from triton_playground.kernels.ops.attention.spec import ATTENTION, _sdpa_peer, visible_pairs
from tests.checks import rel_err

DEV = rt.DEVICE
TOL = {torch.float32: 1e-4, torch.float16: 3e-3}


def _qkv(batch, hq, hk, q_len, kv_len, d, dtype=torch.float32, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)

    def make(h, n):
        t = torch.randn(batch, n, h, d, generator=g).to(DEV, dtype).transpose(1, 2)
        return t.requires_grad_(requires_grad)

    return make(hq, q_len), make(hk, kv_len), make(hk, kv_len)


def _ref64(q, k, v, **kw):
    """The reference in float64 on the very inputs (rounded to their dtype), as a detached leaf copy."""
    leaves = [t.detach().double().requires_grad_(t.requires_grad) for t in (q, k, v)]
    return attention_reference(*leaves, **kw), leaves


def _check_fwd_bwd(q, k, v, tol=None, grad_tol=None, seed=1, **kw):
    tol = tol or TOL[q.dtype]
    out = attention(q, k, v, **kw)
    ref, leaves = _ref64(q, k, v, **kw)
    assert out.dtype == q.dtype and out.shape == q.shape
    err = rel_err(out, ref)
    assert err <= tol, f"output: {err:.3g} > {tol}"
    if q.requires_grad:
        g = torch.Generator().manual_seed(seed)
        do = torch.randn(out.shape, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad(out, (q, k, v), do.to(DEV, q.dtype))
        ref_grads = torch.autograd.grad(ref, leaves, do.to(DEV))
        for name, gr, rg in zip("qkv", grads, ref_grads):
            e = rel_err(gr, rg)
            assert e <= (grad_tol or tol), f"d{name}: {e:.3g} > {grad_tol or tol}"
    return out


# ------------------------------------------------------------------------------------------------ the mask


@pytest.mark.parametrize("q_len,kv_len,window", [(5, 5, 1), (5, 9, 3), (1, 9, 4), (9, 9, 20), (7, 12, None)])
def test_mask_is_transformers_sliding_window(q_len, kv_len, window):
    """Our mask is HF's: positions kv_len - q_len + i, keys j <= p and (window) j > p - window."""
    masking = pytest.importorskip("transformers.masking_utils")
    fn = (masking.causal_mask_function if window is None
          else masking.sliding_window_causal_mask_function(window))
    pos = torch.arange(q_len)[:, None] + (kv_len - q_len)  # HF's q_idx is the absolute (cache) position
    kv = torch.arange(kv_len)[None, :]
    hf = fn(torch.tensor(0), torch.tensor(0), pos, kv).expand(q_len, kv_len)
    assert torch.equal(visible_mask(q_len, kv_len, True, window, "cpu"), hf)
    # W keys per row (fewer only at the start of the sequence)
    if window is not None:
        assert int(hf.sum(1).max()) == min(window, kv_len)


@pytest.mark.parametrize("window", [1, 2, 7, 30, 44, 45, 100])
def test_window_against_explicit_mask(window):
    q, k, v = _qkv(1, 2, 1, 20, 45, 16)
    out = attention(q, k, v, window=window)
    mask = visible_mask(20, 45, True, window, DEV)
    scores = (q.double() @ k.double().transpose(-1, -2)) / 4.0
    ref = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v.double()
    assert rel_err(out, ref) < 1e-5
    if window == 1:  # each query sees only its own position: the output is v there
        torch.testing.assert_close(out, v[:, :, -20:].expand_as(out), rtol=0, atol=1e-6)
    if window >= 45:  # a window as long as the cache hides nothing
        torch.testing.assert_close(out, attention(q, k, v), rtol=0, atol=0)


def test_not_causal_is_full_attention():
    q, k, v = _qkv(2, 2, 2, 9, 23, 8)  # q_len < kv_len, every key visible
    ref = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(8), -1) @ v.double()
    assert rel_err(attention(q, k, v, causal=False), ref) < 1e-5


def test_scale_argument():
    q, k, v = _qkv(1, 2, 1, 13, 13, 20, requires_grad=True)
    _check_fwd_bwd(q, k, v, scale=0.05, window=5)
    _check_fwd_bwd(q, k, v, scale=-1.5, causal=False)


@pytest.mark.parametrize("q_len,kv_len,window", [(7, 7, None), (1, 9, 3), (3, 20, 5), (4, 4, 8), (11, 30, None)])
def test_visible_pairs_counts_the_mask(q_len, kv_len, window):
    assert visible_pairs(q_len, kv_len, True, window) == int(visible_mask(q_len, kv_len, True, window, "cpu").sum())
    assert visible_pairs(q_len, kv_len, False) == q_len * kv_len


# ------------------------------------------------------------------------------------------------ GQA


@pytest.mark.parametrize("hq,hk,window", [(6, 2, None), (4, 1, 9), (3, 3, 4)])
def test_gqa_gradients_sum_over_the_group(hq, hk, window):
    """dk, dv of a KV head = the sum of what each query head of its group gives an expanded (per-head) k, v."""
    q, k, v = _qkv(2, hq, hk, 21, 37, 24, requires_grad=True)
    out = attention(q, k, v, window=window)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    group = hq // hk
    k_exp = k.detach().double().repeat_interleave(group, 1).requires_grad_()
    v_exp = v.detach().double().repeat_interleave(group, 1).requires_grad_()
    q64 = q.detach().double().requires_grad_()
    ref = attention_reference(q64, k_exp, v_exp, window=window)  # plain multi-head: no GQA inside
    rdq, rdk, rdv = torch.autograd.grad(ref, (q64, k_exp, v_exp), do.double())
    sum_group = lambda t: t.view(2, hk, group, *t.shape[2:]).sum(2)  # noqa: E731
    assert rel_err(out, ref) < 1e-5
    assert rel_err(dq, rdq) < 1e-4
    assert rel_err(dk, sum_group(rdk)) < 1e-4
    assert rel_err(dv, sum_group(rdv)) < 1e-4


# ------------------------------------------------------------------------------------------------ decode rows


@pytest.mark.parametrize("window", [None, 1, 100, 600])
def test_decode_row_against_long_cache(window):
    """q_len = 1 against 700 cached keys, forward and backward, with the split-KV path forced on and off."""
    q, k, v = _qkv(1, 4, 2, 1, 700, 32, requires_grad=True)
    whole = _forward(q, k, v, True, window, 32**-0.5, 1)[0]
    ref, _ = _ref64(q, k, v, window=window)
    assert rel_err(whole, ref) < 1e-5
    for splits in (2, 5):  # some chunks of a windowed row are empty: the combine must weigh them 0
        split = _forward(q, k, v, True, window, 32**-0.5, splits)[0]
        assert rel_err(split, whole) < 1e-6, splits
    _check_fwd_bwd(q, k, v, window=window)  # the automatic plan (it splits here: 8 programs < 2 waves)


def test_split_plan_covers_every_key():
    for q_len, kv_len, window in [(1, 700, None), (1, 700, 100), (16, 5000, 1000), (3, 300, 1)]:
        splits, split_len = _split_plan(1, 1, q_len, kv_len, window, None)
        assert split_len % SPLIT_ALIGN == 0 or splits == 1
        span = kv_len if window is None else min(kv_len, window + min(q_len, MAX_BLOCK) + MAX_BLOCK)
        assert splits * split_len >= span


def test_decode_fp16_and_short_chunks():
    """A few query rows at the end of a long cache (chunked prefill / speculative decoding), fp16."""
    q, k, v = _qkv(1, 2, 1, 5, 400, 64, dtype=torch.float16, requires_grad=True)
    _check_fwd_bwd(q, k, v, window=150)
    _check_fwd_bwd(q, k, v)


# ------------------------------------------------------------------------------------------------ head dims


@pytest.mark.parametrize("d", [1, 24, 80, 96, 256])
def test_head_dims(d):
    q, k, v = _qkv(1, 2, 1, 19, 33, d, requires_grad=True)
    _check_fwd_bwd(q, k, v, window=11)
    if d in (24, 256):
        q, k, v = _qkv(1, 2, 1, 19, 33, d, dtype=torch.float16, requires_grad=True)
        _check_fwd_bwd(q, k, v)


# ------------------------------------------------------------------------------------------------ tiles


def _small_tiles():
    """The small-tile configs (forward and dQ: 64 x 32, dK/dV: 16 x 64), each with and without TMA."""
    tiles = [(attn_fwd, 64, 32), (attn_bwd_dkdv, 16, 64), (attn_bwd_dq, 64, 32)]
    return [pytest.param(kernel, index, id=f"{kernel.name}-{index}") for kernel, m, n in tiles
            for index, c in enumerate(kernel.configs) if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) == (m, n)]


@pytest.mark.parametrize("kernel,index", _small_tiles())
def test_small_tiles_cross_every_edge(kernel, index):
    """Small tiles on a long window: masked window edge, unmasked interior and masked diagonal all occur,
    with GQA, a q_len that is not a multiple of any tile, and a kv_len offset."""
    q, k, v = _qkv(1, 2, 1, 100, 230, 16, requires_grad=True)
    with force_config(kernel, index):
        lo_parts = []
        for m0 in range(0, 100, 64):  # the forward really has all three kinds of block here
            lo_parts.append(_key_ranges(m0, 100, 230, 120, 64, 32))
        assert any(fl > lo for lo, fl, fh, hi in lo_parts) and any(fh > fl for lo, fl, fh, hi in lo_parts)
        _check_fwd_bwd(q, k, v, window=120)


@pytest.mark.parametrize("index", range(len(attn_bwd_dkdv.configs)))
@pytest.mark.parametrize("window", [None, 1030])
def test_dq_added_by_every_dkdv_config(index, window, monkeypatch):
    """The backward without a window or with a long one (DQ_ADD: dK/dV adds each key block's share of dq into an
    fp32 accumulator, no dQ launch) under each dK/dV config: GQA, q_len < kv_len and neither a multiple of any
    tile, so a query row's dq sums the shares of several key blocks (several programs) and the kv_len tail's;
    fp32 and fp16 against float64, outputs NaN-poisoned."""
    from triton_playground import kernels
    from triton_playground.kernels.ops.attention import api

    monkeypatch.setattr(api, "DQ_ADD_MIN_KEYS", 0)  # at any length (the launch keeps it for 4096 keys and more)
    for dtype in (torch.float32, torch.float16):
        q, k, v = _qkv(1, 4, 2, *((70, 1040) if window else (150, 299)), 24, dtype=dtype, seed=index,
                       requires_grad=True)
        with force_config(attn_bwd_dkdv, index), kernels.count() as counted:
            _check_fwd_bwd(q, k, v, window=window)
        assert "attn_bwd_dq" not in counted.by_kernel()


@pytest.mark.parametrize("kernel,index", [pytest.param(kernel, index, id=f"{kernel.name}-{index}")
                                          for kernel in (attn_fwd, attn_bwd_dkdv, attn_bwd_dq)
                                          for index, c in enumerate(kernel.configs) if c.kwargs["TMA"]])
def test_a_tma_config_on_tensors_no_descriptor_fits(kernel, index):
    """fp16 heads of 36 channels (72-byte rows) fit no TMA descriptor: a TMA config forced there (or cached by the
    tuner for another call of the same key) must take the pointer path, not read misaligned boxes."""
    q, k, v = _qkv(1, 2, 1, 37, 45, 36, dtype=torch.float16, requires_grad=True)
    assert not rt.tma_ok(q)
    with force_config(kernel, index):
        _check_fwd_bwd(q, k, v, window=20)


def _key_ranges(start_m, M, N, W, bm, bn):
    """The host-side twin of kernel.key_range, for the test above."""
    offset = N - M
    p_first, p_last = offset + start_m, offset + min(start_m + bm, M) - 1
    lo = max(p_first - W + 1, 0) // bn * bn
    hi = min(p_last + 1, N)
    full_lo = min(max(-(-max(p_last - W + 1, 0) // bn) * bn, lo), hi)
    full_hi = min(max(min(p_first + 1, N) // bn * bn, full_lo), hi)
    return lo, full_lo, full_hi, hi


# ------------------------------------------------------------------------------------------------ layouts


def test_any_strides_and_output_layout():
    """Head-dim stride 2, k and v slices of one fused buffer, padded rows: read in place, not copied."""
    g = torch.Generator().manual_seed(0)
    b, n, hq, hk, d = 2, 29, 4, 2, 12
    qbuf = torch.randn(b, n, hq, 2 * d + 1, generator=g).to(DEV, torch.float16)
    kvbuf = torch.randn(b, n, 2, hk, d + 5, generator=g).to(DEV, torch.float16)
    q = qbuf[..., : 2 * d : 2].transpose(1, 2).detach().requires_grad_()  # stride(-1) == 2
    k = kvbuf[:, :, 0, :, :d].transpose(1, 2).detach().requires_grad_()
    v = kvbuf[:, :, 1, :, :d].transpose(1, 2).detach().requires_grad_()
    assert q.stride(-1) == 2 and not k.is_contiguous()
    out = _check_fwd_bwd(q, k, v, window=10)
    assert out.stride(1) < out.stride(2)  # (batch, seq, heads, dim) memory order, like q
    c = _qkv(1, 3, 1, 8, 8, 16)[0].contiguous()
    assert attention(c, c[:, :1], c[:, :1]).is_contiguous()


def test_large_scores_are_stable():
    """Scores in the hundreds: no overflow in the online softmax; fp32 error stays ~ ulp(score)."""
    q, k, v = _qkv(1, 2, 2, 40, 40, 32, requires_grad=True)
    q = (q.detach() * 12).requires_grad_()
    out = _check_fwd_bwd(q, k, v, tol=1e-4, grad_tol=2e-4)  # |s| ~ 100: ulp(s)/s ~ 1e-5 grows
    assert torch.isfinite(out).all()


def test_empty_query():
    q, k, v = _qkv(1, 2, 1, 0, 5, 8)
    assert attention(q, k, v).shape == (1, 2, 0, 8)


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(causal=1), TypeError, "causal must be a bool"),
    (dict(window=True), TypeError, "window must be an int"),
    (dict(window=-3), ValueError, "window must be >= 1"),
    (dict(scale=float("nan")), TypeError, "scale must be a finite"),
])
def test_bad_keyword_arguments(kwargs, error, match):
    q, k, v = _qkv(1, 2, 1, 3, 5, 8)
    with pytest.raises(error, match=match):
        attention(q, k, v, **kwargs)


def test_bad_shapes_name_the_argument():
    q, k, v = _qkv(1, 2, 1, 3, 5, 8)
    with pytest.raises(ValueError, match="kv_len"):
        attention(q, k[:, :, :0], v[:, :, :0], causal=False)
    with pytest.raises(ValueError, match="v must have k's shape"):
        attention(q, k, v[:, :, :4])
    with pytest.raises(ValueError, match="q_heads .* kv_heads"):
        attention(q, torch.cat([k] * 3, 1), torch.cat([v] * 3, 1))
    with pytest.raises(TypeError, match="v has dtype"):
        attention(q, k, v.half())
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        attention(q.double(), k.double(), v.double())


# ------------------------------------------------------------------------------------------------ sweep


def test_sweep_cases_and_peers():
    spec = ATTENTION
    cases = spec.sweep_cases(False)
    assert all("seqlen" in c for c in cases)
    for dims in cases[:2] + cases[-1:]:
        case = spec.make_case(dims, torch.float32, DEV, requires_grad=True)
        ours = spec.fn(*case.args, **case.kwargs)
        sdpa = _sdpa_peer()(*case.args, **case.kwargs)
        assert rel_err(ours, sdpa) < 1e-5
        assert spec.flops(dims, "bwd") == 2.5 * spec.flops(dims, "fwd")
    # the sdpa peer's explicit mask: bottom-right diagonal with q_len < kv_len, GQA
    q, k, v = _qkv(1, 4, 2, 6, 17, 8)
    assert rel_err(_sdpa_peer()(q, k, v, window=5), _ref64(q, k, v, window=5)[0]) < 1e-5
    for gpu in (True, False):  # panel params must not vary with seqlen
        params = {tuple(sorted((k_, str(v_)) for k_, v_ in c.items() if k_ != "seqlen")) for c in spec.sweep_cases(gpu)}
        assert len(params) * len({c["seqlen"] for c in spec.sweep_cases(gpu)}) == len(spec.sweep_cases(gpu))


# ------------------------------------------------------------------------------------------------ compile


@pytest.mark.skipif(rt.GPU, reason="on a GPU the split path runs for real in the tests above")
def test_split_kv_path_compiles_for_h100():
    """tests/compile_check.py compiles config_dims (q_len 150: never split): compile the split-KV forward and
    its combine kernel too, in bf16 and fp32."""
    code = (
        "import tests.compile_check, torch\n"
        "from triton_playground.kernels import _runtime as rt\n"
        "from triton_playground.kernels.ops.attention.api import _forward\n"
        "for dt in (torch.bfloat16, torch.float32):\n"
        "    q = torch.randn(1, 2, 1, 80, dtype=dt)\n"
        "    k = torch.randn(1, 1, 1000, 80, dtype=dt)\n"
        "    _forward(q, k, k, True, 300, 0.1, 4)\n"
        "print('ok', rt.compiled)\n"
    )
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "'attn_combine'" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-4000:]
