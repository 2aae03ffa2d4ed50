"""Top-k expert routing (the router of HF OLMoE): the public function, its checks, launch and autograd.

    probs            = softmax(logits, dim=-1)                       (in fp32, whatever the logits' dtype)
    weights, ids     = the k largest probs, sorted descending, ties to the lower expert index
    normalize=True:  weights = weights / weights.sum(-1)            (OLMoE ships with it off)

Shapes: ``logits: (..., num_experts)`` (rank >= 2; the leading dims are flattened into rows and restored on
the way out), ``weights: (..., k)`` in the logits' dtype, ``ids: (..., k)`` int64 (what ``torch.topk`` gives).
The kernels, their tiling and the backward's math: ``kernel.py``; the selection itself, shared with the MoE
router: ``kernels/common/topk.py``.

NaN and infinities. A row's softmax is *undefined* when it has a NaN logit, a +inf logit (``z - max`` is
``inf - inf`` there) or no logit above -inf (``-inf - (-inf)`` everywhere); torch's softmax gives such a row
all-NaN probabilities, and no other row gets a NaN. The contract for an undefined row:

    weights = NaN in all k slots, normalize or not
    ids     = 0, 1, ..., k-1          (a stable sort of the all-NaN probabilities: every entry ties)
    dL/dz   = NaN in the whole row    (NaN in, NaN out)

so ids are always k distinct experts in ``[0, num_experts)`` — downstream dispatch indexes with them — and the
fault shows up in the weights, and from there in whatever they weight (``kernels.ops.moe`` gives the token a NaN
output row). Every other row is computed exactly as if the undefined rows were not there. Some -inf logits in a
row with a finite one are ordinary values: probability 0, selected after every finite logit, ties to the lower
index. (How the kernels detect undefined rows: ``kernels/common/topk.py``.)
"""

from __future__ import annotations

import torch
import triton

from ... import _runtime as rt
from .kernel import MAX_EXPERTS, block_e, routing_bwd, routing_fwd


class _Routing(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, k, normalize):
        n_rows, n_experts = z.shape
        weights = rt.empty((n_rows, k), z.dtype, z.device)
        ids = rt.empty((n_rows, k), torch.int64, z.device)
        if n_rows:
            routing_fwd[lambda meta: (triton.cdiv(n_rows, meta["BLOCK_M"]),)](
                z, weights, ids, n_rows, n_experts, k,
                z.stride(0), z.stride(1), weights.stride(0), weights.stride(1), ids.stride(0), ids.stride(1),
                NORMALIZE=normalize, BLOCK_E=block_e(n_experts), BLOCK_K=triton.next_power_of_2(k),
            )
        ctx.save_for_backward(z, ids)
        ctx.normalize = normalize
        ctx.mark_non_differentiable(ids)
        ctx.set_materialize_grads(False)  # the ids' gradient is never used: no zero tensor is made for it
        return weights, ids

    @staticmethod
    def backward(ctx, dw, _dids):
        if dw is None:
            return None, None, None
        z, ids = ctx.saved_tensors
        n_rows, n_experts = z.shape
        dz = rt.empty(z.shape, z.dtype, z.device)
        if n_rows:
            routing_bwd[lambda meta: (triton.cdiv(n_rows, meta["BLOCK_M"]),)](
                z, ids, dw, dz, n_rows, n_experts, ids.shape[1],
                z.stride(0), z.stride(1), ids.stride(0), ids.stride(1), dw.stride(0), dw.stride(1),
                dz.stride(0), dz.stride(1),
                NORMALIZE=ctx.normalize, BLOCK_E=block_e(n_experts),
                PICKS=min(triton.next_power_of_2(ids.shape[1]), 8),  # picks scattered per step (kernel.py)
            )
        return dz, None, None


def check_k(k, num_experts: int) -> None:
    """``k`` is an int in ``[1, num_experts]`` (the MoE layer checks its ``k`` with it too)."""
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

    ``logits: (..., num_experts)``. Softmax over all experts in fp32, the ``k`` largest probabilities sorted
    descending (ties to the lower expert index), optionally renormalised to sum to one. Weights in the logits'
    dtype, ids int64. Differentiable in the logits (through the weights). A row with a NaN logit, a +inf logit
    or only -inf logits gets NaN weights and ids 0..k-1 (the module doc); ids are always in ``[0, num_experts)``.
    """
    _check(logits, k)
    lead = logits.shape[:-1]
    z = logits.reshape(-1, logits.shape[-1])  # a view whenever the strides allow
    weights, ids = _Routing.apply(z, k, bool(normalize))
    return weights.reshape(*lead, k), ids.reshape(*lead, k)
