"""The PyTorch reference of the MoE layer (same signature as ``api.py``'s ``moe``: HF's eager block), and the
same layer on ``torch._grouped_mm``, a sweep peer."""

import torch
import torch.nn.functional as F

from ..routing.reference import topk_routing_reference


def moe_reference(x, router_weight, gate_up, down, *, k=8, normalize=False):
    """HF transformers' OlmoeSparseMoeBlock, eager: router, then a Python loop over the experts that were hit
    (per expert: gather its tokens, gate/up GEMM, SwiGLU, down GEMM, weight, index_add_).

    The NaN contract follows from topk_routing_reference's: an undefined routing row goes to experts 0..k-1
    with NaN weights, and index_add_ carries the NaN into the token's output row."""
    shape, hidden = x.shape, x.shape[-1]
    n_experts = router_weight.shape[0]
    h = x.reshape(-1, hidden)
    logits = F.linear(h, router_weight)
    weights, ids = topk_routing_reference(logits, k, normalize=normalize)
    out = torch.zeros_like(h)
    with torch.no_grad():
        expert_mask = F.one_hot(ids, num_classes=n_experts).permute(2, 1, 0)  # (E, k, tokens)
        expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
    for expert_idx in expert_hit:
        e = expert_idx[0]
        slot, token_idx = torch.where(expert_mask[e])
        gate, up = F.linear(h[token_idx], gate_up[e]).chunk(2, dim=-1)
        current = F.linear(F.silu(gate) * up, down[e]) * weights[token_idx, slot, None]
        out.index_add_(0, token_idx, current.to(out.dtype))
    return out.reshape(shape)


def moe_grouped_mm(x, router_weight, gate_up, down, *, k=8, normalize=False):
    """The same layer with ``torch._grouped_mm`` for the expert GEMMs (a sweep peer): torch softmax+topk,
    a stable argsort for the dispatch, two grouped GEMMs, a gather-back and a sum over the k slots."""
    shape, hidden = x.shape, x.shape[-1]
    n_experts = router_weight.shape[0]
    h = x.reshape(-1, hidden)
    probs = torch.softmax(F.linear(h, router_weight), dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, k, dim=-1)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    offs = torch.cumsum(torch.bincount(flat, minlength=n_experts), 0).to(torch.int32)
    act = torch._grouped_mm(h[order // k], gate_up.transpose(1, 2), offs=offs)
    gate, up = act.chunk(2, dim=-1)
    y = torch._grouped_mm(F.silu(gate) * up, down.transpose(1, 2), offs=offs)
    y = y * weights.reshape(-1)[order, None].to(y.dtype)
    pairs = torch.empty_like(y)
    pairs[order] = y
    return pairs.view(-1, k, hidden).sum(dim=1, dtype=torch.float32).to(x.dtype).reshape(shape)

