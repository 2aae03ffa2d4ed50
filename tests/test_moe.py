"""The MoE layer beyond the generated tests: the dispatch's invariants, skewed and degenerate routing, every
GEMM tile height, determinism (forward and backward), HF transformers' OlmoeSparseMoeBlock with the same weights,
the grouped_mm peer, the backward (each gradient alone, experts with no token, bit-identical reruns, nothing kept
for a backward when none is needed), and NaN propagation (a token with NaN in x or NaN logits gets a NaN row)."""

import pytest
import torch

from triton_playground.kernels import _runtime as rt
from triton_playground.kernels import force_config, moe
from triton_playground.kernels.ops.moe import api as moe_api
from triton_playground.kernels.ops.moe.api import _moe_forward, moe_dispatch
from triton_playground.kernels.ops.moe.kernel_gemm import moe_down, moe_gate_up, tma_gate_up, tma_weights
from triton_playground.kernels.ops.moe.reference import moe_grouped_mm, moe_reference
from triton_playground.kernels.ops.moe.spec import _make_case
DEV = rt.DEVICE


def _rel(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


# ------------------------------------------------------------------------------------------------ dispatch


def _distinct_ids(tokens, k, experts, seed):
    """Router-like ids: k distinct experts per token."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(experts, generator=g)[:k] for _ in range(tokens)]) if tokens else \
        torch.empty(0, k, dtype=torch.int64)


def _check_dispatch(ids, experts, block_m):
    d = moe_dispatch(ids.to(DEV), experts, block_m)
    tokens, k = ids.shape
    n_pairs = tokens * k
    flat = ids.reshape(-1).long().cpu()
    counts, offsets = d.counts.cpu().long(), d.offsets.cpu().long()
    sorted_pairs, pair_rows = d.sorted_pairs.cpu().long(), d.pair_rows.cpu().long()
    # counts and block-padded offsets
    assert torch.equal(counts, torch.bincount(flat, minlength=experts))
    padded = (counts + block_m - 1) // block_m * block_m
    assert offsets[0] == 0 and torch.equal(offsets[1:] - offsets[:-1], padded)
    assert (offsets % block_m == 0).all()
    assert d.num_blocks == n_pairs // block_m + min(experts, n_pairs)
    assert offsets[-1] <= d.num_blocks * block_m, "the grid bound must cover every block in use"
    assert sorted_pairs.numel() == d.num_blocks * block_m
    # each expert's segment: its pairs in pair order (stable), then -1 padding
    for e in range(experts):
        start, n = offsets[e].item(), counts[e].item()
        assert torch.equal(sorted_pairs[start:start + n], (flat == e).nonzero().flatten()), f"expert {e}"
        assert (sorted_pairs[start + n:offsets[e + 1]] == -1).all()
    # the permutation inverts, and every token appears exactly k times
    used = sorted_pairs[:offsets[-1]]
    real = used[used >= 0]
    assert torch.equal(real.sort().values, torch.arange(n_pairs))
    assert torch.equal(torch.bincount(real // k, minlength=tokens), torch.full((tokens,), k)) if tokens else True
    assert torch.equal(sorted_pairs[pair_rows], torch.arange(n_pairs))
    rows = (used >= 0).nonzero().flatten()
    assert torch.equal(pair_rows[used[rows]], rows)
    # deterministic: the same bits again
    d2 = moe_dispatch(ids.to(DEV), experts, block_m)
    assert all(torch.equal(a[: offsets[-1]] if i == 0 else a, b[: offsets[-1]] if i == 0 else b)
               for i, (a, b) in enumerate(zip(d[:4], d2[:4])))
    return d


@pytest.mark.parametrize("tokens,k,experts,block_m", [
    (20, 8, 64, 16), (37, 3, 8, 16), (19, 4, 13, 32), (50, 8, 256, 64), (300, 2, 8, 128), (5, 1, 1, 16),
])
def test_dispatch_invariants(tokens, k, experts, block_m):
    _check_dispatch(_distinct_ids(tokens, k, experts, seed=tokens), experts, block_m)


def test_dispatch_skewed_and_empty_experts():
    ids = torch.arange(8).repeat(33, 1)  # every token to experts 0..7; experts 8..63 get nothing
    d = _check_dispatch(ids, 64, 16)
    assert (d.counts.cpu()[8:] == 0).all() and (d.counts.cpu()[:8] == 33).all()
    ids = torch.full((25, 1), 5)  # a single hot expert
    _check_dispatch(ids, 6, 16)


def test_dispatch_worst_case_padding_fits_the_bound():
    """The most blocks a distribution can need: every expert non-empty, each one pair past a block boundary."""
    block_m, experts = 16, 8
    ids = torch.cat([torch.full((block_m + 1,), e) for e in range(experts)]).view(-1, 1)
    d = _check_dispatch(ids, experts, block_m)
    assert d.offsets[-1].item() == 2 * block_m * experts <= d.num_blocks * block_m


def test_dispatch_int32_strided_repeats_and_one_token():
    ids = _distinct_ids(17, 4, 12, seed=2).to(torch.int32).t().contiguous().t()  # (tokens, k), token stride 1
    assert ids.stride(0) == 1
    _check_dispatch(ids, 12, 16)
    _check_dispatch(torch.tensor([[3, 3, 1, 3]]), 4, 16)  # hand-made ids repeating an expert: still a sort
    _check_dispatch(torch.tensor([[2]]), 4, 16)


def test_dispatch_bad_arguments():
    with pytest.raises(ValueError, match="block_m"):
        moe_dispatch(torch.zeros(2, 2, dtype=torch.int64, device=DEV), 4, 24)
    with pytest.raises(ValueError, match="expert_ids"):
        moe_dispatch(torch.zeros(2, 2, device=DEV), 4, 16)
    with pytest.raises(ValueError, match="num_experts"):
        moe_dispatch(torch.zeros(2, 2, dtype=torch.int64, device=DEV), 0, 16)


# ------------------------------------------------------------------------------------------------ the layer


def _case(dtype=torch.float32, contiguous=True, seed=0, **dims):
    dims = {"tokens": 9, "hidden": 24, "inner": 16, "experts": 8, "k": 2} | dims
    case = _make_case(dims, torch.float64, DEV, contiguous=contiguous, seed=seed)
    ours = [a.to(dtype) for a in case.args]
    ref = moe_reference(*[a.double() for a in ours], **case.kwargs)
    return ours, case.kwargs, ref


@pytest.mark.parametrize("dims", [
    # (every token to the same 8 of 64 experts is one of the spec's examples, run by tests/test_ops.py)
    {"experts": 16, "k": 4, "hot": 4, "tokens": 11},  # every token to the same 4 experts, 12 empty
    {"experts": 13, "k": 3, "hot": 1},  # one hot expert, the others random
    {"experts": 8, "k": 8, "tokens": 1},  # one token, every expert
    {"experts": 64, "k": 1, "tokens": 3, "normalize": True},  # k = 1 normalised: weight exactly 1
])
def test_skewed_and_degenerate_routing(dims):
    ours, kwargs, ref = _case(**dims)
    assert _rel(moe(*ours, **kwargs), ref) < 1e-5


@pytest.mark.parametrize("kernel, index", [(k, i) for k in (moe_gate_up, moe_down) for i in range(len(k.configs))],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_a_tma_config_on_tensors_no_descriptor_fits(kernel, index):
    """fp16 rows of 36 values (72 bytes) fit no TMA descriptor: a TMA config forced there (or cached by the tuner
    for another call) must take the pointer path, not read misaligned boxes."""
    ours, kwargs, ref = _case(torch.float16, hidden=36, inner=20, tokens=13, experts=6, k=3)
    assert not rt.tma_ok(*tma_gate_up(ours[2])) and not rt.tma_ok(tma_weights(ours[3]))
    with force_config(kernel, index):
        out = moe(*ours, **kwargs)
    assert _rel(out, ref) < 5e-3


@pytest.mark.parametrize("block_m", [16, 32, 64, 128])
def test_every_gemm_tile_height(block_m):
    """BLOCK_M is the dispatch's padding, chosen by the wrapper (16 here, 64/128 on a GPU): run them all."""
    ours, kwargs, ref = _case(contiguous=False, tokens=20, experts=4, k=2, hot=1)  # one expert gets 20 rows
    out = _moe_forward(*ours, kwargs["k"], kwargs["normalize"], block_m=block_m)
    assert _rel(out, ref) < 1e-5


def test_deterministic():
    ours, kwargs, _ = _case(experts=8, k=4, tokens=20, hidden=40, inner=24)
    assert torch.equal(moe(*ours, **kwargs), moe(*ours, **kwargs))


def test_leading_dims_and_no_tokens():
    ours, kwargs, ref = _case(batch=2, tokens=3)
    out = moe(*ours, **kwargs)
    assert out.shape == ours[0].shape == (2, 3, 24) and _rel(out, ref) < 1e-5
    empty = torch.randn(0, 24, device=DEV)
    assert moe(empty, *ours[1:], **kwargs).shape == (0, 24)


@pytest.mark.parametrize("normalize", [False, True])
def test_matches_hf_olmoe_sparse_moe_block(normalize):
    transformers = pytest.importorskip("transformers")
    from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock

    hidden, inner, experts, k = 32, 16, 64, 8
    config = transformers.OlmoeConfig(hidden_size=hidden, intermediate_size=inner, num_experts=experts,
                                      num_experts_per_tok=k, norm_topk_prob=normalize)
    block = OlmoeSparseMoeBlock(config).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        block.gate.weight.copy_(torch.randn(experts, hidden, generator=g) / hidden**0.5)
        block.experts.gate_up_proj.copy_(torch.randn(experts, 2 * inner, hidden, generator=g) / hidden**0.5)
        block.experts.down_proj.copy_(torch.randn(experts, hidden, inner, generator=g) / inner**0.5)
        x = torch.randn(2, 2, hidden, generator=g)
        hf = block(x)
        out = moe(x.to(DEV), block.gate.weight.to(DEV), block.experts.gate_up_proj.to(DEV),
                  block.experts.down_proj.to(DEV), k=k, normalize=normalize)
    assert out.shape == hf.shape
    assert _rel(out.cpu(), hf) < 1e-4
    ref = moe_reference(x.double(), block.gate.weight.double(), block.experts.gate_up_proj.double(),
                          block.experts.down_proj.double(), k=k, normalize=normalize)
    assert _rel(hf, ref) < 1e-5, "moe_reference is HF's block"


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="torch._grouped_mm not in this torch")
def test_grouped_mm_peer():
    ours, kwargs, ref = _case(experts=8, k=2, tokens=12, hidden=32, inner=16)
    if ours[0].is_cuda:
        ours = [a.bfloat16() for a in ours]
    assert _rel(moe_grouped_mm(*ours, **kwargs), ref) < (1e-5 if ours[0].dtype == torch.float32 else 2e-2)


# ------------------------------------------------------------------------------------------------ backward


def _grads(fn, args, kwargs, dout, needs=(True,) * 4):
    """fn's output and its gradients (None where not asked) for the cotangent dout."""
    args = [a.detach().clone().requires_grad_(n) for a, n in zip(args, needs)]
    out = fn(*args, **kwargs)
    wanted = [a for a in args if a.requires_grad]
    grads = iter(torch.autograd.grad(out, wanted, dout))
    return out, [next(grads) if a.requires_grad else None for a in args]


def _dout(ours, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(ours[0].shape, generator=g, dtype=torch.float64).to(ours[0].device, ours[0].dtype)


@pytest.mark.parametrize("which", range(4), ids=["x", "router_weight", "gate_up", "down"])
def test_each_gradient_alone(which):
    """Only one input requires a gradient: it gets the reference's, and the backward computes no other."""
    ours, kwargs, _ = _case(tokens=7, experts=8, k=3, normalize=True)
    dout = _dout(ours)
    needs = tuple(i == which for i in range(4))
    _, grads = _grads(moe, ours, kwargs, dout, needs)
    _, ref = _grads(moe_reference, [a.double() for a in ours], kwargs, dout.double(), needs)
    assert all((g is None) == (i != which) for i, g in enumerate(grads))
    assert _rel(grads[which], ref[which]) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("chunk, splits", [(4, 64), (4, 3), (1, 64)], ids=["chunks-of-4", "capped-at-3", "per-token"])
def test_router_gradient_split_over_token_chunks(monkeypatch, chunk, splits, dtype):
    """drouter is summed over chunks of tokens (partial sums, then a fixed-order sum): with chunks small enough to
    make several at the test's size, uneven ones included (17 tokens in chunks of 4: the last has 1), and with
    the number of chunks capped (17 tokens in 3 chunks of 6, 6, 5), it is the reference's, bit-identical on a
    rerun, and the other gradients are untouched."""
    monkeypatch.setattr(moe_api, "ROUTER_GRAD_CHUNK", chunk)
    monkeypatch.setattr(moe_api, "ROUTER_GRAD_SPLITS", splits)
    ours, kwargs, _ = _case(dtype=dtype, tokens=17, experts=8, k=3, normalize=True)
    dout = _dout(ours)
    (_, grads), (_, again) = (_grads(moe, ours, kwargs, dout) for _ in range(2))
    _, ref = _grads(moe_reference, [a.double() for a in ours], kwargs, dout.double())
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    for g, r in zip(grads, ref):
        assert _rel(g, r) < tol
    assert all(torch.equal(a, b) for a, b in zip(grads, again))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gradients_with_experts_that_get_no_token(dtype):
    """Every token routes to the same 4 of 16 experts: the 12 others get exactly zero weight gradients (no token
    reaches them; a program that skipped them would leave the NaN poison), the 4 used ones the reference's."""
    ours, kwargs, _ = _case(dtype=dtype, tokens=11, experts=16, k=4, hot=4)
    dout = _dout(ours)
    _, grads = _grads(moe, ours, kwargs, dout)
    _, ref = _grads(moe_reference, [a.double() for a in ours], kwargs, dout.double())
    idle = ref[3].abs().sum(dim=(1, 2)) == 0
    assert int(idle.sum()) == 12
    for g in grads[2:]:
        assert (g[idle.to(g.device)] == 0).all()
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    for g, r in zip(grads, ref):
        assert _rel(g, r) < tol


@pytest.mark.parametrize("fn", [moe, moe_api.moe], ids=["kernels.moe", "api.moe"])
def test_backward_is_deterministic(fn):
    """The same inputs give the same bits, output and all four gradients (no atomics anywhere)."""
    ours, kwargs, _ = _case(experts=8, k=4, tokens=20, hidden=40, inner=24, normalize=True)
    dout = _dout(ours)
    first, second = (_grads(fn, ours, kwargs, dout) for _ in range(2))
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


def test_nothing_is_kept_without_a_gradient():
    """Inference (no input requires a gradient, or under no_grad) keeps nothing for a backward."""
    ours, kwargs, ref = _case(tokens=3)
    args = [a.clone().requires_grad_() for a in ours]
    with torch.no_grad():
        assert _rel(moe(*args, **kwargs), ref) < 1e-5
    out, *saved = torch.ops.playground.moe(*ours, kwargs["k"], kwargs["normalize"], False)
    assert _rel(out, ref) < 1e-5 and all(t.numel() == 0 for t in saved)


# ------------------------------------------------------------------------------------------------ NaN


@pytest.fixture
def zero_filled_outputs(monkeypatch):
    """Kernel outputs start as zeros (what a fresh torch.empty often holds) instead of the tests' NaN poison: a
    NaN output row must come from the arithmetic, not from a pair that no kernel computed."""
    monkeypatch.setattr(rt, "empty", lambda shape, dtype, device: torch.zeros(shape, dtype=dtype, device=device))


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # the interpreter's np.nanmax on a NaN row
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("experts,k,normalize", [(64, 3, False), (8, 2, True)])
def test_nan_in_x_gives_that_token_a_nan_row(zero_filled_outputs, experts, k, normalize, dtype):
    ours, kwargs, _ = _case(dtype=dtype, tokens=7, hidden=16, inner=8, experts=experts, k=k, normalize=normalize)
    x = ours[0].clone()
    x[1, 5] = float("nan")  # one feature: every logit of the token is NaN
    x[4] = float("nan")
    bad = torch.tensor([False, True, False, False, True, False, False], device=DEV)
    out = moe(x, *ours[1:], **kwargs)
    assert out[bad].isnan().all()
    assert torch.isfinite(out[~bad]).all()
    ref = moe_reference(*[a.double() for a in (x, *ours[1:])], **kwargs)
    assert ref[bad].isnan().all(), "the reference keeps the same contract"
    assert _rel(out[~bad], ref[~bad]) < (1e-5 if dtype == torch.float32 else 2e-3)


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("where", ["column", "expert"])
def test_nan_logits_give_nan_rows(zero_filled_outputs, where, dtype):
    """x finite, the router weight NaN: a feature's column (every logit NaN) or one expert's row (one NaN logit
    per token). The expert GEMMs stay finite, so the NaN can only come through the routing weights."""
    ours, kwargs, _ = _case(dtype=dtype, tokens=5, hidden=16, inner=8, experts=8, k=2)
    router = ours[1].clone()
    if where == "column":
        router[:, 3] = float("nan")
    else:
        router[6] = float("nan")
    out = moe(ours[0], router, *ours[2:], **kwargs)
    assert out.isnan().all()
    ref = moe_reference(*[a.double() for a in (ours[0], router, *ours[2:])], **kwargs)
    assert ref.isnan().all()
