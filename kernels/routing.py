"""Top-k expert routing (the router of HF OLMoE): softmax over all experts, then the k most probable.

    probs            = softmax(logits, dim=-1)                       (in fp32, whatever the logits' dtype)
    weights, ids     = the k largest probs, sorted descending, ties to the lower expert index
    normalize=True:  weights = weights / weights.sum(-1)            (OLMoE ships with it off)

Shapes: ``logits: (..., num_experts)`` (rank >= 2; the leading dims are flattened into rows and restored on
the way out), ``weights: (..., k)`` in the logits' dtype, ``ids: (..., k)`` int64 (what ``torch.topk`` gives).

Forward tiling. A program owns ``BLOCK_M`` rows and holds each whole row of ``num_experts <= 1024`` logits in
registers (a ``(BLOCK_M, BLOCK_E)`` tile, ``BLOCK_E`` the next power of two, the extra columns masked to -inf).
One launch does everything: the row max, ``p = exp(z - max) / sum``, and then ``k`` rounds of selection, each
a max-reduction and a min-reduction over the row (see :func:`softmax_topk`). The ``k`` picks are gathered in a
``(BLOCK_M, BLOCK_K)`` register tile (``BLOCK_K = next_pow2(k)``), normalised there if asked, and stored once.

Selecting on the logits. softmax is strictly increasing in the logit, so "the k largest probabilities" is "the
k largest logits" — and the logits are exact (fp16/bf16/fp32 widen to fp32 without rounding), whereas two
distinct logits can round to the same fp32 probability. Selecting on the logits therefore gives exactly the
order a float64 reference gives, and an *exact* tie of logits is an exact tie of probabilities, broken to the
lower index as the contract asks. (HF runs ``torch.topk`` on the fp32 probabilities, whose order among equal
values is unspecified; the two agree wherever the fp32 probabilities differ.)

Backward (training routers). With ``p = softmax(z)``, ``S`` the selected set and ``g`` the gradient of the
weights scattered into expert space (``G_e = g_j`` if expert ``e`` is the ``j``-th pick, else 0):

    unnormalised:  dL/dz = p * (G - sum_e G_e p_e)
    normalize:     w' = p_S / s with s = sum_S p  =>  the gradient reaching p is G' = (G - sum_j g_j w'_j) / s on
                   S (0 elsewhere), then dL/dz = p * (G' - sum_e G'_e p_e)

All of it lives in expert space, so the backward kernel needs no gather: it recomputes ``p`` from the saved
logits (one tile, cheaper than storing ``p``), scatters ``g`` with ``k`` compare-selects, and writes dz.

NaN and infinities. A row's softmax is *undefined* when it has a NaN logit, a +inf logit (``z - max`` is
``inf - inf`` there) or no logit above -inf (``-inf - (-inf)`` everywhere); torch's softmax gives such a row
all-NaN probabilities, and no other row gets a NaN. The contract for an undefined row:

    weights = NaN in all k slots, normalize or not
    ids     = 0, 1, ..., k-1          (a stable sort of the all-NaN probabilities: every entry ties)
    dL/dz   = NaN in the whole row    (NaN in, NaN out)

so ids are always k distinct experts in ``[0, num_experts)`` — downstream dispatch indexes with them — and the
fault shows up in the weights, and from there in whatever they weight (``kernels.moe`` gives the token a NaN
output row). Every other row is computed exactly as if the undefined rows were not there. Some -inf logits in a
row with a finite one are ordinary values: probability 0, selected after every finite logit, ties to the lower
index. The kernels test for undefined rows explicitly (``z != z``, and the row max against +-inf) rather than
let the NaN flow through: ``tl.max`` skips NaN (maxnum semantics, on a GPU and in the interpreter alike), and
every comparison of the selection is false against NaN, so a NaN logit would be passed over and an all-NaN row
would select the padding sentinel ``BLOCK_E`` as its expert.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hypothesis import strategies as st

from . import _runtime as rt
from .spec import BadInput, Case, OpSpec, call

MAX_EXPERTS = 1024  # a whole row of logits stays in registers


def _route_configs():
    # Largest tiles first: under the interpreter the first config that fits (see _fits) is the cheapest.
    return [triton.Config({"BLOCK_M": m}, num_warps=w) for m, w in [(64, 8), (32, 4), (16, 4), (4, 2)]]


def _fits(configs, nargs):
    """Keep configs whose (BLOCK_M, BLOCK_E) row tile stays within 8K fp32 registers per program."""
    fitting = [c for c in configs if c.kwargs["BLOCK_M"] * nargs["BLOCK_E"] <= 8192]
    return fitting or configs[-1:]


# --------------------------------------------------------------------------------------------------------------
# The shared device function: softmax + top-k of a tile of rows (also used by the fused MoE router)
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def softmax_topk(z, col_ok, k, NORMALIZE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr):
    """Softmax over each row of ``z`` and its ``k`` largest entries.

    z: (BLOCK_M, BLOCK_E) fp32 logits; col_ok: (BLOCK_E,) the real experts. Returns the weights
    (BLOCK_M, BLOCK_K) fp32 and the expert ids (BLOCK_M, BLOCK_K) int32, columns >= k zero.

    Selection without a "taken" mask: the picks come out in the strict order (logit descending, index
    ascending), so round ``j`` looks only at entries *after* the previous pick ``(lv, li)`` in that order —
    strictly smaller, or equal with a larger index — and takes the largest of them, the lowest index among
    equals. Two reductions per round; -inf logits are ordinary values here, so every row gets k distinct ids.

    A row whose softmax is undefined (NaN, +inf, or nothing above -inf: see the module doc) selects on zeros
    instead, so its ids are 0..k-1, and gets NaN weights; the other rows are untouched.
    """
    cols = tl.arange(0, BLOCK_E)
    slots = tl.arange(0, BLOCK_K)
    z = tl.where(col_ok[None, :], z, float("-inf"))
    row_max, undefined = _softmax_max(z)
    # Every comparison with NaN is false: left in, a NaN row would find nothing "after" the previous pick and
    # select the sentinel BLOCK_E. Zeros tie everywhere, so the selection below yields 0..k-1 with no NaN or
    # inf arithmetic on the way; the NaN goes back into the weights at the end.
    z = tl.where(undefined[:, None] & col_ok[None, :], 0.0, z)
    row_max = tl.where(undefined, 0.0, row_max)
    denom = tl.sum(tl.exp(z - row_max[:, None]), axis=1)  # masked columns: exp(-inf) = 0

    top_w = tl.zeros([z.shape[0], BLOCK_K], dtype=tl.float32)
    top_i = tl.zeros([z.shape[0], BLOCK_K], dtype=tl.int32)
    lv = tl.full([z.shape[0]], float("inf"), tl.float32)  # previous pick: value and index
    li = tl.full([z.shape[0]], -1, tl.int32)
    for j in range(0, k):
        after = (z < lv[:, None]) | ((z == lv[:, None]) & (cols[None, :] > li[:, None]))
        after = after & col_ok[None, :]
        v = tl.max(tl.where(after, z, float("-inf")), axis=1)
        i = tl.min(tl.where(after & (z == v[:, None]), cols[None, :], BLOCK_E), axis=1)
        p = tl.exp(v - row_max) / denom
        top_w = tl.where(slots[None, :] == j, p[:, None], top_w)
        top_i = tl.where(slots[None, :] == j, i[:, None], top_i)
        lv, li = v, i
    if NORMALIZE:
        top_w = top_w / tl.sum(top_w, axis=1)[:, None]
    top_w = tl.where(undefined[:, None] & (slots[None, :] < k), float("nan"), top_w)
    return top_w, top_i


@triton.jit
def _softmax_max(z):
    """Row max of ``z`` (masked columns already -inf) and which rows have an undefined softmax.

    The NaN test is its own reduction because ``tl.max`` skips NaN (maxnum); a NaN-free row's max is +inf or
    -inf exactly when its softmax would compute inf - inf.
    """
    row_max = tl.max(z, axis=1)
    has_nan = tl.max((z != z).to(tl.int32), axis=1) > 0
    return row_max, has_nan | (row_max == float("inf")) | (row_max == float("-inf"))


# --------------------------------------------------------------------------------------------------------------
# Forward and backward kernels
# --------------------------------------------------------------------------------------------------------------


@rt.autotune(_route_configs(), key=["n_experts", "k", "NORMALIZE"], prune=_fits)
@triton.jit
def _routing_fwd(
    Z, W, I,
    n_rows, n_experts, k,
    stride_zm, stride_ze, stride_wm, stride_wk, stride_im, stride_ik,
    NORMALIZE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    rows64 = rows.to(tl.int64)  # rows * stride can pass 2^31 at 65536 tokens x 256 experts x strides
    cols = tl.arange(0, BLOCK_E)
    col_ok = cols < n_experts
    z = tl.load(Z + rows64[:, None] * stride_zm + cols[None, :] * stride_ze,
                mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
    top_w, top_i = softmax_topk(z, col_ok, k, NORMALIZE, BLOCK_E, BLOCK_K)
    slots = tl.arange(0, BLOCK_K)
    mask = row_ok[:, None] & (slots[None, :] < k)
    tl.store(W + rows64[:, None] * stride_wm + slots[None, :] * stride_wk, top_w.to(W.dtype.element_ty), mask=mask)
    tl.store(I + rows64[:, None] * stride_im + slots[None, :] * stride_ik, top_i.to(I.dtype.element_ty), mask=mask)


@rt.autotune(_route_configs(), key=["n_experts", "k", "NORMALIZE"], prune=_fits)
@triton.jit
def _routing_bwd(
    Z, I, DW, DZ,
    n_rows, n_experts, k,
    stride_zm, stride_ze, stride_im, stride_ik, stride_dwm, stride_dwk, stride_dzm, stride_dze,
    NORMALIZE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_M: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_E)
    col_ok = cols < n_experts
    mask = row_ok[:, None] & col_ok[None, :]
    # p recomputed exactly as the forward did; an undefined row (see the module doc) gets p = NaN, hence a NaN
    # gradient, without computing inf - inf on the way
    z = tl.load(Z + rows64[:, None] * stride_zm + cols[None, :] * stride_ze, mask=mask, other=0.0).to(tl.float32)
    z = tl.where(col_ok[None, :], z, float("-inf"))
    row_max, undefined = _softmax_max(z)
    z = tl.where(undefined[:, None] & col_ok[None, :], 0.0, z)
    e = tl.exp(z - tl.where(undefined, 0.0, row_max)[:, None])
    p = tl.where(undefined[:, None], float("nan"), e / tl.sum(e, axis=1)[:, None])
    # scatter the k weight gradients into expert space (G) and mark the selected set (sel)
    G = tl.zeros([BLOCK_M, BLOCK_E], dtype=tl.float32)
    sel = tl.zeros([BLOCK_M, BLOCK_E], dtype=tl.float32)
    for j in range(0, k):
        ids = tl.load(I + rows64 * stride_im + j * stride_ik, mask=row_ok, other=-1)
        g = tl.load(DW + rows64 * stride_dwm + j * stride_dwk, mask=row_ok, other=0.0).to(tl.float32)
        hit = cols[None, :] == ids[:, None]
        G = tl.where(hit, g[:, None], G)
        sel = tl.where(hit, 1.0, sel)
    if NORMALIZE:
        s = tl.sum(sel * p, axis=1)  # sum of the unnormalised picks: >= the top pick's p >= 1/num_experts
        s = tl.where(row_ok, s, 1.0)  # rows past the end select nothing: keep them finite (never stored)
        gw = tl.sum(G * p, axis=1) / s  # sum_j g_j w'_j
        G = sel * (G - gw[:, None]) / s[:, None]
    dz = p * (G - tl.sum(G * p, axis=1)[:, None])
    tl.store(DZ + rows64[:, None] * stride_dzm + cols[None, :] * stride_dze, dz.to(DZ.dtype.element_ty), mask=mask)


def _block_e(n_experts: int) -> int:
    return max(triton.next_power_of_2(n_experts), 16)


class _Routing(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, k, normalize):
        n_rows, n_experts = z.shape
        weights = rt.empty((n_rows, k), z.dtype, z.device)
        ids = rt.empty((n_rows, k), torch.int64, z.device)
        if n_rows:
            _routing_fwd[lambda meta: (triton.cdiv(n_rows, meta["BLOCK_M"]),)](
                z, weights, ids, n_rows, n_experts, k,
                z.stride(0), z.stride(1), weights.stride(0), weights.stride(1), ids.stride(0), ids.stride(1),
                NORMALIZE=normalize, BLOCK_E=_block_e(n_experts), BLOCK_K=triton.next_power_of_2(k),
            )
        ctx.save_for_backward(z, ids)
        ctx.normalize = normalize
        ctx.mark_non_differentiable(ids)
        return weights, ids

    @staticmethod
    def backward(ctx, dw, _dids):
        z, ids = ctx.saved_tensors
        n_rows, n_experts = z.shape
        dz = rt.empty(z.shape, z.dtype, z.device)
        if n_rows:
            _routing_bwd[lambda meta: (triton.cdiv(n_rows, meta["BLOCK_M"]),)](
                z, ids, dw, dz, n_rows, n_experts, ids.shape[1],
                z.stride(0), z.stride(1), ids.stride(0), ids.stride(1), dw.stride(0), dw.stride(1),
                dz.stride(0), dz.stride(1),
                NORMALIZE=ctx.normalize, BLOCK_E=_block_e(n_experts),
            )
        return dz, None, None


def check_k(k, num_experts: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= num_experts:
        raise ValueError(f"k must be an int in [1, num_experts={num_experts}], got {k!r}")


def _check(logits, k):
    rt.check_tensor("logits", logits, min_rank=2)
    n_experts = logits.shape[-1]
    if not 1 <= n_experts <= MAX_EXPERTS:
        raise ValueError(f"logits must have 1..{MAX_EXPERTS} experts in its last dim, got shape {tuple(logits.shape)}")
    check_k(k, n_experts)


def topk_routing(logits, k=8, *, normalize=False):
    """HF OLMoE's router on given logits: ``(weights, expert_ids)``, each ``(..., k)``.

    Softmax over all experts in fp32, the ``k`` largest probabilities sorted descending (ties to the lower
    expert index), optionally renormalised to sum to one. Weights in the logits' dtype, ids int64.
    Differentiable in the logits (through the weights). A row with a NaN logit, a +inf logit or only -inf
    logits gets NaN weights and ids 0..k-1 (the module doc); ids are always in ``[0, num_experts)``.
    """
    _check(logits, k)
    lead = logits.shape[:-1]
    z = logits.reshape(-1, logits.shape[-1])  # a view whenever the strides allow
    weights, ids = _Routing.apply(z, k, bool(normalize))
    return weights.reshape(*lead, k), ids.reshape(*lead, k)


# ------------------------------------------------------------------------------------------------ reference


def topk_routing_reference(logits, k=8, *, normalize=False):
    """HF's router math (softmax in fp32 — fp64 for fp64 logits — then top-k), with the tie rule made explicit:
    a stable descending sort keeps equal probabilities in index order, so ties go to the lower expert.

    The NaN contract (module doc) is stated here too rather than left to torch: an undefined row's
    probabilities are all NaN, and the order torch.sort / torch.topk give NaNs is not something to rely on."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float64 if logits.dtype == torch.float64 else torch.float32)
    values, ids = torch.sort(probs, dim=-1, descending=True, stable=True)
    weights, ids = values[..., :k], ids[..., :k]
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    undefined = (logits.isnan().any(-1) | logits.isposinf().any(-1) | logits.isneginf().all(-1))[..., None]
    ids = torch.where(undefined, torch.arange(k, device=ids.device), ids)
    # an addition, not a masked_fill: the gradient still flows through the (NaN) softmax, so it is NaN as well
    weights = weights + torch.where(undefined, float("nan"), 0.0).to(weights.dtype)
    return weights.to(logits.dtype), ids


def torch_softmax_topk(logits, k=8, *, normalize=False):
    """HF OLMoE's router verbatim (softmax in fp32 + ``torch.topk``): the sweep's torch baseline."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, k, dim=-1)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(logits.dtype), ids


# ------------------------------------------------------------------------------------------------ description


def _make_case(dims, dtype, device, *, contiguous=True, requires_grad=False, seed=0):
    """dims: tokens (the sweeps give seqlen instead), experts, k, and optionally batch (a leading dim), normalize, ties (logits on a coarse
    grid, so many logits are exactly equal), scale (logit spread)."""
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


@st.composite
def _dims_strategy(draw, big):
    experts = draw(st.one_of(st.sampled_from([8, 60, 64, 128, 256]), st.integers(1, 70)))
    k = draw(st.one_of(st.integers(1, min(experts, 8)), st.just(experts), st.integers(1, experts)))
    tokens = draw(st.one_of(st.integers(1, 4096 if big else 20), st.sampled_from([1, 7, 17])))
    dims = {"tokens": tokens, "experts": experts, "k": k, "normalize": draw(st.booleans()),
            "ties": draw(st.booleans())}
    if draw(st.booleans()):
        dims["batch"] = draw(st.integers(1, 3))
    return dims


def _dims(big):
    return _dims_strategy(big)


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
    """The ids must equal the reference's exactly (selection is on the exact logits, see the module doc)."""
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
    kernels=(_routing_fwd, _routing_bwd),
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
