"""The PyTorch reference of top-k routing (same signature as ``api.py``'s ``topk_routing``), and HF's router
verbatim, the sweeps' torch baseline."""

import torch


def topk_routing_reference(logits, k=8, *, normalize=False):
    """HF's router math (softmax in fp32 — fp64 for fp64 logits — then top-k), with the tie rule made explicit:
    a stable descending sort keeps equal probabilities in index order, so ties go to the lower expert.

    The NaN contract (``api.py``'s module doc) is stated here too rather than left to torch: an undefined row's
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
