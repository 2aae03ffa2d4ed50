"""Top-k expert routing (the router of HF OLMoE): the public function, its checks, launch and custom
ops (``torch.ops.playground.topk_routing``, ``topk_routing_backward``: fake and autograd below).

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
from torch import Tensor

from ... import _runtime as rt
from ..._custom_op import custom_op, extras_are_not_differentiable
from .kernel import MAX_EXPERTS, block_e, routing_bwd, routing_fwd


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """(..., n) -> (rows, n); a 2-D tensor as it is (the public function hands the ops rows already)."""
    return t if t.dim() == 2 else t.reshape(-1, t.shape[-1])


def _forward(z, k, normalize):
    """(weights, ids) of the rows ``z: (rows, num_experts)``."""
    n_rows, n_experts = z.shape
    weights = rt.empty((n_rows, k), z.dtype, z.device)
    ids = rt.empty((n_rows, k), torch.int64, z.device)
    if n_rows:
        routing_fwd[lambda meta: (triton.cdiv(n_rows, meta["BLOCK_M"]),)](
            z, weights, ids, n_rows, n_experts, k,
            z.stride(0), z.stride(1), weights.stride(0), weights.stride(1), ids.stride(0), ids.stride(1),
            NORMALIZE=normalize, BLOCK_E=block_e(n_experts), BLOCK_K=triton.next_power_of_2(k),
        )
    return weights, ids


def _backward(dw, z, ids, normalize):
    """dL/dz of the rows ``z`` from the weights' gradient ``dw: (rows, k)``."""
    n_rows, n_experts = z.shape
    dz = rt.empty(z.shape, z.dtype, z.device)
    if n_rows:
        routing_bwd[lambda meta: (triton.cdiv(n_rows, meta["BLOCK_M"]),)](
            z, ids, dw, dz, n_rows, n_experts, ids.shape[1],
            z.stride(0), z.stride(1), ids.stride(0), ids.stride(1), dw.stride(0), dw.stride(1),
            dz.stride(0), dz.stride(1),
            NORMALIZE=normalize, BLOCK_E=block_e(n_experts),
            PICKS=min(triton.next_power_of_2(ids.shape[1]), 8),  # picks scattered per step (kernel.py)
        )
    return dz


# ------------------------------------------------------------------------------------------------ the custom ops
#
#     torch.ops.playground.topk_routing(logits, k, normalize)                       -> (weights, ids)
#     torch.ops.playground.topk_routing_backward(dweights, logits, ids, normalize)  -> dlogits
#
# Any leading dims (the public function hands them rows); the ids are not differentiable.


def _routing_fake(logits, k, normalize):
    shape = (*logits.shape[:-1], k)
    return logits.new_empty(shape), logits.new_empty(shape, dtype=torch.int64)


def _routing_setup(ctx, inputs, output):
    logits, _, ctx.normalize = inputs
    ctx.save_for_backward(logits, output[1])
    extras_are_not_differentiable(ctx, output[1:])


def _routing_backward(ctx, dweights, _dids):
    if dweights is None:
        return None, None, None
    return torch.ops.playground.topk_routing_backward(dweights, *ctx.saved_tensors, ctx.normalize), None, None


@custom_op("topk_routing", _routing_fake, _routing_setup, _routing_backward)
def _topk_routing_op(logits: Tensor, k: int, normalize: bool) -> tuple[Tensor, Tensor]:
    weights, ids = _forward(_as_rows(logits), k, normalize)
    if logits.dim() == 2:
        return weights, ids
    return weights.view(*logits.shape[:-1], k), ids.view(*logits.shape[:-1], k)


@custom_op("topk_routing_backward", lambda dweights, logits, ids, normalize: logits.new_empty(logits.shape))
def _topk_routing_backward_op(dweights: Tensor, logits: Tensor, ids: Tensor, normalize: bool) -> Tensor:
    dz = _backward(_as_rows(dweights), _as_rows(logits), _as_rows(ids), normalize)
    return dz if logits.dim() == 2 else dz.view(logits.shape)


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
    weights, ids = torch.ops.playground.topk_routing(z, k, bool(normalize))
    return weights.reshape(*lead, k), ids.reshape(*lead, k)
