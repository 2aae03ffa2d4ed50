"""The OLMoE mixture-of-experts layer: the public function, its checks, the launches and
the custom ops (``torch.ops.playground.moe``, ``moe_backward``: fake and autograd below).

    logits       = x @ router_weight.T                                   (tokens, E)
    w, ids       = topk_routing(logits, k, normalize)                    (tokens, k) each
    out[t]       = sum_j  w[t, j] * down[e] @ (silu(gate[e] @ x[t]) * (up[e] @ x[t])),   e = ids[t, j]

with ``gate_up[e] = [gate[e]; up[e]]`` (``(2*inner, hidden)``, gate rows first: HF transformers 5.x's in-memory
OLMoE layout, ``OlmoeExperts.gate_up_proj``) and ``down[e]: (hidden, inner)`` (``OlmoeExperts.down_proj``).
Shapes: ``x: (..., hidden)``, ``router_weight: (E, hidden)``; the result has x's shape and dtype.

The pipeline (7 launches, all on the device, no host synchronisation, no Python loop over experts):

1. the fused router (GEMM + softmax + top-k in one program): fp32 weights and int32 ids;
2. the dispatch, :func:`moe_dispatch` (count, scan, scatter): the ``tokens * k`` (token, slot) pairs sorted by
   expert into block-padded segments (:class:`Dispatch`);
3. grouped GEMM #1, gate/up with the SwiGLU epilogue;
4. grouped GEMM #2, down, weighted by the routing weight and scattered back to pair order;
5. the combine: each token's k rows summed in fixed order.

The kernels, their math and tiling: ``kernel.py`` (1, 2), then ``kernel_gemm.py`` (3 to 5).

What is stored vs recomputed. The activation (``tokens*k x inner``) and the weighted per-pair rows
(``tokens*k x hidden``) are stored, because each is produced by one grouped GEMM and consumed by another launch
whose programs are organised differently (by expert vs by token); summing the k pairs of a token inside GEMM #2
would need atomics and lose determinism. In inference that is all. In training (a gradient is required) the
forward also keeps the fp32 logits (``tokens x E``, from the router's registers) and the gate/up
pre-activations ``[g | u]`` (``tokens*k x 2*inner``, from GEMM #1's epilogue): stored rather than recomputed,
which would cost the backward a third more FLOPs (the reasoning in ``kernel_bwd.py``).

NaN propagates, per token. A token whose x row has a NaN gets NaN logits; a token whose logits make the
softmax undefined (a NaN, a +inf, or all -inf: from a NaN in x or in the router weight, or an fp32 overflow)
gets NaN routing weights and the in-range experts ``0..k-1`` (:mod:`kernels.ops.routing`'s contract). Either way
every one of its ``k`` pairs is dispatched and computed, and its output row is all NaN — never a silent 0.0
from pairs that went nowhere, and never an index past the expert tables. The other tokens' rows are
unaffected: every GEMM row, every routing row and every combine row belongs to one token. (NaN in an expert's
weights reaches, in the same way, exactly the tokens routed to that expert.)

The backward (:func:`_backward`, 9 launches, deterministic: no atomics, every sum in a fixed order): the
gradients of x, router_weight, gate_up and down, each computed only when asked for.

6. ``moe_down_bwd`` (``kernel_bwd.py``): ``c = dout @ down[e]`` per expert block, its epilogue the SwiGLU
   backward (``[dg | du]``, sorted rows) and each pair's routing-weight gradient ``<c, a>`` in column bands;
7. the bands summed (torch, fixed order), then ``kernels.ops.routing``'s ``routing_bwd``: dlogits through the
   softmax, the top-k selection (ids fixed: not differentiable) and the normalize renormalisation;
8. ``moe_weight_grad`` twice: ``ddown[e] = sum (w dout)^T a`` and ``dgate_up[e] = sum [dg | du]^T x`` over the
   expert's rows, one program per tile of the weight gradient (no atomics); an expert with no token gets zeros;
9. ``moe_down`` (unweighted, gate_up read transposed): the pairs' ``[dg | du] @ gate_up[e]``, in pair order;
10. the router GEMMs: ``dlogits @ router_weight`` (fp32) on the MLP's ``gemm`` kernel, and
    ``drouter = dlogits^T x`` on ``moe_weight_grad``, split over chunks of tokens (:func:`_router_weight_grad`);
    ``moe_combine`` sums each token's k rows and the router term into dx.

dlogits go into the router GEMMs in x's dtype (fp16/bf16 tensor-core operands), like HF's logits.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
from torch import Tensor

from ... import _runtime as rt
from ..._custom_op import custom_op, empty_if, extras_are_not_differentiable, needs_grad, or_placeholder, placeholder
from ...common.precision import dot_precision
from ..routing.api import check_k
from ..mlp.api import _matmul
from ..routing.kernel import block_e as routing_block_e
from ..routing.kernel import routing_bwd
from .dispatch import Dispatch, _pow2_at_least, moe_dispatch  # noqa: F401  (tests call moe_dispatch from here)
from .kernel import MAX_EXPERTS, moe_router
from .kernel_bwd import DW_BAND, moe_down_bwd, moe_weight_grad
from .kernel_gemm import tma_gate_up, tma_weights, moe_combine, moe_down, moe_gate_up


class Saved(NamedTuple):
    """What a training forward keeps for the backward (besides the inputs). rows = num_blocks * block_m.

    logits: (tokens, E) fp32.  top_w: (tokens, k) fp32.  top_i: (tokens, k) int32.
    sorted_pairs: (rows,), offsets: (E + 1,), counts: (E,) int32: the dispatch (:class:`Dispatch`).
    act: (rows, inner) the SwiGLU activation, pre: (rows, 2*inner) [gate | up] pre-activations, x's dtype.
    """

    logits: torch.Tensor
    top_w: torch.Tensor
    top_i: torch.Tensor
    sorted_pairs: torch.Tensor
    offsets: torch.Tensor
    counts: torch.Tensor
    act: torch.Tensor
    pre: torch.Tensor


def layout(n_tokens: int, k: int, n_experts: int) -> tuple[int, int]:
    """(block_m, num_blocks) of the dispatch for these sizes: a function of the shapes alone (the backward and
    the op's fake implementation derive the saved tensors' shapes from it)."""
    n_pairs = n_tokens * k
    block_m = _pick_block_m(n_pairs, n_experts)
    return block_m, n_pairs // block_m + min(n_experts, n_pairs)


def saved_shapes(n_tokens: int, k: int, n_experts: int, inner: int) -> list[tuple]:
    """The shapes of :class:`Saved`'s fields, in order."""
    block_m, num_blocks = layout(n_tokens, k, n_experts)
    rows = num_blocks * block_m
    return [(n_tokens, n_experts), (n_tokens, k), (n_tokens, k), (rows,), (n_experts + 1,), (n_experts,),
            (rows, inner), (rows, 2 * inner)]


SAVED_DTYPES = (torch.float32, torch.float32, torch.int32, torch.int32, torch.int32, torch.int32, None, None)


def _pick_block_m(n_pairs: int, n_experts: int) -> int:
    """The M tile of the grouped GEMMs, which is also the dispatch's padding. Small under the interpreter
    (programs are what costs there); on a GPU 128-row tiles once experts average >= 512 rows, else 64 (less
    padding; at most one partial block per expert either way). A modeled sweep counts under the interpreter what
    the GPU would run (``rt.sized_for_gpu``): with 16-row blocks every block re-reads its expert's whole weight
    matrix, 8x the weight traffic of 128-row ones (at OLMoE's shape and 16k tokens, 74 GB requested by the
    gate/up GEMM instead of 14), which no GPU launch of this op does."""
    if not rt.sized_for_gpu():
        return 16
    if rt.COMPILE_ONLY:
        return 128  # the shared-memory worst case, which is what the compile-only check is for
    return 128 if n_pairs >= 512 * n_experts else 64


def _check(x, router_weight, gate_up, down, k):
    rt.check_tensor("x", x, min_rank=1)
    hidden = x.shape[-1]
    if hidden == 0:
        raise ValueError(f"x must have a non-empty last dim, got shape {tuple(x.shape)}")
    rt.check_tensor("router_weight", router_weight, rank=2)
    n_experts = router_weight.shape[0]
    if not 1 <= n_experts <= MAX_EXPERTS:
        raise ValueError(f"router_weight must have 1..{MAX_EXPERTS} rows (experts), got {tuple(router_weight.shape)}")
    rt.check_like("router_weight", router_weight, "x", x, shape=(n_experts, hidden))
    rt.check_tensor("down", down, rank=3)
    inner = down.shape[2]
    if inner == 0:
        raise ValueError(f"down must have a non-empty inner (last) dim, got shape {tuple(down.shape)}")
    rt.check_like("down", down, "x", x, shape=(n_experts, hidden, inner))
    rt.check_tensor("gate_up", gate_up, rank=3)
    rt.check_like("gate_up", gate_up, "x", x, shape=(n_experts, 2 * inner, hidden))
    check_k(k, n_experts)


def _moe_forward(x, router_weight, gate_up, down, k, normalize, block_m=None):
    """The layer's output (inference: nothing kept)."""
    return _forward(x, router_weight, gate_up, down, k, normalize, block_m)[0]


def _forward(x, router_weight, gate_up, down, k, normalize, block_m=None, train=False):
    """(out, :class:`Saved` if ``train`` else None)."""
    hidden = x.shape[-1]
    n_experts, inner = router_weight.shape[0], down.shape[2]
    out = rt.empty(x.shape, x.dtype, x.device)
    x2, out2 = x.reshape(-1, hidden), out.view(-1, hidden)  # x2: a view whenever x's strides allow
    n_tokens = x2.shape[0]
    if n_tokens == 0:
        if not train:
            return out, None
        shapes = saved_shapes(0, k, n_experts, inner)
        return out, Saved(*(torch.zeros(s, dtype=d or x.dtype, device=x.device)
                            for s, d in zip(shapes, SAVED_DTYPES)))
    n_pairs = n_tokens * k
    block_m = block_m or _pick_block_m(n_pairs, n_experts)
    precision = dot_precision(x.dtype)
    block_e = _pow2_at_least(n_experts, 16)

    # 1. router (training: the logits too)
    top_w = rt.empty((n_tokens, k), torch.float32, x.device)
    top_i = rt.empty((n_tokens, k), torch.int32, x.device)
    logits = rt.empty((n_tokens, n_experts), torch.float32, x.device) if train else top_w
    moe_router[lambda meta: (triton.cdiv(n_tokens, meta["BLOCK_M"]),)](
        x2, router_weight, top_w, top_i, logits, n_tokens, hidden, n_experts, k,
        x2.stride(0), x2.stride(1), router_weight.stride(0), router_weight.stride(1),
        NORMALIZE=bool(normalize), STORE_LOGITS=train, PRECISION=precision, BLOCK_E=block_e,
        BLOCK_TOPK=_pow2_at_least(k),
    )
    # 2. dispatch
    d = moe_dispatch(top_i, n_experts, block_m)
    # 3. gate/up grouped GEMM + SwiGLU
    h = rt.empty((d.num_blocks * block_m, inner), x.dtype, x.device)
    pre = rt.empty((d.num_blocks * block_m, 2 * inner), x.dtype, x.device) if train else h
    moe_gate_up[lambda meta: (d.num_blocks * triton.cdiv(inner, meta["BLOCK_N"]),)](
        x2, gate_up, h, pre, d.sorted_pairs, d.offsets, d.counts,
        n_experts, hidden, inner, k, d.num_blocks,
        x2.stride(0), x2.stride(1), gate_up.stride(0), gate_up.stride(1), gate_up.stride(2), h.stride(0),
        pre.stride(0), W_K_MAJOR=gate_up.stride(2) == 1, TMA_FITS=rt.tma_ok(*tma_gate_up(gate_up)),
        STORE_PRE=train, PRECISION=precision, BLOCK_E=block_e, BLOCK_M=block_m,
    )
    # 4. down grouped GEMM, routing weight, scatter to pair order
    y = rt.empty((n_pairs, hidden), x.dtype, x.device)
    moe_down[lambda meta: (d.num_blocks * triton.cdiv(hidden, meta["BLOCK_N"]),)](
        h, down, y, d.sorted_pairs, d.offsets, d.counts, top_w,
        n_experts, hidden, inner, d.num_blocks,
        h.stride(0), down.stride(0), down.stride(1), down.stride(2), y.stride(0),
        D_K_MAJOR=down.stride(2) == 1, TMA_FITS=rt.tma_ok(h, tma_weights(down)), WEIGHTED=True,
        PRECISION=precision, BLOCK_E=block_e, BLOCK_M=block_m,
    )
    # 5. combine
    _combine(y, None, out2, n_tokens, hidden, k)
    if not train:
        return out, None
    return out, Saved(logits, top_w, top_i, d.sorted_pairs, d.offsets, d.counts, h, pre)


def _combine(y, extra, out2, n_tokens, hidden, k):
    """out2[t] = sum_j y[t*k + j] (+ extra[t])."""
    moe_combine[lambda meta: (triton.cdiv(n_tokens, meta["BLOCK_T"]), triton.cdiv(hidden, meta["BLOCK_H"]))](
        y, y if extra is None else extra, out2, n_tokens, hidden, k, y.stride(0), out2.stride(0), out2.stride(1),
        ADD_EXTRA=extra is not None,
    )


def _backward(dout, x, router_weight, gate_up, down, saved: Saved, k, normalize, needs):
    """The gradients (dx, drouter_weight, dgate_up, ddown) for ``dout: x.shape``; None where ``needs`` (four
    bools) says no. Stages 6 to 10 of the module doc; the kernels' math: ``kernel_bwd.py``."""
    need_x, need_r, need_gu, need_dn = (bool(n) for n in needs)
    hidden = x.shape[-1]
    n_experts, inner = router_weight.shape[0], down.shape[2]
    x2, dout2 = x.reshape(-1, hidden), dout.reshape(-1, hidden)
    n_tokens, dt, dev = x2.shape[0], x.dtype, x.device
    if n_tokens == 0:
        grads = (torch.zeros_like(x), torch.zeros_like(router_weight), torch.zeros_like(gate_up),
                 torch.zeros_like(down))
        return tuple(g if n else None for g, n in zip(grads, (need_x, need_r, need_gu, need_dn)))
    n_pairs = n_tokens * k
    block_m, num_blocks = layout(n_tokens, k, n_experts)
    precision = dot_precision(dt)
    block_e = _pow2_at_least(n_experts, 16)
    s = saved
    dx = drouter = dgate_up = ddown = None

    # 6. c = dout @ down[e]; [dg | du] and the routing-weight gradient's column bands from its epilogue
    dpre = rt.empty((num_blocks * block_m, 2 * inner), dt, dev)
    dw_bands = rt.empty((triton.cdiv(inner, DW_BAND), n_pairs), torch.float32, dev)
    moe_down_bwd[lambda meta: (num_blocks * triton.cdiv(inner, meta["BLOCK_N"]),)](
        dout2, down, s.pre, dpre, s.top_w, dw_bands, s.sorted_pairs, s.offsets, s.counts,
        n_experts, hidden, inner, k, n_pairs, num_blocks,
        dout2.stride(0), dout2.stride(1), down.stride(0), down.stride(1), down.stride(2), s.pre.stride(0),
        dpre.stride(0), PRECISION=precision, BLOCK_E=block_e, BLOCK_M=block_m,
    )
    # 7. the router: dw (bands summed in a fixed order), then dlogits through softmax / top-k / normalize
    if need_x or need_r:
        dweights = dw_bands.sum(dim=0).view(n_tokens, k)
        dlogits = rt.empty((n_tokens, n_experts), torch.float32, dev)
        routing_bwd[lambda meta: (triton.cdiv(n_tokens, meta["BLOCK_M"]),)](
            s.logits, s.top_i, dweights, dlogits, n_tokens, n_experts, k,
            s.logits.stride(0), s.logits.stride(1), s.top_i.stride(0), s.top_i.stride(1),
            dweights.stride(0), dweights.stride(1), dlogits.stride(0), dlogits.stride(1),
            NORMALIZE=bool(normalize), BLOCK_E=routing_block_e(n_experts), PICKS=min(_pow2_at_least(k), 8),
        )
        dlogits = dlogits.to(dt)  # the router GEMMs' operand, in x's dtype (a no-op in fp32)
    # 8. the experts' weight gradients, one program per tile of dW[e]
    if need_dn:
        ddown = rt.empty(down.shape, down.dtype, dev)
        _weight_grad(dout2, s.act, ddown, s, k, l_by_token=True, r_by_token=False)
    if need_gu:
        dgate_up = rt.empty(gate_up.shape, gate_up.dtype, dev)
        _weight_grad(dpre, x2, dgate_up, s, k, l_by_token=False, r_by_token=True)
    # 9./10. dx: the pairs' [dg | du] @ gate_up[e] (moe_down, gate_up read transposed), plus dlogits @ router
    if need_x:
        y = rt.empty((n_pairs, hidden), dt, dev)
        moe_down[lambda meta: (num_blocks * triton.cdiv(hidden, meta["BLOCK_N"]),)](
            dpre, gate_up, y, s.sorted_pairs, s.offsets, s.counts, s.top_w,
            n_experts, hidden, 2 * inner, num_blocks,
            dpre.stride(0), gate_up.stride(0), gate_up.stride(2), gate_up.stride(1), y.stride(0),
            D_K_MAJOR=gate_up.stride(1) == 1, TMA_FITS=rt.tma_ok(dpre, tma_weights(gate_up.transpose(1, 2))),
            WEIGHTED=False, PRECISION=precision, BLOCK_E=block_e, BLOCK_M=block_m,
        )
        dx_router = _matmul(dlogits, router_weight, rt.empty((n_tokens, hidden), torch.float32, dev))
        dx = rt.empty(x.shape, dt, dev)
        _combine(y, dx_router, dx.view(-1, hidden), n_tokens, hidden, k)
    if need_r:
        drouter = _router_weight_grad(dlogits, x2, router_weight)
    return dx, drouter, dgate_up, ddown


ROUTER_GRAD_CHUNK = 256  # tokens a chunk of drouter's reduction sums, at least (64 chunks: a wave of 1024 programs)
ROUTER_GRAD_SPLITS = 64  # at most this many partial sums: 64 x (E, hidden) fp32, 32 MB at OLMoE's shape


def _router_weight_grad(dlogits, x2, router_weight):
    """drouter = dlogits^T x: (E, hidden), a reduction over every token.

    Its output is small (64 x 2048 at OLMoE's shape) and its reduction long (the tokens): one GEMM tile per
    program leaves 8 programs on the GPU, each walking 16k tokens (the MLP's gemm at its default 128x256 tile:
    1.1 ms modeled at 16k tokens, for 4 GFLOP). So the reduction is split over chunks of tokens, each chunk's
    partial sum one 'group' of ``moe_weight_grad`` (the chunk's rows read in order, L = dlogits and R = x in token
    order, no gather), and the fp32 partials are summed in a fixed order: deterministic, no atomics."""
    n_tokens = x2.shape[0]
    n_experts, hidden = router_weight.shape
    dev = x2.device
    splits = max(1, min(triton.cdiv(n_tokens, ROUTER_GRAD_CHUNK), ROUTER_GRAD_SPLITS))
    chunk = triton.cdiv(n_tokens, splits)
    bounds = (torch.arange(splits + 1, dtype=torch.int32, device=dev) * chunk).clamp_(max=n_tokens)
    starts, counts = bounds[:-1], bounds.diff()  # chunk i: tokens [starts[i], starts[i] + counts[i])
    drouter = rt.empty(router_weight.shape, router_weight.dtype, dev)
    out = drouter.unsqueeze(0) if splits == 1 else rt.empty((splits, n_experts, hidden), torch.float32, dev)
    moe_weight_grad[lambda meta: (splits * triton.cdiv(n_experts, meta["BLOCK_N"])
                                  * triton.cdiv(hidden, meta["BLOCK_C"]),)](
        dlogits, x2, out, None, starts, counts, None, splits, n_experts, hidden, 1, 1,
        dlogits.stride(0), dlogits.stride(1), x2.stride(0), x2.stride(1), out.stride(0), out.stride(1), out.stride(2),
        L_BY_TOKEN=False, R_BY_TOKEN=False, PRECISION=dot_precision(dlogits.dtype),
    )
    if splits > 1:
        drouter.copy_(out.sum(dim=0))  # the partials in a fixed order (fp32), then the router weight's dtype
    return drouter


def _weight_grad(left, right, dw, s: Saved, k, *, l_by_token, r_by_token):
    """dw[e] = sum over expert e's rows of left[row]^T right[row] (``moe_weight_grad``); dw: (E, n, c)."""
    n_experts, n_dim, c_dim = dw.shape
    per_program = 1 if rt.sized_for_gpu() else triton.cdiv(n_experts, 4)  # see moe_weight_grad's grid
    moe_weight_grad[lambda meta: (triton.cdiv(n_experts, per_program) * triton.cdiv(n_dim, meta["BLOCK_N"])
                                  * triton.cdiv(c_dim, meta["BLOCK_C"]),)](
        left, right, dw, s.sorted_pairs, s.offsets, s.counts, s.top_w, n_experts, n_dim, c_dim, k, per_program,
        left.stride(0), left.stride(1), right.stride(0), right.stride(1), dw.stride(0), dw.stride(1), dw.stride(2),
        L_BY_TOKEN=l_by_token, R_BY_TOKEN=r_by_token, PRECISION=dot_precision(left.dtype),
    )


# ------------------------------------------------------------------------------------------------ the custom ops
#
#     torch.ops.playground.moe(x, router_weight, gate_up, down, k, normalize, train)  -> (out, *saved)
#     torch.ops.playground.moe_backward(dout, x, router_weight, gate_up, down, *saved, k, normalize, grads)
#                                                                   -> (dx, drouter_weight, dgate_up, ddown)
#
# ``train`` (some input needs a gradient) says whether to keep what the backward reads (:class:`Saved`: logits,
# routing, dispatch, activation and gate/up pre-activations; placeholders otherwise), as the MLP's ``grads`` does.


def _moe_fake(x, router_weight, gate_up, down, k, normalize, train):
    if not train:
        return (x.new_empty(x.shape), *(x.new_empty(0) for _ in Saved._fields))
    shapes = saved_shapes(x.numel() // x.shape[-1], k, router_weight.shape[0], down.shape[2])
    return (x.new_empty(x.shape), *(x.new_empty(shape, dtype=dtype or x.dtype)
                                    for shape, dtype in zip(shapes, SAVED_DTYPES)))


def _moe_setup(ctx, inputs, output):
    x, router_weight, gate_up, down, ctx.k, ctx.normalize, _ = inputs
    ctx.save_for_backward(x, router_weight, gate_up, down, *output[1:])
    extras_are_not_differentiable(ctx, output[1:])


def _moe_backward(ctx, dout, *_dsaved):
    if dout is None:
        return (None,) * 7
    grads = list(ctx.needs_input_grad[:4])
    out = torch.ops.playground.moe_backward(dout, *ctx.saved_tensors, ctx.k, ctx.normalize, grads)
    return (*(g if need else None for g, need in zip(out, grads)), None, None, None)


@custom_op("moe", _moe_fake, _moe_setup, _moe_backward)
def _moe_op(x: Tensor, router_weight: Tensor, gate_up: Tensor, down: Tensor, k: int, normalize: bool, train: bool
            ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    out, saved = _forward(x, router_weight, gate_up, down, k, normalize, train=train)
    return (out, *(saved if train else (placeholder(x) for _ in Saved._fields)))


def _moe_bwd_fake(dout, x, router_weight, gate_up, down, *rest):
    grads = rest[-1]
    return tuple(empty_if(flag, t.shape, t) for flag, t in zip(grads, (x, router_weight, gate_up, down)))


@custom_op("moe_backward", _moe_bwd_fake)
def _moe_backward_op(dout: Tensor, x: Tensor, router_weight: Tensor, gate_up: Tensor, down: Tensor, logits: Tensor,
                     top_w: Tensor, top_i: Tensor, sorted_pairs: Tensor, offsets: Tensor, counts: Tensor,
                     act: Tensor, pre: Tensor, k: int, normalize: bool, grads: list[bool]
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    saved = Saved(logits, top_w, top_i, sorted_pairs, offsets, counts, act, pre)
    out = _backward(dout, x, router_weight, gate_up, down, saved, k, normalize, grads)
    return tuple(or_placeholder(g, x) for g in out)


def moe(x, router_weight, gate_up, down, *, k=8, normalize=False):
    """HF OLMoE's sparse MoE block (``OlmoeSparseMoeBlock``) with the given weights; differentiable in x and the
    three weights (the top-k selection is not, the routing weights are).

    ``x: (..., hidden)``, ``router_weight: (E, hidden)``, ``gate_up: (E, 2*inner, hidden)`` (gate rows first),
    ``down: (E, hidden, inner)``; each token goes to its ``k`` most probable experts. A token with a NaN in x
    or an undefined router softmax (NaN / +inf logits, or all -inf) gets an all-NaN output row.
    """
    _check(x, router_weight, gate_up, down, k)
    train = any(needs_grad(x, router_weight, gate_up, down))
    return torch.ops.playground.moe(x, router_weight, gate_up, down, k, bool(normalize), train)[0]

