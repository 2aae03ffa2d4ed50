"""The OLMoE mixture-of-experts layer: the public function, its checks, the dispatch and the launches.

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

What is stored vs recomputed. The gate/up pre-activations are never stored (SwiGLU is fused); the activation
(``tokens*k x inner``) and the weighted per-pair rows (``tokens*k x hidden``) are, because each is produced by
one grouped GEMM and consumed by another launch whose programs are organised differently (by expert vs by
token); summing the k pairs of a token inside GEMM #2 would need atomics and lose determinism. The logits are
not stored (forward only).

NaN propagates, per token. A token whose x row has a NaN gets NaN logits; a token whose logits make the
softmax undefined (a NaN, a +inf, or all -inf: from a NaN in x or in the router weight, or an fp32 overflow)
gets NaN routing weights and the in-range experts ``0..k-1`` (:mod:`kernels.ops.routing`'s contract). Either way
every one of its ``k`` pairs is dispatched and computed, and its output row is all NaN — never a silent 0.0
from pairs that went nowhere, and never an index past the expert tables. The other tokens' rows are
unaffected: every GEMM row, every routing row and every combine row belongs to one token. (NaN in an expert's
weights reaches, in the same way, exactly the tokens routed to that expert.)

Forward only: a backward (grouped GEMMs with the roles of the operands swapped, plus the router's gradient
from :mod:`kernels.ops.routing`) is future work; until then calling it where a gradient is required raises
NotImplementedError.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton

from ... import _runtime as rt
from ...common.precision import dot_precision
from ..routing.api import check_k
from .kernel import MAX_EXPERTS, dispatch_count, dispatch_scan, dispatch_scatter, moe_router
from .kernel_gemm import tma_gate_up, tma_weights, moe_combine, moe_down, moe_gate_up


class Dispatch(NamedTuple):
    """The expert-sorted, block-padded layout of the ``tokens * k`` pairs (pair ``p = t*k + j``), all int32.

    sorted_pairs: (num_blocks * block_m,) row -> pair; -1 on padding rows; rows >= offsets[E] are never
        written nor read.
    pair_rows: (tokens * k,) pair -> row, the inverse permutation.
    counts: (E,) pairs per expert.  offsets: (E + 1,) first row of each expert (multiples of block_m),
        offsets[E] = rows in use.
    block_m: the padding granularity.  num_blocks: the grid bound, tokens*k // block_m + min(E, tokens*k).
    """

    sorted_pairs: torch.Tensor
    pair_rows: torch.Tensor
    counts: torch.Tensor
    offsets: torch.Tensor
    block_m: int
    num_blocks: int


def _pow2_at_least(n: int, floor: int = 1) -> int:
    return max(triton.next_power_of_2(n), floor)


def moe_dispatch(expert_ids: torch.Tensor, num_experts: int, block_m: int) -> Dispatch:
    """Sort the pairs of ``expert_ids: (tokens, k)`` by expert (stable) into ``block_m``-padded expert segments.

    Three launches, no host synchronisation: the grid and every buffer size follow from the shapes alone.
    """
    if expert_ids.dim() != 2 or expert_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"expert_ids must be a (tokens, k) int32/int64 tensor, got {expert_ids.dtype} "
                         f"{tuple(expert_ids.shape)}")
    if not 1 <= num_experts <= MAX_EXPERTS:
        raise ValueError(f"num_experts must be in [1, {MAX_EXPERTS}], got {num_experts}")
    if block_m < 1 or block_m & (block_m - 1):
        raise ValueError(f"block_m must be a power of two, got {block_m}")
    n_tokens, top_k = expert_ids.shape
    n_pairs = n_tokens * top_k
    device = expert_ids.device
    num_blocks = n_pairs // block_m + min(num_experts, n_pairs)
    block_e = _pow2_at_least(num_experts, 16)
    block_t = min(max(8192 // block_e, 16), 128)  # tokens per count/scatter tile: a (BLOCK_T, BLOCK_E) one-hot
    n_tiles = triton.cdiv(n_tokens, block_t)

    sorted_pairs = rt.empty((num_blocks * block_m,), torch.int32, device)
    pair_rows = rt.empty((n_pairs,), torch.int32, device)
    counts = rt.empty((num_experts,), torch.int32, device)
    offsets = rt.empty((num_experts + 1,), torch.int32, device)
    hist = rt.empty((max(n_tiles, 1), num_experts), torch.int32, device)
    prefix = rt.empty((max(n_tiles, 1), num_experts), torch.int32, device)
    rank = rt.empty((n_pairs,), torch.int32, device)
    if n_tiles:
        dispatch_count[(n_tiles,)](expert_ids, hist, rank, n_tokens, num_experts, top_k,
                                   expert_ids.stride(0), expert_ids.stride(1), BLOCK_T=block_t, BLOCK_E=block_e)
    dispatch_scan[(1,)](hist, prefix, counts, offsets, sorted_pairs, n_tiles, num_experts,
                        BLOCK_M=block_m, BLOCK_B=4096 // block_e, BLOCK_E=block_e,
                        BLOCK_P=min(block_m, 4096 // block_e))
    if n_tiles:
        dispatch_scatter[(n_tiles,)](expert_ids, rank, prefix, offsets, sorted_pairs, pair_rows,
                                     n_tokens, num_experts, top_k, expert_ids.stride(0), expert_ids.stride(1),
                                     BLOCK_T=block_t, BLOCK_K=_pow2_at_least(top_k))
    return Dispatch(sorted_pairs, pair_rows, counts, offsets, block_m, num_blocks)


def _pick_block_m(n_pairs: int, n_experts: int) -> int:
    """The M tile of the grouped GEMMs, which is also the dispatch's padding. Small under the interpreter
    (programs are what costs there); on a GPU 128-row tiles once experts average >= 512 rows, else 64 (less
    padding; at most one partial block per expert either way)."""
    if rt.INTERPRET:
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
    hidden = x.shape[-1]
    n_experts, inner = router_weight.shape[0], down.shape[2]
    out = rt.empty(x.shape, x.dtype, x.device)
    x2, out2 = x.reshape(-1, hidden), out.view(-1, hidden)  # x2: a view whenever x's strides allow
    n_tokens = x2.shape[0]
    if n_tokens == 0:
        return out
    n_pairs = n_tokens * k
    block_m = block_m or _pick_block_m(n_pairs, n_experts)
    precision = dot_precision(x.dtype)
    block_e = _pow2_at_least(n_experts, 16)

    # 1. router
    top_w = rt.empty((n_tokens, k), torch.float32, x.device)
    top_i = rt.empty((n_tokens, k), torch.int32, x.device)
    moe_router[lambda meta: (triton.cdiv(n_tokens, meta["BLOCK_M"]),)](
        x2, router_weight, top_w, top_i, n_tokens, hidden, n_experts, k,
        x2.stride(0), x2.stride(1), router_weight.stride(0), router_weight.stride(1),
        NORMALIZE=bool(normalize), PRECISION=precision, BLOCK_E=block_e, BLOCK_TOPK=_pow2_at_least(k),
    )
    # 2. dispatch
    d = moe_dispatch(top_i, n_experts, block_m)
    # 3. gate/up grouped GEMM + SwiGLU
    h = rt.empty((d.num_blocks * block_m, inner), x.dtype, x.device)
    moe_gate_up[lambda meta: (d.num_blocks * triton.cdiv(inner, meta["BLOCK_N"]),)](
        x2, gate_up, h, d.sorted_pairs, d.offsets, d.counts,
        n_experts, hidden, inner, k, d.num_blocks,
        x2.stride(0), x2.stride(1), gate_up.stride(0), gate_up.stride(1), gate_up.stride(2), h.stride(0),
        W_K_MAJOR=gate_up.stride(2) == 1, TMA_FITS=rt.tma_ok(*tma_gate_up(gate_up)), PRECISION=precision,
        BLOCK_E=block_e, BLOCK_M=block_m,
    )
    # 4. down grouped GEMM, routing weight, scatter to pair order
    y = rt.empty((n_pairs, hidden), x.dtype, x.device)
    moe_down[lambda meta: (d.num_blocks * triton.cdiv(hidden, meta["BLOCK_N"]),)](
        h, down, y, d.sorted_pairs, d.offsets, d.counts, top_w,
        n_experts, hidden, inner, d.num_blocks,
        h.stride(0), down.stride(0), down.stride(1), down.stride(2), y.stride(0),
        D_K_MAJOR=down.stride(2) == 1, TMA_FITS=rt.tma_ok(h, tma_weights(down)), PRECISION=precision,
        BLOCK_E=block_e, BLOCK_M=block_m,
    )
    # 5. combine
    moe_combine[lambda meta: (triton.cdiv(n_tokens, meta["BLOCK_T"]), triton.cdiv(hidden, meta["BLOCK_H"]))](
        y, out2, n_tokens, hidden, k, y.stride(0), out2.stride(0), out2.stride(1),
    )
    return out


def moe(x, router_weight, gate_up, down, *, k=8, normalize=False):
    """HF OLMoE's sparse MoE block (``OlmoeSparseMoeBlock``) with the given weights; forward only.

    ``x: (..., hidden)``, ``router_weight: (E, hidden)``, ``gate_up: (E, 2*inner, hidden)`` (gate rows first),
    ``down: (E, hidden, inner)``; each token goes to its ``k`` most probable experts. A token with a NaN in x
    or an undefined router softmax (NaN / +inf logits, or all -inf) gets an all-NaN output row.
    """
    _check(x, router_weight, gate_up, down, k)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, router_weight, gate_up, down)):
        raise NotImplementedError(
            "moe has no backward yet: call it under torch.no_grad() / on tensors that do not require grad "
            "(or use moe_reference for a differentiable path)")
    return _moe_forward(x, router_weight, gate_up, down, k, normalize)

