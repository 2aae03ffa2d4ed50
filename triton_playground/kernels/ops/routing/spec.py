"""Top-k routing described for tests and sweeps: inputs (exact ties on demand), shapes drawn by hypothesis, FLOPs
and bytes, tolerances, the exact-ids check, the torch peers, bad inputs, examples."""

from __future__ import annotations

import torch

from ... import _runtime as rt
from ...spec import BadInput, Case, OpSpec, call
from .api import topk_routing
from .kernel import MAX_EXPERTS, routing_bwd, routing_fwd
from .reference import topk_routing_reference, torch_softmax_topk


def _make_case(dims, dtype, device, *, contiguous=True, requires_grad=False, seed=0):
    """dims: tokens (the sweeps give seqlen instead), experts, k, and optionally batch (a leading dim), normalize,
    ties (logits on a coarse grid, so many logits are exactly equal), scale (logit spread)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    tokens = dims["tokens"] if "tokens" in dims else dims["seqlen"]
    experts, batch = dims["experts"], dims.get("batch")
    lead = (batch, tokens) if batch else (tokens,)
    z = torch.randn(*lead, experts, generator=g) * dims.get("scale", 1.0)
    if dims.get("ties"):
        z = torch.round(z * 2) / 2  # a handful of distinct values per row: exact ties everywhere
    if not contiguous:  # experts-major storage: the logits are a transposed view (strides survive dtype casts)
        z = z.movedim(-1, 0).contiguous().movedim(0, -1)
    z = z.to(device=device, dtype=dtype).requires_grad_(requires_grad)
    return Case((z,), {"k": dims["k"], "normalize": dims.get("normalize", False)})


def _dims(big):
    from hypothesis import strategies as st  # test tooling: imported only when a test asks for the strategy

    @st.composite
    def draw_dims(draw):
        experts = draw(st.one_of(st.sampled_from([8, 60, 64, 128, 256]), st.integers(1, 70)))
        k = draw(st.one_of(st.integers(1, min(experts, 8)), st.just(experts), st.integers(1, experts)))
        tokens = draw(st.one_of(st.integers(1, 4096 if big else 20), st.sampled_from([1, 7, 17])))
        dims = {"tokens": tokens, "experts": experts, "k": k, "normalize": draw(st.booleans()),
                "ties": draw(st.booleans())}
        if draw(st.booleans()):
            dims["batch"] = draw(st.integers(1, 3))
        return dims

    return draw_dims()


def _sweep_cases(gpu):
    seqlens = [512 * 2**i for i in range(8)] if gpu else [16, 64]
    return [{"seqlen": s, "experts": 64, "k": 8} for s in seqlens]


def _tokens(dims):
    return dims["tokens"] if "tokens" in dims else dims["seqlen"]


def _flops(dims, mode):
    per = {"fwd": 5 + 2 * dims["k"], "bwd": 8, "fwd+bwd": 13 + 2 * dims["k"]}[mode]
    return per * _tokens(dims) * dims["experts"]


def _bytes(dims, dtype, mode):
    size = torch.finfo(dtype).bits // 8
    t, e, k = _tokens(dims), dims["experts"], dims["k"]
    fwd = t * e * size + t * k * (size + 8)  # read logits; write weights and int64 ids
    bwd = 2 * t * e * size + t * k * (size + 8)  # read logits, ids, dw; write dlogits
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _check_ids(outs, ref_outs, case):
    """The ids must equal the reference's exactly (selection is on the exact logits, see kernels/common/topk.py)."""
    ids, ref_ids = outs[1], ref_outs[1].to(outs[1].device)
    assert ids.dtype == torch.int64, f"ids dtype {ids.dtype}, expected int64"
    assert ids.shape == ref_ids.shape, f"ids shape {tuple(ids.shape)} != {tuple(ref_ids.shape)}"
    bad = (ids != ref_ids).nonzero()
    assert bad.numel() == 0, f"{bad.shape[0]} ids differ from the reference, first at {bad[0].tolist()}"


def _peer_topk():
    return torch_softmax_topk


def _peer_topk_compile():
    # like the runner's own "compile" provider, skipped under the interpreter (compiling on a CPU takes minutes)
    return None if rt.INTERPRET else torch.compile(torch_softmax_topk)


def _bad_inputs():
    z = torch.randn(5, 8)
    return (
        BadInput("k zero", call(z, 0), ValueError, "k must be"),
        BadInput("k too big", call(z, 9), ValueError, "k must be"),
        BadInput("k float", call(z, 2.0), ValueError, "k must be"),
        BadInput("int logits", call(torch.ones(5, 8, dtype=torch.int32), 2), TypeError, "logits must be float"),
        BadInput("rank 1", call(torch.randn(8), 2), ValueError, "logits must have rank"),
        BadInput("not a tensor", call([[1.0, 2.0]], 1), TypeError, "logits must be a torch.Tensor"),
        BadInput("too many experts", call(torch.randn(2, MAX_EXPERTS + 1), 2), ValueError, "logits must have 1.."),
    )


ROUTING = OpSpec(
    name="topk_routing",
    fn=topk_routing,
    reference=topk_routing_reference,
    make_case=_make_case,
    dims=_dims,
    config_dims={"tokens": 19, "experts": 60, "k": 7, "normalize": True, "ties": True},
    sweep_cases=_sweep_cases,
    flops=_flops,
    bytes_moved=_bytes,
    tolerance={torch.float32: 1e-5, torch.float16: 1e-3},
    grad_tolerance={torch.float32: 1e-5, torch.float16: 2e-3},
    kernels=(routing_fwd, routing_bwd),
    examples=(
        {"tokens": 17, "experts": 256, "k": 8, "ties": True},  # the widest supported-by-contract row
        {"tokens": 5, "experts": 64, "k": 8, "normalize": True, "scale": 30.0},  # OLMoE's shape, peaked softmax
        {"tokens": 3, "experts": 128, "k": 128, "ties": True, "batch": 2},  # k = E: the whole row, sorted
        {"tokens": 1, "experts": 1, "k": 1},
        {"tokens": 9, "experts": 1000, "k": 3, "normalize": True},  # MAX_EXPERTS territory, BLOCK_E = 1024
    ),
    peers={"torch_topk": _peer_topk, "torch_topk_compile": _peer_topk_compile},
    bad_inputs=_bad_inputs(),
    compile_reference=False,  # the sort-based reference is the exact-ties oracle; the torch baselines are peers
    check_outputs=_check_ids,
)

SPECS = (ROUTING,)
