"""The MoE layer described for tests and sweeps: inputs kept clear of routing near-ties (hot experts on demand),
shapes drawn by hypothesis, FLOPs and bytes, tolerances, the grouped_mm peer, bad inputs, examples."""

from __future__ import annotations

import torch

from . import peers
from ...spec import BadInput, Case, OpSpec, call, idle_apart, plateau_and_rest
from .api import moe
from .kernel import moe_router
from .kernel_bwd import moe_down_bwd, moe_weight_grad
from .kernel_gemm import moe_combine, moe_down, moe_gate_up
from ..routing.reference import topk_routing_reference
from .reference import moe_grouped_mm, moe_reference


def _separate_routing(x, router, k, shift, g, margin=1e-4):
    """Redraw the tokens whose k-th and (k+1)-th logits are within ``margin`` (relative) of each other.

    Which experts a token goes to is a discontinuous function of the logits: where the k-th and (k+1)-th are
    nearly equal, a rounding-level difference (fp32 accumulation here vs the float64 reference: ~1e-6) swaps an
    expert and moves that token's output by O(1). Both answers are right, and no norm-based tolerance can tell
    them apart, so test inputs keep every token at least ``margin`` (100x the accumulation error) from such a
    tie, in every dtype a test casts them to. (Exact ties and their rule are topk_routing's tests.)
    """
    if k == router.shape[0]:
        return x
    rows = x.view(-1, x.shape[-1])
    for _ in range(10):
        near = torch.zeros(rows.shape[0], dtype=torch.bool)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            z = rows.to(dtype).double() @ router.to(dtype).double().t()
            top = z.topk(k + 1, dim=-1).values
            near |= (top[:, k - 1] - top[:, k]) < margin * top[:, k - 1].abs().clamp(min=1)
        if not near.any():
            break
        rows[near] = torch.randn(int(near.sum()), rows.shape[1], generator=g, dtype=rows.dtype) + shift
    return x


def _make_case(dims, dtype, device, *, contiguous=True, requires_grad=False, seed=0):
    """dims: tokens (the sweeps give seqlen instead), hidden, inner, experts, k; optional batch (a leading dim),
    normalize, and hot: that many experts get a large router bias, so every token routes to them (hot >= k: the
    other experts stay empty)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    t, hd, inner, n_e, batch = _tokens(dims), dims["hidden"], dims["inner"], dims["experts"], dims.get("batch")
    x = torch.randn(*((batch, t) if batch else (t,)), hd, generator=g)
    router = torch.randn(n_e, hd, generator=g) / hd**0.5  # logits ~ N(0, 1)
    hot = dims.get("hot", 0)
    shift = 1.0 if hot else 0.0
    if hot:
        # x gets a common offset of 1 per feature and the hot experts' rows a bias of 12/hidden per feature:
        # their logits rise by ~12 (the logit noise is ~1.4), far above every cold expert.
        x = x + shift
        router[torch.randperm(n_e, generator=g)[:hot]] += 12.0 / hd
    if x.numel() <= 1 << 22:  # test sizes; a sweep's timing does not care which expert wins a near-tie
        x = _separate_routing(x, router, dims["k"], shift, g)
    gate_up = torch.randn(n_e, 2 * inner, hd, generator=g) / hd**0.5
    down = torch.randn(n_e, hd, inner, generator=g) / inner**0.5
    if not contiguous:
        # feature-major / transposed storage: dense permuted views, whose strides survive dtype casts
        x = x.movedim(-1, 0).contiguous().movedim(0, -1)
        router = router.t().contiguous().t()
        gate_up = gate_up.transpose(1, 2).contiguous().transpose(1, 2)
        down = down.transpose(1, 2).contiguous().transpose(1, 2)
    args = tuple(a.to(device=device, dtype=dtype).requires_grad_(requires_grad) for a in (x, router, gate_up, down))
    return Case(args, {"k": dims["k"], "normalize": dims.get("normalize", False)})


def _dims(big):
    from hypothesis import strategies as st  # test tooling: imported only when a test asks for the strategy

    @st.composite
    def draw_dims(draw):
        experts = draw(st.sampled_from([8, 13, 60, 64] + ([128, 256] if big else [])))
        k = draw(st.one_of(st.integers(1, min(experts, 8)), st.just(min(experts, 8))))
        dims = {
            "tokens": draw(st.one_of(st.integers(1, 2048 if big else 20), st.sampled_from([1, 7, 17]))),
            "hidden": draw(st.one_of(st.integers(1, 512 if big else 48), st.sampled_from([16, 37]))),
            "inner": draw(st.one_of(st.integers(1, 512 if big else 32), st.sampled_from([16, 23]))),
            "experts": experts,
            "k": k,
            "normalize": draw(st.booleans()),
            "hot": draw(st.sampled_from([0, 0, 1, k, min(2 * k, experts)])),
        }
        if draw(st.booleans()):
            dims["batch"] = draw(st.integers(1, 2))
        return dims

    return draw_dims()


_OLMOE = {"hidden": 2048, "inner": 1024, "experts": 64, "k": 8}


def _tokens(dims):
    return dims["tokens"] if "tokens" in dims else dims["seqlen"]


def _sweep_cases(gpu):
    if not gpu:
        return [{"seqlen": s, "hidden": 32, "inner": 16, "experts": 8, "k": 2, "hot": 0} for s in (8, 16)]
    seqlens = [512 * 2**i for i in range(7)]  # 512 .. 32768 tokens
    # hot=8: the skewed case, every token routed to the same 8 experts, 56 experts idle
    return [dict(_OLMOE, seqlen=s, hot=hot) for hot in (0, 8) for s in seqlens]


def _flops(dims, mode):
    """The least FLOPs: the matmuls (2 per multiply-add), with P = tokens*k pairs, h = hidden, i = inner.

    forward   router 2*t*h*E  + gate/up 2*P*h*2i + down 2*P*i*h                     = 2thE + 6Phi
    backward  the router's two, dlogits @ router (2thE) and dlogits^T x (2thE), and four per expert GEMM
              pair: c = dout @ down (2Phi), ddown (2Phi), dx = [dg|du] @ gate_up (4Phi), dgate_up (4Phi)
                                                                                     = 4thE + 12Phi
    (the routing-weight gradient <c, a> and the SwiGLU backward are elementwise: O(P*i), not counted; a
    recomputation of the gate/up GEMM, which this implementation avoids by storing [g | u], would add 4Phi.)
    """
    t, hd, inner, n_e, k = _tokens(dims), dims["hidden"], dims["inner"], dims["experts"], dims["k"]
    pairs = t * k
    fwd = 2 * t * hd * n_e + 6 * pairs * inner * hd
    bwd = 4 * t * hd * n_e + 12 * pairs * inner * hd
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _bytes(dims, dtype, mode):
    """The least traffic in ``dtype`` (B bytes an element; fp32 for the router's values), E' = experts in use.

    forward   x in, out, the router weight, the used experts' weights (3*i*h each)
              = B (2th + Eh + 3E'ih)
    backward  what the gradients need at the least: dout, x, the router weight and the used experts' weights
              read; dx, drouter, dgate_up and ddown written (every expert's: the unused get zeros); and what the
              forward must leave for it, read once: the routing (fp32 weights, int32 ids), the fp32 logits, the
              activation and the gate/up pre-activations per pair (3i a pair: the price of not recomputing)
              = B (3th + 2Eh + 3E'ih + 3Eih + 3Pi) + 4 (2tk + tE)
    fwd+bwd   both, and the forward's stores of the saved values (the same sizes again): a training step's
              traffic when nothing stays on chip between the passes.
    """
    size = torch.finfo(dtype).bits // 8
    t, hd, inner, n_e, k = _tokens(dims), dims["hidden"], dims["inner"], dims["experts"], dims["k"]
    used = min(n_e, t * k) if not dims.get("hot") else min(n_e, max(dims["hot"], k))
    fwd = size * (2 * t * hd + n_e * hd + used * 3 * inner * hd)
    saved = size * 3 * t * k * inner + 4 * (2 * t * k + t * n_e)
    bwd = size * (3 * t * hd + 2 * n_e * hd + used * 3 * inner * hd + n_e * 3 * inner * hd) + saved
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + saved + bwd}[mode]


def _peer_grouped_mm():
    return moe_grouped_mm if hasattr(torch, "_grouped_mm") else None


def _bad_inputs():
    x, r, gu, dn = torch.randn(5, 16), torch.randn(8, 16), torch.randn(8, 24, 16), torch.randn(8, 16, 12)
    bad = [
        BadInput("int x", call(x.int(), r, gu, dn, k=2), TypeError, "x must be float"),
        BadInput("router hidden", call(x, torch.randn(8, 15), gu, dn, k=2), ValueError, "router_weight must have shape"),
        BadInput("router rank", call(x, torch.randn(8), gu, dn, k=2), ValueError, "router_weight must have rank"),
        BadInput("gate_up experts", call(x, r, torch.randn(7, 24, 16), dn, k=2), ValueError, "gate_up must have shape"),
        BadInput("gate_up inner", call(x, r, torch.randn(8, 22, 16), dn, k=2), ValueError, "gate_up must have shape"),
        BadInput("gate_up hidden", call(x, r, torch.randn(8, 24, 15), dn, k=2), ValueError, "gate_up must have shape"),
        BadInput("down hidden", call(x, r, gu, torch.randn(8, 15, 12), k=2), ValueError, "down must have shape"),
        BadInput("down experts", call(x, r, gu, torch.randn(9, 16, 12), k=2), ValueError, "down must have shape"),
        BadInput("down dtype", call(x, r, gu, dn.half(), k=2), TypeError, "down has dtype"),
        BadInput("k zero", call(x, r, gu, dn, k=0), ValueError, "k must be"),
        BadInput("k > experts", call(x, r, gu, dn, k=9), ValueError, "k must be"),
        BadInput("too many experts", call(x, torch.randn(257, 16), torch.randn(257, 24, 16),
                                          torch.randn(257, 16, 12), k=2), ValueError, "router_weight must have 1.."),
    ]
    if torch.cuda.is_available():
        bad.append(BadInput("devices", lambda: Case((x.detach().cuda(), r, gu, dn), {"k": 2}), ValueError,
                            "router_weight is on cpu"))
    return tuple(bad)


def _router_outputs(X, R, TopW, TopI, Logits, n_tokens, hidden, n_experts, top_k, NORMALIZE, STORE_LOGITS, **_):
    """What ``moe_router``'s whole grid writes, for the counters (``OpSpec.count_outputs``): its programs do equal
    work, so a sample counts it, but the dispatch reads every token's experts. At 16k tokens the interpreter takes
    two minutes over the grid; the reference's top-k of the same fp32 logits takes a moment."""
    logits = X[:n_tokens].float() @ R[:n_experts].float().T
    weights, ids = topk_routing_reference(logits, top_k, normalize=bool(NORMALIZE))
    TopW.copy_(weights.reshape(TopW.shape))
    TopI.copy_(ids.reshape(TopI.shape))
    if STORE_LOGITS:
        Logits.copy_(logits.reshape(Logits.shape))


def _block_strata(grid, *, Offsets, Counts, n_experts, n_blocks, BLOCK_M, GROUP_M, **_):
    """The grouped GEMMs' programs (``moe_gate_up``, ``moe_down``, ``moe_down_bwd``) by how many rows of their
    M-block are real, for the counters (``OpSpec.count_strata``): full blocks; partly filled ones (each expert's
    last, in order of their real rows); and blocks past the last expert, which return at once (the grid is sized
    from the shapes alone: a bound). Which is which depends on the routing, so the counters sample each kind apart.
    The program -> block map is ``_block_of_expert``'s (``kernels/common/tiling.grouped_tile``), vectorised."""
    import numpy as np

    pid = np.arange(grid[0])
    per_group = GROUP_M * (grid[0] // n_blocks)
    first = pid // per_group * GROUP_M
    block = first + pid % per_group % np.minimum(n_blocks - first, GROUP_M)
    row0 = block * BLOCK_M
    offsets, counts = Offsets.numpy().astype(np.int64), Counts.numpy().astype(np.int64)
    expert = (offsets[1:n_experts + 1][None, :] <= row0[:, None]).sum(axis=1)
    live = expert < n_experts
    expert = np.minimum(expert, n_experts - 1)
    real = np.where(live, np.clip(offsets[expert] + counts[expert] - row0, 0, BLOCK_M), 0)
    # the partly filled in order of their rows: a mirrored pair matches a nearly empty block with a nearly full one
    return [*plateau_and_rest(pid[live], real[live], top=BLOCK_M), pid[~live]]


def _group_strata(grid, *, Counts, n_experts, n_dim, c_dim, experts_per_program, BLOCK_N, BLOCK_C, **_):
    """``moe_weight_grad``'s programs (a tile of dW for ``experts_per_program`` consecutive groups: experts, or the
    router gradient's chunks of tokens) by the rows they reduce over, for the counters (``OpSpec.count_strata``):
    a program's work is its groups' rows, which the routing decides. The programs of empty groups apart (skewed
    routing leaves most experts empty: at hot=8, 7 programs in 8; a mirrored pair of one empty and one busy
    program would count half the grid busy, twice the truth), the busiest apart, and the rest in order of their
    rows, so the counters' mirrored pairs match a light program with a heavy one."""
    import numpy as np

    per_group = -(-n_dim // BLOCK_N) * -(-c_dim // BLOCK_C)
    pid = np.arange(grid[0])
    first = pid // per_group * experts_per_program
    ends = np.concatenate([[0], np.cumsum(Counts.numpy()[:n_experts].astype(np.int64))])
    rows = ends[np.minimum(first + experts_per_program, n_experts)] - ends[np.minimum(first, n_experts)]
    return idle_apart(pid, rows)


MOE = OpSpec(
    name="moe",
    fn=moe,
    reference=moe_reference,
    make_case=_make_case,
    dims=_dims,
    config_dims={"tokens": 19, "hidden": 40, "inner": 24, "experts": 12, "k": 4, "hot": 3, "normalize": True},
    sweep_cases=_sweep_cases,
    quick_panels=({"hot": 0},),
    flops=_flops,
    bytes_moved=_bytes,
    tolerance={torch.float32: 1e-5, torch.float16: 2e-3},
    grad_tolerance={torch.float32: 1e-5, torch.float16: 2e-3},
    kernels=(moe_router, moe_gate_up, moe_down, moe_combine, moe_down_bwd, moe_weight_grad),
    # the expert ids and the dispatch decide which blocks the GEMMs run: the dispatch counted whole, never
    # sampled; the router sampled, its outputs then written by the reference's top-k
    count_exact=("dispatch_count", "dispatch_scan", "dispatch_scatter", *peers.LIGER_MOE_EXACT),
    values_steer_work=True,
    count_outputs={"moe_router": _router_outputs, **peers.LIGER_MOE_OUTPUTS},
    count_strata={**dict.fromkeys(("moe_gate_up", "moe_down", "moe_down_bwd"), _block_strata),
                  "moe_weight_grad": _group_strata,
                  **peers.LIGER_MOE_STRATA},
    examples=(
        {"tokens": 6, "hidden": 48, "inner": 32, "experts": 64, "k": 8},  # OLMoE's routing: top-8 of 64
        {"tokens": 17, "hidden": 24, "inner": 16, "experts": 64, "k": 8, "hot": 8},  # all to 8 experts, 56 idle
        {"tokens": 1, "hidden": 7, "inner": 5, "experts": 8, "k": 8, "normalize": True},  # one token, k = E
        {"tokens": 3, "hidden": 16, "inner": 16, "experts": 256, "k": 2, "batch": 2},  # MAX_EXPERTS
    ),
    peers={"grouped_mm": _peer_grouped_mm, "liger": peers.liger_moe},
    bad_inputs=_bad_inputs(),
    modes=("fwd", "bwd", "fwd+bwd"),
    # The reference loops in Python over the experts that were hit, with data-dependent shapes (nonzero, where):
    # torch.compile graph-breaks and recompiles on it, so it is no meaningful baseline.
    compile_reference=False,
)

SPECS = (MOE,)
